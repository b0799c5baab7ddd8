"""The esxi driver's own promises beyond the contract: its fault table, TLS and
login, re-login on session expiry, vCenter clone paths (linked, full fallback,
InstantClone error handling and call shape), image copy-once and
retries of transient faults; bootstrap data as guestinfo keys (delivered, reported
on, blanked), guest addresses, soft shutdown and hot/cold reconfigure. Against vcsim
except where a fault must be forced; a test plays the guest with ReconfigVM
(tests/vcsim.py ``reconfigure``).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import json
import uuid
from dataclasses import replace
from types import SimpleNamespace

import pytest
from pyVim.connect import Disconnect
from pyVmomi import vim, vmodl

from agents.drivers.esxi import EsxiConfig, guestinfo, open_esxi
from agents.drivers.esxi.clone import ImageRef
from agents.drivers.esxi.driver import EsxiHost
from agents.drivers.esxi.faults import to_driver_error
from agents.drivers.esxi.session import Datastore, HostInfo, guest_addresses, root_disk
from agents.drivers.protocol import (
    Address,
    BootstrapFormat,
    BootstrapPayload,
    CapacityExceeded,
    DriverError,
    GuestUnavailable,
    HostUnavailable,
    ImageNotFound,
    OperationFailed,
    PowerCycleRequired,
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
    (vim.fault.ToolsUnavailable(), GuestUnavailable, "GuestUnavailable", False),
    (vim.fault.GuestOperationsUnavailable(), GuestUnavailable, "GuestUnavailable", False),
    (vim.fault.CpuHotPlugNotSupported(), PowerCycleRequired, "PowerCycleRequired", False),
    (vim.fault.MemoryHotPlugNotSupported(), PowerCycleRequired, "PowerCycleRequired", False),
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


@pytest.mark.parametrize("op, error, reason, transient", [
    ("reconfigure", PowerCycleRequired, "PowerCycleRequired", False),
    ("shutdown_guest", GuestUnavailable, "GuestUnavailable", False),
    ("power_on", OperationFailed, "InvalidPowerState", True),
    ("", OperationFailed, "InvalidPowerState", True),
])
def test_a_wrong_power_state_means_what_the_operation_makes_it(op, error, reason, transient):
    mapped = to_driver_error(vim.fault.InvalidPowerState(), "ctx", op=op)
    assert (type(mapped), mapped.reason, mapped.transient) == (error, reason, transient)


def test_guest_addresses_primary_first_link_local_left_out():
    v4 = vim.vm.GuestInfo.NicInfo(macAddress="00:50:56:00:00:01", network="VM Network",
                                  ipAddress=["10.0.0.7", "fe80::1"])
    v6 = vim.vm.GuestInfo.NicInfo(
        macAddress="00:50:56:00:00:02", network="pods", ipAddress=["ignored-when-ipConfig-is-set"],
        ipConfig=vim.net.IpConfigInfo(ipAddress=[
            vim.net.IpConfigInfo.IpAddress(ipAddress="fd00::5", prefixLength=64),
            vim.net.IpConfigInfo.IpAddress(ipAddress="169.254.1.1", prefixLength=16),
            vim.net.IpConfigInfo.IpAddress(ipAddress="10.1.0.9", prefixLength=24)]))
    assert guest_addresses((v4, v6), "10.1.0.9") == (
        Address("10.1.0.9", "00:50:56:00:00:02", "pods", 4),
        Address("10.0.0.7", "00:50:56:00:00:01", "VM Network", 4),
        Address("fd00::5", "00:50:56:00:00:02", "pods", 6))
    assert guest_addresses((), "10.0.0.5") == (Address("10.0.0.5"),)  # no NIC reported: the primary alone
    assert guest_addresses((), "") == ()


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


def test_instant_clone_carries_the_bootstrap_keys_in_its_config():
    session = FakeSession()
    request = replace(req(), bootstrap=BootstrapPayload(BootstrapFormat.CLOUD_INIT, USER_DATA))
    run(fake_host(session)._make(request, fake_image()))
    ((_, (spec,)),) = session.calls
    keys = {o.key: o.value for o in spec.config}
    # No metadata given: the datasource falls back to the VM's UUID as instance id.
    assert {k: v for k, v in keys.items() if k.startswith("guestinfo.")} == {
        "guestinfo.userdata": b64(USER_DATA), "guestinfo.userdata.encoding": "base64"}


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


def test_the_root_disk_grows_by_a_device_edit_but_not_a_linked_clones(esx):
    async def body():
        session, drivers = await open_esxi(esx.config(datastore="LocalDS_0"))  # the images' own: not copied
        try:
            (driver,) = drivers.values()
            full, linked = req(image="bare"), req(image="ubuntu")  # "bare" has no snapshot: a full clone
            for request in (full, linked):
                assert (await driver.create_vm(request)).disk_gib == 1  # the image's disk, not the request's

            async def disk_of(uid: str):
                (moid,) = session.by_uid[uid]
                props = await session.call(session.retrieve, session.vm_mo(moid), ["config.hardware.device"])
                return root_disk(props["config.hardware.device"])

            before = await disk_of(full.vm_uid)
            await driver.reconfigure(full.vm_uid, vcpus=2, memory_mib=1024, disk_gib=3)  # one ReconfigVM
            info = await driver.get_vm(full.vm_uid)
            assert (info.vcpus, info.memory_mib, info.disk_gib) == (2, 1024, 3)
            after = await disk_of(full.vm_uid)
            assert (after.key, after.capacityInKB, after.capacityInBytes) == (before.key, 3 * 2**20, 3 * 2**30)
            assert after.backing.fileName == before.backing.fileName  # the same disk, grown

            with pytest.raises(OperationFailed) as caught:
                await driver.reconfigure(linked.vm_uid, vcpus=2, memory_mib=1024, disk_gib=3)
            assert (caught.value.reason, caught.value.transient) == ("NotSupported", False)
            info = await driver.get_vm(linked.vm_uid)
            assert (info.vcpus, info.disk_gib) == (1, 1)  # nothing was sent
        finally:
            await session.close()
    run(body())


# --- bootstrap data, guest report, addresses, soft shutdown, hot/cold reconfigure ----

USER_DATA = b"#cloud-config\nruncmd:\n  - [vmware-rpctool, 'info-set guestinfo.quanta.bootstrap done']\n"
IGNITION = json.dumps({"ignition": {"version": "3.4.0"},
                       "passwd": {"users": [{"name": "core", "sshAuthorizedKeys": ["ssh-ed25519 AAAA"]}]}}).encode()
METADATA = json.dumps({"instance-id": "i-1", "local-hostname": "node-1", "public-keys-data": "ssh-ed25519 AAAA"},
                      sort_keys=True).encode()


@pytest.fixture(scope="module")
def guest():
    """An ESXi simulator whose image has a NIC, so that clones have a guest.net entry."""
    with Vcsim(mode="esx") as vcsim:
        vcsim.make_image("ubuntu", nic=True)
        yield vcsim


def vars_of(observed) -> dict:
    return {f: getattr(observed, f) for f in observed.__slots__ if f != "nics"}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.mark.parametrize("payload, expected", [
    (BootstrapPayload(BootstrapFormat.CLOUD_INIT, USER_DATA, METADATA),
     {"guestinfo.userdata": b64(USER_DATA), "guestinfo.userdata.encoding": "base64",
      "guestinfo.metadata": b64(METADATA), "guestinfo.metadata.encoding": "base64"}),
    (BootstrapPayload(BootstrapFormat.IGNITION, IGNITION),
     {"guestinfo.ignition.config.data": b64(IGNITION), "guestinfo.ignition.config.data.encoding": "base64"}),
], ids=["cloud-init", "ignition"])
def test_bootstrap_data_is_delivered_reported_on_and_blanked(guest, payload, expected):
    """The VM is made with its guestinfo keys; the guest (played here) reports that it
    bootstrapped and its address, which the watcher shows and ``notify`` announces;
    ``clear_bootstrap`` removes every bootstrap key and nothing else; the session's
    cache never holds the data."""
    request = replace(req(), record="rec", bootstrap=payload)
    uid = request.vm_uid

    async def body():
        session, drivers = await open_esxi(guest.config())
        try:
            (driver,) = drivers.values()
            notified: list[str] = []
            driver.watch(notified.append)
            made = await driver.create_vm(request)
            assert (made.bootstrap_present, made.bootstrapped, made.addresses) == (True, False, ())
            keys = await asyncio.to_thread(guest.extra_config, uid)
            assert {k: v for k, v in keys.items() if k.startswith("guestinfo.")} == expected
            decoded = base64.b64decode(keys[next(iter(expected))])
            assert decoded == payload.user_data
            # Nowhere else: not the record, the name, the annotation, nor the cache.
            (moid,) = session.by_uid[uid]
            cached = session.vms[moid]
            for secret in (payload.user_data, payload.metadata or payload.user_data):
                for text in (made.record, made.name, repr(made), repr(vars_of(cached)), repr(cached.nics)):
                    assert secret.decode() not in text and b64(secret) not in text

            await driver.power_on(uid)
            notified.clear()
            await asyncio.to_thread(guest.reconfigure, uid, {guestinfo.REPORT_KEY: guestinfo.REPORT_DONE,
                                                             "SET.guest.ipAddress": "10.0.0.5"})

            async def reported():
                info = await driver.get_vm(uid)
                return info if info.bootstrapped and info.addresses else None
            info = await async_wait_until(reported, timeout=20, message="the guest's report and address",
                                          seen=lambda: driver.get_vm(uid))
            (address,) = info.addresses
            assert (address.ip, address.network, address.family) == ("10.0.0.5", "VM Network", 4)
            assert address.mac.count(":") == 5
            assert info.bootstrap_present and uid in notified

            notified.clear()
            for _ in range(2):  # idempotent
                await driver.clear_bootstrap(uid)
                after = await driver.get_vm(uid)
                assert (after.bootstrap_present, after.bootstrapped, after.power) == (False, True, PowerState.ON)
            keys = await asyncio.to_thread(guest.extra_config, uid)
            assert not set(guestinfo.CLEARED_KEYS) & set(keys)
            assert keys[guestinfo.REPORT_KEY] == "done" and keys["quanta.vm_uid"] == uid
            assert keys["quanta.vm_record"] == "rec"
            assert uid in notified
        finally:
            await session.close()
        # A restarted agent sees the same: reported, cleared, with its address.
        session, drivers = await open_esxi(guest.config())
        try:
            (driver,) = drivers.values()
            again = await driver.get_vm(uid)
            assert (again.bootstrapped, again.bootstrap_present, again.addresses) == (True, False, info.addresses)
        finally:
            await session.close()
    run(body())


def test_a_vm_without_bootstrap_data_gets_no_guestinfo_and_clearing_is_a_no_op(guest):
    request = req()

    async def body():
        session, drivers = await open_esxi(guest.config())
        try:
            (driver,) = drivers.values()
            made = await driver.create_vm(request)
            assert not made.bootstrap_present and not made.bootstrapped
            await driver.clear_bootstrap(request.vm_uid)
            with pytest.raises(VmNotFound):
                await driver.clear_bootstrap(uuid.uuid4().hex[:12])
        finally:
            await session.close()
    run(body())
    assert not [k for k in guest.extra_config(request.vm_uid) if k.startswith("guestinfo.")]


def test_shutdown_guest_needs_running_tools_and_powers_the_vm_off(guest):
    """vcsim's ShutdownGuest powers off at once and does not look at the tools (real
    hosts answer ToolsUnavailable); the driver refuses by the tools state it watches,
    which the test sets as a guest's tools would."""
    request = req()
    uid = request.vm_uid

    async def body():
        session, drivers = await open_esxi(guest.config())
        try:
            (driver,) = drivers.values()
            notified: list[str] = []
            driver.watch(notified.append)
            await driver.create_vm(request)
            await driver.shutdown_guest(uid)  # off stays off, no call
            assert (await driver.get_vm(uid)).power is PowerState.OFF
            await driver.power_on(uid)
            with pytest.raises(GuestUnavailable) as caught:
                await driver.shutdown_guest(uid)  # vcsim's VMs report guestToolsNotRunning
            assert not caught.value.transient
            assert (await driver.get_vm(uid)).power is PowerState.ON

            await asyncio.to_thread(guest.reconfigure, uid, {"SET.guest.toolsRunningStatus": "guestToolsRunning"})
            (moid,) = session.by_uid[uid]
            await async_wait_until(lambda: session.vms[moid].tools == "guestToolsRunning", timeout=20,
                                   message="the tools to run", seen=lambda: session.vms[moid].tools)
            notified.clear()
            await driver.shutdown_guest(uid)

            async def off():
                return (await driver.get_vm(uid)).power is PowerState.OFF
            await async_wait_until(off, timeout=20, message="the guest to power off",
                                   seen=lambda: driver.get_vm(uid))
            await async_wait_until(lambda: uid in notified, timeout=20, message="notify of the power-off",
                                   seen=lambda: notified)
            with pytest.raises(VmNotFound):
                await driver.shutdown_guest(uuid.uuid4().hex[:12])
        finally:
            await session.close()
    run(body())


