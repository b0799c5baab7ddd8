"""The binding rules (``controlplane/store/bindings.py``) held against a model.

Random sequences of bind (the scheduler, several hosts in one round trip), set bind
(the scheduler: members of an all-or-nothing set on several hosts, one flat txn,
consuming a plan's hold or not), a plan's hold (room held on hosts while its key
lives), a hold's end (its key gone), set removal (a set failed at its deadline:
pending members removed), remove
(the agent, after destroying VMs), requeue (the agent, after destroying evicted VMs)
and move (the host evictor: some requeued, some removed, under a fence) are built by
the module from reads that may be stale, as racing writers' are, and applied to an
interpreter of etcd's transaction rules. After every step the host allocations and
the zone group counts must equal what the bindings imply, every VM must be in
exactly one place (queue, one host, or gone), every live plan's hold must be in the
allocation of each host it was made on (a hold is dropped only once its key is gone,
which the dropping txn compares), and no transaction may exceed ``--max-txn-ops``
under the budgets the module derives.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from controlplane.etcd import ops
from controlplane.gen.etcd.v3 import rpc_pb2 as pb
from controlplane.gen.quanta.store.v1.records_pb2 import Tombstone
from controlplane.macs import mac_of
from controlplane.models import (
    AddressMode,
    Binding,
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
from controlplane.store import bindings, holds
from controlplane.store.bindings import HostRead, Unbind
from controlplane.store.errors import HostFull
from controlplane.store.keys import Keys
from controlplane.store.vms import create_ops
from controlplane.store.zones import ZoneCount, decode

MAX_TXN_OPS = 16  # small, so that budgets bind
HOSTS = {"h1": "a", "h2": "a", "h3": "b", "h4": ""}  # host -> zone ("": none)
# What a resize may book on each host (h4 has no registration: no growth there).
ALLOCATABLE = {"h1": Resources(12, 12, 12), "h2": Resources(20, 8, 20), "h3": Resources(6, 40, 6), "h4": None}
KEYS = Keys("/t")
FENCE = b"/t/v1/shards/0000"
SET_KEY = KEYS.vm_set("t", "p", "s")


class TooManyOps(Exception):
    pass


class FakeEtcd:
    """etcd's txn semantics over a dict, as far as these txns use them: compares of
    create/mod revision and version, puts and single-key deletes, nested txns whose
    compares all see the state before the txn, one revision per txn, no key written
    twice, and ``--max-txn-ops`` (a nested txn gets what its parent leaves)."""

    def __init__(self) -> None:
        self.kv: dict[bytes, tuple[bytes, int, int, int]] = {}  # value, create, mod, version
        self.revision = 1

    def _holds(self, c: pb.Compare) -> bool:
        value, create, mod, version = self.kv.get(c.key, (b"", 0, 0, 0))
        actual, wanted = {pb.Compare.CREATE: (create, c.create_revision), pb.Compare.MOD: (mod, c.mod_revision),
                          pb.Compare.VERSION: (version, c.version)}[c.target]
        return {pb.Compare.EQUAL: actual == wanted, pb.Compare.GREATER: actual > wanted,
                pb.Compare.LESS: actual < wanted}[c.result]

    @staticmethod
    def _check(compares, success, limit: int) -> None:
        opc = max(len(compares), len(success))
        if opc > limit:
            raise TooManyOps(f"{opc} ops > {limit}")
        for op in success:
            if op.WhichOneof("request") == "request_txn":
                FakeEtcd._check(op.request_txn.compare, op.request_txn.success, limit - opc)

    def _writes(self, compares, success) -> list | None:
        """The writes this txn makes (None: its compares fail), nested ones included."""
        if not all(self._holds(c) for c in compares):
            return None
        writes = []
        for op in success:
            if op.WhichOneof("request") == "request_txn":
                writes.append(self._writes(op.request_txn.compare, op.request_txn.success))
            else:
                writes.append(op)
        return writes

    def txn(self, compares, success) -> tuple[bool, list[bool]]:
        """Apply a txn; (succeeded, per nested txn: succeeded)."""
        self._check(compares, success, MAX_TXN_OPS)
        plan = self._writes(compares, success)
        if plan is None:
            return False, []
        flat, nested = [], []
        for item in plan:
            if isinstance(item, list) or item is None:
                nested.append(item is not None)
                flat += item or []
            else:
                flat.append(item)
        keys = [op.request_put.key if op.WhichOneof("request") == "request_put" else
                (op.request_delete_range.key, op.request_delete_range.range_end) for op in flat]
        assert len(keys) == len(set(keys)), "etcd refuses a txn that writes one key twice"
        self.revision += 1
        for op in flat:
            if op.WhichOneof("request") == "request_put":
                _value, create, _mod, version = self.kv.get(op.request_put.key, (b"", 0, 0, 0))
                self.kv[op.request_put.key] = (op.request_put.value, create or self.revision, self.revision,
                                               version + 1)
            else:
                start, end = op.request_delete_range.key, op.request_delete_range.range_end
                for key in [k for k in self.kv if start <= k < end] if end else [start]:
                    self.kv.pop(key, None)
        return True, nested


NETWORK = "tenants/t/networks/n"  # the machine's VMs' NICs are on it (created with the store)


def make_spec(i: int, resources: Resources, group: str, group_scope: Scope, affinity: str,
              affinity_scope: Scope, nic: AddressMode | None = None) -> VmSpec:
    nics = (Nic(NETWORK, "nuid", "pg", nic, f"10.0.0.{i + 1}" if nic is not AddressMode.DHCP else "", 24,
                mac=mac_of(i)),) if nic is not None else ()
    return VmSpec(VmRef("t", "p", f"vm{i}"), f"uid{i}", "f", "img", resources, shard=0,
                  anti_affinity_group=group, anti_affinity_scope=group_scope,
                  affinity_group=affinity, affinity_scope=affinity_scope, nics=nics)


specs_strategy = st.lists(
    st.builds(lambda r, g, gs, a, as_, n: (r, g, gs, a, as_, n),
              st.builds(Resources, st.integers(1, 4), st.integers(1, 4), st.integers(0, 4)),
              st.sampled_from(["", "g1", "g2"]), st.sampled_from([Scope.HOST, Scope.ZONE]),
              st.sampled_from(["", "g1"]), st.sampled_from([Scope.HOST, Scope.ZONE]),
              st.sampled_from([None, AddressMode.DHCP, AddressMode.STATIC])),
    min_size=4, max_size=10)


class BindingMachine(RuleBasedStateMachine):
    """The store is a FakeEtcd; the model is where each VM is."""

    @initialize(params=specs_strategy)
    def start(self, params) -> None:
        self.etcd = FakeEtcd()
        self.etcd.kv[FENCE] = (b"", 1, 1, 1)
        self.etcd.kv[SET_KEY] = (b"pending", 1, 1, 1)
        self.etcd.kv[KEYS.network("t", "", "n")] = (b"network", 1, 1, 1)
        self.specs = [make_spec(i, *p) for i, p in enumerate(params)]
        self.where: dict[VmRef, str | None] = {}  # "queue", a host, or None: gone
        for spec in self.specs:
            self._create(spec)
        self.history = [copy.copy(self.etcd.kv)]
        self.plans: dict[str, dict[str, HeldRoom]] = {}  # every plan made: its room per host
        # A plan held from the start, which a writer whose holds view lags does not know yet.
        assert self._make_hold(self.history[0], ["h1", "h3"], HeldRoom(Resources(1, 1, 1), 1, {"g1": 1}))
        self._committed()

    def _make_hold(self, read: dict, hosts: list[str], room: HeldRoom) -> bool:
        """What PlanVms writes for a plan: its key, and its room in each planned host's
        allocation as read, in one txn compared by those allocations."""
        plan = f"plan{len(self.plans)}"
        compares, writes = [ops.absent(KEYS.hold(plan))], [ops.put(KEYS.hold(plan), plan.encode())]
        for host in hosts:
            before = self._host(read, host)
            compares.append(ops.mod_revision_is(KEYS.host_alloc(host), before.revision))
            writes.append(ops.put(KEYS.host_alloc(host), replace(
                before.allocation, holds={**before.allocation.holds, plan: room}).to_bytes()))
        self.plans[plan] = {}
        if not self.etcd.txn(compares, writes)[0]:
            return False
        self.plans[plan] = {host: room for host in hosts}
        return True

    def _create(self, spec: VmSpec) -> None:
        """As a create: ``vms.create_ops`` (with its NIC's port and address claims)."""
        compares, writes, _claims = create_ops(KEYS, spec, VmStatus(VmState.PENDING, accepted_time_ns=1),
                                               {NETWORK: 1})
        assert self.etcd.txn(compares, writes)[0]
        self.where[spec.ref] = "queue"

    def _read(self, lag: int) -> dict:
        """The store as some earlier step left it: what a lagging writer read."""
        return self.history[max(0, len(self.history) - 1 - lag)]

    def _committed(self) -> None:
        self.history.append(copy.copy(self.etcd.kv))

    @staticmethod
    def _host(read: dict, host: str, live: set[str] | None = None) -> HostRead:
        kv = read.get(KEYS.host_alloc(host))
        return HostRead(host, HostAllocation.from_bytes(kv[0]), kv[2], live) if kv else HostRead(host, live=live)

    def _live(self, lag: int) -> set[str]:
        """The plans live as a writer saw them, lagging on their own (more than the
        scheduler's one watch of holds and hosts lets them: the rules must not need it)."""
        read = self._read(lag)
        return {plan for plan in self.plans if KEYS.hold(plan) in read}

    @staticmethod
    def _counts(read: dict, ids) -> dict:
        counts = {}
        for zg in ids:
            kv = read.get(KEYS.zone_group(*zg))
            counts[zg] = ZoneCount(decode(kv[0]), kv[2]) if kv else ZoneCount()
        return counts

    # --- the writers ----------------------------------------------------------------------

    @rule(data=st.data(), lag=st.integers(0, 3), live_lag=st.integers(0, 3))
    def bind(self, data, lag: int, live_lag: int) -> None:
        """The scheduler: queued VMs (as it read the queue) onto hosts, one nested txn per
        host, dropping holds of plans it does not see live."""
        read = self._read(lag)
        live = self._live(live_lag)
        queued = [VmSpec.from_bytes(read[key][0]) for key in (KEYS.queue(s.shard, s.ref) for s in self.specs)
                  if key in read]
        max_hosts, per_host = bindings.bind_limits(MAX_TXN_OPS)
        by_host: dict[str, list[VmSpec]] = {}
        writers: dict = {}
        readers: dict = {}
        for spec in queued:
            host = data.draw(st.sampled_from([None, *HOSTS]))
            if host is None or (host not in by_host and len(by_host) >= max_hosts) \
                    or len(by_host.get(host, [])) >= per_host:
                continue
            zone = HOSTS[host]
            writes = (zone, spec.zone_group) if zone and spec.zone_group else None
            reads = (zone, spec.zone_affinity_group) if zone and spec.zone_affinity_group else None
            # As the scheduler: a count written by one host's bind is in no other host's.
            if (writes and (writers.get(writes, host) != host or readers.get(writes, {host}) != {host})) or \
                    (reads and writers.get(reads, host) != host):
                continue
            if writes:
                writers[writes] = host
            if reads:
                readers.setdefault(reads, set()).add(host)
            by_host.setdefault(host, []).append(spec)
        if not by_host:
            return
        built = []
        for host, specs in by_host.items():
            zone = HOSTS[host]
            built.append(bindings.bind(KEYS, self._host(read, host, live),
                                       [(s, read[KEYS.queue(s.shard, s.ref)][2]) for s in specs], zone=zone,
                                       zone_counts=self._counts(read, bindings.bind_zone_ids(zone, specs)), at=1))
        fenced, committed = self.etcd.txn([ops.present(FENCE)], [t.nested() for t in built])
        assert fenced
        for txn, ok, specs in zip(built, committed, by_host.values(), strict=True):
            if ok:
                for spec in specs:
                    assert self.where[spec.ref] == "queue", "bound from a queue entry that was gone"
                    self.where[spec.ref] = txn.host
                self._check_left(txn)
        self._committed()

    @rule(data=st.data(), lag=st.integers(0, 3), live_lag=st.integers(0, 3))
    def bind_set(self, data, lag: int, live_lag: int) -> None:
        """The scheduler: queued members of a set onto hosts (several per host and per
        zone), in ONE flat txn nested under the fence, with the set's record rewritten;
        a set made with a plan it saw live consumes the plan's hold on every planned
        host (with members or not)."""
        read = self._read(lag)
        live = self._live(live_lag)
        queued = [VmSpec.from_bytes(read[key][0]) for key in (KEYS.queue(s.shard, s.ref) for s in self.specs)
                  if key in read]
        if not queued:
            return
        members = data.draw(st.lists(st.sampled_from(queued), min_size=1, max_size=4, unique_by=lambda s: s.ref))
        plan = data.draw(st.sampled_from(["", *sorted(live)]))
        by_host: dict[str, list[VmSpec]] = {h: [] for h in self.plans.get(plan, {})}
        for spec in members:
            by_host.setdefault(data.draw(st.sampled_from(list(HOSTS))), []).append(spec)
        ids = set().union(*(bindings.bind_zone_ids(HOSTS[h], specs) for h, specs in by_host.items()))
        built = bindings.bind_set(
            KEYS, [bindings.SetHost(self._host(read, h, live), HOSTS[h],
                                    [(s, read[KEYS.queue(s.shard, s.ref)][2]) for s in specs])
                   for h, specs in by_host.items()],
            zone_counts=self._counts(read, ids), record=(SET_KEY, read[SET_KEY][2], b"placed"), at=1, plan=plan)
        if built.cost.ops > MAX_TXN_OPS - 1:
            return  # the store sends no such txn (the scheduler fails the set instead)
        fenced, committed = self.etcd.txn([ops.present(FENCE)], [ops.txn(built.compares, built.writes)])
        assert fenced
        if committed[0]:
            for host, specs in by_host.items():
                for spec in specs:
                    assert self.where[spec.ref] == "queue", "bound from a queue entry that was gone"
                    self.where[spec.ref] = host
                assert HostAllocation.from_bytes(self.etcd.kv[KEYS.host_alloc(host)][0]) == built.allocations[host]
            for zg, n in built.zone_counts.items():
                kv = self.etcd.kv.get(KEYS.zone_group(*zg))
                assert (decode(kv[0]) if kv else 0) == n
            assert self.etcd.kv[SET_KEY][0] == b"placed"
            if plan:  # consumed in the same txn: its key and its room on every planned host
                assert KEYS.hold(plan) not in self.etcd.kv
                assert all(plan not in built.allocations[h].holds for h in self.plans[plan])
            self.etcd.kv[SET_KEY] = (b"pending", *self.etcd.kv[SET_KEY][1:])  # the next set, in the model
            self._committed()

    @rule(data=st.data(), lag=st.integers(0, 3),
          room=st.builds(HeldRoom, st.builds(Resources, st.integers(1, 3), st.integers(1, 3), st.integers(0, 3)),
                         st.integers(1, 2), st.sampled_from([{}, {"g1": 1}, {"g2": 2}])))
    def hold(self, data, lag: int, room: HeldRoom) -> None:
        """A plan's hold, on one or two hosts as read."""
        hosts = data.draw(st.lists(st.sampled_from(list(HOSTS)), min_size=1, max_size=2, unique=True))
        if self._make_hold(self._read(lag), hosts, room):
            self._committed()

    @precondition(lambda self: any(KEYS.hold(plan) in self.etcd.kv for plan in self.plans))
    @rule(data=st.data())
    def hold_ends(self, data) -> None:
        """A hold's lease expires: its key goes, its room stays in the allocations (stale)."""
        plan = data.draw(st.sampled_from(sorted(p for p in self.plans if KEYS.hold(p) in self.etcd.kv)))
        assert self.etcd.txn([], [ops.delete(KEYS.hold(plan))])[0]
        self._committed()

    @rule(data=st.data(), lag=st.integers(0, 3))
    def fail_set(self, data, lag: int) -> None:
        """A set failed at its deadline: its pending members (as read) removed, all or none."""
        read = self._read(lag)
        queued = [(VmSpec.from_bytes(read[key][0]), read[key][2])
                  for key in (KEYS.queue(s.shard, s.ref) for s in self.specs) if key in read]
        if not queued:
            return
        drawn = data.draw(st.lists(st.sampled_from(queued), min_size=1, max_size=4, unique_by=lambda m: m[0].ref))
        compares, writes = [ops.mod_revision_is(SET_KEY, read[SET_KEY][2])], [ops.put(SET_KEY, b"pending")]
        members = []
        for spec, revision in drawn:
            c, w = bindings.remove_pending(KEYS, spec, revision)
            # A real failure is cut into parts that each fit (scheduling.failure_parts:
            # members may take more while pending than their admission did); this is one.
            if members and max(len(compares) + len(c), len(writes) + len(w)) > MAX_TXN_OPS:
                break
            members.append((spec, revision))
            compares += c
            writes += w
        if self.etcd.txn(compares, writes)[0]:
            for spec, _revision in members:
                assert self.where[spec.ref] == "queue", "removed from a queue entry that was gone"
                self.where[spec.ref] = None
            self._committed()

    def _unbind(self, data, lag: int, *, requeue, guards: int) -> None:
        read = self._read(lag)
        host = data.draw(st.sampled_from(list(HOSTS)))
        prefix = KEYS.bindings_prefix(host)
        bound = [(key, kv) for key, kv in read.items() if key.startswith(prefix)]
        if not bound:
            return
        limit = bindings.unbinds_per_txn(MAX_TXN_OPS, guards=guards)
        chosen = data.draw(st.lists(st.sampled_from(bound), min_size=1, max_size=limit, unique=True))
        unbinds = [Unbind(Binding.from_bytes(kv[0]), kv[2], requeue(data), "Why", "m") for _key, kv in chosen]
        guard = [ops.present(FENCE), ops.present(FENCE)][:guards]
        txn = bindings.unbind(KEYS, self._host(read, host), unbinds, tombstone_lease=7,
                              zone_counts=self._counts(read, bindings.unbind_zone_ids(u.binding for u in unbinds)),
                              at=1, guard=guard)
        ok, _ = self.etcd.txn(txn.compares, txn.writes)
        if ok:
            for u in unbinds:
                assert self.where[u.binding.spec.ref] == host, "unbound from a host it was not on"
                self.where[u.binding.spec.ref] = "queue" if u.requeue else None
                # The proof its agent needs to destroy a copy still on the host.
                tombstone = Tombstone.FromString(self.etcd.kv[KEYS.tombstone(host, u.binding.spec.uid)][0])
                assert tombstone.reason == ("moved" if u.requeue else "deleted")
            self._check_left(txn)
            self._committed()

    @rule(data=st.data(), lag=st.integers(0, 3))
    def remove(self, data, lag: int) -> None:
        """The agent: VMs it destroyed (being deleted) go with their spec and status."""
        self._unbind(data, lag, requeue=lambda data: False, guards=0)

    @rule(data=st.data(), lag=st.integers(0, 3))
    def requeue(self, data, lag: int) -> None:
        """The agent: evicted VMs it destroyed go back to their shard's queue."""
        self._unbind(data, lag, requeue=lambda data: True, guards=0)

    @rule(data=st.data(), lag=st.integers(0, 3))
    def move(self, data, lag: int) -> None:
        """The host evictor: a dead host's VMs, some queued again, some removed, under a fence."""
        self._unbind(data, lag, requeue=lambda data: data.draw(st.booleans()), guards=2)

    @rule(data=st.data(), lag=st.integers(0, 3))
    def relabel(self, data, lag: int) -> None:
        """A spec change (as VmStore.update_spec makes it): the spec and its copy, the
        queue entry or the binding, rewritten in one txn compared as read."""
        read = self._read(lag)
        spec = data.draw(st.sampled_from(self.specs))
        spec_kv = read.get(KEYS.vm_spec(spec.ref))
        if spec_kv is None:
            return
        changed = replace(VmSpec.from_bytes(spec_kv[0]), labels={"n": str(self.etcd.revision)})
        copies = [key for key in (KEYS.queue(spec.shard, spec.ref), *(KEYS.binding(h, spec.ref) for h in HOSTS))
                  if key in read]
        compares = [ops.mod_revision_is(KEYS.vm_spec(spec.ref), spec_kv[2])]
        writes = [ops.put(KEYS.vm_spec(spec.ref), changed.to_bytes())]
        for key in copies:
            compares.append(ops.mod_revision_is(key, read[key][2]))
            value = changed.to_bytes() if key.startswith(KEYS.queue_prefix(spec.shard)) else \
                replace(Binding.from_bytes(read[key][0]), spec=changed).to_bytes()
            writes.append(ops.put(key, value))
        if self.etcd.txn(compares, writes)[0]:
            self._committed()

    @rule(data=st.data(), lag=st.integers(0, 3),
          resources=st.builds(Resources, st.integers(1, 6), st.integers(1, 6), st.integers(0, 6)))
    def resize(self, data, lag: int, resources: Resources) -> None:
        """A bound VM's resize (as VmStore.update_spec makes it): spec, binding and the
        host's allocation in one txn, built by bindings.resize from what was read."""
        read = self._read(lag)
        spec = data.draw(st.sampled_from(self.specs))
        spec_kv = read.get(KEYS.vm_spec(spec.ref))
        host = next((h for h in HOSTS if KEYS.binding(h, spec.ref) in read), None)
        if spec_kv is None or host is None:
            return
        binding_kv = read[KEYS.binding(host, spec.ref)]
        binding = Binding.from_bytes(binding_kv[0])
        changed = replace(VmSpec.from_bytes(spec_kv[0]), resources=resources)
        before = self._host(read, host)
        try:
            txn = bindings.resize(KEYS, before, binding, binding_kv[2], changed, ALLOCATABLE[host])
        except HostFull as full:
            # Refused only for a dimension it grows past the allocatable (any growth without one).
            grown = [d for d in bindings.DIMENSIONS
                     if getattr(resources, d) > getattr(binding.spec.resources, d)]
            assert full.dimensions and set(full.dimensions) <= set(grown)
            limit = ALLOCATABLE[host]
            if limit is not None:  # every hold's room counted as taken (live or not: conservative)
                held = holds.held_total(before.allocation.holds, before.allocation.holds).resources
                after = before.allocation.resources + resources - binding.spec.resources + held
                assert all(getattr(after, d) > getattr(limit, d) for d in full.dimensions)
            return
        ok, _ = self.etcd.txn([ops.mod_revision_is(KEYS.vm_spec(spec.ref), spec_kv[2]), *txn.compares],
                              [ops.put(KEYS.vm_spec(spec.ref), changed.to_bytes()), *txn.writes])
        if ok:
            assert self.where[spec.ref] == host, "resized on a host it was not on"
            self._check_left(txn)
            limit = ALLOCATABLE[host]
            grown = [d for d in bindings.DIMENSIONS if getattr(resources, d) > getattr(binding.spec.resources, d)]
            assert limit is not None or not grown
            # A committed growth never overshoots the host, nor grows into room a plan
            # holds there (the allocation as committed carries every hold it had).
            live = {plan for plan in self.plans if KEYS.hold(plan) in self.etcd.kv}
            assert txn.allocation.holds == before.allocation.holds
            held = holds.held_total(txn.allocation.holds, live).resources
            for d in grown:
                assert getattr(txn.allocation.resources + held, d) <= getattr(limit, d)
            self._committed()

    @precondition(lambda self: any(w is None for w in self.where.values()))
    @rule(data=st.data())
    def create_again(self, data) -> None:
        spec = data.draw(st.sampled_from([s for s in self.specs if self.where[s.ref] is None]))
        self._create(spec)
        self._committed()

    def _check_left(self, txn: bindings.HostTxn) -> None:
        """What the builder said its txn leaves is what the store holds."""
        assert HostAllocation.from_bytes(self.etcd.kv[KEYS.host_alloc(txn.host)][0]) == txn.allocation
        for zg, n in txn.zone_counts.items():
            kv = self.etcd.kv.get(KEYS.zone_group(*zg))
            assert (decode(kv[0]) if kv else 0) == n

    # --- what must always hold --------------------------------------------------------------

    @invariant()
    def allocations_and_counts_are_what_the_bindings_imply(self) -> None:
        implied = {host: HostAllocation() for host in HOSTS}
        counts: dict = {}
        for key, (value, *_rest) in self.etcd.kv.items():
            if key.startswith(KEYS.bindings_prefix()):
                b = Binding.from_bytes(value)
                implied[b.host] = implied[b.host].plus(b.spec.resources, group=b.spec.host_group)
                if b.zone and b.spec.zone_group:
                    counts[(b.zone, b.spec.zone_group)] = counts.get((b.zone, b.spec.zone_group), 0) + 1
        for host, allocation in implied.items():
            kv = self.etcd.kv.get(KEYS.host_alloc(host))
            stored = HostAllocation.from_bytes(kv[0]) if kv else HostAllocation()
            assert replace(stored, holds={}) == allocation, host
        stored = {KEYS.parse_zone_group_key(key): decode(value) for key, (value, *_rest) in self.etcd.kv.items()
                  if key.startswith(KEYS.zones_prefix())}
        assert stored == counts

    @invariant()
    def a_live_hold_stays_where_it_was_made(self) -> None:
        """Every hold in an allocation is one a plan made there, unchanged; while the
        plan's key lives, each host it was made on still holds it."""
        for host in HOSTS:
            kv = self.etcd.kv.get(KEYS.host_alloc(host))
            for plan, room in (HostAllocation.from_bytes(kv[0]).holds if kv else {}).items():
                assert self.plans[plan].get(host) == room, (host, plan)
        for plan, rooms in self.plans.items():
            if KEYS.hold(plan) in self.etcd.kv:
                for host, room in rooms.items():
                    assert HostAllocation.from_bytes(self.etcd.kv[KEYS.host_alloc(host)][0]).holds.get(plan) == room

    @invariant()
    def each_vm_is_in_exactly_one_place(self) -> None:
        for spec in self.specs:
            where = self.where[spec.ref]
            queued = KEYS.queue(spec.shard, spec.ref) in self.etcd.kv
            hosts = [h for h in HOSTS if KEYS.binding(h, spec.ref) in self.etcd.kv]
            assert queued == (where == "queue")
            assert hosts == ([where] if where not in ("queue", None) else [])
            assert (KEYS.vm_spec(spec.ref) in self.etcd.kv) == (where is not None)
            assert (KEYS.vm_status(spec.ref) in self.etcd.kv) == (where is not None)
            if hosts:
                binding = Binding.from_bytes(self.etcd.kv[KEYS.binding(hosts[0], spec.ref)][0])
                assert binding.zone == (HOSTS[hosts[0]] if spec.zone_group else "")

    @invariant()
    def a_vm_holds_its_port_and_address_until_it_is_removed(self) -> None:
        """Requeued or bound, a VM keeps its NIC's port, static address and MAC; the
        txn that removes it gives them back."""
        for spec in self.specs:
            alive = self.where[spec.ref] is not None
            for i, nic in enumerate(spec.nics):
                assert (KEYS.port(nic.network_uid, spec.ref, i) in self.etcd.kv) == alive
                if nic.static:
                    assert (KEYS.address(nic.backing, nic.ip) in self.etcd.kv) == alive
                if nic.mac:
                    assert (KEYS.mac(nic.backing, nic.mac) in self.etcd.kv) == alive

    @invariant()
    def every_copy_of_a_spec_is_the_spec(self) -> None:
        for spec in self.specs:
            where, kv = self.where[spec.ref], self.etcd.kv
            if where == "queue":
                assert kv[KEYS.queue(spec.shard, spec.ref)][0] == kv[KEYS.vm_spec(spec.ref)][0]
            elif where is not None:
                copy_ = Binding.from_bytes(kv[KEYS.binding(where, spec.ref)][0]).spec
                assert copy_ == VmSpec.from_bytes(kv[KEYS.vm_spec(spec.ref)][0])


BindingMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=25, deadline=None)
test_binding_rules_hold_against_the_model = BindingMachine.TestCase


