"""The host controller: empties the hosts that must be emptied, dead or drained.

A host missing (no heartbeat) for longer than the grace is declared dead and
its VMs are moved off at once by restart policy; a drained host (DrainHost: the
``hosts/{h}/drain`` marker with maintenance) is alive, so its ALWAYS VMs are
marked evicting and its agent destroys and requeues them (``HostEvictor`` with
``dead=False``), its NEVER VMs deleted.

Runs in exactly one process: the owner of shard 0, with every declaration,
move and deletion fenced by that shard's lock (marking a drained host's VMs
evicting is not: ``LifecycleStore.mark_evicting`` takes no fence, so an owner
deposed a moment ago may still mark what the drain asked for). Flow: follow the process's HostSync; on each
change or tick: start a clock for each newly missing host, declare dead the
ones whose clock ran out (one txn: still unregistered, not yet marked, fence),
move the VMs off dead and drained hosts (``HostEvictor``: compare-and-swap per
binding), and lift the marker of a dead host whose agent is back once it holds
no VMs (its agent found no bindings and destroyed what it still had).

Everything it acts on is in etcd (markers, bindings), so a new owner of shard 0
picks up where the last one stopped: its first listing shows every dead or
drained host that still holds VMs. The clock is this process's own (monotonic,
from when it first saw the host missing), so a takeover of shard 0 restarts
it: a host is declared dead at least the grace after it went missing, never
earlier, whatever the clocks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable

from controlplane.etcd import EtcdError
from controlplane.etcd.ops import Compare
from controlplane.store.hosts import HostRecord
from controlplane.store.lifecycle import HostEvictor, LifecycleStore, plan_eviction
from scheduler import metrics
from scheduler.hostsync import HostSync

log = logging.getLogger(__name__)


class MissingClock:
    """Pure: when each missing host was first seen missing, and which are due."""

    def __init__(self, grace_s: float):
        self.grace_s = grace_s
        self._since: dict[str, float] = {}

    def observe(self, host: str, missing: bool, now: float) -> None:
        if missing:
            self._since.setdefault(host, now)
        else:
            self._since.pop(host, None)

    def forget(self, host: str) -> None:
        self._since.pop(host, None)

    def due(self, now: float) -> list[str]:
        """Hosts missing for at least the grace, longest missing first."""
        return [h for h, since in sorted(self._since.items(), key=lambda item: item[1])
                if now - since >= self.grace_s]

    def __contains__(self, host: str) -> bool:
        return host in self._since


def missing(record: HostRecord) -> bool:
    """No heartbeat and not declared dead yet."""
    return record.registration is None and not record.dead


class HostController:
    """Declares missing hosts dead and empties dead and drained hosts (see the module
    docstring). One per process that owns shard 0; ``fence`` is that shard's lock."""

    def __init__(self, hosts: HostSync, store: LifecycleStore, evictor: HostEvictor, fence: Callable[[], Compare],
                 *, grace_s: float, tick_s: float | None = None, clock: Callable[[], float] = time.monotonic):
        self._hosts = hosts
        self._store = store
        self._evictor = evictor
        self._fence = fence
        self.clock = MissingClock(grace_s)
        self._tick_s = tick_s if tick_s is not None else max(0.2, min(1.0, grace_s / 4))
        self._now = clock

    async def run(self) -> None:
        """Run until cancelled. etcd errors are logged and retried next tick.

        Follows the process's HostSync (no watch of its own). Each step looks only
        at the hosts that changed since the last one (all of them after a listing),
        at the clocks, and at the hosts whose last eviction left work behind: a bind
        storm on 10,000s of hosts costs a few records per step, not a pass over the
        fleet. A drained host's agent removing the VMs it destroyed changes the
        host's allocation, which brings the host back here."""
        todo: set[str] = set()  # hosts to look at in the next step
        changed = asyncio.Event()

        def on_records(hosts: list[str] | None) -> None:
            todo.update(self._hosts.table.hosts() if hosts is None else hosts)
            changed.set()

        self._hosts.on_records.append(on_records)
        try:
            await self._hosts.ready.wait()
            on_records(None)
            while True:
                changed.clear()
                todo_now = set(todo)
                todo.clear()
                table, records = self._hosts.table, []
                for host in sorted(todo_now):
                    record = table.record(host)
                    if record is None:
                        self.clock.forget(host)  # no keys left: nothing to reap
                    else:
                        records.append(record)
                try:
                    # Looked at again next tick, whether or not their keys change: an
                    # eviction may leave VMs behind (lost races, conflicts).
                    todo |= await self.step(records)
                except EtcdError as err:
                    todo |= todo_now  # look at them again
                    log.warning("host controller step failed; retrying", extra={"error": str(err)})
                try:
                    async with asyncio.timeout(self._tick_s):
                        await changed.wait()
                except TimeoutError:
                    pass
        finally:
            self._hosts.on_records.remove(on_records)

    async def step(self, records: Iterable[HostRecord]) -> set[str]:
        """Observe the hosts as ``records`` show them (the ones that changed), declare
        dead those missing past the grace (of all observed so far), and move VMs off
        (or lift the marker of) the dead and drained ones among ``records``.
        Returns the hosts to look at again: dead ones that held VMs, drained ones
        whose eviction left VMs that could still be moved (not the ones only
        waiting for their agent)."""
        now = self._now()
        records = list(records)
        again: set[str] = set()
        for record in records:
            self.clock.observe(record.host, missing(record), now)
        for host in self.clock.due(now):
            declared = await self._store.declare_dead(host, self._fence())  # raises: its clock stays, retried
            self.clock.forget(host)
            if declared:  # (its marker's watch event brings it back here if the eviction fails)
                metrics.HOSTS_DECLARED_DEAD.inc()
                log.warning("host declared dead", extra={"host": host, "grace_s": self.clock.grace_s})
                await self._evictor.evict(host, dead=True, fence=self._fence())
        for record in records:
            if record.dead:
                if record.allocation.vm_count > 0:
                    await self._evictor.evict(record.host, dead=True, fence=self._fence())
                    again.add(record.host)
                elif record.ready and await self._store.clear_dead(record.host, record.dead_revision,
                                                                   record.alloc_revision, self._fence()):
                    log.info("dead host is back and empty; it takes VMs again", extra={"host": record.host})
            elif record.draining and record.allocation.vm_count > 0:
                left = await self._evictor.evict(record.host, dead=False, fence=self._fence())
                if plan_eviction(left.bound, host_dead=False):
                    again.add(record.host)
                log.debug("draining host", extra={"host": record.host, "vms_left": len(left.bound)})
        return again
