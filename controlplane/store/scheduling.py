"""What the scheduler reads and writes: a shard's queue of pending VMs, and
binds that move VMs from the queue onto hosts.

A bind is compare-and-swap on everything it read: the shard's ownership
(fencing), each host's allocation revision (and that it is not declared dead),
each queued VM's queue entry, and the zone group counts (``zones.py``) that
zone-scoped VMs change or zone-affine VMs rely on; what it compares and writes
is built by ``bindings.py``.
Binds are batched: one etcd round trip carries one nested txn per host, so a
conflict on one host fails only that host's binds.

All-or-nothing sets (``VmSet``, CreateVms): every member is bound in ONE flat txn
(``bindings.bind_set``) that also rewrites the set's record PLACED, or none is; a set
that never fits is failed at its deadline in one txn that removes its pending
members, releases their quota (``UsageLedger``) and writes the record FAILED.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Container, Mapping, Sequence
from dataclasses import dataclass, field

from controlplane import cooperative
from controlplane.etcd import EtcdClient, ops, prefix_end
from controlplane.etcd.ops import Compare
from controlplane.models import (
    Hold,
    HostAllocation,
    VmRef,
    VmSet,
    VmSetRef,
    VmSetState,
    VmSpec,
    VmState,
    VmStatus,
    now_ns,
)
from controlplane.store import bindings, claims
from controlplane.store.bindings import HostRead, SetHost
from controlplane.store.keys import Keys
from controlplane.store.ledger import Charge, GuardFailed, UsageLedger, txn_ops
from controlplane.store.vms import held
from controlplane.store.zones import ZoneCount, ZoneGroupId, ZoneStore
from controlplane.tenancy import Usage

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class QueuedVm:
    spec: VmSpec
    queue_revision: int  # mod_revision of the queue entry


@dataclass(frozen=True, slots=True)
class QueueChange:
    """Queue events of one watch response, in order: (ref, entry) for a VM queued
    (or re-queued), (ref, None) for one that left the queue. Order matters: a VM
    can be queued and removed within one response."""

    events: list[tuple[VmRef, QueuedVm | None]]
    revision: int


@dataclass(frozen=True, slots=True)
class HostBind:
    """Binds onto one host, all or none: the VMs and the allocation they start from."""

    host: str
    alloc_revision: int  # the allocation key's mod_revision the placement was based on
    committed: HostAllocation  # the allocation as of alloc_revision (the bind adds the VMs)
    vms: Sequence[QueuedVm]
    zone: str = ""  # the host's zone as placement saw it
    # Zone group counts as placement read them: those the VMs' zone_group and
    # zone_affinity_group name in ``zone`` (absent from the map: read as absent).
    zone_counts: Mapping[ZoneGroupId, ZoneCount] = field(default_factory=dict)
    # The plans the scheduler knows live: a stale hold in ``committed`` is dropped by
    # the bind, its key compared absent (``holds.keep_live``); None: every hold kept.
    live: Container[str] | None = None

    def zone_ids(self) -> set[ZoneGroupId]:
        """The zone group counts this bind compares."""
        return bindings.bind_zone_ids(self.zone, (vm.spec for vm in self.vms))


@dataclass(frozen=True, slots=True)
class BindResult:
    fenced: bool  # False: the shard is no longer ours; nothing was written
    committed: list[bool]  # per HostBind
    revision: int
    allocations: list[HostAllocation] = field(default_factory=list)  # per HostBind: its host's, if it committed
    zone_counts: list[dict[ZoneGroupId, int]] = field(default_factory=list)  # per HostBind: counts it wrote


@dataclass(frozen=True, slots=True)
class SetRead:
    """A set's record as read: None when absent, with the key's mod_revision (0: absent)."""

    vm_set: VmSet | None
    revision: int


@dataclass(frozen=True, slots=True)
class SetBindResult:
    fenced: bool  # False: the shard is no longer ours; nothing was written
    committed: bool  # every member bound and the record PLACED (else nothing was written)
    revision: int
    allocations: dict[str, HostAllocation] = field(default_factory=dict)  # per host, if committed
    zone_counts: dict[ZoneGroupId, int] = field(default_factory=dict)  # counts written, if committed
    too_large: bool = False  # the txn would exceed max_txn_ops: nothing was sent
    cost: int = 0  # the ops of the set's txn as etcd counts them


def failure_charge(keys: Keys, fence: Compare, record: VmSet, set_revision: int,
                   members: Sequence[QueuedVm]) -> Charge:
    """What one txn of a set's failure compares (the fence, the set's record at
    ``set_revision``, each member's queue entry as read), writes (``record``, each
    member's removal: ``bindings.remove_pending``) and releases (their quota), with
    the names it holds in a group commit (each member's keys, addresses and disks).
    Pure."""
    ref = record.ref
    key = keys.vm_set(ref.tenant, ref.project, ref.set_id)
    compares = [fence, ops.mod_revision_is(key, set_revision)]
    writes = [ops.put(key, record.to_bytes())]
    released = Usage()
    names = [key]
    for vm in members:
        member_compares, member_writes = bindings.remove_pending(keys, vm.spec, vm.queue_revision)
        compares += member_compares
        writes += member_writes
        released = released - held(vm.spec)
        names += [keys.vm_prefix(vm.spec.ref), *claims.release_exclusive(keys, vm.spec)]
    return Charge(released, compares, writes, exclusive=tuple(names))


def failure_parts(keys: Keys, fence: Compare, record: VmSet, members: Sequence[QueuedVm],
                  max_txn_ops: int) -> list[list[QueuedVm]]:
    """``members`` in order, cut into parts whose :func:`failure_charge` each fits
    ``max_txn_ops`` (measured on the built charge, ledger included: ``txn_ops``); one
    part when they all fit, and always at least one (a set with no member left still
    gets its record written). Pure."""
    parts: list[list[QueuedVm]] = [[]]
    for vm in members:
        if parts[-1] and txn_ops(failure_charge(keys, fence, record, 0, [*parts[-1], vm])) > max_txn_ops:
            parts.append([])
        parts[-1].append(vm)
    return parts


class SchedulingStore:
    def __init__(self, client: EtcdClient, keys: Keys, ledger: UsageLedger | None = None):
        self._etcd = client
        self._keys = keys
        self._ledger = ledger

    def _queued(self, kv) -> QueuedVm:
        return QueuedVm(VmSpec.from_bytes(kv.value), kv.mod_revision)

    async def list_queue(self, shard: int) -> tuple[list[QueuedVm], int]:
        kvs, revision = await self._etcd.range_prefix(self._keys.queue_prefix(shard))
        # A backlog may be hundreds of thousands: decoded in steps, so the shard lease is kept.
        return await cooperative.mapped(self._queued, kvs), revision

    async def watch_queue(self, shard: int, start_revision: int) -> AsyncIterator[QueueChange]:
        """Queue changes from ``start_revision``. Raises Compacted (re-list then)."""
        prefix = self._keys.queue_prefix(shard)
        async for batch in self._etcd.watch(prefix, prefix_end(prefix), start_revision=start_revision):
            events: list[tuple[VmRef, QueuedVm | None]] = []
            for event in batch.events:
                if event.is_delete:
                    events.append((self._keys.ref_at_end(event.kv.key), None))
                else:
                    queued = self._queued(event.kv)
                    events.append((queued.spec.ref, queued))
            yield QueueChange(events, batch.revision)

    async def bind(self, fence: Compare | None, binds: Sequence[HostBind]) -> BindResult:
        """Commit binds in one round trip; each HostBind commits or fails alone
        (built by ``bindings.bind``).

        Not retried here: a failed HostBind means the caller's view was stale
        (another bind or an unbind on that host, or the VM left the queue).
        """
        at = now_ns()
        built = [bindings.bind(self._keys, HostRead(b.host, b.committed, b.alloc_revision, b.live),
                               [(vm.spec, vm.queue_revision) for vm in b.vms], zone=b.zone,
                               zone_counts=b.zone_counts, at=at) for b in binds]
        result = await self._etcd.txn([fence] if fence is not None else [], [t.nested() for t in built])
        allocations, counts = [t.allocation for t in built], [t.zone_counts for t in built]
        if not result.succeeded:
            return BindResult(False, [False] * len(binds), result.revision, allocations, counts)
        return BindResult(True, [result.nested(i).succeeded for i in range(len(binds))], result.revision,
                          allocations, counts)

    def bind_limits(self) -> tuple[int, int]:
        """(host groups, VMs per host group) that one ``bind`` call may carry within
        the server's max_txn_ops (measured on what ``bindings.bind`` builds)."""
        return bindings.bind_limits(self._etcd.max_txn_ops)

    async def read_current(self, hosts: Sequence[str], vms: Sequence[QueuedVm]
                           ) -> tuple[dict[str, tuple[HostAllocation, int]], dict[VmRef, QueuedVm | None]]:
        """After lost bind races, in one round trip: each host's allocation and its
        revision (absent: zero, 0), and each VM's queue entry as it is now (None:
        no longer queued)."""
        k = self._keys
        requests = [ops.get(k.host_alloc(h)) for h in hosts]
        requests += [ops.get(k.queue(vm.spec.shard, vm.spec.ref)) for vm in vms]
        responses = await self._etcd.txn_chunked(requests)
        allocations = {}
        for host, response in zip(hosts, responses[:len(hosts)], strict=True):
            kvs = response.response_range.kvs
            allocations[host] = (HostAllocation.from_bytes(kvs[0].value), kvs[0].mod_revision) if kvs \
                else (HostAllocation(), 0)
        entries = {}
        for vm, response in zip(vms, responses[len(hosts):], strict=True):
            kvs = response.response_range.kvs
            entries[vm.spec.ref] = self._queued(kvs[0]) if kvs else None
        return allocations, entries

    async def read_zone_counts(self, ids: Sequence[ZoneGroupId]) -> tuple[dict[ZoneGroupId, ZoneCount], int]:
        """After lost bind races: the zone group counts of ``ids`` now, and the revision read at."""
        return await ZoneStore(self._etcd, self._keys).read(ids)

    async def write_unschedulable(self, items: Sequence[tuple[QueuedVm, str]], *, reason: str = "NoHostFits") -> None:
        """Record why queued VMs could not be placed (they stay queued): ``reason``
        (NoHostFits; SetDoesNotFit for the members of a set) and each VM's message.

        Guarded by each queue entry, so a VM bound or deleted meanwhile is not touched.
        """
        k = self._keys
        at = now_ns()
        nested = []
        for vm, message in items:
            spec = vm.spec
            status = VmStatus(VmState.PENDING, reason=reason, message=message, update_time_ns=at,
                              accepted_time_ns=spec.create_time_ns)
            nested.append(ops.txn([ops.mod_revision_is(k.queue(spec.shard, spec.ref), vm.queue_revision)],
                                  [ops.put(k.vm_status(spec.ref), status.to_bytes())]))
        if nested:
            await self._etcd.txn_chunked(nested)

    # --- all-or-nothing sets ---------------------------------------------------------------

    async def read_sets(self, refs: Sequence[VmSetRef]) -> dict[VmSetRef, SetRead]:
        """The records of ``refs`` as they are now, in one round trip (chunked if many)."""
        responses = await self._etcd.txn_chunked(
            [ops.get(self._keys.vm_set(r.tenant, r.project, r.set_id)) for r in refs])
        reads = {}
        for ref, response in zip(refs, responses, strict=True):
            kvs = response.response_range.kvs
            reads[ref] = SetRead(VmSet.from_bytes(ref, kvs[0].value), kvs[0].mod_revision) if kvs \
                else SetRead(None, 0)
        return reads

    def set_bind_room(self) -> int:
        """The ops one set's flat txn may have: it is nested in a parent holding the
        fence compare and that one op, and etcd counts both."""
        return self._etcd.max_txn_ops - 1

    async def bind_set(self, fence: Compare | None, vm_set: VmSet, set_revision: int, binds: Sequence[HostBind],
                       *, plan: str = "") -> SetBindResult:
        """Bind every member of ``vm_set`` (as placed: ``binds``, one per host) and
        rewrite its record PLACED, compared by ``set_revision``, in ONE flat txn
        (``bindings.bind_set``) nested under ``fence``: all or nothing. ``plan``: the
        plan whose hold the set consumes in that txn (its key compared present and
        deleted, ``holds[plan]`` dropped from each host of ``binds``: a planned host
        without members is a HostBind with no VMs).

        Sends nothing and returns ``too_large`` when that txn would exceed the
        server's max_txn_ops (measured on the built txn). Not retried here. Raises
        ValueError for a set being failed (``vm_set.failing``: some of its members are
        removed already; it is only ever failed, :meth:`fail_set`)."""
        if vm_set.failing:
            raise ValueError(f"set {vm_set.ref.name} is being failed ({vm_set.reason}); it is never bound")
        at = now_ns()
        k = self._keys
        ref = vm_set.ref
        placed = VmSet(ref, vm_set.uid, vm_set.vms, vm_set.shard, VmSetState.PLACED, vm_set.create_time_ns,
                       vm_set.deadline_ns, at, "", "", vm_set.request_id)
        zone_counts = {zg: count for b in binds for zg, count in b.zone_counts.items()}
        built = bindings.bind_set(
            k, [SetHost(HostRead(b.host, b.committed, b.alloc_revision, b.live), b.zone,
                        [(vm.spec, vm.queue_revision) for vm in b.vms]) for b in binds],
            zone_counts=zone_counts, record=(k.vm_set(ref.tenant, ref.project, ref.set_id), set_revision,
                                             placed.to_bytes()), at=at, plan=plan)
        cost = built.cost.ops
        if cost > self.set_bind_room():
            return SetBindResult(True, False, 0, too_large=True, cost=cost)
        result = await self._etcd.txn([fence] if fence is not None else [], [ops.txn(built.compares, built.writes)])
        if not result.succeeded:
            return SetBindResult(False, False, result.revision, cost=cost)
        if not result.nested(0).succeeded:
            return SetBindResult(True, False, result.revision, cost=cost)
        return SetBindResult(True, True, result.revision, built.allocations, built.zone_counts, cost=cost)

    # --- plans' holds (holds/{plan}) ------------------------------------------------------

    async def read_hold(self, plan: str) -> Hold | None:
        """The plan's hold as it is now (None: ended or never made)."""
        kv = await self._etcd.get(self._keys.hold(plan))
        return Hold.from_bytes(kv.value) if kv is not None else None

    async def write_set_shortfall(self, vm_set: VmSet, set_revision: int, reason: str, message: str) -> int:
        """Record why a pending set does not fit on its record (compared by
        ``set_revision``). Returns the record's new mod_revision, 0 when it changed
        meanwhile or is being failed (``vm_set.failing``: its reason is the failure's;
        nothing written: read it again)."""
        if vm_set.failing:
            return 0
        ref = vm_set.ref
        key = self._keys.vm_set(ref.tenant, ref.project, ref.set_id)
        told = VmSet(ref, vm_set.uid, vm_set.vms, vm_set.shard, VmSetState.PENDING, vm_set.create_time_ns,
                     vm_set.deadline_ns, now_ns(), reason, message, vm_set.request_id)
        result = await self._etcd.txn([ops.mod_revision_is(key, set_revision)], [ops.put(key, told.to_bytes())])
        return result.revision if result.succeeded else 0

    async def fail_set(self, fence: Compare, vm_set: VmSet, set_revision: int, members: Sequence[QueuedVm], *,
                       reason: str, message: str) -> bool:
        """End a pending set, fenced: every member still pending (``members``, each
        compared by its queue entry) removed (``bindings.remove_pending``), their quota
        released through the ledger, the record written FAILED with ``reason`` and
        ``message`` (compared by ``set_revision``).

        In ONE txn when it fits ``max_txn_ops`` (measured on the built charge); else in
        parts that each fit (:func:`failure_parts`; a member may have taken more
        since its admission, e.g. disks attached while pending), in order, each
        comparing the record as the part before wrote it: every part but the last
        writes the record still PENDING, marked ``failing`` (with ``reason``,
        ``message``, its deadline past too), so that the set is never bound with
        members missing (:meth:`bind_set` refuses it, whatever the reader's clock)
        and whoever reads it next finishes the failure with that reason and message;
        the last writes it FAILED.

        Returns False when a compare failed (the part failing wrote nothing): the
        fence (the caller checks its lock), the record or a member's entry changed;
        read them again. Raises NotFound when the project is gone."""
        k = self._keys
        ref = vm_set.ref
        at = now_ns()
        failed = VmSet(ref, vm_set.uid, vm_set.vms, vm_set.shard, VmSetState.FAILED, vm_set.create_time_ns,
                       vm_set.deadline_ns, at, reason, message, vm_set.request_id)
        failing = VmSet(ref, vm_set.uid, vm_set.vms, vm_set.shard, VmSetState.PENDING, vm_set.create_time_ns,
                        min(vm_set.deadline_ns or at, at), at, reason, message, vm_set.request_id, failing=True)
        if self._ledger is None:
            self._ledger = UsageLedger(self._etcd, self._keys)
        parts = failure_parts(k, fence, failed, members, self._etcd.max_txn_ops)
        revision = set_revision
        for i, part in enumerate(parts):
            record = failed if i == len(parts) - 1 else failing
            try:
                revision = await self._ledger.apply(ref.tenant, ref.project,
                                                    failure_charge(k, fence, record, revision, part))
            except GuardFailed:
                return False
            if i < len(parts) - 1:
                log.info("set failing in parts", extra={"set": ref.name, "part": i + 1, "parts": len(parts),
                                                        "removed": len(part)})
        return True