def test_reconfigure_hot_where_vsphere_can_else_power_cycle_required(guest):
    request = req(vcpus=2, memory_mib=1024)
    uid = request.vm_uid

    async def body():
        session, drivers = await open_esxi(guest.config())
        try:
            (driver,) = drivers.values()
            await driver.create_vm(request)
            await driver.power_on(uid)
            assert ((await driver.get_vm(uid)).vcpus, (await driver.get_vm(uid)).memory_mib) == (2, 1024)
            for vcpus, memory in ((4, 1024), (2, 2048), (1, 1024), (2, 512)):
                with pytest.raises(PowerCycleRequired) as caught:
                    await driver.reconfigure(uid, vcpus=vcpus, memory_mib=memory)
                assert not caught.value.transient
                assert await driver.hardware(uid) == (2, 1024)  # nothing was sent
            await driver.reconfigure(uid, vcpus=2, memory_mib=1024)  # no change: fine while on

            await asyncio.to_thread(guest.reconfigure, uid, cpuHotAddEnabled=True, memoryHotAddEnabled=True)

            async def hot():
                (moid,) = session.by_uid[uid]
                return session.vms[moid].cpu_hot_add and session.vms[moid].memory_hot_add
            await async_wait_until(hot, timeout=20, message="hot-add to be seen",
                                   seen=lambda: [vars_of(session.vms[m]) for m in session.by_uid[uid]])
            await driver.reconfigure(uid, vcpus=4, memory_mib=2048)  # grows hot
            info = await driver.get_vm(uid)
            assert (info.power, info.vcpus, info.memory_mib) == (PowerState.ON, 4, 2048)
            assert await driver.hardware(uid) == (4, 2048)
            with pytest.raises(PowerCycleRequired):
                await driver.reconfigure(uid, vcpus=2, memory_mib=2048)  # never shrinks hot

            await driver.power_off(uid)
            await driver.reconfigure(uid, vcpus=1, memory_mib=512)
            info = await driver.get_vm(uid)
            assert (info.power, info.vcpus, info.memory_mib) == (PowerState.OFF, 1, 512)
        finally:
            await session.close()
    run(body())


