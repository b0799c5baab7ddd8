"""Host lifecycle in the store: moving VMs off a host that is drained or declared
dead, and the dead marker.

A drained host is alive, so its VMs are moved in two steps, never running twice:
each binding is marked *evicting* (a txn comparing its mod_revision); the host's
agent destroys the VM and then, in the txn that removes the binding and shrinks the
allocation, puts the VM back in its shard's queue (PENDING with the reason; see
AgentStore.remove_destroyed). A dead host's agent will do nothing, so its VMs are
moved at once: one transaction per batch that compares the host's allocation and
each binding's mod_revision, deletes the bindings, shrinks the allocation, queues
the VMs and sets them PENDING (built by ``bindings.unbind``, as the agent's is).
Either way a VM is never bound twice (the binding goes in the txn that queues it;
the next bind deletes the queue entry) and never lost (no step removes a VM without putting it back or releasing it). A
NEVER-restart VM is deleted instead, through the normal deletion path (quota
released, binding marked); on a dead host, deleting VMs are then removed outright.

Used by the host controller of the scheduler that owns shard 0 (drained hosts,
and hosts missing past the grace). Two owners may overlap for a moment around a
takeover: every move compares what it read, so the loser re-reads and finds
less to do.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from controlplane.etcd import EtcdClient, ops, prefix_end
from controlplane.etcd.ops import Compare
from controlplane.models import Binding, HostAllocation, RestartPolicy, now_ns
from controlplane.store import bindings
from controlplane.store.bindings import HostRead
from controlplane.store.errors import Conflict, NotFound
from controlplane.store.hostagent import BoundVm
from controlplane.store.keys import Keys
from controlplane.store.tombstones import Tombstones
from controlplane.store.vms import VmStore
from controlplane.store.zones import ZoneStore

log = logging.getLogger(__name__)

#: Status reasons of a VM moved off its host (condition "Scheduled" False).
REASON_DRAINED = "HostDrained"
REASON_DEAD = "HostDead"

_MAX_ROUNDS = 16


@dataclass(frozen=True, slots=True)
class Eviction:
    """What to do with the VMs bound to a host being emptied."""

    requeue: list[BoundVm]  # ALWAYS, host dead: back to the scheduler queue now, placed elsewhere
    mark: list[BoundVm]  # ALWAYS, host alive: marked evicting; its agent destroys, then queues it
    delete: list[BoundVm]  # NEVER: deletion requested (quota released; the binding is marked)
    remove: list[BoundVm]  # deletion requested, host dead: gone now (nobody else will remove them)
    waiting: int  # deletion requested, host alive: its agent destroys and removes them

    def __bool__(self) -> bool:
        return bool(self.requeue or self.mark or self.delete or self.remove)


def plan_eviction(bound: Sequence[BoundVm], *, host_dead: bool) -> Eviction:
    """Pure: sort a host's bindings by restart policy and deletion state."""
    requeue, mark, delete, remove = [], [], [], []
    waiting = 0
    for vm in bound:
        spec = vm.binding.spec
        if spec.deleting:
            if host_dead:
                remove.append(vm)
            else:
                waiting += 1
        elif spec.restart_policy is RestartPolicy.NEVER:
            delete.append(vm)
        elif host_dead:
            requeue.append(vm)
        elif vm.binding.evicting:
            waiting += 1
        else:
            mark.append(vm)
    return Eviction(requeue, mark, delete, remove, waiting)


@dataclass(frozen=True, slots=True)
class HostBindings:
    """A host's bindings and allocation, read at one revision."""

    bound: list[BoundVm]
    allocation: HostAllocation
    alloc_revision: int
    revision: int


