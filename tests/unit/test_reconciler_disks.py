"""The agent's reconcile of NICs and persistent disks against the real sim driver
(status sinks recorded, attachments in a recorder standing in for DiskKeeper)."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from agents.drivers.protocol import HostCapacity, OperationFailed, PowerState, VmRequest
from agents.drivers.sim import SimHypervisor
from agents.reconciler import Reconciler, disk_request
from controlplane.models import (
    AddressMode,
    Binding,
    DiskRef,
    Nic,
    Resources,
    VmRef,
    VmSpec,
    VmState,
    datastore_label,
    now_ns,
)
from controlplane.store.agentdisks import AttachmentState
from controlplane.store.hostagent import BoundVm
from tests.unit.test_reconciler import RemoverRecorder, StatusRecorder

HOST = "h-00000"
LABELS = {datastore_label("standard"): "true"}
NICS = (Nic("tenants/t/projects/p/networks/cp", "n-cp", "cp", AddressMode.STATIC, "10.9.0.5", 24, "10.9.0.1",
            ("10.9.0.2",)),
        Nic("tenants/t/projects/p/networks/w", "n-w", "workers"))


class Attachments:
    """Stands in for DiskKeeper: the detaching attachments, and those done."""

    def __init__(self, *detaching: AttachmentState):
        self.detaching = list(detaching)
        self.done: list[AttachmentState] = []

    def detaching_of(self, vm_uid: str) -> list[AttachmentState]:
        return [a for a in self.detaching if a.vm_uid == vm_uid]

    async def detach_done(self, attachment: AttachmentState) -> None:
        self.detaching.remove(attachment)
        self.done.append(attachment)


def bound(vm_id: str, disks: tuple[DiskRef, ...] = (), revision: int = 10) -> BoundVm:
    spec = VmSpec(VmRef("t", "p", vm_id), uid=f"uid-{vm_id}", flavor="small", image="ubuntu",
                  resources=Resources(1, 1024, 10), create_time_ns=now_ns(), nics=NICS, disks=disks)
    return BoundVm(Binding(spec, HOST), create_revision=10, mod_revision=revision)


def setup(attachments: Attachments | None = None):
    hypervisor = SimHypervisor(None)
    host = hypervisor.add_host(HOST, HostCapacity(8, 16384, 1000, LABELS, frozenset({"cp", "workers"})))
    statuses = StatusRecorder()
    reconciler = Reconciler({HOST: host}, statuses, RemoverRecorder(), disks=attachments)  # type: ignore[arg-type]
    return host, statuses, reconciler


def test_creates_the_vm_with_its_nics_and_disks():
    async def main():
        host, statuses, reconciler = setup()
        vm = bound("a", (DiskRef("data", "disk-1", 5), DiskRef("logs", "disk-2", 1)))
        key = (HOST, vm.ref)
        reconciler.set_desired(key, vm)
        await reconciler.reconcile(key)
        info = await host.get_vm("uid-a")
        assert info is not None and info.power is PowerState.ON
        assert info.networks == ("cp", "workers") and info.disks == ("disk-1", "disk-2")
        assert {a.network: a.ip for a in info.addresses}["cp"] == "10.9.0.5"
        assert statuses.statuses[-1][1] == VmState.RUNNING

    asyncio.run(main())


def test_a_disk_added_is_attached_hot_and_one_removed_is_detached_then_done():
    async def main():
        data, logs = DiskRef("data", "disk-1", 5), DiskRef("logs", "disk-2", 1)
        attachments = Attachments()
        host, _, reconciler = setup(attachments)
        vm = bound("a", (data,))
        key = (HOST, vm.ref)
        reconciler.set_desired(key, vm)
        await reconciler.reconcile(key)
        # AttachDisk: the spec lists one more.
        reconciler.set_desired(key, bound("a", (data, logs), revision=11))
        await reconciler.reconcile(key)
        info = await host.get_vm("uid-a")
        assert info is not None and info.disks == ("disk-1", "disk-2") and info.power is PowerState.ON
        # DetachDisk of "data": gone from the spec, its attachment marked detaching (and
        # one of another VM, and one of a disk this VM still lists, left alone).
        mine = AttachmentState("t", "p", "data", "uid-a", True, 12)
        still_listed = AttachmentState("t", "p", "logs", "uid-a", True, 12)
        other = AttachmentState("t", "p", "x", "uid-b", True, 12)
        attachments.detaching += [mine, still_listed, other]
        reconciler.set_desired(key, bound("a", (logs,), revision=12))
        await reconciler.reconcile(key)
        info = await host.get_vm("uid-a")
        assert info is not None and info.disks == ("disk-2",)
        assert attachments.done == [mine]
        assert reconciler.applied[key].observed_revision == 12

    asyncio.run(main())


def test_a_disk_another_vm_holds_keeps_the_vm_reconciling_until_it_is_let_go():
    async def main():
        host, _, reconciler = setup(Attachments())
        holder = await host.create_vm(VmRequest("uid-holder", "tenants/t/projects/p/vms/holder", "ubuntu", 1, 512, 10))
        data = DiskRef("data", "disk-1", 5)
        await host.attach_disk(holder.vm_uid, disk_request(data))
        vm = bound("a", (data,))
        key = (HOST, vm.ref)
        reconciler.set_desired(key, vm)
        with pytest.raises(OperationFailed) as in_use:
            await reconciler.reconcile(key)
        assert in_use.value.reason == "DiskInUse" and in_use.value.transient
        assert reconciler.applied[key].observed_revision == 0  # not made true yet
        assert await host.get_vm("uid-a") is None  # not made without its disk (the create refused it)
        await host.detach_disk(holder.vm_uid, "disk-1")
        await reconciler.reconcile(key)  # the retry
        info = await host.get_vm("uid-a")
        assert info is not None and info.disks == ("disk-1",) and info.power is PowerState.ON
        assert reconciler.applied[key].observed_revision == 10

    asyncio.run(main())


def test_eviction_destroys_the_vm_but_keeps_its_disks():
    async def main():
        host, _, reconciler = setup(Attachments())
        data = DiskRef("data", "disk-1", 5)
        vm = bound("a", (data,))
        key = (HOST, vm.ref)
        reconciler.set_desired(key, vm)
        await reconciler.reconcile(key)
        reconciler.set_desired(key, replace(vm, binding=replace(vm.binding, evict_reason="HostDrained")))
        await reconciler.reconcile(key)
        assert await host.get_vm("uid-a") is None
        kept = host._hv.datastore.get("disk-1")
        assert kept is not None and kept.vm_uid == ""

    asyncio.run(main())