def test_a_simulated_guest_boots_reports_and_shuts_down_through_the_driver_alone():
    """vcsim with its simulated guest (tests/vcsim/main.go ``-guest``): after a power-on
    its tools run, it reports an address and, having bootstrap data, that it
    bootstrapped; the driver sees all of it through its watcher, clears the data, and
    shuts the guest down softly, which drops the address. Nothing is played from outside."""
    request = replace(req(), bootstrap=BootstrapPayload(BootstrapFormat.IGNITION, IGNITION))
    uid = request.vm_uid
    with Vcsim(mode="esx", guest_boot_s=0.2) as vcsim:
        vcsim.make_image("ubuntu", nic=True)

        async def body():
            session, drivers = await open_esxi(vcsim.config())
            try:
                (driver,) = drivers.values()
                notified: list[str] = []
                driver.watch(notified.append)
                await driver.create_vm(request)
                await driver.power_on(uid)

                async def up():
                    info = await driver.get_vm(uid)
                    return info if info.bootstrapped and info.addresses else None
                info = await async_wait_until(up, timeout=20, message="the guest to report",
                                              seen=lambda: driver.get_vm(uid))
                assert info.addresses[0].ip.startswith("10.77.") and info.addresses[0].network == "VM Network"
                assert info.bootstrap_present and uid in notified
                await driver.clear_bootstrap(uid)
                assert not (await driver.get_vm(uid)).bootstrap_present

                await driver.shutdown_guest(uid)

                async def down():
                    info = await driver.get_vm(uid)
                    return info if info.power is PowerState.OFF and not info.addresses else None
                off = await async_wait_until(down, timeout=20, message="the guest to shut down",
                                             seen=lambda: driver.get_vm(uid))
                assert off.bootstrapped and not off.bootstrap_present
            finally:
                await session.close()
        run(body())
        assert not set(guestinfo.CLEARED_KEYS) & set(vcsim.extra_config(uid))
