"""The esxi driver's own promises beyond the contract: its fault table, TLS and
login, re-login on session expiry, vCenter clone paths (linked, full fallback,
InstantClone error handling and call shape), image copy-once and
retries of transient faults. Against vcsim except where a fault must be forced.
"""

from __future__ import annotations

import asyncio
import collections
import uuid
from types import SimpleNamespace

import pytest
from pyVim.connect import Disconnect
from pyVmomi import vim, vmodl

from agents.drivers.esxi import EsxiConfig, open_esxi
from agents.drivers.esxi.clone import ImageRef
from agents.drivers.esxi.driver import EsxiHost
from agents.drivers.esxi.faults import to_driver_error
from agents.drivers.esxi.session import Datastore, HostInfo
from agents.drivers.protocol import (
    CapacityExceeded,
    DriverError,
    HostUnavailable,
    ImageNotFound,
    OperationFailed,
    PowerState,
    VmInfo,
    VmNotFound,
    VmRequest,
)
from tests.conftest import async_wait_until
from tests.vcsim import Vcsim


def req(uid: str | None = None, image: str = "ubuntu", vcpus: int = 1, memory_mib: int = 512) -> VmRequest:
    uid = uid or uuid.uuid4().hex[:12]
    return VmRequest(uid, f"tenants/t/projects/p/vms/{uid}", image, vcpus, memory_mib, 10)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


@pytest.fixture(scope="module")
def esx():
    with Vcsim(mode="esx", datastores=2) as vcsim:
        vcsim.make_image("ubuntu", datastore="LocalDS_0")
        vcsim.make_image("bare", datastore="LocalDS_0", snapshot=False)
        vcsim.make_image("copyme", datastore="LocalDS_0")  # used by one test only
        yield vcsim


@pytest.fixture(scope="module")
def vpx():
    with Vcsim(mode="vpx") as vcsim:
        vcsim.make_image("ubuntu")
        vcsim.make_image("bare", snapshot=False)
        vcsim.make_image("running", power_on=True)
        yield vcsim


FAULT_TABLE = [
    (vim.fault.InsufficientHostCapacityFault(), CapacityExceeded, "CapacityExceeded", False),
    (vim.fault.NoDiskSpace(), CapacityExceeded, "CapacityExceeded", False),
    (vim.fault.InvalidPowerState(), OperationFailed, "InvalidPowerState", True),
    (vim.fault.TaskInProgress(), OperationFailed, "TaskInProgress", True),
    (vmodl.fault.HostCommunication(), HostUnavailable, "HostUnavailable", True),
    (vim.fault.NotAuthenticated(), HostUnavailable, "NotAuthenticated", True),
    (vim.fault.InvalidLogin(), OperationFailed, "InvalidLogin", False),
    (vmodl.fault.ManagedObjectNotFound(), VmNotFound, "VmNotFound", False),
    (vim.fault.FileNotFound(), ImageNotFound, "ImageNotFound", False),
    (vmodl.fault.MethodNotFound(method="InstantClone"), OperationFailed, "NotSupported", False),
    (vmodl.fault.InvalidArgument(invalidProperty="spec"), OperationFailed, "InvalidArgument", False),
    (vim.fault.DuplicateName(), OperationFailed, "DuplicateName", False),
    (ConnectionRefusedError(), HostUnavailable, "HostUnavailable", True),
    (KeyError("bug"), OperationFailed, "InternalError", False),
]


@pytest.mark.parametrize("fault, error, reason, transient", FAULT_TABLE,
                         ids=[type(row[0]).__name__ for row in FAULT_TABLE])
def test_fault_table(fault, error, reason, transient):
    mapped = to_driver_error(fault, "ctx")
    assert type(mapped) is error
    assert (mapped.reason, mapped.transient) == (reason, transient)
    assert str(mapped).startswith("ctx: ")


def test_tls_is_verified_and_bad_credentials_fail_permanently(esx):
    async def body():
        with pytest.raises(DriverError) as caught:
            await open_esxi(EsxiConfig(url=esx.url, user=esx.user, password=esx.password))  # system CAs only
        assert (caught.value.reason, caught.value.transient) == ("TlsError", False)
        with pytest.raises(OperationFailed) as caught:
            await open_esxi(esx.config(password="wrong"))
        assert caught.value.reason == "InvalidLogin"
        session, drivers = await open_esxi(esx.config(verify_tls=False, ca_file=None))
        await session.close()
        assert len(drivers) == 1
    run(body())


def test_unknown_image_and_datastore_are_permanent_errors(esx):
    async def body():
        session, drivers = await open_esxi(esx.config())
        try:
            (driver,) = drivers.values()
            with pytest.raises(ImageNotFound):
                await driver.create_vm(req(image="nope"))
            assert driver.inventory() == {"datastores": ["LocalDS_0", "LocalDS_1"], "networks": ["VM Network"]}
        finally:
            await session.close()
        with pytest.raises(OperationFailed, match="no datastore 'nope'"):
            await open_esxi(esx.config(datastore="nope"))
    run(body())


