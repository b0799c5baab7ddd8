"""What a host agent reads and writes: its hosts' registrations (heartbeat),
the bindings it must make true, VM statuses, and the final removal of a VM.

Status writes are batched into one round trip of nested txns, each guarded by
its binding's create_revision, so a status never resurrects a deleted VM.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from controlplane.etcd import EtcdClient, ops
from controlplane.models import Binding, HostAllocation, HostRegistration, VmRef, VmState, VmStatus, now_ns
from controlplane.store.keys import Keys
from controlplane.store.tombstones import DELETED, MOVED, Tombstones
from controlplane.store.zones import ZoneGroupId, ZoneStore, add_delta, counted_changes


@dataclass(frozen=True, slots=True)
class BoundVm:
    binding: Binding
    create_revision: int  # of the binding key: identifies this binding incarnation
    mod_revision: int

    @property
    def ref(self) -> VmRef:
        return self.binding.spec.ref


@dataclass(frozen=True, slots=True)
class BindingChange:
    host: str
    ref: VmRef
    bound: BoundVm | None  # None: the binding is gone


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    host: str
    ref: VmRef
    binding_create_revision: int
    status: VmStatus


class AgentStore:
    def __init__(self, client: EtcdClient, keys: Keys):
        self._etcd = client
        self._keys = keys
        self._tombstones = Tombstones(client, keys)

    async def register(self, registrations: Sequence[HostRegistration], lease_id: int) -> None:
        """Put host registrations under the heartbeat lease, and give each host an
        (empty) allocation if it has none, so a host whose agent dies stays known
        (MISSING) instead of vanishing. Idempotent."""
        k = self._keys
        empty = HostAllocation().to_bytes()
        requests = []
        for r in registrations:
            requests.append(ops.put(k.host_reg(r.host), r.to_bytes(), lease=lease_id))
            requests.append(ops.txn([ops.absent(k.host_alloc(r.host))], [ops.put(k.host_alloc(r.host), empty)]))
        await self._etcd.txn_chunked(requests)

    def _bound(self, kv) -> BoundVm:
        return BoundVm(Binding.from_bytes(kv.value), kv.create_revision, kv.mod_revision)

    async def list_bindings(self, hosts: Sequence[str]) -> tuple[list[BoundVm], int]:
        """Bindings of ``hosts`` at one revision (watch from revision + 1)."""
        start, end = self._keys.bindings_range(list(hosts))
        kvs, revision = await self._etcd.range_all(start, end)
        wanted = set(hosts)
        bound = [self._bound(kv) for kv in kvs if self._keys.host_of_binding(kv.key) in wanted]
        return bound, revision

    async def watch_bindings(self, hosts: Sequence[str], start_revision: int
                             ) -> AsyncIterator[tuple[list[BindingChange], int]]:
        """Binding changes of ``hosts``; one watch over the key range that spans
        them all (cheap when the host ids of one agent are contiguous)."""
        start, end = self._keys.bindings_range(list(hosts))
        wanted = set(hosts)
        async for batch in self._etcd.watch(start, end, start_revision=start_revision):
            changes = []
            for event in batch.events:
                host = self._keys.host_of_binding(event.kv.key)
                if host not in wanted:
                    continue
                if event.is_delete:
                    changes.append(BindingChange(host, self._keys.ref_at_end(event.kv.key), None))
                else:
                    bound = self._bound(event.kv)
                    changes.append(BindingChange(host, bound.ref, bound))
            yield changes, batch.revision

    async def write_statuses(self, updates: Sequence[StatusUpdate]) -> list[bool]:
        """Write statuses in one round trip (chunked). Each is applied only if its
        binding still exists with the same create_revision; returns which were."""
        k = self._keys
        nested = [
            ops.txn([ops.create_revision_is(k.binding(u.host, u.ref), u.binding_create_revision)],
                    [ops.put(k.vm_status(u.ref), u.status.to_bytes())])
            for u in updates
        ]
        return [response.response_txn.succeeded for response in await self._etcd.txn_chunked(nested)]

    def max_removals_per_txn(self) -> int:
        """How many VMs one remove_destroyed call may take (each costs 5 txn ops)."""
        return max(1, (self._etcd.max_txn_ops - 1) // 5)

    async def remove_destroyed(self, host: str, vms: Sequence[BoundVm]) -> bool:
        """Remove VMs that the host has destroyed: their spec, status and binding
        go (an evicted VM's spec stays: it goes back to its shard's queue, PENDING),
        and the host's allocation shrinks (and the zone group count of each
        zone-scoped VM), and each VM's tombstone is written (controlplane/store/tombstones.py),
        in one txn (request records stay until their lease
        expires, so a late retry cannot make a second VM).

        Compare-and-swap on the allocation and those counts; returns False on a
        conflict (the caller retries). VMs whose binding changed incarnation (or is already
        gone, e.g. a retry of a removal that applied) are skipped, so a retry
        neither shrinks the allocation twice nor fails forever.
        """
        k = self._keys
        alloc_key = k.host_alloc(host)
        # Read the allocation and the bindings at one revision.
        read = await self._etcd.txn([], [ops.get(alloc_key)] + [ops.get(k.binding(host, vm.ref)) for vm in vms])
        alloc_kvs = read.kvs(0)
        allocation = HostAllocation.from_bytes(alloc_kvs[0].value) if alloc_kvs else HostAllocation()
        alloc_revision = alloc_kvs[0].mod_revision if alloc_kvs else 0
        current = [vm for i, vm in enumerate(vms)
                   if [kv.create_revision for kv in read.kvs(i + 1)] == [vm.create_revision]]
        if not current:
            return True
        # Zone-scoped VMs: their bindings name the zone they are counted in.
        deltas: dict[ZoneGroupId, int] = {}
        for vm in current:
            add_delta(deltas, vm.binding.zone, vm.binding.spec.zone_group, -1)
        zones = ZoneStore(self._etcd, k)
        counts, _ = await zones.read(deltas)
        zone_compares, zone_writes = counted_changes(k, counts, deltas)
        compares = [ops.mod_revision_is(alloc_key, alloc_revision), *zone_compares]
        success = list(zone_writes)
        for vm in current:
            spec = vm.binding.spec
            ref = spec.ref
            compares.append(ops.create_revision_is(k.binding(host, ref), vm.create_revision))
            allocation = allocation.minus(spec.resources, group=spec.host_group)
            if vm.binding.evicting:
                # Drained: destroyed here, so back to its shard's queue, to run elsewhere.
                status = VmStatus(VmState.PENDING, reason=vm.binding.evict_reason, message=vm.binding.evict_message,
                                  update_time_ns=now_ns(), accepted_time_ns=spec.create_time_ns)
                success += [ops.put(k.queue(spec.shard, ref), spec.to_bytes()),
                            ops.put(k.vm_status(ref), status.to_bytes())]
            else:
                success += [ops.delete(k.vm_spec(ref)), ops.delete(k.vm_status(ref))]
            success.append(ops.delete(k.binding(host, ref)))
        success.append(ops.put(alloc_key, allocation.to_bytes()))
        success += await self._tombstones.puts(host, [(vm.binding.spec, MOVED if vm.binding.evicting else DELETED)
                                                      for vm in current])
        result = await self._etcd.txn(compares, success)
        return result.succeeded