# --- budgets ------------------------------------------------------------------------------

def stale_host(name: str) -> HostRead:
    """A host whose allocation carries more stale holds (plans not live) than one
    change drops: its binds pay the most hold compares."""
    return HostRead(name, HostAllocation(holds={f"old{i}": HeldRoom(Resources(1, 1, 1), 1) for i in range(3)}), 1,
                    live=())


@pytest.mark.parametrize("limit", [8, 16, 128, 4096])
def test_the_fullest_bind_fits_the_limit(limit: int) -> None:
    """Every host full of the costliest VMs (each counted in a zone group and relying
    on another): host groups + the largest group's ops <= max_txn_ops."""
    hosts, per_host = bindings.bind_limits(limit)
    assert hosts >= 1 and per_host >= 1
    specs = [make_spec(i, Resources(1, 1, 1), f"g{i}", Scope.ZONE, f"a{i}", Scope.ZONE) for i in range(per_host)]
    group = bindings.bind(KEYS, stale_host("h"), [(s, 1) for s in specs], zone="z", zone_counts={}, at=0)
    FakeEtcd._check([ops.present(FENCE)], [group.nested()] * hosts, limit)
    assert hosts + group.cost.ops <= limit


@pytest.mark.parametrize("limit", [8, 16, 128, 4096])
@pytest.mark.parametrize("guards", [0, 2])
def test_the_fullest_unbind_fits_the_limit(limit: int, guards: int) -> None:
    n = bindings.unbinds_per_txn(limit, guards=guards)
    # The costliest to remove (bindings.worst_spec): counted in a zone group, with
    # bootstrap data, 8 static NICs (a port and an address each) and 16 disk
    # attachments to delete.
    specs = [bindings.worst_spec(i) for i in range(n)]
    assert len(specs[0].nics) == 8 and all(nic.static for nic in specs[0].nics) and len(specs[0].disks) == 16
    for requeue in (True, False):
        txn = bindings.unbind(KEYS, HostRead("h"), [Unbind(Binding(s, "h", "z"), 1, requeue) for s in specs],
                              zone_counts={}, at=0, tombstone_lease=7, guard=[ops.present(FENCE)] * guards)
        assert txn.cost.ops <= limit or n == 1  # below ~40 ops not even one such VM fits: 1 is the floor
    # One more would not fit (at a limit where one fits at all).
    if n > 1:
        more = [bindings.worst_spec(i) for i in range(n + 1)]
        txn = bindings.unbind(KEYS, HostRead("h"), [Unbind(Binding(s, "h", "z"), 1, False) for s in more],
                              zone_counts={}, at=0, tombstone_lease=7, guard=[ops.present(FENCE)] * guards)
        assert txn.cost.ops > limit


