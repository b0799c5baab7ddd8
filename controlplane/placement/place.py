"""place(): pick a host for one request by sampling, filtering and scoring.

Power of k choices (Nomad's LimitIterator, Sparrow): visit hosts in a random order and
stop after ``candidates`` feasible ones, so the cost of a placement does not grow with
the fleet while capacity is plentiful; only when fewer hosts are feasible does the
walk cover every host, so a host that fits is never missed. We randomise the order we
visit hosts to reduce collisions between scheduler shards placing at the same time.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from typing import Protocol, TypeVar

from controlplane.placement.filters import DEFAULT_FILTERS, Filter
from controlplane.placement.model import HostSnapshot, Placement, PlacementRequest
from controlplane.placement.scoring import Scorer, spread

K = TypeVar("K")


class Hosts(Protocol):
    """What place() needs from a host set: a length and positional access (HostView)."""

    def __len__(self) -> int: ...

    def __getitem__(self, i: int, /) -> HostSnapshot: ...


def default_candidates(n: int) -> int:
    """max(2, ceil(log2 n) + 1): enough choices to balance load, few enough to be O(1)-ish."""
    return max(2, math.ceil(math.log2(n)) + 1) if n > 0 else 2


def visit_order(n: int, rng: random.Random) -> tuple[int, int]:
    """A random (start, stride) whose walk ``(start + k * stride) % n`` visits each of
    0..n-1 exactly once. O(1) expected setup: no shuffle, no copy of the host list.

    The stride is coprime with n, which is what makes the walk a permutation; a random
    stride is coprime with probability phi(n)/n, so a few draws suffice on average.
    """
    if n <= 1:
        return 0, 1
    start = rng.randrange(n)
    while True:
        stride = rng.randrange(1, n)
        if math.gcd(stride, n) == 1:
            return start, stride


def place(
    request: PlacementRequest,
    hosts: Hosts,
    *,
    rng: random.Random,
    filters: Sequence[Filter] = DEFAULT_FILTERS,
    scorer: Scorer = spread,
    candidates: int | None = None,
) -> Placement:
    """Returns the best-scored feasible host among the first ``candidates`` feasible
    hosts in a random visiting order, ties broken by ``rng``.

    Pure apart from drawing from ``rng``: does not modify ``hosts`` (the caller assumes
    the placement in its HostView). Never raises for an empty or full fleet: returns a
    Placement with ``host_id=None`` whose ``filtered`` counts explain why. Raises
    ValueError if ``candidates`` < 1.
    """
    n = len(hosts)
    k = default_candidates(n) if candidates is None else candidates
    if k < 1:
        raise ValueError(f"candidates must be >= 1, got {candidates}")
    filtered: dict[str, int] = {}
    best_id: str | None = None
    best_score = 0.0
    ties = 0
    found = 0
    visited = 0
    if n:
        start, stride = visit_order(n, rng)
        i = start
        for _ in range(n):
            host = hosts[i]
            i = (i + stride) % n
            visited += 1
            for f in filters:
                verdict = f(request, host)
                if not verdict.ok:
                    reason = verdict.reason or f.name
                    filtered[reason] = filtered.get(reason, 0) + 1
                    break
            else:
                found += 1
                score = scorer(request, host)
                if best_id is None or score > best_score:
                    best_id, best_score, ties = host.host_id, score, 1
                elif score == best_score:
                    # Reservoir sampling: each tied candidate wins with equal
                    # probability, independent of where it fell in the walk.
                    ties += 1
                    if rng.randrange(ties) == 0:
                        best_id = host.host_id
                if found >= k:
                    break
    return Placement(host_id=best_id, score=best_score, filtered=filtered, visited=visited, total=n)


def admit(waiting: Iterable[tuple[K, PlacementRequest]], hosts: Sequence[HostSnapshot], *,
          filters: Sequence[Filter] = DEFAULT_FILTERS) -> list[K]:
    """The keys of the ``waiting`` requests that the (changed) ``hosts`` can take, in
    order: each admitted request takes its room on the first of ``hosts`` that passes
    every filter for it, so a host freed of one VM admits one waiting VM, not all that
    would fit it alone. The cost is |waiting| x |hosts| filter checks, not a placement
    over the fleet per waiting request. Approximate beyond resources and host groups
    (zones are not re-counted): a placement still decides."""
    room = list(hosts)
    admitted: list[K] = []
    for key, request in waiting:
        for i, host in enumerate(room):
            if all(f(request, host).ok for f in filters):
                groups = {request.anti_affinity_group: 1} if request.anti_affinity_group else {}
                room[i] = host.with_allocated(request.resources, 1, groups)
                admitted.append(key)
                break
    return admitted
