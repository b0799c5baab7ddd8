"""place_set(): place the members of an all-or-nothing set together, or none of them.

Members are placed one by one with ``place()``, each placement assumed in the view
(resources, host group) and the zone counts (zone group) before the next member is
placed, so anti-affinity among members holds exactly as it does against VMs already
bound. If any member fits nowhere, every assumption the call made is forgotten: the
set takes nothing. Greedy, in the members' order: a set that only some other
assignment would fit is reported as not fitting (as the scheduler places single VMs).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Generic, TypeVar

from controlplane.placement.filters import DEFAULT_FILTERS, Filter
from controlplane.placement.model import Placement, PlacementRequest
from controlplane.placement.place import place
from controlplane.placement.scoring import Scorer, spread
from controlplane.placement.view import HostView
from controlplane.placement.zones import ZoneCounts

K = TypeVar("K")


@dataclass(frozen=True, slots=True)
class SetMember(Generic[K]):
    """A member to place: its ``key``, its request and the zone groups it is counted in
    (``zone_group``) or must be near (``zone_affinity_group``): place_set resolves the
    request's zone fields against the counts as each earlier member is assumed."""

    key: K
    request: PlacementRequest
    zone_group: str = ""
    zone_affinity_group: str = ""


@dataclass(frozen=True, slots=True)
class SetPlacement(Generic[K]):
    """The outcome of ``place_set``: every member's host (``hosts``, in the members'
    order) when the whole set fits, else the members that fit nowhere with their
    placements (``missing``: which filters removed how many hosts) and nothing assumed."""

    hosts: list[tuple[K, str, str]] = field(default_factory=list)  # (key, host, zone) once it fits
    missing: list[tuple[K, Placement]] = field(default_factory=list)
    members: int = 0
    # When it does not fit: where the members that fit would have gone with the others
    # before them placed ((key, host, zone); not assumed), for plans to show.
    partial: list[tuple[K, str, str]] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return not self.missing

    def message(self, name: Callable[[K], str] = str) -> str:
        """E.g. ``"1 of 3 members fits no host: vm-3: 0/2 hosts fit: 2 ZoneAntiAffinity"``;
        ``name`` maps a key to how it is shown."""
        head = f"{len(self.missing)} of {self.members} members {'fits' if len(self.missing) == 1 else 'fit'} no host"
        return head + ": " + "; ".join(f"{name(key)}: {p.message()}" for key, p in self.missing)


def resolved(member: SetMember, counts: ZoneCounts) -> PlacementRequest:
    """The member's request with its zone constraints resolved against ``counts``
    (committed plus assumed) as they are now."""
    request = member.request
    if member.zone_group:
        request = replace(request, zone_spread=True, avoid_zones=counts.zones_with(member.zone_group))
    if member.zone_affinity_group:
        request = replace(request, affinity_zones=counts.zones_with(member.zone_affinity_group))
    return request


def place_set(members: Sequence[SetMember[K]], view: HostView, counts: ZoneCounts, *, rng: random.Random,
              scorer: Scorer = spread, filters: Sequence[Filter] = DEFAULT_FILTERS) -> SetPlacement[K]:
    """Place every member or none (see the module docstring). When the set fits, each
    member's placement stays assumed in ``view`` and ``counts`` (the caller forgets it
    once its bind committed or failed, as for single VMs); when it does not, nothing
    stays assumed. Every member is tried, so the shortfall names each one that fits
    nowhere with the others placed."""
    placed: list[tuple[SetMember[K], str, str]] = []
    missing: list[tuple[K, Placement]] = []
    for member in members:
        request = resolved(member, counts)
        placement = place(request, view, rng=rng, scorer=scorer, filters=filters)
        if placement.host_id is None:
            missing.append((member.key, placement))
            continue
        host = view.get(placement.host_id)
        if host is None:  # place() chose it from the view
            raise KeyError(placement.host_id)
        zone = host.zone
        view.assume(placement.host_id, request.resources, group=request.anti_affinity_group)
        counts.assume(zone, member.zone_group)
        placed.append((member, placement.host_id, zone))
    if missing:
        forget(view, counts, [(m, host, zone) for m, host, zone in placed])
        return SetPlacement([], missing, len(members), [(m.key, host, zone) for m, host, zone in placed])
    return SetPlacement([(m.key, host, zone) for m, host, zone in placed], [], len(members))


def forget(view: HostView, counts: ZoneCounts, placed: Sequence[tuple[SetMember, str, str]]) -> None:
    """Undo the assumptions of ``placed`` members ((member, host, zone))."""
    for member, host, zone in placed:
        view.forget(host, member.request.resources, group=member.request.anti_affinity_group)
        counts.forget(zone, member.zone_group)
