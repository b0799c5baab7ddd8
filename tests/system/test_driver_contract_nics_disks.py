"""The HostDriver contract for NICs and persistent disks, run against every driver:
``sim`` and ``esxi`` on vcsim (a simulator of its own, started once per module).

A backend here also knows two network backings its host reaches (``backings``), a
datastore class it reaches (``datastore_class``) and how to open a second host that
shares the first one's datastore (``other_driver``: on sim, another hypervisor,
i.e. another agent process, on the same datastore directory; on vcsim, the second
host of the same vCenter), so a disk can be seen to follow its data from one VM to
another. It also reads a disk from the datastore's side, not through a driver
(``disk_exists``, ``holders``: the VMs that have it attached).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from agents.drivers.esxi.session import disk_path
from agents.drivers.factory import esxi_drivers
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
from tests.system.test_driver_contract import GUEST_S, SIM_IMAGES, _until, req, run, uids
from tests.vcsim import Vcsim

pytestmark = pytest.mark.system

STATIC_IP = "192.168.50.10"
#: The MACs the control plane chose for the two NICs (Nic.mac): the VM's NICs must have them.
MACS = ("00:50:56:1a:2b:3c", "00:50:56:3f:00:01")


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

    def disk_exists(self, d: DiskRequest) -> bool:
        """Read from the datastore directory afresh (not through a driver)."""
        return SimDatastore(self.datastore_dir).get(d.uid) is not None

    def holders(self, d: DiskRequest) -> list[str]:
        """The uids of the VMs the datastore says have the disk attached."""
        found = SimDatastore(self.datastore_dir).get(d.uid)
        return [found.vm_uid] if found is not None and found.vm_uid else []


class VcsimNicsDisksBackend:
    """The esxi driver on a vCenter simulator of two standalone hosts, DC0_H0 and
    DC0_H1, that both mount its two datastores (vcsim's ``-ds``: every datastore on
    every host). Datastore class "standard" is LocalDS_0 on both, so a disk moves
    between the hosts as on a shared SAN or vSAN datastore: ``other_driver`` is the
    second host's (a session of its own, as another agent's). Both reach "VM Network"
    and the standard port group "cp".

    Each host makes its VMs on a datastore of its own (H0: LocalDS_0, H1: LocalDS_1),
    from an image on that host: vcsim's CloneVM puts a clone on its source's host
    whatever the clone spec says, so H1's image is the copy an agent of H1 would have
    made (``quanta-image-ubuntu@LocalDS_1``, found by name), made on H1 beforehand."""

    backings = ("VM Network", "cp")
    datastore_class = DEFAULT_DATASTORE_CLASS
    datastore = "LocalDS_0"
    hosts = (("DC0_H0", "LocalDS_0"), ("DC0_H1", "LocalDS_1"))

    def __init__(self, vcsim: Vcsim):
        self.vcsim = vcsim

    @contextlib.asynccontextmanager
    async def _driver(self, host: str, vm_datastore: str) -> AsyncIterator[HostDriver]:
        config = self.vcsim.config(hosts=(host,), datastore=vm_datastore,
                                   datastore_classes=((self.datastore_class, self.datastore),))
        async with esxi_drivers(config) as drivers:
            (driver,) = drivers.values()
            yield driver

    def driver(self):
        return self._driver(*self.hosts[0])

    def other_driver(self):
        return self._driver(*self.hosts[1])

    def disk_exists(self, d: DiskRequest) -> bool:
        """Asked of vcsim afresh (not through a driver)."""
        return self.vcsim.disk_exists(disk_path(self.datastore, d.uid))

    def holders(self, d: DiskRequest) -> list[str]:
        """The uids of the VMs that have the disk's VMDK among their devices, read afresh."""
        return self.vcsim.disk_holders(disk_path(self.datastore, d.uid))


@pytest.fixture(scope="module")
def nics_vcsim():
    """One simulator per module (vcsim crashes on some bad input: a fresh one per module)."""
    with Vcsim(mode="vpx", hosts=2, datastores=2, guest_boot_s=GUEST_S, port_groups=("cp",)) as vcsim:
        for i, (host, datastore) in enumerate(VcsimNicsDisksBackend.hosts):
            vcsim.make_image("ubuntu" if i == 0 else f"ubuntu@{datastore}", nic=True, host=host, datastore=datastore)
        yield vcsim


