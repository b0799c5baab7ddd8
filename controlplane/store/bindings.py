"""What binding a VM to a host, and unbinding it, writes in etcd: the one place for
the rules every writer of a host's bindings obeys.

- **bind** (the scheduler): the VM's queue entry goes; its binding (the entry's copy
  of the spec, and the zone it is counted in) and status SCHEDULED come; the host's
  allocation grows by the VM (resources, count, host group); the zone group count of
  a zone-scoped VM grows.
- **unbind** (the agent after destroying a VM; the host evictor): the binding goes,
  the allocation and the zone group count shrink, the VM's tombstone is left on the
  host (``tombstones.py``), and the VM is either *requeued* (the binding's copy of
  the spec back to its shard's queue, status PENDING with why) or *removed* (spec
  and status go too, and its bootstrap data if it is still stored, its ports,
  addresses and disk attachments: ``claims.release_ops``). A requeued VM keeps
  them: it is the same VM on another host.
- **mark evicting** (the host evictor, a drained host): the binding is rewritten
  with why; its agent destroys the VM, then unbinds it into the queue.
- **resize** (``VmStore.update_spec``, a flavor change of a bound VM): the binding is
  rewritten with the new spec and the allocation moves by the difference, refused
  when a dimension it grows would exceed the host's allocatable (every hold in the
  allocation counted as taken).
- **adopt** (``bind(..., adopting=True)``, ``OrphanStore.adopt``): a quarantined VM
  already running on the host is bound with no queue entry.
- **bind a set** (``bind_set``, the scheduler): the members of an all-or-nothing set,
  on several hosts, in ONE flat txn: each host as ``bind``, each zone group count
  compared and written once with the whole set's delta, the set's record rewritten;
  a set created with a plan consumes the plan's hold in the same txn (other holds
  are kept as they are: a set's budget is fixed at its admission).
- **holds** (``holds.py``): every change of an allocation carries the holds of live
  plans; a (single) bind drops a stale one only comparing its key absent. Set binds,
  unbinds, moves and resizes keep every hold (they do not know which plans are live,
  or have no budget for the compare).
- **remove pending** (``remove_pending``, a set failed at its deadline): a pending
  VM's spec, status, queue entry, bootstrap data and claims go (quota: the caller's
  charge).

A *move* off a host is unbinds, some requeued and some removed, in one txn.

Every builder compares what its result was computed from: the allocation's
mod_revision, each zone group count it writes or relies on, each queue entry or
binding as read. So a change built from a stale read fails as a whole and the
allocation and counts always equal what the bindings imply (held against a model
by ``tests/unit/test_bindings.py``).

A built change is a :class:`HostTxn`: compares, writes, the allocation and counts it
leaves, and its cost against etcd's ``--max-txn-ops``. Budgets (how many VMs one txn
may carry) are measured by building the worst case with these same builders, never
counted by hand.

Pure: no I/O. Used by ``SchedulingStore.bind``, ``AgentStore.remove_destroyed``,
``LifecycleStore.move_off`` and ``mark_evicting``, and ``OrphanStore.adopt``;
``VmStore.update_spec`` (the one writer of the spec's copies) rewrites bindings with
:func:`as_bound` and :func:`holds_same`, and resizes with :func:`resize`.
"""

from __future__ import annotations

import functools
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from controlplane import macs
from controlplane.etcd import ops, prefix_end
from controlplane.etcd.ops import Compare, RequestOp
from controlplane.models import (
    AddressMode,
    Binding,
    BootstrapFormat,
    BootstrapSummary,
    DiskRef,
    HeldRoom,
    HostAllocation,
    Nic,
    Resources,
    Scope,
    VmRef,
    VmSpec,
    VmState,
    VmStatus,
)
from controlplane.store import bootstrap, claims, holds
from controlplane.store.errors import HostFull
from controlplane.store.keys import Keys
from controlplane.store.tombstones import DELETED, MOVED, tombstone_put
from controlplane.store.zones import ZoneCount, ZoneGroupId, add_delta, counted_changes


