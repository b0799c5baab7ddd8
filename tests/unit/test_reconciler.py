"""The agent's per-VM reconcile against the real sim driver; status and removal
sinks are recorded instead of written (their etcd side is tested elsewhere)."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from agents.drivers.protocol import (
    CapacityExceeded,
    HostCapacity,
    HostUnavailable,
    OperationFailed,
    PowerState,
    VmInfo,
    VmRequest,
)
from agents.drivers.sim import SimHypervisor
from agents.reconciler import Reconciler, _disk_growth
from controlplane.models import (
    Binding,
    Condition,
    Power,
    PowerOffMode,
    Resources,
    VmRef,
    VmSpec,
    VmState,
    VmStatus,
    now_ns,
)
from controlplane.store.hostagent import BoundVm
from controlplane.store.orphans import spec_record

HOST = "h-00000"


class StatusRecorder:
    """Stands in for StatusWriter: keeps (ref, state, reason) of each submitted status."""

    def __init__(self):
        self.statuses: list[tuple[VmRef, VmState, str]] = []

    def submit(self, update) -> None:
        self.statuses.append((update.ref, update.status.state, update.status.reason))

    async def write(self, update) -> bool:
        self.submit(update)
        return True

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


def _conditions(update) -> dict[str, tuple[str, str]]:
    return {c.type: (c.status, c.reason) for c in update.status.conditions}


class FullRecorder(StatusRecorder):
    def __init__(self):
        super().__init__()
        self.updates: list = []

    def submit(self, update) -> None:
        super().submit(update)
        self.updates.append(update)


def setup_full():
    hypervisor = SimHypervisor(None)
    host = hypervisor.add_host(HOST, HostCapacity(vcpus=8, memory_mib=16384, disk_gib=100))
    statuses = FullRecorder()
    return host, statuses, Reconciler({HOST: host}, statuses, RemoverRecorder())


def with_spec(vm: BoundVm, **fields) -> BoundVm:
    return BoundVm(Binding(replace(vm.binding.spec, **fields), HOST), vm.create_revision, vm.mod_revision + 1)


def test_power_requests_are_applied_once_and_conditions_say_why():
    async def main():
        host, statuses, reconciler = setup_full()
        vm = bound("a")
        key = (HOST, vm.ref)
        reconciler.desired[key] = vm
        await reconciler.reconcile(key)
        assert statuses.updates[-1].status.state == VmState.RUNNING
        assert _conditions(statuses.updates[-1])["AddressAssigned"] == ("True", "AddressReported")
        assert statuses.updates[-1].status.addresses[0].ip
        # A hard stop.
        reconciler.desired[key] = vm = with_spec(vm, power=Power.OFF, power_off_mode=PowerOffMode.HARD,
                                                 power_time_ns=now_ns())
        await reconciler.reconcile(key)
        last = statuses.updates[-1]
        assert last.status.state == VmState.STOPPED and _conditions(last)["Stopped"] == ("True", "StoppedByRequest")
        assert last.status.power_time_ns == vm.binding.spec.power_time_ns and not last.status.addresses
        # A start, then a stop outside Quanta: left off (KEEP_STOPPED), reported so.
        reconciler.desired[key] = vm = with_spec(vm, power=Power.ON, power_time_ns=now_ns() + 1)
        await reconciler.reconcile(key)
        assert (await host.get_vm("uid-a")).power is PowerState.ON
        host.stop_outside("uid-a")
        await reconciler.reconcile(key)
        assert _conditions(statuses.updates[-1])["Stopped"] == ("True", "StoppedOutsideQuanta")
        assert (await host.get_vm("uid-a")).power is PowerState.OFF
        # A restart powers it on, once.
        reconciler.desired[key] = vm = with_spec(vm, restarts=1, power_time_ns=now_ns() + 2)
        for _ in range(2):
            await reconciler.reconcile(key)
        assert statuses.updates[-1].status.restarts == 1 and statuses.updates[-1].status.state == VmState.RUNNING
        assert (await host.get_vm("uid-a")).power is PowerState.ON

    asyncio.run(main())


def test_a_vm_created_off_and_a_new_vm_of_a_reused_name():
    async def main():
        host, statuses, reconciler = setup_full()
        vm = bound("a")
        vm = with_spec(vm, power=Power.OFF)
        key = (HOST, vm.ref)
        reconciler.desired[key] = vm
        await reconciler.reconcile(key)
        assert _conditions(statuses.updates[-1])["Stopped"] == ("True", "CreatedStopped")
        assert (await host.get_vm("uid-a")).power is PowerState.OFF
        # The name deleted and made again (a new uid): nothing applied to the old one carries over.
        reconciler.desired[key] = with_spec(vm, uid="uid-b", power=Power.ON)
        await reconciler.reconcile(key)
        assert (await host.get_vm("uid-b")).power is PowerState.ON
        assert reconciler.applied[key].uid == "uid-b"

    asyncio.run(main())


class StatusStore:
    """Stands in for AgentStore's reads: the status a crashed agent left (nothing else)."""

    def __init__(self, status):
        self.status = status

    async def read_status(self, ref):
        return self.status