def test_reported_capacity_is_raw(esx):
    """Threads, memory and the VM datastore's size as vSphere reports them, never
    multiplied by an overcommit ratio (the agent's setting applies once, in placement)."""
    si = esx.connect()
    try:
        content = si.RetrieveContent()
        view = content.viewManager.CreateContainerView(content.rootFolder, [vim.HostSystem], True)
        (host,) = view.view
        view.Destroy()
        hardware = host.hardware
        datastores = {ds.name: ds.summary.capacity for ds in host.datastore}
    finally:
        Disconnect(si)

    async def body():
        session, drivers = await open_esxi(esx.config(datastore="LocalDS_1"))
        try:
            (driver,) = drivers.values()
            return await driver.capacity()
        finally:
            await session.close()

    capacity = run(body())
    assert (capacity.vcpus, capacity.memory_mib, capacity.disk_gib) == (
        hardware.cpuInfo.numCpuThreads, hardware.memorySize // 2**20, datastores["LocalDS_1"] // 2**30)
    assert capacity.labels["esxi.datastore"] == "LocalDS_1"


def test_an_expired_session_is_renewed_once_and_work_goes_on(esx):
    async def body():
        session, drivers = await open_esxi(esx.config())
        try:
            (driver,) = drivers.values()
            request = req()
            await asyncio.to_thread(session.expire_for_test)
            await asyncio.gather(driver.create_vm(request), driver.create_vm(req()))
            await driver.power_on(request.vm_uid)
            assert session.relogins == 1
            assert await driver.get_vm(request.vm_uid) == VmInfo(request.vm_uid, PowerState.ON)
        finally:
            await session.close()
    run(body())


def test_a_task_that_ended_before_it_was_awaited_is_not_awaited_forever(esx):
    """vSphere reports a new filter's values at once; vcsim only with a later change.
    A task awaited after it ended, and after the watcher took its last update (a
    slow caller on a loaded machine), still resolves."""
    async def body():
        session, drivers = await open_esxi(esx.config())
        try:
            (driver,) = drivers.values()
            first, marker = req(), req()
            await driver.create_vm(first)
            (moid,) = session.by_uid[first.vm_uid]
            task = await session.call(session.vm_mo(moid).PowerOnVM_Task)

            async def state() -> str:
                return (await session.call(session.retrieve, task, ["info.state"])).get("info.state")

            async def ended() -> bool:
                return await state() == "success"

            await async_wait_until(ended, timeout=30, message="the power-on task to end", seen=state)
            # The watcher hands over changes in batches: once it shows a VM made after the
            # task ended, it has taken the task's last update too.
            await driver.create_vm(marker)
            try:
                async with asyncio.timeout(20):
                    await session.wait_task(task)
            except TimeoutError:
                raise AssertionError(f"timed out after 20s waiting for a task that had ended; last seen: "
                                     f"{await state()} (read directly)") from None
            assert await driver.get_vm(first.vm_uid) == VmInfo(first.vm_uid, PowerState.ON)
        finally:
            await session.close()
    run(body())


def test_image_is_copied_once_to_a_new_datastore_under_concurrent_first_use(esx):
    async def body():
        session, drivers = await open_esxi(esx.config(datastore="LocalDS_1"))
        try:
            (driver,) = drivers.values()
            requests = [req(image="copyme") for _ in range(6)]
            await asyncio.gather(*(driver.create_vm(r) for r in requests))
            assert driver._images.copies == 1
            return [r.vm_uid for r in requests]
        finally:
            await session.close()
    made = run(body())
    si = esx.connect()
    try:
        names = [vm.name for vm in esx._vms(si)]
    finally:
        from pyVim.connect import Disconnect
        Disconnect(si)
    assert names.count("quanta-image-copyme@LocalDS_1") == 1
    assert {vm.uid for vm in esx.quanta_vms()} >= set(made)


@pytest.mark.parametrize("mode, image", [("linked", "ubuntu"), ("auto", "bare"), ("full", "ubuntu"),
                                         ("auto", "running")])
def test_vcenter_clone_paths_make_the_vm(vpx, mode, image):
    async def body():
        session, drivers = await open_esxi(vpx.config(clone_mode=mode))
        try:
            assert session.is_vcenter
            (driver,) = drivers.values()
            request = req(image=image)
            assert await driver.create_vm(request) == VmInfo(request.vm_uid, PowerState.OFF)
            return request.vm_uid
        finally:
            await session.close()
    uid = run(body())
    assert [vm.name for vm in vpx.quanta_vms() if vm.uid == uid] == [f"quanta-{uid}"]


def test_linked_mode_needs_a_snapshot_and_instant_clone_is_not_in_vcsim(vpx):
    async def body():
        for mode, image, reason in (("linked", "bare", "ImageNotFound"), ("instant", "running", "NotSupported")):
            session, drivers = await open_esxi(vpx.config(clone_mode=mode))
            try:
                (driver,) = drivers.values()
                request = req(image=image)
                with pytest.raises(DriverError) as caught:
                    await driver.create_vm(request)
                assert (caught.value.reason, caught.value.transient) == (reason, False)
                assert await driver.get_vm(request.vm_uid) is None
            finally:
                await session.close()
    run(body())


class FakeSession:
    """Records the task calls the driver makes; answers as a vCenter with InstantClone would."""

    def __init__(self, faults: list[BaseException] | None = None):
        self.config = EsxiConfig(url="https://vc/sdk", user="u", clone_mode="auto", retry_base_s=0.001)
        self.is_vcenter = True
        self.api_type = "VirtualCenter"
        self.calls: list[tuple[str, tuple]] = []
        self.faults = collections.deque(faults or [])

    async def run_task(self, start, *args):
        self.calls.append((start.__name__, args))
        if self.faults:
            raise self.faults.popleft()
        return "vm-made"


def fake_host(session) -> EsxiHost:
    named = type("Named", (), {})
    ds = Datastore("ds-1", "LocalDS_0", 100 << 30, 50 << 30, mo=vim.Datastore("ds-1"))
    info = HostInfo("host-1", "esx-1", 8, 32 << 30, "8.0", (ds,), ("VM Network",), mo=vim.HostSystem("host-1"),
                    pool=vim.ResourcePool("pool-1"), vm_folder=named())
    return EsxiHost(session, info, images=None)


def fake_image() -> ImageRef:
    def InstantClone_Task(spec):  # noqa: N802 - the vSphere method's name
        raise AssertionError("called through run_task only")

    def CloneVM_Task(folder, name, spec):  # noqa: N802
        raise AssertionError("called through run_task only")
    mo = SimpleNamespace(InstantClone_Task=InstantClone_Task, CloneVM_Task=CloneVM_Task)
    return ImageRef(name="quanta-image-ubuntu", moid="vm-1", powered_on=True, datastores=frozenset({"ds-1"}), mo=mo,
                    snapshot=vim.vm.Snapshot("snap-1"))


def test_instant_clone_call_shape_from_a_running_parent():
    session = FakeSession()
    request = req()
    assert run(fake_host(session)._make(request, fake_image())) == "vm-made"
    ((method, (spec,)),) = session.calls
    assert method == "InstantClone_Task"
    assert isinstance(spec, vim.vm.InstantCloneSpec)
    assert spec.name == f"quanta-{request.vm_uid}"
    assert [mo._moId for mo in (spec.location.host, spec.location.pool, spec.location.datastore)] == \
        ["host-1", "pool-1", "ds-1"]
    assert [(o.key, o.value) for o in spec.config] == [("quanta.vm_uid", request.vm_uid),
                                                       ("quanta.vm_name", request.name)]


def test_instant_clone_unsupported_falls_back_to_a_linked_clone_but_capacity_does_not():
    session = FakeSession([vmodl.fault.MethodNotFound(method="InstantClone")])
    assert run(fake_host(session)._make(req(), fake_image())) == "vm-made"
    assert [c[0] for c in session.calls] == ["InstantClone_Task", "CloneVM_Task"]
    spec = session.calls[1][1][2]
    assert spec.snapshot._moId == "snap-1" and spec.location.diskMoveType == "createNewChildDiskBacking"

    session = FakeSession([vim.fault.InsufficientMemoryResourcesFault()])
    with pytest.raises(vim.fault.InsufficientMemoryResourcesFault):
        run(fake_host(session)._make(req(), fake_image()))
    assert [c[0] for c in session.calls] == ["InstantClone_Task"]


def test_transient_faults_are_retried_with_backoff_and_permanent_ones_are_not():
    host = fake_host(FakeSession())
    attempts = []

    async def flaky():
        attempts.append(1)
        if len(attempts) < 3:
            raise vim.fault.TaskInProgress()
        return "done"
    assert run(host._retrying("op", flaky)) == "done" and len(attempts) == 3

    attempts.clear()

    async def broken():
        attempts.append(1)
        raise vmodl.fault.InvalidArgument(invalidProperty="spec")
    with pytest.raises(OperationFailed) as caught:
        run(host._retrying("op", broken))
    assert caught.value.reason == "InvalidArgument" and len(attempts) == 1

    attempts.clear()

    async def down():
        attempts.append(1)
        raise ConnectionResetError()
    with pytest.raises(HostUnavailable) as caught:
        run(host._retrying("op", down))
    assert caught.value.transient and len(attempts) == 1 + host._config.retries
