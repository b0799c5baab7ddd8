"""Feasibility filters: pure ``(request, host) -> Verdict`` functions.

Each filter carries a ``name`` (for logs and metrics). A rejected ``Verdict`` carries
a CamelCase ``reason`` that ``place()`` counts for the "no host fits" message. Filters
run once per visited host, so they must be cheap and must not allocate on success.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, cast

from controlplane.placement.model import FITS, HostSnapshot, PlacementRequest, Verdict


class Filter(Protocol):
    """A named feasibility check. Pure: same inputs, same verdict; never raises."""

    name: str

    def __call__(self, request: PlacementRequest, host: HostSnapshot, /) -> Verdict: ...


def named(name: str) -> Callable[[Callable[[PlacementRequest, HostSnapshot], Verdict]], Filter]:
    """Decorator that turns a plain function into a ``Filter`` called ``name``."""

    def wrap(fn: Callable[[PlacementRequest, HostSnapshot], Verdict]) -> Filter:
        fn.name = name  # type: ignore[attr-defined]
        return cast(Filter, fn)

    return wrap


_NOT_READY = Verdict(False, "HostNotReady")
_MAINTENANCE = Verdict(False, "HostInMaintenance")
_SELECTOR = Verdict(False, "NodeSelectorMismatch")
_ANTI_AFFINITY = Verdict(False, "AntiAffinity")
_NO_ZONE = Verdict(False, "HostWithoutZone")
_ZONE_ANTI_AFFINITY = Verdict(False, "ZoneAntiAffinity")
_HOST_AFFINITY = Verdict(False, "HostAffinity")
_ZONE_AFFINITY = Verdict(False, "ZoneAffinity")
_NO_VCPUS = Verdict(False, "InsufficientVcpus")
_NO_MEMORY = Verdict(False, "InsufficientMemory")
_NO_DISK = Verdict(False, "InsufficientDisk")
_NO_NETWORK = Verdict(False, "NetworkUnreachable")
_NO_DATASTORE = Verdict(False, "DatastoreUnreachable")


@named("HostReady")
def host_ready(request: PlacementRequest, host: HostSnapshot) -> Verdict:
    """Rejects hosts that are not registered and heartbeating."""
    return FITS if host.ready else _NOT_READY


@named("NotInMaintenance")
def not_in_maintenance(request: PlacementRequest, host: HostSnapshot) -> Verdict:
    """Rejects hosts an operator put in maintenance (or is draining)."""
    return _MAINTENANCE if host.maintenance else FITS


@named("NodeSelector")
def matches_node_selector(request: PlacementRequest, host: HostSnapshot) -> Verdict:
    """Rejects hosts that lack any label of the request's node selector (exact match)."""
    labels = host.labels
    for key, value in request.node_selector.items():
        if labels.get(key) != value:
            return _SELECTOR
    return FITS


@named("NetworksReachable")
def networks_reachable(request: PlacementRequest, host: HostSnapshot) -> Verdict:
    """Rejects hosts that do not reach every network backing of the request's NICs
    (``HostSnapshot.networks``, as the host's agent registered them)."""
    backings = request.backings
    return FITS if not backings or backings <= host.networks else _NO_NETWORK


@named("DatastoreReachable")
def datastore_reachable(request: PlacementRequest, host: HostSnapshot) -> Verdict:
    """Rejects hosts without the label ``datastore.quanta.io/{class}`` = "true" for
    the datastore class of any of the request's persistent disks."""
    labels = host.labels
    for label in request.datastore_labels:
        if labels.get(label) != "true":
            return _NO_DATASTORE
    return FITS


@named("HostAntiAffinity")
def host_anti_affinity(request: PlacementRequest, host: HostSnapshot) -> Verdict:
    """Rejects hosts that already run (or are assumed to run) a VM of the request's
    anti-affinity group. Holds across shards because the group counts live in the
    host's allocation, which every bind compares."""
    group = request.anti_affinity_group
    return _ANTI_AFFINITY if group and host.groups.get(group, 0) > 0 else FITS


@named("ZoneAntiAffinity")
def zone_anti_affinity(request: PlacementRequest, host: HostSnapshot) -> Verdict:
    """For a zone-scoped VM: rejects hosts without a zone, and hosts in a zone that
    already runs (or is assumed to run) a zone-scoped VM of its group. Holds across
    shards because the bind compares and bumps the zone's group count
    (``zones/{zone}/groups/...``) in the same txn as the host allocation."""
    if not request.zone_spread:
        return FITS
    zone = host.zone
    if not zone:
        return _NO_ZONE
    return _ZONE_ANTI_AFFINITY if zone in request.avoid_zones else FITS


@named("HostAffinity")
def host_affinity(request: PlacementRequest, host: HostSnapshot) -> Verdict:
    """Rejects hosts that run no VM of the request's affinity group (host scope)."""
    group = request.host_affinity_group
    return _HOST_AFFINITY if group and host.groups.get(group, 0) == 0 else FITS


@named("ZoneAffinity")
def zone_affinity(request: PlacementRequest, host: HostSnapshot) -> Verdict:
    """Rejects hosts outside the zones that run a zone-scoped VM of the request's
    affinity group (zone scope): every host while that group runs nowhere."""
    zones = request.affinity_zones
    if zones is None:
        return FITS
    zone = host.zone
    return FITS if zone and zone in zones else _ZONE_AFFINITY


@named("FitsResources")
def fits_resources(request: PlacementRequest, host: HostSnapshot) -> Verdict:
    """Rejects hosts whose free allocatable capacity (capacity times the host's
    overcommit ratios) is below the request in any dimension.

    Reports the first short dimension in the order memory, vcpus, disk: memory is the
    dimension that runs out first on VM hosts, so it is the most telling reason.
    """
    want, cap, used = request.resources, host.limit, host.allocated
    # Compared field by field rather than via ``host.free``: no allocation per host.
    if want.memory_mib > cap.memory_mib - used.memory_mib:
        return _NO_MEMORY
    if want.vcpus > cap.vcpus - used.vcpus:
        return _NO_VCPUS
    if want.disk_gib > cap.disk_gib - used.disk_gib:
        return _NO_DISK
    return FITS


# Cheapest first: boolean checks, then lookups that cost nothing without a selector,
# NIC, disk, group or zone constraint, then arithmetic over three dimensions.
# Zone anti-affinity before host anti-affinity: for a zone-scoped VM it is the
# wider reason, so "no host fits" names it for every host of a taken zone.
DEFAULT_FILTERS: tuple[Filter, ...] = (host_ready, not_in_maintenance, matches_node_selector, networks_reachable,
                                       datastore_reachable, zone_anti_affinity, host_anti_affinity, host_affinity,
                                       zone_affinity, fits_resources)