@dataclass(frozen=True, slots=True)
class Cost:
    """Ops of a txn as etcd counts them against ``--max-txn-ops``: the larger of its
    compares and its writes (a nested txn also takes from its parent's limit)."""

    compares: int = 0
    writes: int = 0

    @property
    def ops(self) -> int:
        return max(self.compares, self.writes)

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.compares + other.compares, self.writes + other.writes)

    def __sub__(self, other: Cost) -> Cost:
        return Cost(self.compares - other.compares, self.writes - other.writes)

    def __mul__(self, n: int) -> Cost:
        return Cost(self.compares * n, self.writes * n)


@dataclass(frozen=True, slots=True)
class HostRead:
    """A host's allocation as read: what a change of its bindings starts from and compares."""

    host: str
    allocation: HostAllocation = HostAllocation()
    revision: int = 0  # the allocation key's mod_revision (0: absent)
    # The plans the writer knows live (their holds/{plan} key exists): a bind drops a
    # hold of any other plan from the allocation, comparing its key absent
    # (``holds.keep_live``); None: the writer does not know, every hold is kept.
    live: Container[str] | None = None


@dataclass(frozen=True, slots=True)
class Unbind:
    """One VM leaving its host: its binding as read (value and mod_revision) and where
    it goes: back to its shard's queue (``requeue``, status PENDING with ``reason``
    and ``message``) or away with its spec and status."""

    binding: Binding
    revision: int  # the binding key's mod_revision as read
    requeue: bool
    reason: str = ""
    message: str = ""


@dataclass(frozen=True, slots=True)
class HostTxn:
    """One host's binding changes as one transaction, and what it leaves behind."""

    host: str
    compares: list[Compare]
    writes: list[RequestOp]
    allocation: HostAllocation  # the host's allocation once it applied
    zone_counts: dict[ZoneGroupId, int] = field(default_factory=dict)  # each count it writes, once it applied

    @property
    def cost(self) -> Cost:
        return Cost(len(self.compares), len(self.writes))

    def nested(self) -> RequestOp:
        """This change as a nested txn (commits or fails alone inside a parent)."""
        return ops.txn(self.compares, self.writes)


def as_bound(spec: VmSpec, host: str, zone: str) -> Binding:
    """The binding a bind writes for ``spec`` onto ``host`` in ``zone``: the spec's copy,
    and the zone only when the VM is counted there."""
    return Binding(spec, host, zone if spec.zone_group else "")


def holds_same(a: VmSpec, b: VmSpec) -> bool:
    """True when a bound VM with spec ``a`` holds what it would hold with ``b``: the same
    resources, host group and zone group (else its allocation and counts would have to
    change with it: a move, not a rewrite of the binding)."""
    return a.resources == b.resources and a.host_group == b.host_group and a.zone_group == b.zone_group


def bind_zone_ids(zone: str, specs: Iterable[VmSpec]) -> set[ZoneGroupId]:
    """The zone group counts a bind of ``specs`` into ``zone`` compares: those they are
    counted in and those their zone affinity relies on."""
    if not zone:
        return set()
    return {(zone, g) for spec in specs for g in (spec.zone_group, spec.zone_affinity_group) if g}


def unbind_zone_ids(bindings: Iterable[Binding]) -> set[ZoneGroupId]:
    """The zone group counts an unbind of ``bindings`` writes."""
    return {(b.zone, b.spec.zone_group) for b in bindings if b.zone and b.spec.zone_group}


def _counts(keys: Keys, zone_counts: Mapping[ZoneGroupId, ZoneCount], deltas: Mapping[ZoneGroupId, int]
            ) -> tuple[list[Compare], list[RequestOp], dict[ZoneGroupId, int]]:
    compares, writes = counted_changes(keys, zone_counts, deltas)
    after = {zg: zone_counts.get(zg, ZoneCount()).vms + d for zg, d in deltas.items() if d}
    return compares, writes, after


def bound_status(spec: VmSpec, host: str, at: int) -> VmStatus:
    """The status a bind writes: SCHEDULED on ``host`` at ``at``."""
    return VmStatus(VmState.SCHEDULED, host=host, update_time_ns=at, accepted_time_ns=spec.create_time_ns)


