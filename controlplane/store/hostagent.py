"""What a host agent reads and writes: its hosts' registrations (heartbeat),
the bindings it must make true, VM statuses, the bootstrap data of its VMs (read
to deliver it; deleted once the guest bootstrapped), and the final removal of a VM.

Status writes are batched into one round trip of nested txns, each guarded by
its binding's create_revision, so a status never resurrects a deleted VM; a
status may carry writes that must land with it (:attr:`StatusUpdate.also`: the
deletion of the VM's bootstrap data and its audit record).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from controlplane import cooperative
from controlplane.etcd import EtcdClient, ops
from controlplane.etcd.ops import RequestOp
from controlplane.models import Binding, HostAllocation, HostRegistration, VmRef, VmStatus, now_ns
from controlplane.store import bindings, bootstrap
from controlplane.store.bindings import HostRead
from controlplane.store.bootstrap import BootstrapData
from controlplane.store.keys import Keys
from controlplane.store.tombstones import Tombstones
from controlplane.store.zones import ZoneStore


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
    also: tuple[RequestOp, ...] = ()
    """Writes applied with this status, in its txn (under its guard), or not at all."""


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
        # Hundreds of thousands at scale: decoded in steps, so the agent's heartbeat runs.
        ours = [kv for kv in kvs if self._keys.host_of_binding(kv.key) in wanted]
        bound = await cooperative.mapped(self._bound, ours)
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

    async def read_status(self, ref: VmRef) -> VmStatus | None:
        """The VM's status as stored (None: no VM). One get: for what an agent that
        restarted needs to know of a VM it did not make in this life."""
        kv = await self._etcd.get(self._keys.vm_status(ref))
        return VmStatus.from_bytes(kv.value) if kv is not None else None

    async def read_bootstrap(self, ref: VmRef, uid: str) -> BootstrapData | None:
        """The VM's bootstrap data (None: none or deleted). Secret: deliver it, never log it."""
        return await bootstrap.read(self._etcd, self._keys, ref, uid)

    def bootstrap_deleted(self, ref: VmRef) -> RequestOp:
        """The write that deletes the VM's bootstrap data (for :attr:`StatusUpdate.also`)."""
        return bootstrap.delete_op(self._keys, ref)

    async def write_statuses(self, updates: Sequence[StatusUpdate]) -> list[bool]:
        """Write statuses in one round trip (chunked). Each is applied, with its
        ``also``, only if its binding still exists with the same create_revision;
        returns which were."""
        k = self._keys
        nested = [
            ops.txn([ops.create_revision_is(k.binding(u.host, u.ref), u.binding_create_revision)],
                    [ops.put(k.vm_status(u.ref), u.status.to_bytes()), *u.also])
            for u in updates
        ]
        return [response.response_txn.succeeded for response in await self._etcd.txn_chunked(nested)]

    def max_removals_per_txn(self) -> int:
        """How many VMs one remove_destroyed call may take (measured on what
        ``bindings.unbind`` builds)."""
        return bindings.unbinds_per_txn(self._etcd.max_txn_ops)

    async def remove_destroyed(self, host: str, vms: Sequence[BoundVm]) -> bool:
        """Unbind VMs that the host has destroyed (``bindings.unbind``), in one txn:
        their binding goes and the host's allocation shrinks (and the zone group
        count of each zone-scoped VM); an evicted VM goes back to its shard's queue,
        PENDING, any other is removed with its spec and status (request records stay
        until their lease expires, so a late retry cannot make a second VM).

        Each VM is unbound as its binding is now (read with the allocation and the
        counts, in one round trip), so a VM deleted after its eviction began is
        removed, not queued again. Compare-and-swap on all of those; returns False on
        a conflict (the caller retries). VMs whose binding changed incarnation (or is
        already gone, e.g. a retry of a removal that applied) are skipped, so a retry
        neither shrinks the allocation twice nor fails forever.
        """
        k = self._keys
        zones = ZoneStore(self._etcd, k)
        zone_ids = sorted(bindings.unbind_zone_ids(vm.binding for vm in vms))
        # Allocation, bindings and counts at one revision.
        read = await self._etcd.txn([], [ops.get(k.host_alloc(host)), *(ops.get(k.binding(host, vm.ref)) for vm in vms),
                                         *zones.read_ops(zone_ids)])
        alloc_kvs = read.kvs(0)
        allocation = HostAllocation.from_bytes(alloc_kvs[0].value) if alloc_kvs else HostAllocation()
        unbinds = []
        for i, vm in enumerate(vms):
            kvs = read.kvs(i + 1)
            if [kv.create_revision for kv in kvs] != [vm.create_revision]:
                continue
            now = vm.binding if kvs[0].mod_revision == vm.mod_revision else Binding.from_bytes(kvs[0].value)
            # Drained: destroyed here, so back to its shard's queue, to run elsewhere.
            unbinds.append(bindings.Unbind(now, kvs[0].mod_revision, now.evicting, now.evict_reason,
                                           now.evict_message))
        if not unbinds:
            return True
        counts = {zg: ZoneStore.parse(read.kvs(1 + len(vms) + i)) for i, zg in enumerate(zone_ids)}
        missing = bindings.unbind_zone_ids(u.binding for u in unbinds) - counts.keys()
        if missing:  # the binding changed since the caller saw it
            counts.update((await zones.read(missing))[0])
        change = bindings.unbind(k, HostRead(host, allocation, alloc_kvs[0].mod_revision if alloc_kvs else 0), unbinds,
                                 zone_counts=counts, at=now_ns(), tombstone_lease=await self._tombstones.lease())
        return (await self._etcd.txn(change.compares, change.writes)).succeeded
