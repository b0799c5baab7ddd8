"""When a wait is over: what both clients' waits decide from the events they watch.

Pure: a wait is fed the resource as first read and then each watch event, and says
when it is done; the clients only carry the events (blocking or awaiting).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from controlplane.gen.quanta.v1 import common_pb2, host_pb2, vm_pb2
from quanta.errors import VmSetFailed, WaitTimeout


class VmWait:
    """Waiting for the VM ``name`` to be in ``state`` (a Vm.State name, e.g. "RUNNING";
    ValueError for an unknown one) with its latest desired state made true by its
    agent (not ``reconciling``: a restart or resize asked for is done), and, with
    ``address``, to have at least one address (Vm.addresses, which its guest reports)."""

    def __init__(self, name: str, state: str, *, address: bool = False) -> None:
        self.name = name
        self.state = state
        self.address = address
        self._wanted = vm_pb2.Vm.State.Value(state)
        self.last: vm_pb2.Vm | None = None

    def seen(self, event: vm_pb2.VmEvent) -> vm_pb2.Vm | None:
        """The VM if this event shows it as waited for, else None."""
        if event.vm.name != self.name or event.type == common_pb2.BOOKMARK:
            return None
        self.last = event.vm
        return event.vm if self.done(event.vm) and event.type != common_pb2.DELETED else None

    def done(self, vm: vm_pb2.Vm) -> bool:
        """Whether ``vm`` is as waited for."""
        return (vm.state == self._wanted and not vm.reconciling
                and (not self.address or len(vm.addresses) > 0))

    def goal(self) -> str:
        return self.state + (" with an address" if self.address else "")

    def timed_out(self, timeout: float) -> WaitTimeout:
        now = f"; it is {describe_vm(self.last)}" if self.last is not None else ""
        return WaitTimeout(f"{self.name} not {self.goal()} within {timeout:g}s{now}", self.last)


class VmsWait:
    """Waiting for each of the VMs ``names`` as :class:`VmWait` waits for one (one
    watch for all of them). Counts as it goes: ``placed`` (members with a host),
    ``done`` (as waited for) and ``gone`` (seen DELETED)."""

    def __init__(self, names: Iterable[str], state: str, *, address: bool = False) -> None:
        self.waits = {name: VmWait(name, state, address=address) for name in names}
        self.done: dict[str, vm_pb2.Vm] = {}
        self.gone: set[str] = set()
        self._placed: set[str] = set()

    def seen(self, event: vm_pb2.VmEvent) -> list[vm_pb2.Vm] | None:
        """Every VM (in the order named) once the last of them is as waited for, else None."""
        wait = self.waits.get(event.vm.name)
        if wait is None or event.type == common_pb2.BOOKMARK:
            return None
        if event.type == common_pb2.DELETED:
            self.gone.add(wait.name)
            self._placed.discard(wait.name)
        else:
            self.gone.discard(wait.name)
            if event.vm.host:
                self._placed.add(wait.name)
        if (vm := wait.seen(event)) is not None:
            self.done[wait.name] = vm
        else:
            self.done.pop(wait.name, None)  # it was, and is no longer (e.g. stopped meanwhile)
        return [self.done[name] for name in self.waits] if len(self.done) == len(self.waits) else None

    @property
    def placed(self) -> int:
        """How many of the VMs are (last seen) on a host."""
        return len(self._placed)

    def timed_out(self, timeout: float) -> WaitTimeout:
        waiting = [w for name, w in self.waits.items() if name not in self.done]
        first = waiting[0]
        seen = describe_vm(first.last) if first.last is not None else "not seen"
        more = f" and {len(waiting) - 1} more" if len(waiting) > 1 else ""
        return WaitTimeout(f"{first.name}{more} not {first.goal()} within {timeout:g}s; {first.name} is {seen}",
                           [w.last for w in waiting])


class VmSetWait(VmsWait):
    """Waiting for every member of the VM set ``vm_set`` (as first read) as
    :class:`VmsWait` waits; ``on_progress(wait)`` is called whenever a member
    changes. A member gone means the set FAILED (its deadline passed: the
    members were removed) or someone deleted it: :meth:`failed` says which from
    the set read again."""

    def __init__(self, vm_set: vm_pb2.VmSet, state: str, *, address: bool = False,
                 on_progress: Callable[[VmSetWait], None] | None = None) -> None:
        super().__init__(vm_set.vms, state, address=address)
        self.set = vm_set
        self._on_progress = on_progress
        self._listed = False

    def start(self) -> None:
        """Raise VmSetFailed if the set as first read FAILED already."""
        if self.set.state == vm_pb2.VmSet.FAILED:
            raise self.failed(self.set)
        if self._on_progress is not None:
            self._on_progress(self)

    def seen(self, event: vm_pb2.VmEvent) -> list[vm_pb2.Vm] | None:
        """As :meth:`VmsWait.seen`; a watch from resource_version 0 lists every VM
        before its first bookmark, so a member absent from that listing is gone."""
        if event.type == common_pb2.BOOKMARK and not self._listed:
            self._listed = True
            self.gone |= {name for name, wait in self.waits.items() if wait.last is None}
            return None
        done = super().seen(event)
        if event.vm.name in self.waits and event.type != common_pb2.BOOKMARK and self._on_progress is not None:
            self._on_progress(self)
        return done

    def failed(self, vm_set: vm_pb2.VmSet) -> VmSetFailed:
        """The error for a set whose member is gone, from the set as read since."""
        self.set = vm_set
        if vm_set.state == vm_pb2.VmSet.FAILED:
            return VmSetFailed(f"{vm_set.name} is {describe_set(vm_set)}", vm_set)
        gone = ", ".join(sorted(n.rsplit("/", 1)[-1] for n in self.gone))
        return VmSetFailed(f"{vm_set.name}: member(s) {gone} deleted while waiting; the set is "
                           f"{describe_set(vm_set)}", vm_set, reason="VM_SET_MEMBER_DELETED")

    def timed_out(self, timeout: float, vm_set: vm_pb2.VmSet | None = None) -> WaitTimeout:
        """The timeout, saying the set's state as read again (``vm_set``) when given."""
        base = super().timed_out(timeout)
        if vm_set is None:
            return base
        return WaitTimeout(f"{vm_set.name} is {describe_set(vm_set)}; {base.message}", base.last)