def bind(keys: Keys, host: HostRead, vms: Sequence[tuple[VmSpec, int]], *, zone: str,
         zone_counts: Mapping[ZoneGroupId, ZoneCount], at: int, adopting: bool = False) -> HostTxn:
    """Bind ``vms`` (each a spec with its queue entry's mod_revision) onto ``host``,
    all or none. ``zone``: the host's zone as placement saw it; ``zone_counts``: the
    counts of ``bind_zone_ids`` as read (absent from the map: read as absent).

    Also compares that the host is not declared dead nor in maintenance: no bind
    lands there, whatever a (lagging) host view says. ``adopting``: the VMs already
    run on ``host`` and were in no queue (an operator adopts a quarantined VM,
    ``orphans.py``): no queue entry is compared or deleted, and maintenance does not
    refuse them (they are not new placements)."""
    deltas: dict[ZoneGroupId, int] = {}
    for spec, _revision in vms:
        add_delta(deltas, zone, spec.zone_group, 1)
    compares, writes, after = _zone_binds(keys, zone_counts, deltas, bind_zone_ids(zone, (spec for spec, _ in vms)))
    host_compares, host_writes, allocation = _host_binds(keys, host, vms, zone=zone, at=at, adopting=adopting)
    return HostTxn(host.host, compares + host_compares, writes + host_writes, allocation, after)


def _zone_binds(keys: Keys, zone_counts: Mapping[ZoneGroupId, ZoneCount], deltas: Mapping[ZoneGroupId, int],
                ids: Iterable[ZoneGroupId]) -> tuple[list[Compare], list[RequestOp], dict[ZoneGroupId, int]]:
    """The zone group count part of a bind: each count of ``deltas`` compared and
    written once, and each other count of ``ids`` (relied on by zone affinity)
    compared unchanged."""
    compares, writes, after = _counts(keys, zone_counts, deltas)
    # Affinity only reads a count: compare it unchanged, write nothing.
    compares += [ops.mod_revision_is(keys.zone_group(*zg), zone_counts.get(zg, ZoneCount()).revision)
                 for zg in sorted(set(ids)) if not deltas.get(zg)]
    return compares, writes, after


def _host_binds(keys: Keys, host: HostRead, vms: Sequence[tuple[VmSpec, int]], *, zone: str, at: int,
                adopting: bool, plan: str = "") -> tuple[list[Compare], list[RequestOp], HostAllocation]:
    """The host part of a bind (everything but the zone group counts): the host's
    allocation compared and written once, that it is neither dead nor in maintenance,
    each VM's queue entry compared and deleted, its binding and status written. Holds
    of live plans are carried; a stale one is dropped with its key compared absent
    (``holds.keep_live``); ``plan``'s hold is consumed (dropped, not compared here).

    Without ``vms`` (a planned host of a set that only gives its held room back)
    nothing lands on the host: only the allocation is compared, not that the host is
    alive or out of maintenance (a drained or dead planned host must not keep the
    plan's set from binding)."""
    k = keys
    allocation, hold_compares = holds.keep_live(k, holds.consume(host.allocation, plan), host.live)
    compares = [ops.mod_revision_is(k.host_alloc(host.host), host.revision), *hold_compares]
    if vms:
        compares[1:1] = [ops.absent(k.host_dead(host.host)),
                         *([] if adopting else [ops.absent(k.host_maintenance(host.host))])]
    writes: list[RequestOp] = []
    for spec, queue_revision in vms:
        queue_key = k.queue(spec.shard, spec.ref)
        allocation = allocation.plus(spec.resources, group=spec.host_group)
        status = bound_status(spec, host.host, at)
        if not adopting:
            compares.append(ops.mod_revision_is(queue_key, queue_revision))
            writes.append(ops.delete(queue_key))
        writes += [ops.put(k.binding(host.host, spec.ref), as_bound(spec, host.host, zone).to_bytes()),
                   ops.put(k.vm_status(spec.ref), status.to_bytes())]
    writes.append(ops.put(k.host_alloc(host.host), allocation.to_bytes()))
    return compares, writes, allocation


