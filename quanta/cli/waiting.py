"""``--wait``: follow a resource until an asynchronous operation is done, showing
its progress, and say clearly what was last seen when time runs out.

:func:`follow_vm` is pure (a VM's states from a watch's events);
:func:`wait_for_vm` and :func:`wait_for_drain` drive the SDK and a progress line.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

from controlplane.gen.quanta.v1 import common_pb2, host_pb2, vm_pb2
from quanta.cli.errors import CliError, WaitTimeout
from quanta.cli.output import ProgressLine, plural, short_name
from quanta.cli.views import host_state, vm_reason, vm_state, waiting_for_address
from quanta.client import Client
from quanta.waits import describe_set


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


def follow_vms(events: Iterable[vm_pb2.VmEvent], names: Iterable[str]) -> Iterator[tuple[str, vm_pb2.Vm | None]]:
    """:func:`follow_vm` for several VMs through one watch from resource_version 0:
    ``(name, vm)`` when first listed and on each change, ``(name, None)`` when it is
    gone (deleted, or absent from the initial listing); other VMs are skipped."""
    wanted = set(names)
    seen: set[str] = set()
    listed = False
    for event in events:
        if event.type == common_pb2.BOOKMARK:
            if not listed:
                listed = True
                for name in sorted(wanted - seen):
                    yield name, None
            continue
        name = event.vm.name
        if name not in wanted:
            continue
        if event.type == common_pb2.DELETED:
            yield name, None
        else:
            seen.add(name)
            yield name, event.vm


#: What the verbs' --wait waits for: pure predicates of the VM as last seen.
def running(vm: vm_pb2.Vm) -> bool:
    """Up and usable: RUNNING, and not waiting for its first address (a VM whose
    guest reports none has no AddressAssigned condition and is done when RUNNING)."""
    return vm.state == vm_pb2.Vm.RUNNING and not waiting_for_address(vm)


def stopped(vm: vm_pb2.Vm) -> bool:
    return vm.state == vm_pb2.Vm.STOPPED


def as_desired(vm: vm_pb2.Vm) -> bool:
    """Its latest desired state made true by its agent (``reconciling`` false: every
    restart done, at its flavor's size) and in its desired power state: :func:`stopped`
    if desired off, else :func:`running`."""
    return not vm.reconciling and (stopped(vm) if vm.power == vm_pb2.Vm.POWERED_OFF else running(vm))


def failed(vm: vm_pb2.Vm) -> bool:
    return vm.state in (vm_pb2.Vm.ERROR, vm_pb2.Vm.DELETING)


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


def wait_for_vms(client: Client, vms: Sequence[vm_pb2.Vm], done: Callable[[vm_pb2.Vm], bool], *, goal: str,
                 timeout_s: float, progress: ProgressLine, until_gone: bool = False) -> dict[str, vm_pb2.Vm | None]:
    """Watch ``vms`` (one watch for all) until each satisfies ``done``, has failed
    (ERROR or DELETING: :func:`failed`; not with ``until_gone``, which waits for a
    deletion) or is gone; return each by name as last seen (None: gone). One VM's
    progress is its status line; several show a bar of how many are done. ``done``
    is asked of each VM. Raises WaitTimeout after ``timeout_s`` naming a VM not
    done, its state and condition, and ``goal``."""
    last: dict[str, vm_pb2.Vm | None] = {vm.name: vm for vm in vms}
    finished: set[str] = set()
    shown: dict[str, str] = {}

    def show(name: str) -> None:
        vm = last[name]
        line = status_line(name, vm) if vm is not None else f"{short_name(name)}: gone"
        if shown.get(name) == line and name not in finished:
            return  # nothing new about this VM (e.g. a watch listing it again)
        shown[name] = line
        if len(last) == 1:
            progress.update(line)
        else:
            progress.update(f"{len(finished)}/{len(last)} done; {line}", completed=len(finished), total=len(last))

    for vm in vms:
        show(vm.name)
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        for name, state in follow_vms(client.watch_vms(timeout=left), list(last)):
            if name in finished:
                continue
            last[name] = state
            if state is None or done(state) or (failed(state) and not until_gone):
                finished.add(name)
            show(name)
            if len(finished) == len(last):
                return last
    raise _still_waiting(last, finished, timeout_s, f"; {goal} goes on")


def members_line(last: Mapping[str, vm_pb2.Vm | None], done: set[str], name: str) -> str:
    """``3/23 placed, 1/23 running; vms/cp-1: CREATING``: a create-many's progress."""
    placed = sum(1 for vm in last.values() if vm is not None and vm.host)
    total = len(last)
    vm = last[name]
    line = status_line(name, vm) if vm is not None else f"{short_name(name)}: gone"
    return f"{placed}/{total} placed, {len(done)}/{total} running; {line}"


def wait_for_members(client: Client, vms: Sequence[vm_pb2.Vm], done: Callable[[vm_pb2.Vm], bool], *,
                     set_name: str = "", timeout_s: float, progress: ProgressLine) -> dict[str, vm_pb2.Vm | None]:
    """Watch the VMs of a create-many (one watch for all) until each satisfies
    ``done``, has failed (:func:`failed`) or is gone, showing a bar of how many are
    done with how many are placed; return each by name as last seen (None: gone).
    ``set_name``: they form that set; a member gone means the set FAILED (its
    deadline passed) or a member was deleted: the set is read once then, and a
    FAILED set ends the wait with a CliError saying its condition. Raises
    WaitTimeout after ``timeout_s`` naming a VM not done (and the set's state)."""
    last: dict[str, vm_pb2.Vm | None] = {vm.name: vm for vm in vms}
    finished: set[str] = set()
    running: set[str] = set()
    shown: dict[str, str] = {}

    def show(name: str) -> None:
        line = members_line(last, running, name)
        if shown.get(name) == line:
            return  # nothing new about this VM (e.g. a watch listing it again)
        shown[name] = line
        progress.update(line, completed=len(running), total=len(last))

    for vm in vms:
        show(vm.name)
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        for name, state in follow_vms(client.watch_vms(timeout=left), list(last)):
            if name in finished:
                continue
            last[name] = state
            if state is None and set_name:
                vm_set = client.get_vm_set(set_name)
                if vm_set.state == vm_pb2.VmSet.FAILED:
                    raise CliError(f"{short_name(set_name)} is {describe_set(vm_set)}")
            if state is None or done(state) or failed(state):
                finished.add(name)
                if state is not None and done(state):
                    running.add(name)
            show(name)
            if len(finished) == len(last):
                return last
    where = f"{short_name(set_name)} is {describe_set(client.get_vm_set(set_name))}; " if set_name else ""
    raise _still_waiting(last, finished, timeout_s, "; the creation goes on", where)


def _still_waiting(last: Mapping[str, vm_pb2.Vm | None], finished: set[str], timeout_s: float, then: str,
                   where: str = "") -> WaitTimeout:
    """The WaitTimeout of a wait for several VMs: the first one not finished, as last
    seen and why, how many others, ``where`` before and ``then`` after."""
    waiting = [name for name in last if name not in finished]
    name = waiting[0]
    stuck = last[name]
    assert stuck is not None  # only a VM seen (not gone) is still awaited
    reason = vm_reason(stuck)
    more = f" (and {plural(len(waiting) - 1, 'other VM')})" if len(waiting) > 1 else ""
    return WaitTimeout(f"{where}{short_name(name)}{more} is still {vm_state(stuck)} after {timeout_s:g} s"
                       + (f": {reason}" if reason else "") + then)


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
