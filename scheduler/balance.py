"""Fair shares of shards among live scheduler processes: pure, no I/O.

Every process sees the same members (live session leases) and computes the same
quotas: members sorted by id (lease ids grow with grant time, so the oldest come
first) get ``S // N``, and the first ``S % N`` of them one more, so no process
holds more than ``ceil(S / N)`` and the quotas add up to exactly S. A process
over its quota releases shards; one under it takes free ones, in an order of its
own (rendezvous hashing), so joiners do not all race for the same shard.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping
from dataclasses import dataclass


def quota(members: Collection[str], me: str, shards: int) -> int:
    """How many of ``shards`` the member ``me`` should own. ``me`` counts as a
    member even before its own key shows up in ``members``."""
    ranked = sorted(set(members) | {me})
    base, extra = divmod(shards, len(ranked))
    return base + (1 if ranked.index(me) < extra else 0)


def preference(me: str, shard: int) -> bytes:
    """Rendezvous weight of ``shard`` for member ``me``: higher is tried first."""
    return hashlib.blake2b(f"{me}/{shard}".encode(), digest_size=8).digest()


@dataclass(frozen=True, slots=True)
class Plan:
    release: tuple[int, ...]  # shards to give up (stop them first, then delete the key)
    acquire: tuple[int, ...]  # free shards to try, best first (others may win some)


def plan(shards: int, members: Collection[str], owners: Mapping[int, str], me: str) -> Plan:
    """What ``me`` should do, given who owns which shard (shard -> member id).

    Releases the shards it prefers least when over quota; when under quota, tries
    the free shards it prefers most. A shard owned by a member that is no longer
    live is not free: its key goes with the dead owner's lease, and then it is.
    """
    want = quota(members, me, shards)
    mine = sorted((s for s, owner in owners.items() if owner == me), key=lambda s: preference(me, s), reverse=True)
    if len(mine) > want:
        return Plan(release=tuple(mine[want:]), acquire=())
    free = sorted((s for s in range(shards) if s not in owners), key=lambda s: preference(me, s), reverse=True)
    return Plan(release=(), acquire=tuple(free[:want - len(mine)]))
