"""``--wait``: follow a resource until an asynchronous operation is done, showing
its progress, and say clearly what was last seen when time runs out.

:func:`follow_vm` is pure (a VM's states from a watch's events);
:func:`wait_for_vm` and :func:`wait_for_drain` drive the SDK and a progress line.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator

from controlplane.gen.quanta.v1 import common_pb2, host_pb2, vm_pb2
from quanta.cli.errors import WaitTimeout
from quanta.cli.output import ProgressLine, plural, short_name
from quanta.cli.views import host_state, vm_reason, vm_state
from quanta.client import Client


def follow_vm(events: Iterable[vm_pb2.VmEvent], name: str) -> Iterator[vm_pb2.Vm | None]:
    """The VM ``name`` as a watch from resource_version 0 shows it: its state when
    first listed, then each change; None when it is gone (deleted, or absent from
    the initial listing, which ends with the first bookmark), after which it ends."""
    seen = listed = False
    for event in events:
        if event.type == common_pb2.BOOKMARK:
            if not listed and not seen:
                yield None
                return
            listed = True
        elif event.vm.name == name:
            if event.type == common_pb2.DELETED:
                yield None
                return
            seen = True
            yield event.vm


def status_line(name: str, vm: vm_pb2.Vm) -> str:
    """``vms/web-1: PENDING (NoHostFits: 0/11 hosts fit: ...)``: what a progress line shows."""
    reason = vm_reason(vm)
    return f"{short_name(name)}: {vm_state(vm)}" + (f" ({reason})" if reason else "")


def wait_for_vm(client: Client, vm: vm_pb2.Vm, done: Callable[[vm_pb2.Vm], bool], *, goal: str,
                timeout_s: float, progress: ProgressLine) -> vm_pb2.Vm | None:
    """Watch ``vm`` until ``done(vm)`` holds or the VM is gone; return it then (None:
    gone). ``goal`` names the operation for the timeout message ("the creation").
    Raises WaitTimeout after ``timeout_s`` with the state and condition last seen."""
    name, last = vm.name, vm
    progress.update(status_line(name, last))
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        # A watch ends quietly at its deadline; one that ends earlier is opened again.
        for state in follow_vm(client.watch_vms(timeout=left), name):
            if state is None:
                return None
            progress.update(status_line(name, state))
            if done(state):
                return state
            last = state
    reason = vm_reason(last)
    raise WaitTimeout(f"{short_name(name)} is still {vm_state(last)} after {timeout_s:g} s"
                      + (f": {reason}" if reason else "") + f"; {goal} goes on")


def drain_line(host: host_pb2.Host) -> str:
    return f"{host.name}: {plural(host.vm_count, 'VM')} left"


def wait_for_drain(client: Client, host_id: str, *, timeout_s: float, progress: ProgressLine) -> host_pb2.Host:
    """Follow a draining host until it holds no VMs, as a bar of the VMs moved off."""
    first: list[host_pb2.Host] = []
    last: list[host_pb2.Host] = []

    def show(host: host_pb2.Host) -> None:
        if not first:
            first.append(host)
        last[:] = [host]
        total = max(first[0].vm_count, host.vm_count)
        progress.update(drain_line(host), completed=total - host.vm_count, total=total)

    try:
        return client.wait_for_host_drained(host_id, timeout_s=timeout_s, on_progress=show)
    except TimeoutError:
        host = last[0]
        raise WaitTimeout(f"{host.name} still holds {plural(host.vm_count, 'VM')} after {timeout_s:g} s "
                          f"({host_state(host)}); the drain goes on") from None
