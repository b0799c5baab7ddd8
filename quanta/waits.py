"""When a wait is over: what both clients' waits decide from the events they watch.

Pure: a wait is fed the resource as first read and then each watch event, and says
when it is done; the clients only carry the events (blocking or awaiting).
"""

from __future__ import annotations

from collections.abc import Callable

from controlplane.gen.quanta.v1 import common_pb2, host_pb2, vm_pb2
from quanta.errors import WaitTimeout


class VmWait:
    """Waiting for the VM ``name`` to be in ``state`` (a Vm.State name, e.g. "RUNNING";
    ValueError for an unknown one)."""

    def __init__(self, name: str, state: str) -> None:
        self.name = name
        self.state = state
        self._wanted = vm_pb2.Vm.State.Value(state)
        self.last: vm_pb2.Vm | None = None

    def seen(self, event: vm_pb2.VmEvent) -> vm_pb2.Vm | None:
        """The VM if this event shows it in the state waited for, else None."""
        if event.vm.name != self.name or event.type == common_pb2.BOOKMARK:
            return None
        self.last = event.vm
        return event.vm if event.vm.state == self._wanted and event.type != common_pb2.DELETED else None

    def timed_out(self, timeout: float) -> WaitTimeout:
        now = f"; it is {vm_pb2.Vm.State.Name(self.last.state)}" if self.last is not None else ""
        return WaitTimeout(f"{self.name} not {self.state} within {timeout:g}s{now}", self.last)


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