def describe_set(vm_set: vm_pb2.VmSet) -> str:
    """``PENDING (SetDoesNotFit: ...)``, ``PLACED``, ``FAILED (DeadlineExceeded: ...)``:
    a set's state and its condition Placed when it is not True."""
    text = vm_pb2.VmSet.State.Name(vm_set.state)
    reason = next((c for c in vm_set.conditions if c.reason and c.status != "True"), None)
    if reason is None:
        return text
    return text + (f" ({reason.reason}: {reason.message})" if reason.message else f" ({reason.reason})")


def describe_vm(vm: vm_pb2.Vm) -> str:
    """``RUNNING``, ``RUNNING, no address yet``, ``PENDING (NoHostFits: ...)``: a VM's
    state, whether it has an address when running, and the condition that says why."""
    text = vm_pb2.Vm.State.Name(vm.state)
    if vm.state == vm_pb2.Vm.RUNNING and not vm.addresses:
        text += ", no address yet"
    reason = next((c for c in vm.conditions if c.reason and c.status != "True"), None)
    return text + (f" ({reason.reason}: {reason.message})" if reason is not None and reason.message else
                   f" ({reason.reason})" if reason is not None else "")


class DrainWait:
    """Waiting for the host ``name`` to hold no VMs; ``on_progress(host)`` is called
    when the host is first seen and whenever its VM count changes."""

    def __init__(self, name: str, on_progress: Callable[[host_pb2.Host], None] | None = None) -> None:
        self.name = name
        self._on_progress = on_progress
        self.last: host_pb2.Host | None = None

    def start(self, host: host_pb2.Host) -> host_pb2.Host | None:
        """Fed the host as read before watching; the host if it is empty already."""
        self.last = host
        if self._on_progress is not None:
            self._on_progress(host)
        return host if host.vm_count == 0 else None

    def seen(self, event: host_pb2.HostEvent) -> host_pb2.Host | None:
        """The host once empty (a host forgotten meanwhile was empty: its last known
        state, with no VMs), else None."""
        if event.host.name != self.name or event.type == common_pb2.BOOKMARK:
            return None
        if event.type == common_pb2.DELETED:
            gone = host_pb2.Host()
            gone.CopyFrom(self.last if self.last is not None else event.host)
            gone.vm_count = 0
            return gone
        changed = self.last is None or event.host.vm_count != self.last.vm_count
        if changed and self._on_progress is not None:
            self._on_progress(event.host)
        self.last = event.host
        return event.host if event.host.vm_count == 0 else None

    def timed_out(self, timeout: float) -> WaitTimeout:
        count = self.last.vm_count if self.last is not None else 0
        held = "1 VM" if count == 1 else f"{count} VMs"
        return WaitTimeout(f"{self.name} still holds {held} after {timeout:g} s; the drain goes on",
                           self.last, reason="DRAIN_TIMEOUT")
