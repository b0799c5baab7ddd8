"""Holding a plan's room (PlanVms with a hold): what the hold's one transaction
compares and writes (:func:`hold_txn`, pure) and the lease it lives under
(:class:`HoldStore`).

The hold is ONE etcd txn, all or nothing:

- per planned host: its allocation compared by mod_revision as read (so nothing was
  bound, unbound or held there since the plan read it), the host neither dead nor in
  maintenance, and the allocation rewritten with ``holds[plan]`` (a ``HeldRoom``: the
  resources, VM count and host groups of the VMs planned there) added; stale holds
  (plans no longer live) may be dropped on the way, each with its key compared absent
  (``holds.keep_live``, the rule every writer of an allocation follows);
- the zone group counts the plan relied on, compared by mod_revision as read (a zone
  the set's zone anti-affinity counted as free is still free when the hold is made;
  the hold itself counts in host allocations only);
- ``holds/{plan}`` compared absent and put under a lease of its own whose TTL is the
  hold: when the lease ends the key goes, and with it the room (an allocation's
  ``holds[plan]`` counts only while the key exists); a crashed client's hold expires;
- the caller's extra ops (the audit record).

A lost compare means the fleet changed since it was read: the caller reads and plans
again. The lease is revoked whenever the txn did not commit.
"""

from __future__ import annotations

import logging
from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass, replace

from controlplane.etcd import EtcdClient, EtcdError, ops
from controlplane.etcd.ops import Compare, RequestOp
from controlplane.models import HeldRoom, Hold, HostAllocation
from controlplane.store import holds
from controlplane.store.keys import Keys
from controlplane.store.zones import ZoneCount, ZoneGroupId

log = logging.getLogger(__name__)

#: The longest hold PlanVms grants (seconds).
MAX_HOLD_S = 600


@dataclass(frozen=True, slots=True)
class HeldHost:
    """A host a plan holds room on: its allocation and the allocation key's
    mod_revision as read (0: absent), and the room held there."""

    host: str
    allocation: HostAllocation
    revision: int
    room: HeldRoom


@dataclass(frozen=True, slots=True)
class HoldTxn:
    compares: list[Compare]
    writes: list[RequestOp]
    allocations: dict[str, HostAllocation]  # each host's allocation as the txn writes it


def held_room(rooms: Sequence[HeldRoom]) -> HeldRoom:
    """The sum of ``rooms`` (e.g. one per VM planned on a host)."""
    total = HeldRoom()
    for room in rooms:
        groups = dict(total.groups)
        for group, n in room.groups.items():
            groups[group] = groups.get(group, 0) + n
        total = HeldRoom(total.resources + room.resources, total.vm_count + room.vm_count, groups)
    return total


def hold_txn(keys: Keys, hold: Hold, hosts: Sequence[HeldHost], *, lease: int, live: Container[str],
             zone_counts: Mapping[ZoneGroupId, ZoneCount] = {}, also: Sequence[RequestOp] = ()) -> HoldTxn:
    """The compares and writes of ``hold``'s one txn (see the module docstring), its
    key put under ``lease``. ``live``: the plans read as live with the allocations
    (their holds are kept; a stale one may be dropped, compared absent).
    ``zone_counts``: the zone group counts the placement relied on, as read. Pure.
    Raises ValueError when a host appears twice or already holds room for the plan
    while it is live."""
    if len({h.host for h in hosts}) != len(hosts):
        raise ValueError("a hold names each host once")
    k = keys
    compares: list[Compare] = [ops.absent(k.hold(hold.plan))]
    writes: list[RequestOp] = []
    allocations = {}
    for h in hosts:
        if hold.plan in h.allocation.holds and hold.plan in live:
            raise ValueError(f"host {h.host} already holds room for {hold.plan}")
        # A stale holds[plan] (an ended hold of the same plan id: a request_id's plan
        # held again) is replaced: holds/{plan} is compared absent.
        kept, stale = holds.keep_live(k, h.allocation, live)
        allocation = replace(kept, holds={**kept.holds, hold.plan: h.room})
        compares += [ops.mod_revision_is(k.host_alloc(h.host), h.revision), ops.absent(k.host_dead(h.host)),
                     ops.absent(k.host_maintenance(h.host)), *stale]
        writes.append(ops.put(k.host_alloc(h.host), allocation.to_bytes()))
        allocations[h.host] = allocation
    compares += [ops.mod_revision_is(k.zone_group(*zg), count.revision) for zg, count in sorted(zone_counts.items())]
    writes.append(ops.put(k.hold(hold.plan), hold.to_bytes(), lease=lease))
    writes += also
    return HoldTxn(compares, writes, allocations)


@dataclass(frozen=True, slots=True)
class HoldResult:
    committed: bool
    revision: int = 0
    lease: int = 0  # the hold's lease (0: none left)
    allocations: Mapping[str, HostAllocation] | None = None


class HoldStore:
    def __init__(self, client: EtcdClient, keys: Keys):
        self._etcd = client
        self._keys = keys

    async def hold(self, hold: Hold, hosts: Sequence[HeldHost], *, ttl_s: int, live: Container[str],
                   zone_counts: Mapping[ZoneGroupId, ZoneCount] = {}, also: Sequence[RequestOp] = ()
                   ) -> HoldResult:
        """Make ``hold`` (see :func:`hold_txn`) under a new lease of ``ttl_s`` seconds.
        Returns committed False (nothing written, the lease revoked) when a compare
        failed: the fleet changed since it was read. The lease is revoked on any
        failure, an exception included (then re-raised)."""
        lease, _ttl = await self._etcd.grant(ttl_s)
        try:
            built = hold_txn(self._keys, hold, hosts, lease=lease, live=live, zone_counts=zone_counts, also=also)
            result = await self._etcd.txn(built.compares, built.writes)
        except BaseException:
            await self._revoke(lease)
            raise
        if not result.succeeded:
            await self._revoke(lease)
            return HoldResult(False, result.revision)
        return HoldResult(True, result.revision, lease, built.allocations)

    async def release(self, plan: str) -> bool:
        """End a hold early: its key deleted (the room it holds counts for nothing from
        then on). Returns whether it was there."""
        return bool(await self._etcd.delete(self._keys.hold(plan)))

    async def _revoke(self, lease: int) -> None:
        try:
            await self._etcd.revoke(lease)
        except EtcdError as err:  # it expires by itself; nothing is under it
            log.warning("could not revoke a failed hold's lease", extra={"lease": lease, "error": str(err)})
