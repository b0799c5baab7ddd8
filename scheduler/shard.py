"""One scheduler shard: the pending VMs whose uid hashes to it, placed and bound.

Flow: list the shard's queue at R → watch from R+1 → each queued VM's ref goes
into a de-duplicating work queue → the placer takes a batch, places each VM by
pure filter/score over the HostView (assuming each placement in memory), and
commits the whole batch in one round trip of per-host compare-and-swap txns,
fenced by the shard lock. A lost race forgets the assumption, refreshes that
host's allocation and re-queues its VMs (bounded attempts per VM); a VM that
fits nowhere waits, with a status saying why, until capacity appears.

All-or-nothing sets (CreateVms): every member of a set is queued in the set's shard.
A watch response carries every event of one etcd revision, so once the shard has
seen one member it has seen all those admitted with it; members missing from the
pending map were deleted meanwhile: the set is whatever of it is still pending. The
set's record is read once (cached by set; re-read after a lost race). A member of a
PENDING set pulls in all its pending members, placed by ``place_set`` (all or
nothing, anti-affinity among members held) and bound in ONE txn that also writes the
record PLACED; a set that does not fit takes nothing, its record and members saying
why, and waits for capacity; at its deadline (a delayed work queue item, no polling)
the set is failed in one txn that removes its pending members and releases their
quota. A member of a PLACED set that is queued again (e.g. evicted) is placed alone.

A set created with a plan (its members' ``VmSpec.plan``): the plan's hold is read
when the shard meets the set. While it lasts, each member goes on the host the plan
recorded, the plan's held room counting as free for its own members (``place_planned``),
and the set's one txn also consumes the hold (``bindings.bind_set``: the key deleted,
``holds[plan]`` gone from every planned host's allocation). Once the hold's key is
gone the set is placed as any set.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence

from controlplane.etcd import Compacted, EtcdError
from controlplane.etcd.outages import ride_out
from controlplane.models import HeldRoom, Hold, Resources, VmRef, VmSet, VmSetRef, VmSetState, VmSpec, now_ns
from controlplane.placement import (
    HostSnapshot,
    HostView,
    Placement,
    PlacementRequest,
    Scorer,
    SetMember,
    SetPlacement,
    ZoneCounts,
    admit,
    place,
    place_set,
    spread,
)
from controlplane.placement.sets import forget as forget_placed
from controlplane.placement.sets import resolved
from controlplane.placement.specs import request_of
from controlplane.store.errors import NotFound
from controlplane.store.scheduling import HostBind, QueuedVm, SchedulingStore, SetRead
from controlplane.store.shards import ShardLock
from controlplane.store.zones import ZoneCount, ZoneGroupId
from controlplane.workqueue import WorkQueue
from scheduler import metrics
from scheduler.hostsync import HostSync
from scheduler.zonesync import ZoneSync

log = logging.getLogger(__name__)


class ShardLost(Exception):
    """A bind was fenced off: another process owns the shard now."""


_NO_ZONES: frozenset[str] = frozenset()


def _request(vm: QueuedVm, zones: ZoneCounts) -> PlacementRequest:
    """The placement request of a queued VM (``controlplane.placement.specs.request_of``)."""
    return request_of(vm.spec, zones)


def _set_of(spec: VmSpec) -> VmSetRef:
    return VmSetRef(spec.ref.tenant, spec.ref.project, spec.vm_set)


def _pending_set(read: SetRead | None) -> bool:
    """Whether members of a set with this record (None: not read yet) are placed as a set."""
    return read is None or (read.vm_set is not None and read.vm_set.state == VmSetState.PENDING)


def _released(snapshot: HostSnapshot, room: HeldRoom | None) -> HostSnapshot:
    """``snapshot`` with ``room`` (held for the members being placed) counted as free."""
    if room is None:
        return snapshot
    return snapshot.with_allocated(Resources() - room.resources, -room.vm_count,
                                   {group: -n for group, n in room.groups.items()})


def place_planned(members: Sequence[SetMember[VmRef]], planned: Mapping[VmRef, str], view: HostView,
                  counts: ZoneCounts, held: Mapping[str, HeldRoom], *, rng: random.Random,
                  scorer: Scorer = spread) -> SetPlacement[VmRef]:
    """Place each member on the host its plan recorded (``planned``), all or none, as
    ``place_set`` does over the fleet: the filters decide on that one host, with the
    room the plan holds there (``held``, by host: as the view counts it) free for the
    plan's own members, each member assumed before the next is placed. A member the
    plan does not name, or whose host left the view, fits nowhere. Pure but for
    ``view`` and ``counts`` (assumed when the whole set fits, untouched otherwise)."""
    hosts: dict[str, HostSnapshot] = {}
    placed: list[tuple[SetMember[VmRef], str, str]] = []
    missing: list[tuple[VmRef, Placement]] = []
    for member in members:
        host_id = planned.get(member.key)
        snapshot = hosts.get(host_id) if host_id is not None else None
        if snapshot is None and host_id is not None and (current := view.get(host_id)) is not None:
            snapshot = _released(current, held.get(host_id))
        if host_id is None or snapshot is None:
            missing.append((member.key, Placement(None, 0.0, {"NotPlanned" if host_id is None else "HostGone": 1},
                                                  1, 1)))
            continue
        request = resolved(member, counts)
        on_host = place(request, [snapshot], rng=rng, scorer=scorer)
        if on_host.host_id is None:
            missing.append((member.key, on_host))
            continue
        group = request.anti_affinity_group
        hosts[host_id] = snapshot.with_allocated(request.resources, 1, {group: 1} if group else {})
        view.assume(host_id, request.resources, group=group)
        counts.assume(snapshot.zone, member.zone_group)
        placed.append((member, host_id, snapshot.zone))
    if missing:
        forget_placed(view, counts, placed)
        return SetPlacement([], missing, len(members))
    return SetPlacement([(m.key, host, zone) for m, host, zone in placed], [], len(members))


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
        # VM refs, and set refs (a set to place or whose deadline is due).
        self._queue: WorkQueue[VmRef | VmSetRef] = WorkQueue()
        self._members: dict[VmSetRef, set[VmRef]] = {}  # pending members of each set
        self._sets: dict[VmSetRef, SetRead] = {}  # set records as last read or written
        self._sets_waiting: dict[VmSetRef, None] = {}  # do not fit as a whole; retried when capacity appears
        self._set_told: dict[VmSetRef, str] = {}  # last shortfall written per set
        self._waiting: dict[VmRef, None] = {}  # fit nowhere, oldest first; retried when capacity appears
        self._told: dict[VmRef, str] = {}  # last "no host fits" message written per VM
        self._turned_away_at = 0  # HostSync.turned_away when this batch began assuming
        self._label = str(shard)

    def _capacity_changed(self, hosts: Collection[str] | None = None) -> None:
        """Re-queue the waiting VMs that may fit now: all of them (``hosts`` None), or,
        oldest first, as many as the changed ``hosts`` can take (``admit``: a check of
        those hosts, not a placement over the fleet per waiting VM). Waiting sets are
        all retried: a set is placed as a whole, not admitted host by host."""
        for set_ref in self._sets_waiting:
            self._queue.add(set_ref)
        self._sets_waiting.clear()
        metrics.SETS_WAITING.labels(self._label).set(0)
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
            metrics.SETS_WAITING.remove(self._label)

    async def _sync_queue(self) -> None:
        while True:
            items, revision = await self._store.list_queue(self.shard)
            current = {vm.spec.ref: vm for vm in items}
            for ref in list(self._pending):
                if ref not in current:
                    self._drop(ref)
            for ref, vm in current.items():
                self._track(ref, vm)
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
                            self._track(ref, queued)
                            self._waiting.pop(ref, None)
                            self._queue.add(ref)
                    self._update_depth()
            except Compacted:
                log.warning("queue watch compacted; re-listing", extra={"shard": self.shard})

    def _track(self, ref: VmRef, vm: QueuedVm) -> None:
        self._pending[ref] = vm
        if vm.spec.vm_set:
            self._members.setdefault(_set_of(vm.spec), set()).add(ref)

    def _drop(self, ref: VmRef) -> None:
        vm = self._pending.pop(ref, None)
        self._waiting.pop(ref, None)
        self._told.pop(ref, None)
        if vm is not None and vm.spec.vm_set:
            set_ref = _set_of(vm.spec)
            members = self._members.get(set_ref)
            if members is not None:
                members.discard(ref)
                if not members:
                    del self._members[set_ref]
            read = self._sets.get(set_ref)
            if read is not None and _pending_set(read):
                self._queue.add(set_ref)  # a member deleted: what is left may fit now
            elif read is not None and set_ref not in self._members:
                self._forget_set(set_ref)

    def _forget_set(self, set_ref: VmSetRef) -> None:
        self._sets.pop(set_ref, None)
        self._sets_waiting.pop(set_ref, None)
        self._set_told.pop(set_ref, None)

    def _update_depth(self) -> None:
        metrics.QUEUE_DEPTH.labels(self._label).set(len(self._pending))
        metrics.UNSCHEDULABLE.labels(self._label).set(len(self._waiting))
        metrics.SETS_WAITING.labels(self._label).set(len(self._sets_waiting))

    async def _place_loop(self) -> None:
        while True:
            refs = await self._queue.get_batch(self._batch_size)
            requeues = {ref: self._queue.num_requeues(ref) for ref in refs}
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
                    if self._queue.num_requeues(ref) == requeues[ref]:  # not backed off again by this batch
                        self._queue.forget(ref)
            finally:
                for ref in refs:
                    self._queue.done(ref)

    async def _place_batch(self, batch: list[VmRef | VmSetRef]) -> None:
        started = time.perf_counter()
        refs: list[VmRef] = []
        sets: dict[VmSetRef, list[VmRef]] = {}
        for item in batch:
            if isinstance(item, VmSetRef):
                sets.setdefault(item, [])
                continue
            queued = self._pending.get(item)
            if queued is not None and queued.spec.vm_set and _pending_set(self._sets.get(_set_of(queued.spec))):
                sets.setdefault(_set_of(queued.spec), []).append(item)
            else:
                refs.append(item)
        if sets:
            refs += await self._place_sets(sets)
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
        binds = self._host_binds(by_host, zone_of_host)
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
                self._track(ref, entry)
                self._queue.add(ref)

    # --- all-or-nothing sets ------------------------------------------------------------

    async def _place_sets(self, sets: dict[VmSetRef, list[VmRef]]) -> list[VmRef]:
        """Place (or fail at their deadline) the sets of a batch, one bind txn per set;
        returns the batch's members of sets that are no longer PENDING (PLACED or
        FAILED), to be placed alone like any VM. Members of a set without a record
        wait (re-read at the next wake-up)."""
        unknown = [ref for ref in sets if ref not in self._sets]
        if unknown:
            now = now_ns()
            for set_ref, fresh in (await self._store.read_sets(unknown)).items():
                self._sets[set_ref] = fresh
                if fresh.vm_set is None:
                    log.warning("set record missing; its members wait for it",
                                extra={"shard": self.shard, "set": set_ref.name})
                elif fresh.vm_set.state == VmSetState.PENDING and fresh.vm_set.failing:
                    self._queue.add(set_ref)  # left between the parts of its failure: finish it now
                elif fresh.vm_set.state == VmSetState.PENDING and fresh.vm_set.deadline_ns:
                    self._queue.add_after(set_ref, max(0, fresh.vm_set.deadline_ns - now) / 1e9)
        alone: list[VmRef] = []
        for set_ref, batch_members in sets.items():
            read = self._sets.get(set_ref)
            if read is not None and read.vm_set is None:
                # Never admitted so (an admission writes the record with its members) or
                # deleted: no member is placed alone; read it again at the next wake-up.
                self._sets.pop(set_ref, None)
                if set_ref in self._members:
                    self._sets_waiting[set_ref] = None
                continue
            if read is None or read.vm_set is None or read.vm_set.state != VmSetState.PENDING:
                alone += batch_members
                if set_ref not in self._members:
                    self._forget_set(set_ref)
                continue
            await self._place_set(set_ref, read.vm_set, read.revision)
        return alone

    def _members_of(self, vm_set: VmSet) -> list[QueuedVm]:
        """The set's members still pending, in the order admitted."""
        pending = self._members.get(vm_set.ref, set())
        order = {vm_id: i for i, vm_id in enumerate(vm_set.vms)}
        refs = sorted(pending, key=lambda ref: (order.get(ref.vm_id, len(order)), ref.vm_id))
        return [self._pending[ref] for ref in refs]

    async def _place_set(self, set_ref: VmSetRef, vm_set: VmSet, revision: int) -> None:
        members = self._members_of(vm_set)
        if vm_set.failing:
            # Left between the parts of its failure (some members removed already): only
            # ever finished failing, with its own reason and message, whatever this
            # process's clock says of its deadline.
            await self._fail_set(vm_set, revision, members, vm_set.reason, vm_set.message)
            return
        if vm_set.deadline_ns and now_ns() >= vm_set.deadline_ns:
            # The last shortfall told (this process's, else the record's) says why.
            shortfall = self._set_told.get(set_ref) or (vm_set.message if vm_set.reason == "SetDoesNotFit" else "")
            await self._fail_set(vm_set, revision, members, "DeadlineExceeded",
                                 f"the set did not fit before its deadline; its {len(members)} pending "
                                 f"member(s) of {len(vm_set.vms)} were removed and their quota released"
                                 + (f"; last shortfall: {shortfall}" if shortfall else ""))
            return
        if not members:
            return  # every member deleted: its deadline ends it
        self._sets_waiting.pop(set_ref, None)
        plan = members[0].spec.plan
        hold = await self._store.read_hold(plan) if plan else None
        members = self._members_of(vm_set)  # again: members may have gone while the hold was read
        if not members:
            return
        view, counts = self._hosts.view, self._zones.counts
        set_members = [SetMember(vm.spec.ref, _request(vm, counts), vm.spec.zone_group, vm.spec.zone_affinity_group)
                       for vm in members]
        if hold is not None:
            placement = place_planned(set_members, self._planned(hold), view, counts, self._held(plan),
                                      rng=self._rng, scorer=self._scorer)
        else:
            placement = place_set(set_members, view, counts, rng=self._rng, scorer=self._scorer)
        if not placement.fits:
            self._sets_waiting[set_ref] = None
            self._hosts.turned_away += 1
            message = placement.message(lambda ref: ref.vm_id)
            if hold is not None:
                message = f"on the hosts of plan {plan}: {message}"
            if self._set_told.get(set_ref) != message:
                log.info("set does not fit", extra={"shard": self.shard, "set": set_ref.name, "why": message})
                written = await self._store.write_set_shortfall(vm_set, revision, "SetDoesNotFit", message)
                if not written:
                    self._sets.pop(set_ref, None)  # changed meanwhile: read it again
                    self._queue.add(set_ref)
                    return
                self._sets[set_ref] = SetRead(vm_set, written)
                await self._store.write_unschedulable([(vm, message) for vm in members], reason="SetDoesNotFit")
                self._set_told[set_ref] = message
            return
        by_ref = {vm.spec.ref: vm for vm in members}
        by_host: dict[str, list[QueuedVm]] = defaultdict(list)
        zone_of_host: dict[str, str] = {}
        for ref, host, zone in placement.hosts:
            by_host[host].append(by_ref[ref])
            zone_of_host[host] = zone
        if hold is not None:
            # Planned hosts left without members (deleted ones) give their held room back too.
            for host in sorted({vm.host for vm in hold.vms} - by_host.keys()):
                if self._hosts.allocation(host) is not None:
                    by_host[host] = []
        binds = self._host_binds(by_host, zone_of_host)
        try:
            result = await self._store.bind_set(self._lock.fence(), vm_set, revision, binds,
                                                plan=plan if hold is not None else "")
        except BaseException:
            self._forget_all(binds)
            raise
        if not result.fenced:
            self._forget_all(binds)
            raise ShardLost(f"shard {self.shard} was taken over")
        if result.too_large:
            self._forget_all(binds)
            room = self._store.set_bind_room()
            await self._fail_set(vm_set, revision, members, "SetTooLarge",
                                 f"binding the set's {len(members)} members in one transaction takes "
                                 f"{result.cost} etcd ops, more than the {room} allowed (--max-txn-ops)")
            return
        if not result.committed:
            self._forget_all(binds)
            metrics.BIND_CONFLICTS.inc(len(binds))
            log.info("set bind lost a race; retrying", extra={"shard": self.shard, "set": set_ref.name})
            self._sets.pop(set_ref, None)  # the record may be what changed
            await self._refresh(binds)
            # Backed off: a compare that keeps failing must not spin etcd round trips.
            self._queue.add_rate_limited(set_ref)
            return
        for bind in binds:
            self._forget(bind)
            self._hosts.confirm(bind.host, result.allocations[bind.host], result.revision)
        for (zone, group), n in result.zone_counts.items():
            self._zones.confirm(zone, group, n, result.revision, result.revision)
        self._sets[set_ref] = SetRead(VmSet(vm_set.ref, vm_set.uid, vm_set.vms, vm_set.shard, VmSetState.PLACED),
                                      result.revision)
        metrics.BINDS.inc(len(members))
        metrics.SET_BINDS.inc()
        for vm in members:
            self._drop(vm.spec.ref)
        self._forget_set(set_ref)
        log.info("set bound", extra={"shard": self.shard, "set": set_ref.name, "vms": len(members),
                                     "hosts": len(binds), "plan": plan if hold is not None else "",
                                     "revision": result.revision})

    def _planned(self, hold: Hold) -> dict[VmRef, str]:
        """Each VM of ``hold``'s plan and the host it was planned on."""
        return {VmRef(hold.tenant, hold.project, vm.vm_id): vm.host for vm in hold.vms}

    def _held(self, plan: str) -> dict[str, HeldRoom]:
        """The room ``plan`` holds on each host as the view counts it (only while this
        process sees the plan live: else the view counts none of it)."""
        if plan not in self._hosts.plans:
            return {}
        held = {}
        for host in {vm.host for vm in self._hosts.plans[plan].vms}:
            stored = self._hosts.allocation(host)
            room = stored[0].holds.get(plan) if stored is not None else None
            if room is not None:
                held[host] = room
        return held

    def _host_binds(self, by_host: dict[str, list[QueuedVm]], zone_of_host: dict[str, str]) -> list[HostBind]:
        """Each host's bind, from its allocation (holds included) and zone counts as
        committed (never with the assumptions of the placements being bound)."""
        counts = self._zones.counts
        binds = []
        for host, vms in by_host.items():
            stored = self._hosts.allocation(host)
            if stored is None:  # placed on just now, with no await since
                raise KeyError(host)
            allocation, alloc_revision = stored
            zone = zone_of_host.get(host, "")
            zone_counts = {(zone, g): ZoneCount(*counts.committed(zone, g))
                           for vm in vms for g in (vm.spec.zone_group, vm.spec.zone_affinity_group) if zone and g}
            # The live plans as this process sees them: a bind drops a stale hold (its
            # key compared absent), never a live one.
            binds.append(HostBind(host, alloc_revision, allocation, vms, zone, zone_counts, live=self._hosts.plans))
        return binds

    async def _fail_set(self, vm_set: VmSet, revision: int, members: list[QueuedVm], reason: str,
                        message: str) -> None:
        set_ref = vm_set.ref
        try:
            done = await self._store.fail_set(self._lock.fence(), vm_set, revision, members, reason=reason,
                                              message=message)
        except NotFound:
            log.warning("set's project is gone; forgetting the set", extra={"shard": self.shard, "set": set_ref.name})
            self._forget_set(set_ref)
            return
        if not done:
            # The record, a member's entry or the fence changed: read them again and retry
            # (a lost shard shows at its next bind).
            self._sets.pop(set_ref, None)
            _allocations, entries = await self._store.read_current([], members)
            for vm in members:
                entry = entries[vm.spec.ref]
                if entry is None:
                    self._drop(vm.spec.ref)
                else:
                    self._track(vm.spec.ref, entry)
            self._queue.add_rate_limited(set_ref)
            return
        metrics.SET_FAILURES.labels(reason).inc()
        log.info("set failed", extra={"shard": self.shard, "set": set_ref.name, "reason": reason,
                                      "removed": len(members)})
        self._sets[set_ref] = SetRead(VmSet(vm_set.ref, vm_set.uid, vm_set.vms, vm_set.shard, VmSetState.FAILED), 0)
        for vm in members:
            self._drop(vm.spec.ref)
        self._forget_set(set_ref)
