"""The HostDriver contract for NICs and persistent disks, run against every driver
with the fixtures of test_driver_contract.py: ``sim`` and ``esxi`` on vcsim (skipped
until the esxi driver has them).

A backend here also knows two network backings its host reaches (``backings``), a
datastore class it reaches (``datastore_class``) and how to open a second host that
shares the first one's datastore (``other_driver``: on sim, another hypervisor,
i.e. another agent process, on the same datastore directory), so a disk can be
seen to follow its data from one VM to another.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator

import pytest

from agents.drivers.protocol import (
    DiskRequest,
    HostCapacity,
    HostDriver,
    NicRequest,
    OperationFailed,
    PowerState,
    VmNotFound,
    VmRequest,
)
from agents.drivers.sim import SimHypervisor, read_journal
from agents.drivers.sim_datastore import SimDatastore
from controlplane.models import DEFAULT_DATASTORE_CLASS, datastore_label
from tests.system.test_driver_contract import (  # noqa: F401 - vcsims is a fixture used through backend
    SIM_IMAGES,
    VcsimBackend,
    _until,
    req,
    run,
    uids,
    vcsims,
)

pytestmark = pytest.mark.system

STATIC_IP = "192.168.50.10"


class SimNicsDisksBackend:
    backings = ("VM Network", "cp")
    datastore_class = DEFAULT_DATASTORE_CLASS

    def __init__(self, base: str):
        self.base = base
        self.datastore_dir = f"{base}/datastore"

    def _host(self, hypervisor: SimHypervisor, host_id: str) -> HostDriver:
        labels = {datastore_label(self.datastore_class): "true"}
        return hypervisor.add_host(host_id, HostCapacity(512, 1 << 20, 100_000, labels, frozenset(self.backings)))

    @contextlib.asynccontextmanager
    async def driver(self) -> AsyncIterator[HostDriver]:
        hypervisor = SimHypervisor(f"{self.base}/sim", images=SIM_IMAGES,
                                   datastore=SimDatastore(self.datastore_dir))
        try:
            yield self._host(hypervisor, "sim-0")
        finally:
            hypervisor.close()

    @contextlib.asynccontextmanager
    async def other_driver(self) -> AsyncIterator[HostDriver]:
        """Another agent process's host on the same datastore."""
        hypervisor = SimHypervisor(f"{self.base}/sim1", images=SIM_IMAGES, network="10.81.0.0/16",
                                   datastore=SimDatastore(self.datastore_dir))
        try:
            yield self._host(hypervisor, "sim1-0")
        finally:
            hypervisor.close()

    def journal_ops(self, op: str) -> list[dict]:
        return [r for d in ("sim", "sim1") for r in read_journal(f"{self.base}/{d}") if r["op"] == op]


class VcsimNicsDisksBackend:
    """To be filled in by the esxi driver's branch (port groups of vcsim's host)."""

    backings = ("VM Network", "DC0_DVPG0")
    datastore_class = DEFAULT_DATASTORE_CLASS

    def __init__(self, inner: VcsimBackend):
        self.inner = inner

    def driver(self):
        return self.inner.driver()

    def other_driver(self):
        return self.inner.driver()

    def journal_ops(self, op: str) -> list[dict]:
        return []


@pytest.fixture(params=["sim", pytest.param("vcsim", marks=pytest.mark.skip(reason="esxi NICs/disks: branch esxi"))])
def backend(request, tmp_path):
    if request.param == "sim":
        return SimNicsDisksBackend(str(tmp_path))
    return VcsimNicsDisksBackend(VcsimBackend(*request.getfixturevalue("vcsims")))


def disk(size_gib: int = 1, datastore_class: str = DEFAULT_DATASTORE_CLASS) -> DiskRequest:
    return DiskRequest(uuid.uuid4().hex[:12], size_gib, datastore_class)


def nic_req(backend, uid: str) -> VmRequest:
    dhcp, static = backend.backings
    base = req(uid)
    return VmRequest(base.vm_uid, base.name, base.image, base.vcpus, base.memory_mib, base.disk_gib,
                     nics=(NicRequest(dhcp), NicRequest(static, STATIC_IP, 24, "192.168.50.1", ("192.168.50.2",))))


def test_create_with_two_nics_reports_them_in_order_and_the_static_address(backend):
    async def body():
        (uid,) = uids()
        async with backend.driver() as driver:
            made = await driver.create_vm(nic_req(backend, uid))
            assert made.networks == backend.backings
            again = await driver.create_vm(nic_req(backend, uid))  # idempotent
            assert again.networks == backend.backings
            assert len([i for i in await driver.list_vms() if i.vm_uid == uid]) == 1
            await driver.power_on(uid)
            info = await _until(driver, uid, lambda i: len(i.addresses) == 2, "an address on each NIC")
            by_network = {a.network: a for a in info.addresses}
            assert by_network[backend.backings[1]].ip == STATIC_IP
            dhcp = by_network[backend.backings[0]].ip
            assert dhcp and dhcp != STATIC_IP
            assert len({a.mac for a in info.addresses}) == 2
        async with backend.driver() as driver:  # a restarted agent sees the same
            info = await _until(driver, uid, lambda i: len(i.addresses) == 2, "both addresses after a restart")
            assert info.networks == backend.backings
            assert {a.ip for a in info.addresses} == {dhcp, STATIC_IP}
            await driver.destroy_vm(uid)

    run(body())