@dataclass(frozen=True, slots=True)
class SetHost:
    """The members of a set placed on one host: the host's allocation as read, its
    zone as placement saw it, and each member's spec with its queue entry's mod_revision."""

    host: HostRead
    zone: str
    vms: Sequence[tuple[VmSpec, int]]


@dataclass(frozen=True, slots=True)
class SetTxn:
    """A whole set's bind as ONE flat transaction, and what it leaves behind."""

    compares: list[Compare]
    writes: list[RequestOp]
    allocations: dict[str, HostAllocation]  # per host, once it applied
    zone_counts: dict[ZoneGroupId, int]  # each count it writes, once it applied

    @property
    def cost(self) -> Cost:
        return Cost(len(self.compares), len(self.writes))


def bind_set(keys: Keys, hosts: Sequence[SetHost], *, zone_counts: Mapping[ZoneGroupId, ZoneCount],
             record: tuple[bytes, int, bytes], at: int, guard: Sequence[Compare] = (), plan: str = "") -> SetTxn:
    """Bind every member of an all-or-nothing set, onto several hosts, in one flat txn:
    all or none. The per-host rules are ``bind``'s; what differs is that a zone group
    count that members on several hosts of one zone change (or rely on) is compared
    and written ONCE with their combined delta (etcd refuses a txn that writes a key
    twice). ``zone_counts``: the counts of every host's ``bind_zone_ids`` as read.
    ``record``: (key, mod_revision as read, new value) of the set's record, compared
    and rewritten (PLACED) in the same txn; ``guard``: the caller's compares (its
    shard's fence).

    ``plan``: the set is the plan's (CreateVms with a plan): its hold is consumed in
    the same txn: ``holds[plan]`` leaves the allocation of every host of ``hosts``
    (a planned host without members is a SetHost with no VMs: its change compares
    only its allocation, so a planned host drained or declared dead since still gets
    its held room back), so an allocation grows only by what its members take beyond
    the hold; ``holds/{plan}`` is compared present and deleted. Raises ValueError
    when a host appears twice."""
    if len({h.host.host for h in hosts}) != len(hosts):
        raise ValueError("a set bind names each host once")
    deltas: dict[ZoneGroupId, int] = {}
    ids: set[ZoneGroupId] = set()
    for h in hosts:
        for spec, _revision in h.vms:
            add_delta(deltas, h.zone, spec.zone_group, 1)
        ids |= bind_zone_ids(h.zone, (spec for spec, _ in h.vms))
    compares, writes, after = _zone_binds(keys, zone_counts, deltas, ids)
    record_key, record_revision, record_value = record
    compares = [*guard, ops.mod_revision_is(record_key, record_revision), *compares]
    writes.append(ops.put(record_key, record_value))
    if plan:
        plan_compares, plan_writes = holds.consume_key(keys, plan)
        compares += plan_compares
        writes += plan_writes
    allocations = {}
    for h in hosts:
        # Every other hold is kept (no compare): a set's budget, measured at its
        # admission, has no room for them; single binds drop the stale ones.
        host = replace(h.host, live=None)
        host_compares, host_writes, allocations[h.host.host] = _host_binds(keys, host, h.vms, zone=h.zone, at=at,
                                                                            adopting=False, plan=plan)
        compares += host_compares
        writes += host_writes
    return SetTxn(compares, writes, allocations, after)


def remove_pending(keys: Keys, spec: VmSpec, queue_revision: int) -> tuple[list[Compare], list[RequestOp]]:
    """Compares and writes that remove a pending VM (as its queue entry was read, with
    its mod_revision): :func:`pending_removal`. Its quota is the caller's to release
    (in the same txn)."""
    return [ops.mod_revision_is(keys.queue(spec.shard, spec.ref), queue_revision)], pending_removal(keys, spec)


