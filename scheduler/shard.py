"""One scheduler shard: the pending VMs whose uid hashes to it, placed and bound.

Flow: list the shard's queue at R → watch from R+1 → each queued VM's ref goes
into a de-duplicating work queue → the placer takes a batch, places each VM by
pure filter/score over the HostView (assuming each placement in memory), and
commits the whole batch in one round trip of per-host compare-and-swap txns,
fenced by the shard lock. A lost race forgets the assumption, refreshes that
host's allocation and re-queues its VMs (bounded attempts per VM); a VM that
fits nowhere waits, with a status saying why, until capacity appears.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import defaultdict
from collections.abc import Collection

from controlplane.etcd import Compacted, EtcdError
from controlplane.etcd.outages import ride_out
from controlplane.models import HostAllocation, VmRef
from controlplane.store.scheduling import HostBind, QueuedVm, SchedulingStore
from controlplane.store.shards import ShardLock
from controlplane.store.zones import ZoneCount, ZoneGroupId
from controlplane.workqueue import WorkQueue
from scheduler import metrics
from scheduler.hostsync import HostSync
from scheduler.placement import PlacementRequest, Scorer, ZoneCounts, admit, place, spread
from scheduler.zonesync import ZoneSync

log = logging.getLogger(__name__)


class ShardLost(Exception):
    """A bind was fenced off: another process owns the shard now."""


_NO_ZONES: frozenset[str] = frozenset()


def _request(vm: QueuedVm, zones: ZoneCounts) -> PlacementRequest:
    """The placement request of a queued VM, its zone constraints resolved against
    ``zones`` (committed + assumed) as they are now."""
    spec = vm.spec
    zone_group, zone_affinity = spec.zone_group, spec.zone_affinity_group
    return PlacementRequest(vm_key=spec.ref.name, uid=spec.uid, resources=spec.resources,
                            labels=spec.labels, node_selector=spec.node_selector,
                            anti_affinity_group=spec.host_group, zone_spread=bool(zone_group),
                            avoid_zones=zones.zones_with(zone_group) if zone_group else _NO_ZONES,
                            host_affinity_group=spec.host_affinity_group,
                            affinity_zones=zones.zones_with(zone_affinity) if zone_affinity else None,
                            image=spec.image)


class _ZoneKeys:
    """Which host of a bind batch touches each zone group count. One etcd txn may not
    write a key twice, and a nested txn that compares a key written by an earlier one
    fails, so a count is written by at most one host per batch and then read by no
    other; a VM that would break this waits for the next batch."""

    __slots__ = ("readers", "writers")

    def __init__(self) -> None:
        self.writers: dict[ZoneGroupId, str] = {}
        self.readers: dict[ZoneGroupId, set[str]] = {}

    def claim(self, host: str, writes: ZoneGroupId | None, reads: ZoneGroupId | None) -> bool:
        if writes is not None and (self.writers.get(writes, host) != host
                                   or self.readers.get(writes, set()) - {host}):
            return False
        if reads is not None and self.writers.get(reads, host) != host:
            return False
        if writes is not None:
            self.writers[writes] = host
        if reads is not None:
            self.readers.setdefault(reads, set()).add(host)
        return True


class ShardScheduler:
    def __init__(self, shard: int, store: SchedulingStore, hosts: HostSync, lock: ShardLock, *,
                 zones: ZoneSync, batch_size: int = 256, seed: int | None = None, scorer: Scorer = spread):
        self.shard = shard
        self._store = store
        self._hosts = hosts
        self._zones = zones
        self._lock = lock
        self._batch_size = batch_size
        self._scorer = scorer
        self._rng = random.Random(seed)
        self._pending: dict[VmRef, QueuedVm] = {}
        self._queue: WorkQueue[VmRef] = WorkQueue()
        self._waiting: dict[VmRef, None] = {}  # fit nowhere, oldest first; retried when capacity appears
        self._told: dict[VmRef, str] = {}  # last "no host fits" message written per VM
        self._turned_away_at = 0  # HostSync.turned_away when this batch began assuming
        self._label = str(shard)

    def _capacity_changed(self, hosts: Collection[str] | None = None) -> None:
        """Re-queue the waiting VMs that may fit now: all of them (``hosts`` None), or,
        oldest first, as many as the changed ``hosts`` can take (``admit``: a check of
        those hosts, not a placement over the fleet per waiting VM)."""
        if not self._waiting:
            return
        if hosts is None:
            woken = list(self._waiting)
        else:
            view, counts = self._hosts.view, self._zones.counts
            changed = [snapshot for host in hosts if (snapshot := view.get(host)) is not None]
            gone = [ref for ref in self._waiting if ref not in self._pending]
            woken = gone + admit(((ref, _request(self._pending[ref], counts)) for ref in self._waiting
                                  if ref in self._pending), changed)
        for ref in woken:
            self._waiting.pop(ref, None)
            self._queue.add(ref)
        metrics.UNSCHEDULABLE.labels(self._label).set(len(self._waiting))

    async def run(self) -> None:
        """Run until cancelled or the shard is lost (raises ShardLost)."""
        self._hosts.on_capacity.append(self._capacity_changed)
        self._zones.on_change.append(self._capacity_changed)
        try:
            await self._hosts.ready.wait()
            await self._zones.ready.wait()
            async with asyncio.TaskGroup() as group:
                group.create_task(ride_out(self._sync_queue, f"queue {self.shard}"))
                group.create_task(self._place_loop())
        finally:
            self._hosts.on_capacity.remove(self._capacity_changed)
            self._zones.on_change.remove(self._capacity_changed)
            self._queue.shutdown()
            metrics.QUEUE_DEPTH.remove(self._label)
            metrics.UNSCHEDULABLE.remove(self._label)

    async def _sync_queue(self) -> None:
        while True:
            items, revision = await self._store.list_queue(self.shard)
            current = {vm.spec.ref: vm for vm in items}
            for ref in list(self._pending):
                if ref not in current:
                    self._drop(ref)
            for ref, vm in current.items():
                self._pending[ref] = vm
                if ref not in self._waiting:
                    self._queue.add(ref)
            self._update_depth()
            log.info("queue listed", extra={"shard": self.shard, "pending": len(items)})
            try:
                async for change in self._store.watch_queue(self.shard, revision + 1):
                    for ref, queued in change.events:
                        if queued is None:
                            self._drop(ref)
                        else:
                            self._pending[ref] = queued
                            self._waiting.pop(ref, None)
                            self._queue.add(ref)
                    self._update_depth()
            except Compacted:
                log.warning("queue watch compacted; re-listing", extra={"shard": self.shard})

    def _drop(self, ref: VmRef) -> None:
        self._pending.pop(ref, None)
        self._waiting.pop(ref, None)
        self._told.pop(ref, None)

    def _update_depth(self) -> None:
        metrics.QUEUE_DEPTH.labels(self._label).set(len(self._pending))
        metrics.UNSCHEDULABLE.labels(self._label).set(len(self._waiting))

    async def _place_loop(self) -> None:
        while True:
            refs = await self._queue.get_batch(self._batch_size)
            try:
                await self._place_batch(refs)
            except EtcdError as err:
                # etcd unavailable or slow: nothing of this batch is known committed
                # (a bind that did apply shows up as a queue deletion); try again later.
                log.warning("placement batch failed; retrying", extra={"shard": self.shard, "error": str(err)})
                for ref in refs:
                    self._queue.add_rate_limited(ref)
            else:
                for ref in refs:
                    self._queue.forget(ref)
            finally:
                for ref in refs:
                    self._queue.done(ref)

    async def _place_batch(self, refs: list[VmRef]) -> None:
        started = time.perf_counter()
        self._turned_away_at = self._hosts.turned_away
        view = self._hosts.view
        by_host: dict[str, list[QueuedVm]] = defaultdict(list)
        zone_of_host: dict[str, str] = {}
        zone_keys = _ZoneKeys()
        counts = self._zones.counts
        unschedulable: list[tuple[QueuedVm, str]] = []
        max_hosts, max_per_host = self._store.bind_limits()
        for ref in refs:
            vm = self._pending.get(ref)
            if vm is None:
                continue  # bound or deleted meanwhile
            request = _request(vm, counts)
            placement = place(request, view, rng=self._rng, scorer=self._scorer)
            if placement.host_id is None:
                self._waiting[ref] = None
                self._hosts.turned_away += 1
                message = placement.message()
                if self._told.get(ref) != message:  # say it (and log it) once per reason
                    unschedulable.append((vm, message))
                    log.info("no host fits", extra={"shard": self.shard, "vm": ref.name, "why": message})
                continue
            group = by_host.get(placement.host_id)
            if (group is None and len(by_host) >= max_hosts) or (group is not None and len(group) >= max_per_host):
                self._queue.add(ref)  # over one txn's op limit: next batch
                continue
            zone = zone_of_host.get(placement.host_id)
            if zone is None:
                chosen = view.get(placement.host_id)
                if chosen is None:  # place() chose it from the view, with no await since
                    raise KeyError(placement.host_id)
                zone = chosen.zone
            spec = vm.spec
            writes = (zone, spec.zone_group) if zone and spec.zone_group else None
            reads = (zone, spec.zone_affinity_group) if zone and spec.zone_affinity_group else None
            if not zone_keys.claim(placement.host_id, writes, reads):
                self._queue.add(ref)  # its zone count is another host's in this batch: next batch
                continue
            view.assume(placement.host_id, request.resources, group=request.anti_affinity_group)
            counts.assume(zone, spec.zone_group)
            zone_of_host[placement.host_id] = zone
            by_host[placement.host_id].append(vm)
        if by_host:
            await self._bind(by_host, zone_of_host)
        if unschedulable:
            await self._store.write_unschedulable(unschedulable)  # raises: told next time
            for vm, message in unschedulable:
                if vm.spec.ref in self._pending:
                    self._told[vm.spec.ref] = message
        self._update_depth()
        metrics.PLACEMENT_SECONDS.observe(time.perf_counter() - started)

    async def _bind(self, by_host: dict[str, list[QueuedVm]], zone_of_host: dict[str, str]) -> None:
        view = self._hosts.view
        counts = self._zones.counts
        binds = []
        for host, vms in by_host.items():
            committed = view.committed(host)
            if committed is None:  # placed on in this batch, with no await since
                raise KeyError(host)
            allocation = HostAllocation(committed.allocated, committed.vm_count, committed.groups)
            zone = zone_of_host.get(host, "")
            # The counts as committed (what etcd holds), never with the batch's assumptions.
            zone_counts = {(zone, g): ZoneCount(*counts.committed(zone, g))
                           for vm in vms for g in (vm.spec.zone_group, vm.spec.zone_affinity_group) if zone and g}
            binds.append(HostBind(host, committed.alloc_revision, allocation, vms, zone, zone_counts))
        try:
            result = await self._store.bind(self._lock.fence(), binds)
        except BaseException:
            # Unknown outcome: forget the assumptions; a bind that did apply comes
            # back through the watches (queue entry gone, allocation changed).
            self._forget_all(binds)
            raise
        if not result.fenced:
            self._forget_all(binds)
            raise ShardLost(f"shard {self.shard} was taken over")
        lost: list[HostBind] = []
        for i, (bind, ok) in enumerate(zip(binds, result.committed, strict=True)):
            self._forget(bind)
            if ok:
                self._hosts.confirm(bind.host, result.allocations[i], result.revision)
                for (zone, group), n in result.zone_counts[i].items():
                    self._zones.confirm(zone, group, n, result.revision, result.revision)
                metrics.BINDS.inc(len(bind.vms))
                for vm in bind.vms:
                    self._drop(vm.spec.ref)
            else:
                lost.append(bind)
        if lost:
            metrics.BIND_CONFLICTS.inc(len(lost))
            log.info("binds lost a race; retrying", extra={"shard": self.shard, "hosts": len(lost),
                                                           "vms": sum(len(b.vms) for b in lost)})
            await self._refresh(lost)
            self._wake_turned_away(lost)

    def _forget_all(self, binds: list[HostBind]) -> None:
        """Forget binds that did not commit (as far as we know), and retry the VMs
        that the assumptions of these binds turned away."""
        for bind in binds:
            self._forget(bind)
        self._wake_turned_away(binds)

    def _wake_turned_away(self, binds: list[HostBind]) -> None:
        """After the assumptions of ``binds`` went unbound: retry the waiting VMs that
        fit their hosts now, if any VM (of any shard here) was turned away meanwhile."""
        if self._hosts.turned_away != self._turned_away_at:
            self._hosts.notify([bind.host for bind in binds])

    def _forget(self, bind: HostBind) -> None:
        for vm in bind.vms:
            self._hosts.view.forget(bind.host, vm.spec.resources, group=vm.spec.host_group)
            self._zones.counts.forget(bind.zone, vm.spec.zone_group)

    async def _refresh(self, lost: list[HostBind]) -> None:
        """After lost races: read the hosts' allocations and the VMs' queue entries
        as they are now, and re-queue the VMs that are still queued. Reading the
        entries (not only waiting for the queue watch) means a VM that left the
        queue can never keep failing its host's whole bind group."""
        vms = [vm for bind in lost for vm in bind.vms]
        allocations, entries = await self._store.read_current([b.host for b in lost], vms)
        for bind in lost:
            self._hosts.confirm(bind.host, *allocations[bind.host])
        # A zone count may be what changed: read those too rather than wait for the watch.
        zone_counts, revision = await self._store.read_zone_counts(sorted({zg for b in lost for zg in b.zone_ids()}))
        for (zone, group), count in zone_counts.items():
            self._zones.confirm(zone, group, count.vms, count.revision, revision)
        for vm in vms:
            ref = vm.spec.ref
            entry = entries[ref]
            if entry is None:
                self._drop(ref)
            elif ref in self._pending:
                self._pending[ref] = entry
                self._queue.add(ref)
