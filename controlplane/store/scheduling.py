"""What the scheduler reads and writes: a shard's queue of pending VMs, and
binds that move VMs from the queue onto hosts.

A bind is compare-and-swap on everything it read: the shard's ownership
(fencing), each host's allocation revision (and that it is not declared dead),
each queued VM's queue entry, and the zone group counts (``zones.py``) that
zone-scoped VMs change or zone-affine VMs rely on.
Binds are batched: one etcd round trip carries one nested txn per host, so a
conflict on one host fails only that host's binds.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field

from controlplane.etcd import EtcdClient, ops, prefix_end
from controlplane.etcd.ops import Compare
from controlplane.models import Binding, HostAllocation, VmRef, VmSpec, VmState, VmStatus, now_ns
from controlplane.store.keys import Keys
from controlplane.store.zones import ZoneCount, ZoneGroupId, ZoneStore, add_delta, counted_changes


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
    """Binds onto one host, all or none: the VMs and the allocation they make."""

    host: str
    alloc_revision: int  # the allocation key's mod_revision the placement was based on
    allocation: HostAllocation  # the allocation after these binds
    vms: Sequence[QueuedVm]
    zone: str = ""  # the host's zone as placement saw it
    # Zone group counts as placement read them: those the VMs' zone_group and
    # zone_affinity_group name in ``zone`` (absent from the map: read as absent).
    zone_counts: Mapping[ZoneGroupId, ZoneCount] = field(default_factory=dict)

    def zone_ids(self) -> set[ZoneGroupId]:
        """The zone group counts this bind compares."""
        if not self.zone:
            return set()
        return {(self.zone, g) for vm in self.vms for g in (vm.spec.zone_group, vm.spec.zone_affinity_group) if g}


@dataclass(frozen=True, slots=True)
class BindResult:
    fenced: bool  # False: the shard is no longer ours; nothing was written
    committed: list[bool]  # per HostBind
    revision: int


class SchedulingStore:
    def __init__(self, client: EtcdClient, keys: Keys):
        self._etcd = client
        self._keys = keys

    def _queued(self, kv) -> QueuedVm:
        return QueuedVm(VmSpec.from_bytes(kv.value), kv.mod_revision)

    async def list_queue(self, shard: int) -> tuple[list[QueuedVm], int]:
        kvs, revision = await self._etcd.range_prefix(self._keys.queue_prefix(shard))
        return [self._queued(kv) for kv in kvs], revision

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
        """Commit binds in one round trip; each HostBind commits or fails alone.

        Not retried here: a failed HostBind means the caller's view was stale
        (another bind or an unbind on that host, or the VM left the queue).
        """
        k = self._keys
        at = now_ns()
        nested = []
        for bind in binds:
            # A host declared dead takes no binds, whatever a (lagging) host view says.
            compares = [ops.mod_revision_is(k.host_alloc(bind.host), bind.alloc_revision),
                        ops.absent(k.host_dead(bind.host)), ops.absent(k.host_maintenance(bind.host))]
            success = [ops.put(k.host_alloc(bind.host), bind.allocation.to_bytes())]
            deltas: dict[ZoneGroupId, int] = {}
            for vm in bind.vms:
                add_delta(deltas, bind.zone, vm.spec.zone_group, 1)
            for zg in bind.zone_ids():
                deltas.setdefault(zg, 0)
            zone_compares, zone_writes = counted_changes(k, bind.zone_counts, deltas)
            # Affinity only reads a count (delta 0): compare it unchanged, write nothing.
            zone_compares += [ops.mod_revision_is(k.zone_group(*zg), bind.zone_counts.get(zg, ZoneCount()).revision)
                              for zg, d in deltas.items() if d == 0]
            compares += zone_compares
            success += zone_writes
            for vm in bind.vms:
                spec = vm.spec
                queue_key = k.queue(spec.shard, spec.ref)
                compares.append(ops.mod_revision_is(queue_key, vm.queue_revision))
                status = VmStatus(VmState.SCHEDULED, host=bind.host, update_time_ns=at,
                                  accepted_time_ns=spec.create_time_ns)
                success += [
                    ops.delete(queue_key),
                    ops.put(k.binding(bind.host, spec.ref),
                            Binding(spec, bind.host, bind.zone if spec.zone_group else "").to_bytes()),
                    ops.put(k.vm_status(spec.ref), status.to_bytes()),
                ]
            nested.append(ops.txn(compares, success))
        result = await self._etcd.txn([fence] if fence is not None else [], nested)
        if not result.succeeded:
            return BindResult(False, [False] * len(binds), result.revision)
        return BindResult(True, [result.nested(i).succeeded for i in range(len(binds))], result.revision)

    def bind_limits(self) -> tuple[int, int]:
        """(host groups, VMs per host group) that one ``bind`` call may carry within
        the server's max_txn_ops. Each host group is a nested txn; etcd counts the
        parent's ops and a nested txn's ops together (hosts + the largest group <=
        the limit). A group has 3 compares and 1 put of its own, and per VM 3 ops
        and 1 compare, plus at most one zone count write or compare."""
        limit = self._etcd.max_txn_ops
        per_host = max(1, (limit // 2 - 1) // 4)  # a group's ops: at most 1 + 4 per VM
        return max(1, min(limit // 2, limit - 1 - 4 * per_host)), per_host

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

    async def write_unschedulable(self, items: Sequence[tuple[QueuedVm, str]]) -> None:
        """Record why queued VMs could not be placed (they stay queued).

        Guarded by each queue entry, so a VM bound or deleted meanwhile is not touched.
        """
        k = self._keys
        at = now_ns()
        nested = []
        for vm, message in items:
            spec = vm.spec
            status = VmStatus(VmState.PENDING, reason="NoHostFits", message=message, update_time_ns=at,
                              accepted_time_ns=spec.create_time_ns)
            nested.append(ops.txn([ops.mod_revision_is(k.queue(spec.shard, spec.ref), vm.queue_revision)],
                                  [ops.put(k.vm_status(spec.ref), status.to_bytes())]))
        if nested:
            await self._etcd.txn_chunked(nested)