def pending_removal(keys: Keys, spec: VmSpec) -> list[RequestOp]:
    """The writes that remove a pending VM: its spec and status, its queue entry, its
    bootstrap data if it has any, and what it holds outside its keys (ports,
    addresses, disk attachments: ``claims.release_ops``). The caller compares the
    entry as it read it."""
    prefix = keys.vm_prefix(spec.ref)
    writes = [ops.delete(prefix, prefix_end(prefix)), ops.delete(keys.queue(spec.shard, spec.ref))]
    if spec.bootstrap is not None:
        writes.append(bootstrap.delete_op(keys, spec.ref))
    return writes + claims.release_ops(keys, spec)


def unbind(keys: Keys, host: HostRead, vms: Sequence[Unbind], *, zone_counts: Mapping[ZoneGroupId, ZoneCount],
           at: int, tombstone_lease: int, guard: Sequence[Compare] = ()) -> HostTxn:
    """Unbind ``vms`` from ``host``, all or none, with the caller's ``guard`` compares
    (e.g. a fence). ``zone_counts``: the counts of ``unbind_zone_ids`` as read.
    Each VM leaves its tombstone on ``host`` (``tombstones.py``: ``moved`` when
    requeued, else ``deleted``) under ``tombstone_lease``, the proof its agent needs
    to destroy a copy still running there.

    A count never goes below zero here: an unbind retried after it applied is caught
    by its binding compares."""
    k = keys
    deltas: dict[ZoneGroupId, int] = {}
    for vm in vms:
        add_delta(deltas, vm.binding.zone, vm.binding.spec.zone_group, -1)
    compares, writes, after = _counts(k, zone_counts, deltas)
    compares += [ops.mod_revision_is(k.host_alloc(host.host), host.revision), *guard]
    allocation = host.allocation
    for vm in vms:
        spec = vm.binding.spec
        ref = spec.ref
        binding_key = k.binding(host.host, ref)
        allocation = allocation.minus(spec.resources, group=spec.host_group)
        compares.append(ops.mod_revision_is(binding_key, vm.revision))
        writes += [ops.delete(binding_key),
                   tombstone_put(k, host.host, spec.uid, ref.name, MOVED if vm.requeue else DELETED,
                                 lease=tombstone_lease, at=at)]
        if vm.requeue:
            status = VmStatus(VmState.PENDING, reason=vm.reason, message=vm.message, update_time_ns=at,
                              accepted_time_ns=spec.create_time_ns)
            writes += [ops.put(k.queue(spec.shard, ref), spec.to_bytes()), ops.put(k.vm_status(ref), status.to_bytes())]
        else:
            writes += [ops.delete(k.vm_spec(ref)), ops.delete(k.vm_status(ref))]
            if spec.bootstrap is not None:  # its secret goes with it, if still there
                writes.append(bootstrap.delete_op(k, ref))
            writes += claims.release_ops(k, spec)  # its ports, addresses and disk attachments
    writes.append(ops.put(k.host_alloc(host.host), allocation.to_bytes()))
    return HostTxn(host.host, compares, writes, allocation, after)


#: The dimensions of Resources, as HostFull names them.
DIMENSIONS = ("vcpus", "memory_mib", "disk_gib")


