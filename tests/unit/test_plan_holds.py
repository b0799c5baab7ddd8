"""Plans' holds, pure: the room of live plans counted in host snapshots
(fleet.snapshot_of / with_holds), stale holds dropped only with their key compared
absent (holds.keep_live), the hold's one txn (plans.hold_txn), quota headroom, and
place_set's partial placements for a plan that does not fit."""

from __future__ import annotations

import random

import pytest

from controlplane.etcd import ops
from controlplane.gen.etcd.v3 import rpc_pb2 as pb
from controlplane.models import ZONE_LABEL, HeldRoom, Hold, HostAllocation, HostRegistration, PlannedVm, Resources
from controlplane.placement import (
    HostSnapshot,
    HostView,
    PlacementRequest,
    SetMember,
    ZoneCounts,
    place,
    place_set,
)
from controlplane.store import holds
from controlplane.store.fleet import Fleet, snapshot_of, with_holds
from controlplane.store.hosts import HostRecord
from controlplane.store.keys import Keys
from controlplane.store.plans import HeldHost, held_room, hold_txn
from controlplane.store.zones import ZoneCount
from controlplane.tenancy import UNLIMITED, Limits, Usage

KEYS = Keys("/t")
CAP = Resources(16, 16384, 100)
VM = Resources(2, 2048, 10)


def _record(host: str, allocation: HostAllocation, revision: int = 7, zone: str = "") -> HostRecord:
    reg = HostRegistration(host=host, driver="sim", capacity=CAP, labels={ZONE_LABEL: zone} if zone else {})
    return HostRecord(host, reg, allocation, revision, revision)


def _alloc(**holds_: HeldRoom) -> HostAllocation:
    return HostAllocation(Resources(1, 1024, 5), 1, {"t/p/web": 1}, holds_)


ROOM = HeldRoom(VM, 1, {"t/p/db": 1})


def test_live_holds_count_as_allocated_stale_ones_do_not() -> None:
    allocation = _alloc(live=ROOM, gone=HeldRoom(Resources(4, 4096, 40), 2, {"t/p/web": 2}))
    snap = snapshot_of(_record("h1", allocation), live={"live"})
    assert snap.allocated == Resources(3, 3072, 15)
    assert snap.vm_count == 2
    assert dict(snap.groups) == {"t/p/web": 1, "t/p/db": 1}
    assert snap.alloc_revision == 7
    # No plan live (the default): the allocation as bound, holds count for nothing.
    bare = snapshot_of(_record("h1", allocation))
    assert (bare.allocated, bare.vm_count, dict(bare.groups)) == (Resources(1, 1024, 5), 1, {"t/p/web": 1})


def test_with_holds_recounts_from_the_allocation_not_the_snapshot() -> None:
    snap = snapshot_of(_record("h1", _alloc(p=ROOM)), live={"p"})
    # The plan ended: the same allocation, recounted with no live plan, frees its room.
    again = with_holds(snap, _alloc(p=ROOM), 9, live=())
    assert (again.allocated, again.vm_count, again.alloc_revision) == (Resources(1, 1024, 5), 1, 9)
    assert "t/p/db" not in again.groups


def test_a_held_host_group_blocks_anti_affinity_while_live() -> None:
    request = PlacementRequest("vm", "u", VM, anti_affinity_group="t/p/db")
    rng = random.Random(1)
    held = HostView([snapshot_of(_record("h1", _alloc(p=ROOM)), live={"p"})])
    assert place(request, held, rng=rng).host_id is None
    ended = HostView([snapshot_of(_record("h1", _alloc(p=ROOM)), live=())])
    assert place(request, ended, rng=rng).host_id == "h1"


def test_keep_live_drops_stale_holds_only_comparing_their_keys_absent() -> None:
    allocation = _alloc(a=ROOM, b=ROOM, c=ROOM)
    kept, compares = holds.keep_live(KEYS, allocation, {"b"}, most=5)
    assert set(kept.holds) == {"b"}
    assert compares == [ops.absent(KEYS.hold("a")), ops.absent(KEYS.hold("c"))]
    # Bounded per change: the others wait for the next change.
    kept, compares = holds.keep_live(KEYS, allocation, {"b"}, most=1)
    assert set(kept.holds) == {"b", "c"} and compares == [ops.absent(KEYS.hold("a"))]
    # A writer that does not know which plans are live keeps everything.
    assert holds.keep_live(KEYS, allocation, None) == (allocation, [])
    # Nothing stale: the very allocation, nothing compared.
    assert holds.keep_live(KEYS, allocation, {"a", "b", "c"}) == (allocation, [])
    # What is carried is unchanged: resources, count, groups.
    assert (kept.resources, kept.vm_count, kept.groups) == (allocation.resources, 1, {"t/p/web": 1})


