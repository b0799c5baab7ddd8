"""A VM's placement request, from its spec: the one construction the scheduler's
shards and the frontend's PlanVms share."""

from __future__ import annotations

from collections.abc import Hashable
from typing import TypeVar

from controlplane.models import VmSpec
from controlplane.placement.model import PlacementRequest
from controlplane.placement.sets import SetMember
from controlplane.placement.zones import ZoneCounts

K = TypeVar("K", bound=Hashable)

_NO_ZONES: frozenset[str] = frozenset()


def request_of(spec: VmSpec, zones: ZoneCounts) -> PlacementRequest:
    """The placement request of ``spec``, its zone constraints resolved against
    ``zones`` (committed + assumed) as they are now."""
    zone_group, zone_affinity = spec.zone_group, spec.zone_affinity_group
    return PlacementRequest(vm_key=spec.ref.name, uid=spec.uid, resources=spec.resources,
                            labels=spec.labels, node_selector=spec.node_selector,
                            anti_affinity_group=spec.host_group, zone_spread=bool(zone_group),
                            avoid_zones=zones.zones_with(zone_group) if zone_group else _NO_ZONES,
                            host_affinity_group=spec.host_affinity_group,
                            affinity_zones=zones.zones_with(zone_affinity) if zone_affinity else None,
                            image=spec.image, backings=spec.backings,
                            datastore_classes=spec.datastore_classes)


def member_of(key: K, spec: VmSpec, zones: ZoneCounts) -> SetMember[K]:
    """``spec`` as a member of a set to ``place_set`` (which resolves the zone
    constraints again as earlier members are assumed)."""
    return SetMember(key, request_of(spec, zones), spec.zone_group, spec.zone_affinity_group)
