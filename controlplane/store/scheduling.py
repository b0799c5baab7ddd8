"""What the scheduler reads and writes: a shard's queue of pending VMs, and
binds that move VMs from the queue onto hosts.

A bind is compare-and-swap on everything it read: the shard's ownership
(fencing), each host's allocation revision (and that it is not declared dead),
each queued VM's queue entry, and the zone group counts (``zones.py``) that
zone-scoped VMs change or zone-affine VMs rely on; what it compares and writes
is built by ``bindings.py``.
Binds are batched: one etcd round trip carries one nested txn per host, so a
conflict on one host fails only that host's binds.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field

from controlplane.etcd import EtcdClient, ops, prefix_end
from controlplane.etcd.ops import Compare
from controlplane.models import HostAllocation, VmRef, VmSpec, VmState, VmStatus, now_ns
from controlplane.store import bindings
from controlplane.store.bindings import HostRead
from controlplane.store.keys import Keys
from controlplane.store.zones import ZoneCount, ZoneGroupId, ZoneStore


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
        """Commit binds in one round trip; each HostBind commits or fails alone
        (built by ``bindings.bind``).

        Not retried here: a failed HostBind means the caller's view was stale
        (another bind or an unbind on that host, or the VM left the queue).
        """
        at = now_ns()
        built = [bindings.bind(self._keys, HostRead(b.host, b.committed, b.alloc_revision),
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