@pytest.mark.parametrize("limit", [8, 16, 128, 4096])
def test_the_largest_set_bind_fits_the_limit(limit: int) -> None:
    """A set of ``set_bind_limit`` of the costliest members, each on a host and in a zone
    of its own, fits one txn nested under the fence; one more member would not."""
    n = bindings.set_bind_limit(limit)

    def built(members: int) -> bindings.SetTxn:
        hosts = [bindings.SetHost(stale_host(f"h{i}"), f"z{i}", [(make_spec(i, Resources(1, 1, 1), f"g{i}",
                                                                           Scope.ZONE, f"a{i}", Scope.ZONE), 1)])
                 for i in range(members)]
        return bindings.bind_set(KEYS, hosts, zone_counts={}, record=(SET_KEY, 1, b""), at=0, plan="p")

    txn = built(n)
    assert txn.cost == bindings.set_bind_cost(n)
    if bindings.set_bind_cost(1).ops > limit - 1:
        return  # not even one such member fits (the set is refused at admission)
    FakeEtcd._check([ops.present(FENCE)], [ops.txn(txn.compares, txn.writes)], limit)
    assert txn.cost.ops <= limit - 1
    if limit >= 16:
        assert built(n + 1).cost.ops > limit - 1


def test_a_set_bind_writes_a_shared_zone_count_once() -> None:
    """Two members counted in one zone group, on two hosts of one zone (and a third
    relying on that group there): the count is compared and written once, with +2."""
    etcd = FakeEtcd()
    etcd.kv[SET_KEY] = (b"pending", 1, 1, 1)
    a = make_spec(1, Resources(1, 1, 1), "g", Scope.ZONE, "", Scope.HOST)
    b = make_spec(2, Resources(1, 1, 1), "g", Scope.ZONE, "", Scope.HOST)
    c = make_spec(3, Resources(1, 1, 1), "", Scope.HOST, "g", Scope.ZONE)
    for spec in (a, b, c):
        etcd.txn([], [ops.put(KEYS.queue(0, spec.ref), spec.to_bytes())])
    queued = {spec.ref: etcd.kv[KEYS.queue(0, spec.ref)][2] for spec in (a, b, c)}
    txn = bindings.bind_set(KEYS, [bindings.SetHost(HostRead("h1"), "a", [(a, queued[a.ref]), (c, queued[c.ref])]),
                                   bindings.SetHost(HostRead("h2"), "a", [(b, queued[b.ref])])],
                            zone_counts={}, record=(SET_KEY, 1, b"placed"), at=1)
    count_key = KEYS.zone_group("a", a.zone_group)
    assert sum(1 for c_ in txn.compares if c_.key == count_key) == 1
    assert sum(1 for w in txn.writes if w.request_put.key == count_key) == 1
    assert etcd.txn(txn.compares, txn.writes)[0]
    assert decode(etcd.kv[count_key][0]) == 2 == txn.zone_counts[("a", a.zone_group)]
    assert etcd.kv[SET_KEY][0] == b"placed"
    # Built from the same reads again: refused as a whole (nothing written twice).
    assert not etcd.txn(txn.compares, txn.writes)[0]
    with pytest.raises(ValueError):
        bindings.bind_set(KEYS, [bindings.SetHost(HostRead("h1"), "a", [(a, 1)]),
                                 bindings.SetHost(HostRead("h1"), "a", [(b, 1)])],
                          zone_counts={}, record=(SET_KEY, 1, b""), at=1)


