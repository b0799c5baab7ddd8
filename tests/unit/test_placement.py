"""Placement: table-driven filter/scorer cases and Hypothesis properties of place()."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.placement import (
    DEFAULT_FILTERS,
    Filter,
    HostSnapshot,
    HostView,
    PlacementRequest,
    Resources,
    Verdict,
    admit,
    default_candidates,
    fits_resources,
    host_ready,
    named,
    normalize,
    pack,
    place,
    spread,
    visit_order,
    weighted,
)
from controlplane.placement.model import Placement

PROPS = settings(max_examples=100, deadline=None)

CAP = Resources(vcpus=16, memory_mib=65536, disk_gib=1000)
NONE = Resources()


def host(
    host_id: str = "h",
    *,
    ready: bool = True,
    capacity: Resources = CAP,
    allocated: Resources = NONE,
    vm_count: int = 0,
    rev: int = 7,
) -> HostSnapshot:
    return HostSnapshot(host_id, ready, capacity, allocated, vm_count, alloc_revision=rev)


def req(vcpus: int = 0, memory_mib: int = 0, disk_gib: int = 0) -> PlacementRequest:
    return PlacementRequest("/quanta/v1/vms/x", "uid-x", Resources(vcpus, memory_mib, disk_gib))


# --- model -----------------------------------------------------------------------


def test_resources_arithmetic() -> None:
    a, b = Resources(4, 1024, 10), Resources(1, 512, 20)
    assert a + b == Resources(5, 1536, 30)
    assert a - b == Resources(3, 512, -10)
    assert -(a - b) == b - a
    assert b.fits_within(Resources(1, 512, 20))
    assert not a.fits_within(b)


def test_snapshot_free_and_with_allocated_keep_revision() -> None:
    h = host(allocated=Resources(2, 1024, 0), vm_count=1, rev=42)
    assert h.free == Resources(14, 64512, 1000)
    h2 = h.with_allocated(Resources(1, 1, 1), 2)
    assert (h2.allocated, h2.vm_count, h2.alloc_revision) == (Resources(3, 1025, 1), 3, 42)
    assert hash(h) == hash(host(allocated=Resources(2, 1024, 0), vm_count=1, rev=42))


@pytest.mark.parametrize(
    ("placement", "expected"),
    [
        (
            Placement(None, 0.0, {"HostNotReady": 2, "InsufficientMemory": 10}, visited=12, total=12),
            "0/12 hosts fit: 10 InsufficientMemory, 2 HostNotReady",
        ),
        (Placement(None, 0.0, {}, visited=0, total=0), "0/0 hosts fit"),
        (Placement("h3", 0.5, {}, visited=4, total=100), "placed on h3 after visiting 4/100 hosts"),
    ],
)
def test_placement_message(placement: Placement, expected: str) -> None:
    assert placement.message() == expected


# --- filters (fit_test.go style) -------------------------------------------------


@pytest.mark.parametrize(
    ("name", "request_", "snapshot", "want"),
    [
        ("ready host passes", req(), host(ready=True), Verdict(True)),
        ("unready host rejected", req(), host(ready=False), Verdict(False, "HostNotReady")),
        ("unready even if empty request", req(0, 0, 0), host(ready=False), Verdict(False, "HostNotReady")),
    ],
)
def test_host_ready(name: str, request_: PlacementRequest, snapshot: HostSnapshot, want: Verdict) -> None:
    assert host_ready(request_, snapshot) == want, name


@pytest.mark.parametrize(
    ("name", "request_", "allocated", "want"),
    [
        ("empty request fits", req(), Resources(), Verdict(True)),
        ("exact fit on every dimension", req(16, 65536, 1000), Resources(), Verdict(True)),
        ("fits alongside allocation", req(8, 32768, 500), Resources(8, 32768, 500), Verdict(True)),
        ("one vcpu too many", req(9, 1, 1), Resources(8, 0, 0), Verdict(False, "InsufficientVcpus")),
        ("one MiB too many", req(1, 32769, 1), Resources(0, 32768, 0), Verdict(False, "InsufficientMemory")),
        ("one GiB too many", req(1, 1, 501), Resources(0, 0, 500), Verdict(False, "InsufficientDisk")),
        (
            "memory reported before vcpus",
            req(17, 70000, 0),
            Resources(),
            Verdict(False, "InsufficientMemory"),
        ),
        ("vcpus reported before disk", req(17, 0, 2000), Resources(), Verdict(False, "InsufficientVcpus")),
        ("over-committed host", req(0, 1, 0), Resources(0, 70000, 0), Verdict(False, "InsufficientMemory")),
        ("zero request on full host", req(), Resources(16, 65536, 1000), Verdict(True)),
    ],
)
def test_fits_resources(name: str, request_: PlacementRequest, allocated: Resources, want: Verdict) -> None:
    assert fits_resources(request_, host(allocated=allocated)) == want, name


def test_default_filters_are_named_cheapest_first() -> None:
    assert [f.name for f in DEFAULT_FILTERS] == ["HostReady", "NotInMaintenance", "NodeSelector",
                                                 "NetworksReachable", "DatastoreReachable", "ZoneAntiAffinity",
                                                 "HostAntiAffinity", "HostAffinity", "ZoneAffinity", "FitsResources"]


# --- scorers -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "request_", "capacity", "allocated", "want_spread"),
    [
        ("empty host, empty request", req(), CAP, Resources(), 1.0),
        ("half vcpus, no memory", req(8, 0), CAP, Resources(), 0.75),
        ("counts allocation plus request", req(4, 16384), CAP, Resources(4, 16384), 0.5),
        ("full after placing", req(16, 65536), CAP, Resources(), 0.0),
        ("disk ignored", req(0, 0, 1000), CAP, Resources(), 1.0),
        ("over-committed clamps to 0", req(0, 0), CAP, Resources(32, 131072), 0.0),
        ("missing dimension counts as full", req(), Resources(16, 0, 0), Resources(), 0.5),
    ],
)
def test_spread_and_pack(
    name: str, request_: PlacementRequest, capacity: Resources, allocated: Resources, want_spread: float
) -> None:
    h = host(capacity=capacity, allocated=allocated)
    assert spread(request_, h) == pytest.approx(want_spread), name
    assert pack(request_, h) == pytest.approx(1.0 - want_spread), name


@pytest.mark.parametrize(
    ("value", "lo", "hi", "want"),
    [(5, 0, 10, 0.5), (-1, 0, 10, 0.0), (11, 0, 10, 1.0), (3, 3, 3, 0.0), (0, 0, 4, 0.0)],
)
def test_normalize(value: float, lo: float, hi: float, want: float) -> None:
    assert normalize(value, lo, hi) == want


def test_weighted_is_weighted_mean_and_validates() -> None:
    h, r = host(), req(8, 0)  # spread 0.75, pack 0.25
    assert weighted([(3.0, spread), (1.0, pack)])(r, h) == pytest.approx(0.625)
    with pytest.raises(ValueError):
        weighted([])
    with pytest.raises(ValueError):
        weighted([(0.0, spread)])


# --- strategies --------------------------------------------------------------------

resources_st = st.builds(
    Resources,
    vcpus=st.integers(0, 32),
    memory_mib=st.integers(0, 8).map(lambda x: x * 8192),
    disk_gib=st.integers(0, 4).map(lambda x: x * 250),
)
requests_st = st.builds(
    PlacementRequest, vm_key=st.just("/quanta/v1/vms/x"), uid=st.just("uid"), resources=resources_st
)


def _view(rows: list[tuple[bool, Resources, Resources, int]]) -> HostView:
    return HostView(
        [
            HostSnapshot(f"h{i}", ready, cap, alloc, vms, alloc_revision=i)
            for i, (ready, cap, alloc, vms) in enumerate(rows)
        ]
    )


def views(max_hosts: int = 30) -> st.SearchStrategy[HostView]:
    row = st.tuples(st.booleans(), resources_st, resources_st, st.integers(0, 50))
    return st.lists(row, max_size=max_hosts).map(_view)


def feasible(request: PlacementRequest, h: HostSnapshot) -> bool:
    return all(f(request, h).ok for f in DEFAULT_FILTERS)


# --- place() properties ------------------------------------------------------------


@PROPS
@given(views(), requests_st, st.integers(0, 2**32), st.none() | st.integers(1, 5))
def test_place_returns_only_feasible_hosts_and_finds_one_if_any(
    view: HostView, request: PlacementRequest, seed: int, k: int | None
) -> None:
    result = place(request, view, rng=random.Random(seed), candidates=k)
    any_fits = any(feasible(request, h) for h in view)
    if result.host_id is not None:
        chosen = view.get(result.host_id)
        assert chosen is not None and feasible(request, chosen)
    else:
        assert not any_fits
        # Having found nothing, it looked everywhere and accounted for every host.
        assert result.visited == len(view) == sum(result.filtered.values())
    assert (result.host_id is not None) == any_fits


@PROPS
@given(views(), requests_st, st.integers(0, 2**32))
def test_spread_over_all_candidates_picks_least_allocated(
    view: HostView, request: PlacementRequest, seed: int
) -> None:
    result = place(request, view, rng=random.Random(seed), candidates=max(1, len(view)))
    scores = [spread(request, h) for h in view if feasible(request, h)]
    if scores:
        assert result.score == max(scores)
        chosen = view.get(result.host_id or "")
        assert chosen is not None and spread(request, chosen) == max(scores)


@PROPS
@given(views(), requests_st, st.integers(0, 2**32))
def test_pack_over_all_candidates_picks_most_allocated(
    view: HostView, request: PlacementRequest, seed: int
) -> None:
    result = place(request, view, rng=random.Random(seed), scorer=pack, candidates=max(1, len(view)))
    scores = [pack(request, h) for h in view if feasible(request, h)]
    assert result.score == (max(scores) if scores else 0.0)


@PROPS
@given(views(), requests_st, st.integers(0, 2**32), st.integers(1, 5))
def test_spread_sample_beats_every_other_visited_host(
    view: HostView, request: PlacementRequest, seed: int, k: int
) -> None:
    seen: list[HostSnapshot] = []

    @named("Spy")
    def spy(r: PlacementRequest, h: HostSnapshot) -> Verdict:
        seen.append(h)
        return Verdict(True)

    result = place(request, view, rng=random.Random(seed), filters=(*DEFAULT_FILTERS, spy), candidates=k)
    # ``spy`` runs last, so it sees exactly the feasible hosts that were scored.
    assert len(seen) <= k
    assert all(spread(request, h) <= result.score for h in seen)


@settings(max_examples=30, deadline=None)
@given(views(), requests_st, st.integers(0, 2**32))
def test_place_is_deterministic_for_a_seed(view: HostView, request: PlacementRequest, seed: int) -> None:
    assert place(request, view, rng=random.Random(seed)) == place(request, view, rng=random.Random(seed))


def test_ties_are_broken_by_rng() -> None:
    view = HostView([host(f"h{i}") for i in range(8)])
    winners = Counter(
        place(req(1, 1024), view, rng=random.Random(s), candidates=8).host_id for s in range(200)
    )
    assert set(winners) == {f"h{i}" for i in range(8)}


@given(st.integers(1, 300), st.integers(0, 2**32))
@settings(max_examples=200, deadline=None)
def test_visit_order_is_a_permutation(n: int, seed: int) -> None:
    start, stride = visit_order(n, random.Random(seed))
    assert sorted((start + k * stride) % n for k in range(n)) == list(range(n))


@pytest.mark.parametrize(("n", "k"), [(0, 2), (1, 2), (2, 2), (3, 3), (4, 3), (1000, 11), (10_000, 15)])
def test_default_candidates(n: int, k: int) -> None:
    assert default_candidates(n) == k


def test_candidates_must_be_positive() -> None:
    with pytest.raises(ValueError):
        place(req(), HostView([host()]), rng=random.Random(0), candidates=0)


class CountingFilter:
    """Wraps a filter and records which hosts it was asked about."""

    def __init__(self, inner: Filter) -> None:
        self.inner, self.name, self.hosts = inner, inner.name, Counter[str]()

    def __call__(self, request: PlacementRequest, h: HostSnapshot) -> Verdict:
        self.hosts[h.host_id] += 1
        return self.inner(request, h)


@pytest.fixture(scope="module")
def big_view() -> HostView:
    return HostView([host(f"h{i}", allocated=Resources(i % 7, 1024 * (i % 13), 0)) for i in range(10_000)])


@pytest.mark.parametrize("seed", range(20))
def test_cost_does_not_grow_with_fleet_when_capacity_is_ample(big_view: HostView, seed: int) -> None:
    counter = CountingFilter(host_ready)
    result = place(req(1, 1024), big_view, rng=random.Random(seed), filters=(counter, fits_resources))
    k = default_candidates(len(big_view))
    assert result.host_id is not None
    # Every visited host fits, so exactly k hosts are visited, each once.
    assert sum(counter.hosts.values()) == result.visited == k == 15
    assert max(counter.hosts.values()) == 1


def test_scarce_capacity_walks_until_found(big_view: HostView) -> None:
    # Only one host in 10,000 can take the request: it must still be found.
    view = HostView(list(big_view))
    view.upsert(host("h4242", capacity=Resources(64, 1 << 20, 1000)))
    counter = CountingFilter(host_ready)
    result = place(req(32, 1 << 19), view, rng=random.Random(1), filters=(counter, fits_resources))
    assert result.host_id == "h4242"
    assert sum(counter.hosts.values()) == len(view) and max(counter.hosts.values()) == 1
    assert result.filtered == {"InsufficientMemory": 9999}


def test_no_host_fits_message() -> None:
    view = HostView(
        [host(f"m{i}", allocated=Resources(0, 65536, 0)) for i in range(10)]
        + [host("u0", ready=False), host("u1", ready=False)]
    )
    result = place(req(1, 1024), view, rng=random.Random(3))
    assert result.host_id is None
    assert result.message() == "0/12 hosts fit: 10 InsufficientMemory, 2 HostNotReady"


# --- HostView ----------------------------------------------------------------------


@PROPS
@given(
    views(),
    st.lists(st.tuples(st.integers(0, 29), resources_st, st.integers(0, 3)), max_size=20),
    st.randoms(use_true_random=False),
)
def test_assume_then_forget_restores_view_exactly(
    view: HostView, ops: list[tuple[int, Resources, int]], rnd: random.Random
) -> None:
    before = list(view)
    applied = [(view[i % len(view)].host_id, r, d) for i, r, d in ops] if len(view) else []
    for host_id, r, d in applied:
        view.assume(host_id, r, d)
    for host_id, _, _ in applied:
        effective, committed = view.get(host_id), view.committed(host_id)
        # Assumptions are not etcd state: the bind still compares the committed revision.
        assert effective is not None and committed is not None
        assert effective.alloc_revision == committed.alloc_revision
    rnd.shuffle(applied)  # forgets need not come in the order of the assumes
    for host_id, r, d in applied:
        view.forget(host_id, r, d)
    after = list(view)
    assert after == before
    assert all(a is b for a, b in zip(after, before, strict=True))  # the very same snapshots again
    assert all(view.assumed(h.host_id) == (Resources(), 0) for h in view)


def test_assume_counts_against_placement_and_survives_upsert() -> None:
    view = HostView([host("a", allocated=Resources(0, 0, 0))])
    r = Resources(8, 32768, 0)
    view.assume("a", r)
    assert view.get("a") == host("a", allocated=r, vm_count=1)
    # Another shard's bind lands on the host: the committed state moves, ours stays assumed.
    other = host("a", allocated=Resources(4, 1024, 0), vm_count=1, rev=9)
    view.upsert(other)
    assert view.committed("a") == other
    assert view.get("a") == other.with_allocated(r, 1)
    assert fits_resources(req(8, 32768), view.get("a")).reason == "InsufficientMemory"  # type: ignore[arg-type]
    view.forget("a", r)
    assert view.get("a") is other


def test_assume_unknown_host_raises_forget_unknown_is_noop() -> None:
    view = HostView()
    with pytest.raises(KeyError):
        view.assume("nope", Resources(1, 1, 1))
    view.forget("nope", Resources(1, 1, 1))
    view.upsert(host("a"))
    view.assume("a", Resources(1, 1, 1))
    assert view.remove("a") and not view.remove("a")
    view.forget("a", Resources(1, 1, 1))  # removed meanwhile: no error
    view.upsert(host("a"))
    assert view.get("a") == host("a")  # its old assumption went with it


ops_st = st.lists(
    st.tuples(st.sampled_from(["upsert", "remove"]), st.integers(0, 15), st.integers(0, 100)), max_size=60
)


@PROPS
@given(ops_st)
def test_view_matches_a_dict_model(ops: list[tuple[str, int, int]]) -> None:
    view, model = HostView(), dict[str, HostSnapshot]()
    for op, i, rev in ops:
        hid = f"h{i}"
        if op == "upsert":
            snap = host(hid, rev=rev)
            view.upsert(snap)
            model[hid] = snap
        else:
            assert view.remove(hid) == (model.pop(hid, None) is not None)
    assert len(view) == len(model)
    assert {h.host_id: h for h in view} == model
    assert all(view[i] is view.get(view[i].host_id) for i in range(len(view)))
    assert all((hid in view) for hid in model)


@PROPS
@given(views(), st.lists(requests_st, max_size=8))
def test_admit_takes_waiting_requests_in_order_while_the_changed_hosts_have_room(
    view: HostView, waiting: list[PlacementRequest]
) -> None:
    changed = list(view)[: max(1, len(view) // 3)]
    admitted = admit(enumerate(waiting), changed)
    assert admitted == sorted(admitted)  # oldest first
    # Only requests that fit a changed host on its own get in...
    assert all(any(feasible(waiting[i], h) for h in changed) for i in admitted)
    # ...and the first one that fits always does.
    fitting = [i for i, r in enumerate(waiting) if any(feasible(r, h) for h in changed)]
    assert admitted[:1] == fitting[:1]
    assert admit(enumerate(waiting), []) == []


def test_a_host_freed_of_k_slots_admits_k_waiting_vms() -> None:
    freed = host(capacity=Resources(16, 65536, 1000), allocated=Resources(13, 0, 0))  # 3 vCPUs free
    waiting = [(f"vm-{i}", req(vcpus=1)) for i in range(10)]
    assert admit(waiting, [freed]) == ["vm-0", "vm-1", "vm-2"]
    assert admit([("big", req(vcpus=4)), *waiting], [freed]) == ["vm-0", "vm-1", "vm-2"]