def _cycle(update) -> tuple[str, str] | None:
    return _conditions(update).get("PowerCycle")


def test_a_restart_is_on_record_before_the_power_off_and_cleared_after():
    async def main():
        host, statuses, reconciler = setup_full()
        vm = bound("a")
        key = (HOST, vm.ref)
        reconciler.desired[key] = vm
        await reconciler.reconcile(key)
        reconciler.desired[key] = vm = with_spec(vm, restarts=1, power_time_ns=now_ns(),
                                                 power_off_mode=PowerOffMode.HARD)
        before = len(statuses.updates)
        await reconciler.reconcile(key)
        intent, off, done = statuses.updates[before:]
        assert (intent.status.state, _cycle(intent), intent.status.restarts) == (VmState.RUNNING,
                                                                               ("True", "Restart"), 1)
        assert (off.status.state, _cycle(off), off.status.restarts) == (VmState.STOPPED, ("True", "Restart"), 1)
        assert "Stopped" not in _conditions(off)  # off within the cycle, not stopped
        assert done.status.state == VmState.RUNNING and _cycle(done) is None and done.status.restarts == 1

    asyncio.run(main())


def _left(vm: BoundVm, state: VmState, cycle: str, restarts: int):
    """The status an agent killed within a power cycle left."""
    return VmStatus(state, host=HOST, restarts=restarts, power_time_ns=vm.binding.spec.power_time_ns,
                    conditions=(Condition("PowerCycle", "True", cycle, "", now_ns()),))


@pytest.mark.parametrize("left_state, power, powered", [
    # Killed before the power-off: the restart is done now (off, then on).
    (VmState.RUNNING, PowerState.ON, ["power_off", "power_on"]),
    # Killed after the power-off, before its record: powered on only.
    (VmState.RUNNING, PowerState.OFF, ["power_on"]),
    # Killed between the power-off (on record) and the power-on: powered on only.
    (VmState.STOPPED, PowerState.OFF, ["power_on"]),
    # Killed after the power-on, before the clearing status: nothing done again.
    (VmState.STOPPED, PowerState.ON, []),
])
def test_an_agent_that_restarts_finishes_a_restart_once(left_state, power, powered):
    async def main():
        hypervisor = SimHypervisor(None)
        host = hypervisor.add_host(HOST, HostCapacity(vcpus=8, memory_mib=16384, disk_gib=100))
        vm = with_spec(bound("a"), restarts=1, power_time_ns=now_ns(), power_off_mode=PowerOffMode.HARD)
        spec = vm.binding.spec
        await host.create_vm(VmRequest(spec.uid, spec.ref.name, spec.image, 1, 1024, 10))
        if power is PowerState.ON:
            await host.power_on(spec.uid)
        calls: list[str] = []
        for op in ("power_on", "power_off"):
            real = getattr(host, op)

            async def spy(uid, op=op, real=real):
                calls.append(op)
                await real(uid)

            setattr(host, op, spy)
        statuses = FullRecorder()
        reconciler = Reconciler({HOST: host}, statuses, RemoverRecorder(),
                                store=StatusStore(_left(vm, left_state, "Restart", 1)))
        key = (HOST, vm.ref)
        reconciler.desired[key] = vm
        await reconciler.reconcile(key)
        assert calls == powered
        last = statuses.updates[-1]
        assert (last.status.state, last.status.restarts, _cycle(last)) == (VmState.RUNNING, 1, None)
        assert (await host.get_vm(spec.uid)).power is PowerState.ON

    asyncio.run(main())