def test_holds_same_is_what_the_allocation_and_counts_depend_on() -> None:
    base = make_spec(0, Resources(1, 1, 1), "g1", Scope.ZONE, "", Scope.HOST)
    assert bindings.holds_same(base, base.marked_deleted(5))
    assert bindings.holds_same(base, replace(base, labels={"x": "y"}, flavor="other"))
    assert not bindings.holds_same(base, make_spec(0, Resources(2, 1, 1), "g1", Scope.ZONE, "", Scope.HOST))
    assert not bindings.holds_same(base, make_spec(0, Resources(1, 1, 1), "g2", Scope.ZONE, "", Scope.HOST))
    assert not bindings.holds_same(base, make_spec(0, Resources(1, 1, 1), "g1", Scope.HOST, "", Scope.HOST))


def test_a_resize_moves_the_allocation_by_the_delta_and_refuses_a_dimension_past_the_allocatable() -> None:
    etcd = FakeEtcd()
    spec = make_spec(1, Resources(2, 2, 2), "g", Scope.HOST, "", Scope.HOST)
    other = make_spec(2, Resources(1, 1, 1), "", Scope.HOST, "", Scope.HOST)
    placed = bindings.bind(KEYS, HostRead("h"), [(spec, 0), (other, 0)], zone="", zone_counts={}, at=5, adopting=True)
    assert etcd.txn(placed.compares, placed.writes)[0]
    alloc_kv, binding_kv = etcd.kv[KEYS.host_alloc("h")], etcd.kv[KEYS.binding("h", spec.ref)]
    host = HostRead("h", HostAllocation.from_bytes(alloc_kv[0]), alloc_kv[2])
    binding = Binding.from_bytes(binding_kv[0])
    limit = Resources(4, 8, 3)
    # Growing memory to the limit while shrinking disk: fits; count and group stay.
    grown = replace(spec, resources=Resources(3, 7, 1))
    txn = bindings.resize(KEYS, host, binding, binding_kv[2], grown, limit)
    assert txn.allocation == HostAllocation(Resources(4, 8, 2), 2, {spec.host_group: 1})
    # One dimension over: refused by name, whatever the others do.
    with pytest.raises(HostFull) as full:
        bindings.resize(KEYS, host, binding, binding_kv[2], replace(spec, resources=Resources(4, 1, 1)), limit)
    assert full.value.dimensions == ["vcpus"] and full.value.registered
    # A host already over its allocatable (its overcommit lowered) still takes a shrink.
    tight = Resources(1, 1, 1)
    assert bindings.resize(KEYS, host, binding, binding_kv[2], replace(spec, resources=Resources(1, 1, 1)),
                           tight).allocation.resources == Resources(2, 2, 2)
    # Without a registration: no growth at all.
    with pytest.raises(HostFull) as unregistered:
        bindings.resize(KEYS, host, binding, binding_kv[2], grown, None)
    assert not unregistered.value.registered and unregistered.value.dimensions == ["vcpus", "memory_mib"]
    # Groups never change by a resize.
    with pytest.raises(ValueError):
        bindings.resize(KEYS, host, binding, binding_kv[2], replace(grown, anti_affinity_group="h"), limit)
    assert etcd.txn(txn.compares, txn.writes)[0]
    assert Binding.from_bytes(etcd.kv[KEYS.binding("h", spec.ref)][0]).spec == grown
    assert HostAllocation.from_bytes(etcd.kv[KEYS.host_alloc("h")][0]) == txn.allocation
    # Built from the read before it: refused as a whole.
    stale = bindings.resize(KEYS, host, binding, binding_kv[2], replace(spec, resources=Resources(1, 1, 1)), limit)
    assert not etcd.txn(stale.compares, stale.writes)[0]