def test_a_vm_without_nics_gets_one_on_the_default_network(backend):
    async def body():
        (uid,) = uids()
        async with backend.driver() as driver:
            made = await driver.create_vm(req(uid))
            assert len(made.networks) == 1
            await driver.destroy_vm(uid)

    run(body())


def test_create_attaches_its_disks(backend):
    async def body():
        (uid,) = uids()
        d1, d2 = disk(), disk(2)
        base = req(uid)
        request = VmRequest(base.vm_uid, base.name, base.image, 1, 512, 10, disks=(d1, d2))
        async with backend.driver() as driver:
            made = await driver.create_vm(request)
            assert made.disks == (d1.uid, d2.uid)
            assert (await driver.create_vm(request)).disks == (d1.uid, d2.uid)  # idempotent
            await driver.destroy_vm(uid)

    run(body())


def test_attach_detach_move_and_delete_a_disk(backend):
    async def body():
        a, b = uids(2)
        d = disk()
        async with backend.driver() as driver, backend.other_driver() as other:
            await driver.create_vm(req(a))
            await driver.power_on(a)
            await driver.attach_disk(a, d)  # hot
            await driver.attach_disk(a, d)  # idempotent
            info = await driver.get_vm(a)
            assert info is not None and info.disks == (d.uid,) and info.power is PowerState.ON
            with pytest.raises(OperationFailed) as in_use:
                await driver.delete_disk(d.uid, d.datastore_class)
            assert in_use.value.reason == "DiskInUse" and not in_use.value.transient
            # Another VM cannot have it while the first does.
            await other.create_vm(req(b))
            with pytest.raises(OperationFailed) as taken:
                await other.attach_disk(b, d)
            assert taken.value.reason == "DiskInUse"
            await driver.detach_disk(a, d.uid)
            await driver.detach_disk(a, d.uid)  # idempotent
            info = await driver.get_vm(a)
            assert info is not None and info.disks == ()
            # The same disk (uid: its data) on a VM of another host sharing the datastore.
            await other.attach_disk(b, d)
            info_b = await other.get_vm(b)
            assert info_b is not None and info_b.disks == (d.uid,)
            # Destroying the VM keeps its disk, detached.
            await other.destroy_vm(b)
            await driver.attach_disk(a, d)
            info = await driver.get_vm(a)
            assert info is not None and info.disks == (d.uid,)
            await driver.destroy_vm(a)
            await driver.delete_disk(d.uid, d.datastore_class)
            await driver.delete_disk(d.uid, d.datastore_class)  # idempotent
        attached = [r["vm_uid"] for r in backend.journal_ops("attach_disk") if r["disk_uid"] == d.uid]
        detached = [r["vm_uid"] for r in backend.journal_ops("detach_disk") if r["disk_uid"] == d.uid]
        if isinstance(backend, SimNicsDisksBackend):  # the sim's journal shows each step once
            assert sorted(attached) == sorted([a, b, a]) and sorted(detached) == sorted([a, b, a])
            assert [r["disk_uid"] for r in backend.journal_ops("delete_disk")] == [d.uid]

    run(body())


def test_disk_calls_on_a_missing_vm(backend):
    async def body():
        (uid,) = uids()
        async with backend.driver() as driver:
            with pytest.raises(VmNotFound):
                await driver.attach_disk(uid, disk())
            await driver.detach_disk(uid, "no-such-disk")  # fine: nothing attached
            await driver.delete_disk(uuid.uuid4().hex[:12], DEFAULT_DATASTORE_CLASS)  # fine: absent

    run(body())


def test_a_datastore_class_the_host_does_not_reach_is_refused(backend):
    async def body():
        (uid,) = uids()
        async with backend.driver() as driver:
            await driver.create_vm(req(uid))
            with pytest.raises(OperationFailed) as unreachable:
                await driver.attach_disk(uid, disk(datastore_class="no-such-class"))
            assert unreachable.value.reason == "DatastoreUnreachable" and not unreachable.value.transient
            await driver.destroy_vm(uid)

    run(body())


def test_attached_disks_outlive_an_agent_restart(backend):
    async def body():
        (uid,) = uids()
        d = disk()
        async with backend.driver() as driver:
            await driver.create_vm(req(uid))
            await driver.attach_disk(uid, d)
        async with backend.driver() as driver:
            info = await driver.get_vm(uid)
            assert info is not None and info.disks == (d.uid,)
            await driver.destroy_vm(uid)
            await driver.delete_disk(d.uid, d.datastore_class)

    run(body())