@pytest.mark.parametrize("size", [(2, 2048), (1, 1024)])  # killed before / after the reconfigure
def test_an_agent_that_restarts_finishes_a_resize_power_cycle(size):
    async def main():
        hypervisor = SimHypervisor(None)
        host = hypervisor.add_host(HOST, HostCapacity(vcpus=8, memory_mib=16384, disk_gib=100))
        vm = bound("a")  # 1 vCPU, 1024 MiB: shrunk from 2, 2048
        spec = vm.binding.spec
        await host.create_vm(VmRequest(spec.uid, spec.ref.name, spec.image, *size, 10))  # off, as left
        statuses = FullRecorder()
        reconciler = Reconciler({HOST: host}, statuses, RemoverRecorder(),
                                store=StatusStore(_left(vm, VmState.RUNNING, "Resize", 0)))
        key = (HOST, vm.ref)
        reconciler.desired[key] = vm
        await reconciler.reconcile(key)
        assert (await host.get_vm(spec.uid)).power is PowerState.ON
        assert await host.hardware(spec.uid) == (1, 1024)
        last = statuses.updates[-1]
        assert last.status.state == VmState.RUNNING and _cycle(last) is None and "Stopped" not in _conditions(last)

    asyncio.run(main())


class RefusingRecorder(FullRecorder):
    """A StatusWriter whose awaited writes are refused (the binding changed) while ``refuse``."""

    def __init__(self):
        super().__init__()
        self.refuse = False

    async def write(self, update) -> bool:
        if self.refuse:
            return False
        return await super().write(update)


def test_a_restart_whose_record_is_refused_is_not_taken_as_applied():
    async def main():
        hypervisor = SimHypervisor(None)
        host = hypervisor.add_host(HOST, HostCapacity(vcpus=8, memory_mib=16384, disk_gib=100))
        statuses = RefusingRecorder()
        reconciler = Reconciler({HOST: host}, statuses, RemoverRecorder())
        vm = bound("a")
        key = (HOST, vm.ref)
        reconciler.desired[key] = vm
        await reconciler.reconcile(key)
        before = (reconciler.applied[key].restarts, reconciler.applied[key].power_time_ns)
        reconciler.desired[key] = vm = with_spec(vm, restarts=1, power_time_ns=now_ns(),
                                                 power_off_mode=PowerOffMode.HARD)
        statuses.refuse = True
        with pytest.raises(OperationFailed):
            await reconciler.reconcile(key)
        assert (reconciler.applied[key].restarts, reconciler.applied[key].power_time_ns) == before
        assert (await host.get_vm("uid-a")).power is PowerState.ON  # not begun
        # The retry (the write accepted now) restarts the VM.
        statuses.refuse = False
        calls: list[str] = []
        for op in ("power_on", "power_off"):
            real = getattr(host, op)

            async def spy(uid, op=op, real=real):
                calls.append(op)
                await real(uid)

            setattr(host, op, spy)
        await reconciler.reconcile(key)
        assert calls == ["power_off", "power_on"]
        last = statuses.updates[-1]
        assert (last.status.state, last.status.restarts, _cycle(last)) == (VmState.RUNNING, 1, None)
        assert last.status.power_time_ns == vm.binding.spec.power_time_ns

    asyncio.run(main())


def test_the_disk_grows_only_as_far_as_a_resize_grew_it():
    """An image disk smaller than the flavor's is left as made (an ESXi linked clone's
    cannot grow); a resize that grew the disk grows it; a disk never shrinks; 0 is unknown."""
    spec = bound("d").binding.spec  # made with 10 GiB
    made = VmInfo(spec.uid, PowerState.ON, record=spec_record(spec))
    grown = replace(spec, resources=Resources(1, 1024, 30))
    assert _disk_growth(spec, replace(made, disk_gib=4)) is None  # the image's disk, as made
    assert _disk_growth(grown, replace(made, disk_gib=4)) == 30  # a resize grew it
    assert _disk_growth(grown, replace(made, disk_gib=10)) == 30
    assert _disk_growth(grown, replace(made, disk_gib=30)) is None  # grown already
    assert _disk_growth(spec, replace(made, disk_gib=30)) is None  # never shrunk
    assert _disk_growth(grown, made) is None  # the driver does not say
    assert _disk_growth(grown, replace(made, disk_gib=4, record="")) == 30  # no record: the binding's


def test_a_disk_growth_alone_is_made_hot():
    host, statuses, remover, reconciler = setup()
    vm = bound("d")
    key = (HOST, vm.ref)
    reconciler.set_desired(key, vm)
    asyncio.run(reconciler.reconcile(key))
    grown = replace(vm.binding.spec, resources=Resources(1, 1024, 30))
    reconciler.set_desired(key, BoundVm(Binding(grown, HOST), create_revision=10, mod_revision=11))
    asyncio.run(reconciler.reconcile(key))
    info = asyncio.run(host.get_vm(grown.uid))
    assert (info.power, info.disk_gib) == (PowerState.ON, 30)
    assert statuses.statuses[-1] == (vm.ref, VmState.RUNNING, "")
    assert reconciler.applied[key].observed_revision == 11 and not reconciler.applied[key].cycle
