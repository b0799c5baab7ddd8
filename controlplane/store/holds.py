"""Room held by plans on hosts: the rules every writer of a host's allocation obeys
for ``HostAllocation.holds``.

A plan (PlanVms with a hold) writes ``holds/{plan}`` under a lease that ends with the
hold, and, in the same txn, ``holds[plan]`` (a :class:`HeldRoom`) in each planned
host's allocation. The room counts as taken while the plan's key exists (the plan
is *live*); once the key is gone (its lease expired, or the plan's set was bound)
the entry in an allocation is stale and counts for nothing.

- **keep live** (every change of a host's allocation): holds of live plans are carried
  unchanged; a stale hold may be dropped, and then only with ``absent(holds/{plan})``
  compared in the same txn (so a writer whose view of the plans lags never drops a
  live one). A writer that does not know which plans are live keeps every hold and
  compares nothing (conservative).
- **consume** (the bind of a plan's set): ``holds[plan]`` leaves each planned host's
  allocation, ``present(holds/{plan})`` is compared and the key deleted, in the set's
  one txn.

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Container, Mapping
from dataclasses import replace

from controlplane.etcd import ops
from controlplane.etcd.ops import Compare, RequestOp
from controlplane.models import HeldRoom, HostAllocation, Resources
from controlplane.store.keys import Keys

#: Stale holds one change of a host's allocation drops at most (each costs a compare,
#: counted in the bind budgets); the others wait for the next change.
STALE_PER_CHANGE = 1


def keep_live(keys: Keys, allocation: HostAllocation, live: Container[str] | None, *,
              most: int = STALE_PER_CHANGE) -> tuple[HostAllocation, list[Compare]]:
    """``allocation`` with the holds of plans not in ``live`` dropped (at most ``most``
    of them, in plan order), and ``absent(holds/{plan})`` for each one dropped: the
    compares the change must carry. ``live`` None: every hold is kept, nothing compared."""
    if live is None or not allocation.holds:
        return allocation, []
    stale = sorted(plan for plan in allocation.holds if plan not in live)[:most]
    if not stale:
        return allocation, []
    holds = {plan: room for plan, room in allocation.holds.items() if plan not in stale}
    return replace(allocation, holds=holds), [ops.absent(keys.hold(plan)) for plan in stale]


def consume(allocation: HostAllocation, plan: str) -> HostAllocation:
    """``allocation`` without ``holds[plan]`` (unchanged when it has none)."""
    if plan not in allocation.holds:
        return allocation
    return replace(allocation, holds={p: room for p, room in allocation.holds.items() if p != plan})


def consume_key(keys: Keys, plan: str) -> tuple[list[Compare], list[RequestOp]]:
    """What a bind consuming ``plan`` compares (its key present: the hold is live) and
    writes (the key deleted)."""
    return [ops.present(keys.hold(plan))], [ops.delete(keys.hold(plan))]


def held_total(holds: Mapping[str, HeldRoom], live: Container[str]) -> HeldRoom:
    """The room the live plans among ``holds`` take together."""
    resources, count, groups = Resources(), 0, dict[str, int]()
    for plan, room in holds.items():
        if plan in live:
            resources = resources + room.resources
            count += room.vm_count
            for group, n in room.groups.items():
                groups[group] = groups.get(group, 0) + n
    return HeldRoom(resources, count, groups)