def test_held_total_and_held_room_add_up() -> None:
    other = HeldRoom(Resources(1, 1, 1), 2, {"t/p/db": 1, "t/p/x": 2})
    assert holds.held_total({"a": ROOM, "b": other, "c": ROOM}, {"a", "b"}) == \
        HeldRoom(Resources(3, 2049, 11), 3, {"t/p/db": 2, "t/p/x": 2})
    assert held_room([ROOM, other]) == HeldRoom(Resources(3, 2049, 11), 3, {"t/p/db": 2, "t/p/x": 2})
    assert held_room([]) == HeldRoom()


def _hold(plan: str = "plan-1") -> Hold:
    return Hold("t", "p", plan, (PlannedVm("a", "h1", "small", VM), PlannedVm("b", "h2", "small", VM)), 123)


def test_hold_txn_compares_what_it_read_and_writes_the_room_and_the_key_under_the_lease() -> None:
    h1 = HeldHost("h1", _alloc(stale=ROOM, live=ROOM), 11, ROOM)
    h2 = HeldHost("h2", HostAllocation(), 0, ROOM)
    zg = ("z1", "t/p/cp")
    built = hold_txn(KEYS, _hold(), [h1, h2], lease=77, live={"live"}, zone_counts={zg: ZoneCount(1, 5)},
                     also=[ops.put(b"/audit", b"x")])
    assert built.compares == [
        ops.absent(KEYS.hold("plan-1")),
        ops.mod_revision_is(KEYS.host_alloc("h1"), 11), ops.absent(KEYS.host_dead("h1")),
        ops.absent(KEYS.host_maintenance("h1")), ops.absent(KEYS.hold("stale")),
        ops.mod_revision_is(KEYS.host_alloc("h2"), 0), ops.absent(KEYS.host_dead("h2")),
        ops.absent(KEYS.host_maintenance("h2")),
        ops.mod_revision_is(KEYS.zone_group(*zg), 5),
    ]
    assert built.allocations["h1"].holds == {"live": ROOM, "plan-1": ROOM}
    assert built.allocations["h1"].resources == Resources(1, 1024, 5), "bound resources unchanged"
    assert built.allocations["h2"] == HostAllocation(holds={"plan-1": ROOM})
    puts = [op.request_put for op in built.writes]
    assert [(p.key, p.lease) for p in puts] == [(KEYS.host_alloc("h1"), 0), (KEYS.host_alloc("h2"), 0),
                                               (KEYS.hold("plan-1"), 77), (b"/audit", 0)]
    assert HostAllocation.from_bytes(puts[0].value) == built.allocations["h1"]
    assert Hold.from_bytes(puts[2].value) == _hold()
    assert all(isinstance(c, pb.Compare) for c in built.compares)


def test_hold_txn_refuses_a_host_twice_or_a_plan_already_held_there() -> None:
    h1 = HeldHost("h1", HostAllocation(), 0, ROOM)
    with pytest.raises(ValueError, match="once"):
        hold_txn(KEYS, _hold(), [h1, h1], lease=1, live=())
    with pytest.raises(ValueError, match="already holds"):
        hold_txn(KEYS, _hold(), [HeldHost("h1", _alloc(**{"plan-1": ROOM}), 3, ROOM)], lease=1, live={"plan-1"})


def test_fleet_view_counts_live_holds_and_zone_counts() -> None:
    fleet = Fleet({"h1": _record("h1", _alloc(p=ROOM), zone="z1"), "h2": _record("h2", HostAllocation(), 0, "z2")},
                  {("z1", "t/p/cp"): ZoneCount(1, 4)}, {"p": _hold("p")}, 20)
    view, counts = fleet.view()
    assert len(view) == 2
    h1 = view.get("h1")
    assert h1 is not None and h1.allocated == Resources(3, 3072, 15)
    assert counts.zones_with("t/p/cp") == frozenset({"z1"})
    assert counts.committed("z1", "t/p/cp") == (1, 4)


def test_headroom_is_limits_minus_usage_unlimited_as_int64_max() -> None:
    limits = Limits(vms=10, vcpus=8, memory_mib=None, disk_gib=100)
    assert limits.headroom(Usage(3, 10, 4096, 50)) == Usage(7, -2, UNLIMITED, 50, UNLIMITED, UNLIMITED)
    assert UNLIMITED == 2**63 - 1


def test_a_set_that_does_not_fit_shows_where_the_others_would_go() -> None:
    def host(name: str, zone: str) -> HostSnapshot:
        return HostSnapshot(name, True, CAP, Resources(), labels={ZONE_LABEL: zone})

    view, counts = HostView([host("a1", "a"), host("b1", "b")]), ZoneCounts()
    members = [SetMember(i, PlacementRequest(f"vm{i}", f"u{i}", VM), zone_group="t/p/cp") for i in range(3)]
    result = place_set(members, view, counts, rng=random.Random(3))
    assert not result.fits and result.hosts == []
    assert sorted(zone for _key, _host, zone in result.partial) == ["a", "b"]
    assert [key for key, _ in result.missing] == [2]
    assert all(s.allocated == Resources() for s in view), "nothing stays assumed"
