"""place_set(): all members placed with anti-affinity among them, or nothing assumed."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.placement import HostSnapshot, HostView, PlacementRequest, Resources, SetMember, ZoneCounts, place_set
from controlplane.placement.model import ZONE_LABEL

ONE = Resources(1, 1, 1)
ROOM = Resources(8, 8, 8)


def _host(host_id: str, zone: str, capacity: Resources = ROOM) -> HostSnapshot:
    return HostSnapshot(host_id, True, capacity, Resources(), labels={ZONE_LABEL: zone} if zone else {})


def _member(i: int, *, zone_group: str = "", host_group: str = "", resources: Resources = ONE) -> SetMember[str]:
    return SetMember(f"m{i}", PlacementRequest(f"vm{i}", f"u{i}", resources, anti_affinity_group=host_group),
                     zone_group=zone_group)


def _state(view: HostView) -> list[HostSnapshot]:
    return sorted(view, key=lambda h: h.host_id)


def test_three_zone_anti_affine_members_on_two_zones_take_nothing() -> None:
    view, counts = HostView([_host("a1", "a"), _host("b1", "b")]), ZoneCounts()
    before = _state(view)
    result = place_set([_member(i, zone_group="t/p/cp") for i in range(3)], view, counts, rng=random.Random(1))
    assert not result.fits and result.hosts == []
    assert [key for key, _ in result.missing] == ["m2"]
    assert result.message() == "1 of 3 members fits no host: m2: 0/2 hosts fit: 2 ZoneAntiAffinity"
    assert _state(view) == before, "nothing stays assumed"
    assert counts.zones_with("t/p/cp") == frozenset()


def test_a_set_that_fits_is_placed_in_distinct_zones_and_stays_assumed() -> None:
    view, counts = HostView([_host("a1", "a"), _host("a2", "a"), _host("b1", "b"), _host("c1", "c")]), ZoneCounts()
    result = place_set([_member(i, zone_group="t/p/cp") for i in range(3)], view, counts, rng=random.Random(2))
    assert result.fits and [key for key, _h, _z in result.hosts] == ["m0", "m1", "m2"]
    assert sorted(zone for _k, _h, zone in result.hosts) == ["a", "b", "c"]
    assert counts.zones_with("t/p/cp") == {"a", "b", "c"}
    assert sum(h.vm_count for h in view) == 3


def test_a_zone_taken_by_a_bound_vm_is_avoided_too() -> None:
    view, counts = HostView([_host("a1", "a"), _host("b1", "b"), _host("c1", "c")]), ZoneCounts()
    counts.update("a", "t/p/cp", 1, 5, 5)
    result = place_set([_member(i, zone_group="t/p/cp") for i in range(3)], view, counts, rng=random.Random(3))
    assert not result.fits and counts.zones_with("t/p/cp") == {"a"}


@settings(max_examples=100, deadline=None)
@given(hosts=st.integers(1, 5), members=st.integers(1, 6), room=st.integers(1, 3), seed=st.integers(0, 9))
def test_all_or_nothing_with_host_anti_affinity(hosts: int, members: int, room: int, seed: int) -> None:
    """Host anti-affine members on hosts with room for ``room`` each: the set fits iff
    there are at least as many hosts as members; then every member is on its own host."""
    view = HostView([_host(f"h{i}", "", Resources(room, room, room)) for i in range(hosts)])
    before = _state(view)
    result = place_set([_member(i, host_group="g") for i in range(members)], view, ZoneCounts(),
                       rng=random.Random(seed))
    assert result.fits == (members <= hosts)
    if result.fits:
        assert len({host for _k, host, _z in result.hosts}) == members
        assert sum(h.vm_count for h in view) == members
    else:
        assert _state(view) == before
        assert len(result.missing) == members - hosts