def test_a_resize_does_not_grow_into_room_a_plan_holds_on_the_host() -> None:
    """Every hold in the allocation counts as taken against the allocatable (whether
    its plan is still live is not known to a resize: conservatively all), and a
    resize keeps the holds as they are."""
    spec = make_spec(1, Resources(2, 2, 2), "", Scope.HOST, "", Scope.HOST)
    binding = bindings.as_bound(spec, "h", "")
    held = HostAllocation(Resources(2, 2, 2), 1, {}, {"live": HeldRoom(Resources(1, 2, 0), 1),
                                                       "stale": HeldRoom(Resources(1, 0, 0), 1)})
    host = HostRead("h", held, 3)
    limit = Resources(4, 8, 8)
    # Allocated 2 + held 2 vcpus: the host's 4 are all taken, no vcpu more.
    with pytest.raises(HostFull) as full:
        bindings.resize(KEYS, host, binding, 7, replace(spec, resources=Resources(3, 2, 2)), limit)
    assert full.value.dimensions == ["vcpus"] and "plans hold" in str(full.value)
    # Memory: 2 allocated + 2 held of 8: growing by 4 fits exactly, by 5 does not.
    txn = bindings.resize(KEYS, host, binding, 7, replace(spec, resources=Resources(2, 6, 2)), limit)
    assert txn.allocation == replace(held, resources=Resources(2, 6, 2)), "the holds kept as they were"
    with pytest.raises(HostFull):
        bindings.resize(KEYS, host, binding, 7, replace(spec, resources=Resources(2, 7, 2)), limit)
    # A shrink always fits, holds or not.
    assert bindings.resize(KEYS, host, binding, 7, replace(spec, resources=Resources(1, 1, 1)),
                           Resources(1, 1, 1)).allocation.resources == Resources(1, 1, 1)


