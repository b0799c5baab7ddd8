"""Keeps a HostView equal to the hosts in etcd: list, then watch from the next
revision; re-list when the watch's revision was compacted.

Hosts are shared by every shard of a process. Ready = registered (heartbeat
lease alive); an unregistered host with an allocation stays in the view as not
ready, so nothing new lands on it.

Plans' holds: the plans whose ``holds/{plan}`` key exists are *live*; a host's
snapshot counts its allocation plus the room live plans hold on it
(``HostAllocation.holds``: resources, VM count, host groups), so no other placement
takes that room while the hold lasts. Holds and hosts are listed and watched as ONE
key range (``HostStore.snapshot_with_holds``/``watch_with_holds``): PlanVms writes a
hold's key and the allocations holding its room in one txn, so they arrive in one
batch, whose holds are applied before its hosts: no allocation with ``holds[plan]``
is ever counted before its plan is known live (two streams could deliver the
allocation first, and the room would count as free meanwhile). When a hold's key
goes (lease expired, or its set bound), the hosts it held room on may take more: the
shards' waiting VMs are woken for them. The allocation as stored (holds included) is
kept apart (:meth:`HostSync.allocation`): it is what a bind starts from and compares.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection
from dataclasses import replace

from controlplane.etcd import Compacted
from controlplane.etcd.outages import ride_out
from controlplane.models import Hold, HostAllocation
from controlplane.placement import HostSnapshot, HostView
from controlplane.store.fleet import snapshot_of, with_holds
from controlplane.store.hosts import HostRecord, HostStore, HostTable
from scheduler import metrics

log = logging.getLogger(__name__)


def _may_fit_more(before: HostSnapshot, after: HostSnapshot) -> bool:
    """Whether a VM that did not fit ``before`` may fit ``after``: the host became
    ready or left maintenance, freed resources, changed labels (node selectors, zones,
    datastore classes), networks or allocatable capacity, or its set of groups changed
    (anti-affinity leaves, affinity arrives)."""
    return (not before.ready and after.ready or before.maintenance and not after.maintenance
            or after.groups.keys() != before.groups.keys()
            or after.allocated.vcpus < before.allocated.vcpus
            or after.allocated.memory_mib < before.allocated.memory_mib
            or after.allocated.disk_gib < before.allocated.disk_gib
            or after.labels != before.labels or after.allocatable != before.allocatable
            or after.networks != before.networks)


class HostSync:
    def __init__(self, hosts: HostStore, view: HostView):
        self._hosts = hosts
        self.view = view
        self.ready = asyncio.Event()
        #: Each host's allocation as stored (holds included) and its mod_revision: what
        #: its next bind starts from (the view's snapshot adds live holds to it).
        self._allocations: dict[str, tuple[HostAllocation, int]] = {}
        #: The live plans' holds, by plan id (their holds/{plan} key exists).
        self.plans: dict[str, Hold] = {}
        #: The hosts' records as of the last watch event (a new table after each listing).
        self.table = HostTable(hosts.keys)
        #: Called after capacity may have grown (a host joined, an allocation shrank, a
        #: group arrived), with those hosts' ids (None: any host, e.g. after a listing).
        self.on_capacity: list[Callable[[Collection[str] | None], None]] = []
        #: VMs the shards of this process found no host for, ever. A shard whose bind
        #: fails wakes the waiting VMs only if this moved while it held assumptions.
        self.turned_away = 0
        #: Called with the ids of hosts whose records changed in ``table``; None after a
        #: (re-)listing: any host may have changed.
        self.on_records: list[Callable[[list[str] | None], None]] = []
        # Counted at scrape time, not per watch event: a view holds up to 10,000s of hosts.
        metrics.HOSTS.labels("ready").set_function(lambda: sum(1 for h in view if h.ready))
        metrics.HOSTS.labels("missing").set_function(lambda: sum(1 for h in view if not h.ready))
        metrics.HOLDS.set_function(lambda: len(self.plans))

    def allocation(self, host: str) -> tuple[HostAllocation, int] | None:
        """The host's allocation as last read or written by this process (holds
        included) and its mod_revision; None for a host not in the view."""
        if host not in self.view:
            return None
        return self._allocations.get(host, (HostAllocation(), 0))

    def confirm(self, host: str, allocation: HostAllocation, revision: int) -> None:
        """Take an allocation this process wrote or read at ``revision`` into the
        view, unless the host is gone or the view already holds a newer revision."""
        current = self.view.committed(host)
        if current is not None and current.alloc_revision <= revision:
            self._allocations[host] = (allocation, revision)
            updated = with_holds(current, allocation, revision, self.plans)
            self.view.upsert(updated)
            if updated.groups.keys() != current.groups.keys():
                # A group arriving lets affine VMs in (not only capacity does).
                self.notify((host,))

    def _apply(self, record: HostRecord | str) -> bool:
        if isinstance(record, str):
            self.view.remove(record)
            self._allocations.pop(record, None)
            return False
        current = self.view.committed(record.host)
        ours = self._allocations.get(record.host)
        if current is not None and ours is not None and ours[1] > record.alloc_revision:
            # Our own bind already put a newer allocation in; keep it but take the registration.
            record = replace(record, allocation=ours[0], alloc_revision=ours[1])
        self._allocations[record.host] = (record.allocation, record.alloc_revision)
        snapshot = snapshot_of(record, self.plans)
        grew = current is None or _may_fit_more(current, snapshot)
        self.view.upsert(snapshot)
        return grew

    async def run(self) -> None:
        """List and watch the hosts and the plans' holds until cancelled; rides out
        etcd outages (re-lists). Ready once listed."""
        await ride_out(self._list_and_watch, "hosts")

    def _apply_holds(self, events: Collection[tuple[str, Hold | None]]) -> tuple[set[str], bool]:
        """Take holds made and ended into ``plans``; returns the hosts they held room on,
        and whether some ended (those hosts may take more)."""
        touched: set[str] = set()
        ended = False
        for plan, hold in events:
            was = self.plans.pop(plan, None) if hold is None else self.plans.get(plan)
            if hold is not None:
                self.plans[plan] = hold
            ended |= hold is None and was is not None
            touched |= {vm.host for h in (was, hold) if h is not None for vm in h.vms}
        return touched, ended

    def _rehold(self, hosts: Collection[str]) -> list[str]:
        """Recount the live holds on ``hosts`` after plans came or went; returns those
        in the view."""
        changed = []
        for host in hosts:
            current = self.view.committed(host)
            stored = self._allocations.get(host)
            if current is None or stored is None:
                continue
            self.view.upsert(with_holds(current, *stored, self.plans))
            changed.append(host)
        return changed

    async def _list_and_watch(self) -> None:
        while True:
            table, plans, revision = await self._hosts.snapshot_with_holds()
            self.plans = plans  # first: a host's room counts the live holds from its listing on
            self.table = table
            records = table.records()
            known = set()
            for record in records:
                self._apply(record)
                known.add(record.host)
            for snapshot in list(self.view):
                if snapshot.host_id not in known:
                    self.view.remove(snapshot.host_id)
                    self._allocations.pop(snapshot.host_id, None)
            self.ready.set()
            for callback in self.on_records:
                callback(None)
            self.notify()
            log.info("hosts listed", extra={"hosts": len(records), "holds": len(plans), "revision": revision})
            try:
                async for batch in self._hosts.watch_with_holds(revision + 1, table):
                    # The batch's holds first: its hosts' allocations are counted with them.
                    touched, ended = self._apply_holds(batch.holds)
                    grew = {record.host for record in batch.hosts  # (str: removed, never grew)
                            if self._apply(record) and isinstance(record, HostRecord)}
                    changed = {r if isinstance(r, str) else r.host for r in batch.hosts}
                    reheld = self._rehold(touched - changed)
                    if ended:
                        grew.update(reheld)
                    if self.on_records and batch.hosts:
                        for callback in self.on_records:
                            callback(sorted(changed))
                    if grew:
                        self.notify(sorted(grew))
            except Compacted:
                log.warning("host watch compacted; re-listing")

    def notify(self, hosts: Collection[str] | None = None) -> None:
        """Run the ``on_capacity`` callbacks: capacity may have grown on ``hosts`` (None:
        anywhere); also when a shard forgets what it had assumed on them, and may have
        turned VMs away for."""
        for callback in self.on_capacity:
            callback(hosts)
