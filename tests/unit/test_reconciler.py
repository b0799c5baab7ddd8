"""The agent's per-VM reconcile against the real sim driver; status and removal
sinks are recorded instead of written (their etcd side is tested elsewhere)."""

from __future__ import annotations

import asyncio

import pytest

from agents.drivers.protocol import CapacityExceeded, HostCapacity, HostUnavailable, PowerState, VmRequest
from agents.drivers.sim import SimHypervisor
from agents.reconciler import Reconciler
from controlplane.models import Binding, Resources, VmRef, VmSpec, VmState, now_ns
from controlplane.store.hostagent import BoundVm

HOST = "h-00000"


class StatusRecorder:
    """Stands in for StatusWriter: keeps (ref, state, reason) of each submitted status."""

    def __init__(self):
        self.statuses: list[tuple[VmRef, VmState, str]] = []

    def submit(self, update) -> None:
        self.statuses.append((update.ref, update.status.state, update.status.reason))

    def discard(self, host, ref) -> None:
        pass


class RemoverRecorder:
    """Stands in for Remover: keeps the refs handed over for removal."""

    def __init__(self):
        self.removed: list[VmRef] = []

    def submit(self, host, vm) -> None:
        self.removed.append(vm.ref)


def bound(vm_id: str, *, deleting: bool = False) -> BoundVm:
    spec = VmSpec(VmRef("t", "p", vm_id), uid=f"uid-{vm_id}", flavor="small", image="ubuntu",
                  resources=Resources(1, 1024, 10), create_time_ns=now_ns(),
                  delete_time_ns=now_ns() if deleting else 0)
    return BoundVm(Binding(spec, HOST), create_revision=10, mod_revision=10)


def setup():
    hypervisor = SimHypervisor(None)
    host = hypervisor.add_host(HOST, HostCapacity(vcpus=2, memory_mib=4096, disk_gib=100))
    statuses, remover = StatusRecorder(), RemoverRecorder()
    return host, statuses, remover, Reconciler({HOST: host}, statuses, remover)


def test_creates_powers_on_and_reports_each_state_once():
    async def main():
        host, statuses, _, reconciler = setup()
        vm = bound("a")
        key = (HOST, vm.ref)
        reconciler.desired[key] = vm
        await reconciler.reconcile(key)
        await reconciler.reconcile(key)  # idempotent: nothing new to do or say
        assert statuses.statuses == [(vm.ref, VmState.CREATING, ""), (vm.ref, VmState.RUNNING, "")]
        assert await host.get_vm("uid-a") == (await host.list_vms())[0]
        assert (await host.get_vm("uid-a")).power is PowerState.ON

    asyncio.run(main())


def test_adopts_a_vm_the_host_already_has():
    async def main():
        host, statuses, _, reconciler = setup()
        vm = bound("a")
        await host.create_vm(VmRequest("uid-a", vm.ref.name, "ubuntu", 1, 1024, 10))
        key = (HOST, vm.ref)
        reconciler.desired[key] = vm
        await reconciler.reconcile(key)
        assert statuses.statuses == [(vm.ref, VmState.RUNNING, "")]  # no CREATING: nothing was created
        assert len(await host.list_vms()) == 1

    asyncio.run(main())


@pytest.mark.parametrize("fault, raises, final", [
    (HostUnavailable("host down"), True, None),                       # transient: the caller retries
    (CapacityExceeded("no room"), False, (VmState.ERROR, "CapacityExceeded")),  # permanent: ERROR
])
def test_driver_faults(fault, raises, final):
    async def main():
        host, statuses, _, reconciler = setup()
        host.inject_fault("create", fault)
        vm = bound("a")
        key = (HOST, vm.ref)
        reconciler.desired[key] = vm
        if raises:
            with pytest.raises(type(fault)):
                await reconciler.reconcile(key)
            await reconciler.reconcile(key)  # the retry succeeds
            assert statuses.statuses[-1][1] == VmState.RUNNING
        else:
            await reconciler.reconcile(key)
            assert statuses.statuses[-1][1:] == final
            assert await host.list_vms() == []

    asyncio.run(main())


def test_deletion_destroys_then_hands_over_removal():
    async def main():
        host, statuses, remover, reconciler = setup()
        vm = bound("a")
        key = (HOST, vm.ref)
        reconciler.desired[key] = vm
        await reconciler.reconcile(key)
        reconciler.desired[key] = bound("a", deleting=True)
        await reconciler.reconcile(key)
        assert await host.list_vms() == [] and remover.removed == [vm.ref]
        del reconciler.desired[key]
        await reconciler.reconcile(key)  # binding gone: nothing to do
        assert remover.removed == [vm.ref]

    asyncio.run(main())