def resize(keys: Keys, host: HostRead, binding: Binding, binding_revision: int, spec: VmSpec,
           allocatable: Resources | None) -> HostTxn:
    """Rewrite a bound VM's ``binding`` (as read, with its mod_revision) with ``spec``,
    its new resources, and move ``host``'s allocation by the difference; the VM's
    count, host group and zone (counts) stay. Compares the allocation's and the
    binding's mod_revision, so a resize built from a stale read fails as a whole.

    ``allocatable``: the host's (``HostRegistration.allocatable``), None when it has no
    registration. Raises HostFull when a dimension the resize grows would exceed it
    with the room of EVERY hold in the allocation counted as taken (live or stale:
    which plans are live is not known here, so conservatively all; a stale hold is
    dropped by the host's next bind) (any growth when None; a shrink always fits),
    ValueError when ``spec`` is not the binding's VM or would change its groups (that
    is a move). The holds are kept as they are."""
    was = binding.spec
    if (spec.ref, spec.uid, spec.host_group, spec.zone_group) != (was.ref, was.uid, was.host_group, was.zone_group):
        raise ValueError(f"a resize of {was.ref.name} keeps its identity and groups")
    delta = spec.resources - was.resources
    allocation = replace(host.allocation, resources=host.allocation.resources + delta)
    grown = [d for d in DIMENSIONS if getattr(delta, d) > 0]
    if grown:
        if allocatable is None:
            raise HostFull(host.host, grown, registered=False)
        taken = allocation.resources + holds.held_total(allocation.holds, allocation.holds).resources
        over = [d for d in grown if getattr(taken, d) > getattr(allocatable, d)]
        if over:
            raise HostFull(host.host, over, held=any(getattr(allocation.resources, d) <= getattr(allocatable, d)
                                                     for d in over))
    binding_key = keys.binding(host.host, spec.ref)
    compares = [ops.mod_revision_is(keys.host_alloc(host.host), host.revision),
                ops.mod_revision_is(binding_key, binding_revision)]
    writes = [ops.put(binding_key, replace(binding, spec=spec).to_bytes()),
              ops.put(keys.host_alloc(host.host), allocation.to_bytes())]
    return HostTxn(host.host, compares, writes, allocation)


def mark_evicting(keys: Keys, host: str, vms: Sequence[tuple[Binding, int]], *, reason: str, message: str,
                  guard: Sequence[Compare] = ()) -> tuple[list[Compare], list[RequestOp]]:
    """Compares and writes that mark bindings on a live ``host`` (each with its
    mod_revision as read) evicting with ``reason`` and ``message``: its agent destroys
    those VMs, then unbinds them into the queue (``unbind``). The allocation and
    counts do not change until then."""
    compares = [*guard]
    writes = []
    for binding, revision in vms:
        key = keys.binding(host, binding.spec.ref)
        compares.append(ops.mod_revision_is(key, revision))
        writes.append(ops.put(key, replace(binding, evict_reason=reason, evict_message=message).to_bytes()))
    return compares, writes


# --- budgets: measured on the builders above ----------------------------------------------

def worst_spec(i: int) -> VmSpec:
    """A VM that costs the most to bind or unbind: counted in a zone group and relying
    on another (both its own, so nothing is shared with other VMs), with bootstrap
    data, the most NICs (every one static with a MAC: a port, an address and a MAC to
    release) and the most disks (an attachment each)."""
    nics = tuple(Nic(f"tenants/t/networks/n{j}", f"n{j}", "pg", AddressMode.STATIC, f"10.0.{i % 250}.{j + 1}", 24,
                     mac=macs.mac_of((i * claims.MAX_NICS + j) % macs.SPAN))
                 for j in range(claims.MAX_NICS))
    disks = tuple(DiskRef(f"d{i}-{j}", f"du{i}-{j}", 1) for j in range(claims.MAX_DISKS))
    return VmSpec(VmRef("t", "p", f"v{i}"), f"u{i}", "f", "i", Resources(1, 1, 1), shard=0,
                  anti_affinity_group=f"g{i}", anti_affinity_scope=Scope.ZONE,
                  affinity_group=f"a{i}", affinity_scope=Scope.ZONE,
                  bootstrap=BootstrapSummary(BootstrapFormat.CLOUD_INIT, 1, b"\0" * 32), nics=nics, disks=disks)


def _worst_host(name: str) -> HostRead:
    """A host whose allocation carries more stale holds than a change drops: each
    change of it pays the most hold compares."""
    stale = {f"stale{i}": HeldRoom(Resources(1, 1, 1), 1) for i in range(holds.STALE_PER_CHANGE + 1)}
    return HostRead(name, HostAllocation(holds=stale), 1, live=())


def _fixed_and_each(cost_of) -> tuple[Cost, Cost]:
    one, two = cost_of(1), cost_of(2)
    each = two - one
    return one - each, each


@functools.cache
def _bind_costs() -> tuple[Cost, Cost]:
    keys = Keys("/")
    return _fixed_and_each(lambda n: bind(keys, _worst_host("h"), [(worst_spec(i), 1) for i in range(n)], zone="z",
                                          zone_counts={}, at=0).cost)