@pytest.fixture(params=["sim", "vcsim"])
def backend(request, tmp_path):
    if request.param == "sim":
        return SimNicsDisksBackend(str(tmp_path))
    return VcsimNicsDisksBackend(request.getfixturevalue("nics_vcsim"))


def disk(size_gib: int = 1, datastore_class: str = DEFAULT_DATASTORE_CLASS) -> DiskRequest:
    return DiskRequest(uuid.uuid4().hex[:12], size_gib, datastore_class)


def nic_req(backend, uid: str) -> VmRequest:
    dhcp, static = backend.backings
    base = req(uid)
    return VmRequest(base.vm_uid, base.name, base.image, base.vcpus, base.memory_mib, base.disk_gib,
                     nics=(NicRequest(dhcp, mac=MACS[0]),
                           NicRequest(static, STATIC_IP, 24, "192.168.50.1", ("192.168.50.2",), mac=MACS[1])))


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
            # Each NIC has the MAC its request gave it (the one claimed on its backing).
            assert {a.network: a.mac.lower() for a in info.addresses} == dict(zip(backend.backings, MACS, strict=True))
        async with backend.driver() as driver:  # a restarted agent sees the same
            info = await _until(driver, uid, lambda i: len(i.addresses) == 2, "both addresses after a restart")
            assert info.networks == backend.backings
            assert {a.ip for a in info.addresses} == {dhcp, STATIC_IP}
            assert {a.mac.lower() for a in info.addresses} == set(MACS)
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
    """Each step is also read from the datastore's side, not through a driver: the
    sim's disk files; on vcsim, the VMs' devices and the VMDK, through pyvmomi."""
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
            assert backend.holders(d) == [a] and backend.disk_exists(d)
            with pytest.raises(OperationFailed) as in_use:
                await driver.delete_disk(d.uid, d.datastore_class)
            assert in_use.value.reason == "DiskInUse" and not in_use.value.transient
            # Another VM cannot have it while the first does.
            await other.create_vm(req(b))
            with pytest.raises(OperationFailed) as taken:
                await other.attach_disk(b, d)
            assert taken.value.reason == "DiskInUse"
            (c,) = uids()
            with pytest.raises(OperationFailed) as taken:
                await other.create_vm(replace(req(c), disks=(d,)))
            assert taken.value.reason == "DiskInUse" and await other.get_vm(c) is None
            assert backend.holders(d) == [a]
            await driver.detach_disk(a, d.uid)
            await driver.detach_disk(a, d.uid)  # idempotent
            info = await driver.get_vm(a)
            assert info is not None and info.disks == ()
            assert backend.holders(d) == [] and backend.disk_exists(d)  # detached, kept
            # The same disk (uid: its data) on a VM of another host sharing the datastore.
            await other.attach_disk(b, d)
            info_b = await other.get_vm(b)
            assert info_b is not None and info_b.disks == (d.uid,)
            assert backend.holders(d) == [b]
            # Destroying the VM keeps its disk, detached.
            await other.destroy_vm(b)
            assert backend.holders(d) == [] and backend.disk_exists(d)
            await driver.attach_disk(a, d)
            info = await driver.get_vm(a)
            assert info is not None and info.disks == (d.uid,)
            assert backend.holders(d) == [a]
            await driver.destroy_vm(a)
            assert backend.disk_exists(d)
            await driver.delete_disk(d.uid, d.datastore_class)
            assert not backend.disk_exists(d)
            await driver.delete_disk(d.uid, d.datastore_class)  # idempotent
        if isinstance(backend, SimNicsDisksBackend):  # the sim's journal shows each step once
            attached = [r["vm_uid"] for r in backend.journal_ops("attach_disk") if r["disk_uid"] == d.uid]
            detached = [r["vm_uid"] for r in backend.journal_ops("detach_disk") if r["disk_uid"] == d.uid]
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
            # A create whose disk cannot be had fails and leaves no VM.
            with pytest.raises(OperationFailed) as unreachable:
                await driver.create_vm(replace(req(uid), disks=(disk(datastore_class="no-such-class"),)))
            assert unreachable.value.reason == "DatastoreUnreachable" and not unreachable.value.transient
            assert await driver.get_vm(uid) is None

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