class LifecycleStore:
    def __init__(self, client: EtcdClient, keys: Keys):
        self._etcd = client
        self._keys = keys
        self._tombstones = Tombstones(client, keys)

    @property
    def keys(self) -> Keys:
        return self._keys

    async def host_bindings(self, host: str) -> HostBindings:
        k = self._keys
        prefix = k.bindings_prefix(host)
        result = await self._etcd.txn([], [ops.get(k.host_alloc(host)), ops.get(prefix, prefix_end(prefix))])
        alloc_kvs = result.kvs(0)
        allocation = HostAllocation.from_bytes(alloc_kvs[0].value) if alloc_kvs else HostAllocation()
        bound = [BoundVm(Binding.from_bytes(kv.value), kv.create_revision, kv.mod_revision) for kv in result.kvs(1)]
        return HostBindings(bound, allocation, alloc_kvs[0].mod_revision if alloc_kvs else 0, result.revision)

    def max_moves_per_txn(self) -> int:
        """VMs one ``move_off`` may take (measured on what ``bindings.unbind`` builds,
        with room for a fence and a guard compare)."""
        return bindings.unbinds_per_txn(self._etcd.max_txn_ops, guards=2)

    async def move_off(self, host: str, read: HostBindings, requeue: Sequence[BoundVm], remove: Sequence[BoundVm],
                       *, reason: str, message: str, fence: Compare | None = None,
                       guard: Sequence[Compare] = ()) -> bool:
        """In one txn (``bindings.unbind``): each VM of ``requeue`` leaves the host for
        its shard's queue (status PENDING, ``reason``), each of ``remove`` is removed
        (spec, status, binding), and the allocation shrinks by all of them, as do the
        zone group counts of the zone-scoped ones. Compare-and-swap on the allocation
        and every binding as ``read`` and on those counts; returns False (nothing
        written) when any changed, or when ``fence`` does not hold."""
        if not requeue and not remove:
            return True
        unbinds = [bindings.Unbind(vm.binding, vm.mod_revision, True, reason, message) for vm in requeue]
        unbinds += [bindings.Unbind(vm.binding, vm.mod_revision, False) for vm in remove]
        counts, _ = await ZoneStore(self._etcd, self._keys).read(bindings.unbind_zone_ids(u.binding for u in unbinds))
        change = bindings.unbind(self._keys, HostRead(host, read.allocation, read.alloc_revision), unbinds,
                                 zone_counts=counts, at=now_ns(), tombstone_lease=await self._tombstones.lease(),
                                 guard=[*guard, *([fence] if fence is not None else [])])
        return (await self._etcd.txn(change.compares, change.writes)).succeeded

    async def mark_evicting(self, host: str, vms: Sequence[BoundVm], *, reason: str, message: str,
                            guard: Sequence[Compare] = ()) -> bool:
        """Mark bindings of a live host evicting (its agent destroys those VMs, then
        queues them again; ``bindings.mark_evicting``). One txn comparing each
        binding's mod_revision and the caller's ``guard`` (its fence, the drain still
        asked for); False when any changed (the caller re-reads)."""
        compares, writes = bindings.mark_evicting(self._keys, host, [(vm.binding, vm.mod_revision) for vm in vms],
                                                  reason=reason, message=message, guard=guard)
        return (await self._etcd.txn(compares, writes)).succeeded

    async def declare_dead(self, host: str, fence: Compare) -> bool:
        """Mark ``host`` dead if it is still missing (no registration) and not
        marked yet, under ``fence``; True if this call marked it. From then on no
        bind lands on it (binds compare the marker's absence)."""
        k = self._keys
        result = await self._etcd.txn(
            [fence, ops.absent(k.host_reg(host)), ops.absent(k.host_dead(host)), ops.present(k.host_alloc(host))],
            [ops.put(k.host_dead(host), b"")])
        return result.succeeded

    async def clear_dead(self, host: str, dead_revision: int, alloc_revision: int, fence: Compare) -> bool:
        """Lift the dead marker of a host that is registered again and holds no VMs
        (its allocation as read at ``alloc_revision`` was empty); True if lifted."""
        k = self._keys
        result = await self._etcd.txn(
            [fence, ops.mod_revision_is(k.host_dead(host), dead_revision), ops.present(k.host_reg(host)),
             ops.mod_revision_is(k.host_alloc(host), alloc_revision)],
            [ops.delete(k.host_dead(host))])
        return result.succeeded


class HostEvictor:
    """Empties a host by restart policy. Idempotent and safe to run from several
    processes at once (see the module docstring)."""

    def __init__(self, store: LifecycleStore, vms: VmStore):
        self._store = store
        self._vms = vms

    async def evict(self, host: str, *, dead: bool, fence: Compare | None = None) -> HostBindings:
        """Move off every VM of ``host`` that can be moved now; returns the host's
        bindings as last read (what is left: VMs whose agent is destroying them,
        or whose moves kept losing races; callers wait and call again)."""
        reason = REASON_DEAD if dead else REASON_DRAINED
        message = (f"host {host} was declared dead; placing the VM again" if dead
                   else f"host {host} is being drained; placing the VM again")
        chunk = self._store.max_moves_per_txn()
        read = await self._store.host_bindings(host)
        for _round in range(_MAX_ROUNDS):
            plan = plan_eviction(read.bound, host_dead=dead)
            if not plan:
                return read
            # Every change is made under the controller's fence and only while what asked
            # for it stands: a dead host still declared dead (it may have come back
            # meanwhile), a drained one still drained (an operator may have lifted it).
            still = [ops.present(self._store.keys.host_dead(host) if dead else self._store.keys.host_drain(host))]
            guard = [*([fence] if fence is not None else []), *still]
            for vm in plan.delete:
                try:
                    await self._vms.request_delete(vm.ref, guard=guard)
                except (NotFound, Conflict) as err:
                    log.info("restart-policy deletion skipped", extra={"vm": vm.ref.name, "error": str(err)})
            for i in range(0, len(plan.mark), chunk):
                if await self._store.mark_evicting(host, plan.mark[i:i + chunk], reason=reason, message=message,
                                                   guard=guard):
                    log.info("VMs marked for eviction", extra={"host": host, "vms": len(plan.mark[i:i + chunk])})
            moves = [(vm, True) for vm in plan.requeue] + [(vm, False) for vm in plan.remove]
            for i in range(0, len(moves), chunk):
                part = moves[i:i + chunk]
                moved = await self._store.move_off(host, read, [vm for vm, q in part if q],
                                                   [vm for vm, q in part if not q], reason=reason,
                                                   message=message, fence=fence, guard=still)
                # Read again either way: a move changes the allocation's revision, a
                # lost race means the allocation or a binding changed.
                read = await self._store.host_bindings(host)
                if not moved:
                    break
                log.info("VMs moved off host", extra={"host": host, "requeued": sum(q for _, q in part),
                                                      "removed": sum(not q for _, q in part), "reason": reason})
            if not moves:
                read = await self._store.host_bindings(host)
            if not plan.requeue and not plan.remove and not plan.delete:
                return read  # marked: the agent takes it from here (callers wait and call again)
        return read
