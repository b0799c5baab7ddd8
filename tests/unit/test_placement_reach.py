"""Placement of VMs with NICs and persistent disks: the NetworksReachable and
DatastoreReachable filters (table-driven and Hypothesis), the request built from a
spec, and "no host fits" counting them."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.models import DiskRef, Nic, VmRef, VmSpec, datastore_label
from controlplane.placement import (
    DEFAULT_FILTERS,
    HostSnapshot,
    HostView,
    PlacementRequest,
    Resources,
    Verdict,
    ZoneCounts,
    datastore_reachable,
    networks_reachable,
    place,
    request_of,
)
from controlplane.placement.model import FITS

CAP = Resources(16, 65536, 1000)
UNREACHABLE = Verdict(False, "NetworkUnreachable")
NO_DATASTORE = Verdict(False, "DatastoreUnreachable")


def host(host_id: str = "h", networks: frozenset[str] = frozenset(), classes: tuple[str, ...] = (),
         **labels: str) -> HostSnapshot:
    all_labels = {datastore_label(c): "true" for c in classes} | labels
    return HostSnapshot(host_id, True, CAP, Resources(), labels=all_labels, networks=networks)


def req(backings: frozenset[str] = frozenset(), classes: frozenset[str] = frozenset()) -> PlacementRequest:
    return PlacementRequest("k", "uid", Resources(1, 1024, 10), backings=backings, datastore_classes=classes)


@pytest.mark.parametrize(("name", "backings", "networks", "want"), [
    ("no NIC, host reaches nothing", frozenset(), frozenset(), FITS),
    ("no NIC, host reaches some", frozenset(), frozenset({"a"}), FITS),
    ("one backing reached", frozenset({"a"}), frozenset({"a", "b"}), FITS),
    ("all backings reached", frozenset({"a", "b"}), frozenset({"a", "b"}), FITS),
    ("one of two reached", frozenset({"a", "b"}), frozenset({"a"}), UNREACHABLE),
    ("host reaches nothing", frozenset({"a"}), frozenset(), UNREACHABLE),
    ("case matters", frozenset({"VM Network"}), frozenset({"vm network"}), UNREACHABLE),
])
def test_networks_reachable(name: str, backings: frozenset[str], networks: frozenset[str], want: Verdict) -> None:
    assert networks_reachable(req(backings), host(networks=networks)) == want, name


@pytest.mark.parametrize(("name", "classes", "host_", "want"), [
    ("no disk, no label", frozenset(), host(), FITS),
    ("class labelled", frozenset({"standard"}), host(classes=("standard",)), FITS),
    ("both classes labelled", frozenset({"standard", "fast"}), host(classes=("fast", "standard")), FITS),
    ("one of two labelled", frozenset({"standard", "fast"}), host(classes=("standard",)), NO_DATASTORE),
    ("no label", frozenset({"standard"}), host(), NO_DATASTORE),
    ("label not true", frozenset({"standard"}), host(**{datastore_label("standard"): "false"}), NO_DATASTORE),
    ("other class only", frozenset({"fast"}), host(classes=("standard",)), NO_DATASTORE),
])
def test_datastore_reachable(name: str, classes: frozenset[str], host_: HostSnapshot, want: Verdict) -> None:
    assert datastore_reachable(req(classes=classes), host_) == want, name


def test_filters_return_the_shared_verdict_on_success() -> None:
    # Allocation-free on success: the one FITS instance, not an equal copy.
    h = host(networks=frozenset({"a"}), classes=("standard",))
    assert networks_reachable(req(frozenset({"a"})), h) is FITS
    assert datastore_reachable(req(classes=frozenset({"standard"})), h) is FITS


def test_request_of_carries_backings_and_datastore_classes() -> None:
    nics = (Nic("tenants/t/projects/p/networks/cp", "n1", "cp"),
            Nic("tenants/t/projects/p/networks/w", "n2", "workers"),
            Nic("tenants/t/networks/cp2", "n3", "cp"))
    disks = (DiskRef("d1", "u1", 10), DiskRef("d2", "u2", 20, "fast"))
    spec = VmSpec(VmRef("t", "p", "vm"), "uid", "small", "img", Resources(1, 1024, 10), nics=nics, disks=disks)
    request = request_of(spec, ZoneCounts())
    assert request.backings == frozenset({"cp", "workers"})
    assert request.datastore_classes == frozenset({"standard", "fast"})
    plain = request_of(VmSpec(VmRef("t", "p", "vm"), "uid", "small", "img", Resources(1, 1024, 10)), ZoneCounts())
    assert plain.backings == frozenset() and plain.datastore_classes == frozenset()


def test_no_host_fits_message_counts_network_and_datastore() -> None:
    view = HostView([host("h1"), host("h2", networks=frozenset({"a"})),
                     host("h3", networks=frozenset({"a"}), classes=("fast",)),
                     HostSnapshot("h4", False, CAP, Resources(), networks=frozenset({"a"}))])
    result = place(req(frozenset({"a"}), frozenset({"standard"})), view, rng=random.Random(1))
    assert result.host_id is None
    assert dict(result.filtered) == {"NetworkUnreachable": 1, "DatastoreUnreachable": 2, "HostNotReady": 1}
    assert result.message() == "0/4 hosts fit: 2 DatastoreUnreachable, 1 HostNotReady, 1 NetworkUnreachable"


BACKINGS = ("cp", "workers", "VM Network", "dmz")
CLASSES = ("standard", "fast")
subsets = st.frozensets(st.sampled_from(BACKINGS))
class_sets = st.frozensets(st.sampled_from(CLASSES))
hosts_st = st.lists(st.tuples(subsets, class_sets), max_size=20).map(
    lambda rows: HostView([host(f"h{i}", networks, tuple(classes)) for i, (networks, classes) in enumerate(rows)]))


@settings(max_examples=150, deadline=None)
@given(hosts_st, subsets, class_sets, st.integers(0, 2**32))
def test_place_picks_a_host_reaching_every_backing_and_class_iff_one_exists(
        view: HostView, backings: frozenset[str], classes: frozenset[str], seed: int) -> None:
    request = req(backings, classes)
    reaching = {h.host_id for h in view
                if backings <= h.networks and all(h.labels.get(datastore_label(c)) == "true" for c in classes)}
    assert {h.host_id for h in view if all(f(request, h).ok for f in DEFAULT_FILTERS)} == reaching
    result = place(request, view, rng=random.Random(seed))
    if reaching:
        assert result.host_id in reaching
    else:
        assert result.host_id is None
        assert sum(result.filtered.values()) == len(view)


@settings(max_examples=100, deadline=None)
@given(subsets, subsets)
def test_networks_reachable_is_subset(backings: frozenset[str], networks: frozenset[str]) -> None:
    assert networks_reachable(req(backings), host(networks=networks)).ok == (backings <= networks)


def test_assumed_placements_keep_the_host_networks() -> None:
    view = HostView([host("h1", networks=frozenset({"a"}))])
    view.assume("h1", Resources(1, 1024, 10))
    snapshot = view.get("h1")
    assert snapshot is not None and snapshot.networks == frozenset({"a"})