def test_an_adopted_vm_is_bound_without_a_queue_entry_even_under_maintenance() -> None:
    etcd = FakeEtcd()
    etcd.txn([], [ops.put(KEYS.host_maintenance("h"), b"")])
    spec = make_spec(1, Resources(2, 3, 4), "g", Scope.ZONE, "", Scope.HOST)
    placed = bindings.bind(KEYS, HostRead("h"), [(spec, 0)], zone="z", zone_counts={}, at=5)
    assert not etcd.txn(placed.compares, placed.writes)[0], "a placement must not land under maintenance"
    adopted = bindings.bind(KEYS, HostRead("h"), [(spec, 0)], zone="z", zone_counts={}, at=5, adopting=True)
    assert etcd.txn(adopted.compares, adopted.writes)[0]
    assert KEYS.queue(spec.shard, spec.ref) not in etcd.kv
    assert Binding.from_bytes(etcd.kv[KEYS.binding("h", spec.ref)][0]).zone == "z"
    assert HostAllocation.from_bytes(etcd.kv[KEYS.host_alloc("h")][0]).vm_count == 1
    assert decode(etcd.kv[KEYS.zone_group("z", spec.zone_group)][0]) == 1


def test_a_bind_keeps_live_holds_drops_a_stale_one_comparing_its_key_absent_and_a_set_consumes_its_plan() -> None:
    etcd = FakeEtcd()
    spec = make_spec(1, Resources(1, 1, 1), "", Scope.HOST, "", Scope.HOST)
    etcd.txn([], [ops.put(KEYS.queue(0, spec.ref), spec.to_bytes())])
    live, stale = HeldRoom(Resources(2, 2, 2), 1, {"g": 1}), HeldRoom(Resources(3, 3, 3), 2)
    before = HostAllocation(Resources(1, 1, 1), 1, holds={"live": live, "stale": stale})
    etcd.txn([], [ops.put(KEYS.host_alloc("h1"), before.to_bytes()), ops.put(KEYS.hold("live"), b"")])
    revision = etcd.kv[KEYS.host_alloc("h1")][2]
    queued = etcd.kv[KEYS.queue(0, spec.ref)][2]
    # A writer that does not know which plans are live keeps both, compares neither.
    unknown = bindings.bind(KEYS, HostRead("h1", before, revision), [(spec, queued)], zone="", zone_counts={}, at=1)
    assert unknown.allocation.holds == before.holds
    assert not any(c.key.startswith(KEYS.holds_prefix()) for c in unknown.compares)
    # Seen live: "live"; the stale one is dropped with holds/stale compared absent.
    txn = bindings.bind(KEYS, HostRead("h1", before, revision, live={"live"}), [(spec, queued)], zone="",
                        zone_counts={}, at=1)
    assert txn.allocation.holds == {"live": live}
    assert txn.allocation.resources == Resources(2, 2, 2) and txn.allocation.vm_count == 2
    assert [c.key for c in txn.compares if c.key.startswith(KEYS.holds_prefix())] == [KEYS.hold("stale")]
    # A lagging view that misses the live plan: the bind fails on the absent compare.
    lagging = bindings.bind(KEYS, HostRead("h1", before, revision, live=()), [(spec, queued)], zone="",
                            zone_counts={}, at=1)
    assert "live" not in lagging.allocation.holds
    assert not etcd.txn(lagging.compares, lagging.writes)[0]
    assert etcd.txn(txn.compares, txn.writes)[0]
    # The plan's set consumes it: the key compared present and deleted, its room gone.
    etcd.kv[SET_KEY] = (b"pending", 1, 1, 1)
    member = make_spec(2, Resources(1, 1, 1), "", Scope.HOST, "", Scope.HOST)
    etcd.txn([], [ops.put(KEYS.queue(0, member.ref), member.to_bytes())])
    after = HostRead("h1", txn.allocation, etcd.kv[KEYS.host_alloc("h1")][2], live={"live"})
    set_txn = bindings.bind_set(KEYS, [bindings.SetHost(after, "", [(member, etcd.kv[KEYS.queue(0, member.ref)][2])])],
                                zone_counts={}, record=(SET_KEY, 1, b"placed"), at=2, plan="live")
    assert set_txn.allocations["h1"].holds == {}
    assert set_txn.allocations["h1"].resources == Resources(3, 3, 3)  # grew by its member only, beyond the hold
    assert etcd.txn(set_txn.compares, set_txn.writes)[0]
    assert KEYS.hold("live") not in etcd.kv
    # Built again (the hold ended meanwhile): refused as a whole.
    assert not etcd.txn(set_txn.compares, set_txn.writes)[0]
