"""What the scheduler reads and writes: a shard's queue of pending VMs, and
binds that move VMs from the queue onto hosts.

A bind is compare-and-swap on everything it read: the shard's ownership
(fencing), each host's allocation revision (and that it is not declared dead)
and each queued VM's queue entry.
Binds are batched: one etcd round trip carries one nested txn per host, so a
conflict on one host fails only that host's binds.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from controlplane.etcd import EtcdClient, ops, prefix_end
from controlplane.etcd.ops import Compare
from controlplane.models import Binding, HostAllocation, VmRef, VmSpec, VmState, VmStatus, now_ns
from controlplane.store.keys import Keys


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
                        ops.absent(k.host_dead(bind.host))]
            success = [ops.put(k.host_alloc(bind.host), bind.allocation.to_bytes())]
            for vm in bind.vms:
                spec = vm.spec
                queue_key = k.queue(spec.shard, spec.ref)
                compares.append(ops.mod_revision_is(queue_key, vm.queue_revision))
                status = VmStatus(VmState.SCHEDULED, host=bind.host, update_time_ns=at,
                                  accepted_time_ns=spec.create_time_ns)
                success += [
                    ops.delete(queue_key),
                    ops.put(k.binding(bind.host, spec.ref), Binding(spec, bind.host).to_bytes()),
                    ops.put(k.vm_status(spec.ref), status.to_bytes()),
                ]
            nested.append(ops.txn(compares, success))
        result = await self._etcd.txn([fence] if fence is not None else [], nested)
        if not result.succeeded:
            return BindResult(False, [False] * len(binds), result.revision)
        return BindResult(True, [result.nested(i).succeeded for i in range(len(binds))], result.revision)

    def bind_limits(self) -> tuple[int, int]:
        """(host groups, VMs per host group) that one ``bind`` call may carry
        within the server's max_txn_ops (each VM costs 3 ops and 1 compare)."""
        limit = self._etcd.max_txn_ops
        return limit, max(1, (limit - 1) // 3)

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