@functools.cache
def _unbind_costs() -> tuple[Cost, Cost]:
    keys = Keys("/")

    def cost(n: int, requeue: bool) -> Cost:
        vms = [Unbind(Binding(worst_spec(i), "h", "z"), 1, requeue) for i in range(n)]
        return unbind(keys, HostRead("h"), vms, zone_counts={}, at=0, tombstone_lease=1).cost

    fixed_q, each_q = _fixed_and_each(lambda n: cost(n, True))
    fixed_r, each_r = _fixed_and_each(lambda n: cost(n, False))
    return (Cost(max(fixed_q.compares, fixed_r.compares), max(fixed_q.writes, fixed_r.writes)),
            Cost(max(each_q.compares, each_r.compares), max(each_q.writes, each_r.writes)))


@functools.cache
def _set_bind_costs() -> tuple[Cost, Cost]:
    keys = Keys("/")

    def cost(n: int) -> Cost:
        # Each member on a host of its own, in a zone of its own: nothing shared.
        hosts = [SetHost(HostRead(f"h{i}"), f"z{i}", [(worst_spec(i), 1)]) for i in range(n)]
        return bind_set(keys, hosts, zone_counts={}, record=(b"/s", 1, b""), at=0, plan="p").cost

    return _fixed_and_each(cost)


def set_bind_worst(keys: Keys, specs: Sequence[VmSpec]) -> Cost:
    """What binding a set of ``specs`` costs at most, however placement spreads them:
    built with each member on a host and in a zone of its own (nothing shared), for
    these members (a member without zone groups costs less than :func:`set_bind_cost`
    assumes). Pure."""
    hosts = [SetHost(HostRead(f"h{i}"), f"z{i}", [(spec, 1)]) for i, spec in enumerate(specs)]
    return bind_set(keys, hosts, zone_counts={}, record=(b"/s", 1, b""), at=0, plan="p").cost


def set_bind_cost(members: int) -> Cost:
    """The most a set bind of ``members`` VMs can cost (each member on a host and in
    a zone of its own, counted in a zone group and relying on another)."""
    fixed, each = _set_bind_costs()
    return fixed + each * members


def set_bind_limit(max_txn_ops: int) -> int:
    """The most members a set may have so that its bind, however its members are
    placed, fits one txn within ``max_txn_ops`` (nested in a parent holding the
    fence compare and one op: etcd counts the parent's ops with the nested one's).
    A set admitted larger may still bind if its members share hosts and zones; the
    scheduler measures the txn it built and fails a set whose bind cannot fit."""
    fixed, each = _set_bind_costs()
    return most_that_fit(max_txn_ops - 1, fixed, each)


def most_that_fit(budget: int, fixed: Cost, each: Cost) -> int:
    """The most items (at least 1) whose txn, ``fixed + n * each``, stays within ``budget`` ops."""
    bounds = [(budget - f) // e for f, e in ((fixed.compares, each.compares), (fixed.writes, each.writes)) if e > 0]
    return max(1, min(bounds)) if bounds else 1


def bind_limits(max_txn_ops: int) -> tuple[int, int]:
    """(hosts, VMs per host) one bind round trip may carry: each host's bind is a nested
    txn of a parent that holds the fence compare and one op per host, and etcd counts
    the parent's ops and the largest nested txn's together (<= ``max_txn_ops``). Half
    the limit goes to the hosts, half to the VMs of one host."""
    fixed, each = _bind_costs()
    per_host = most_that_fit(max_txn_ops // 2, fixed, each)
    largest = (fixed + each * per_host).ops
    return max(1, min(max_txn_ops // 2, max_txn_ops - largest)), per_host


def unbinds_per_txn(max_txn_ops: int, *, guards: int = 0) -> int:
    """VMs one unbind txn may carry (``guards``: the caller's own compares)."""
    fixed, each = _unbind_costs()
    return most_that_fit(max_txn_ops, fixed + Cost(guards, 0), each)
