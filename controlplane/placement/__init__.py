"""Pure placement logic: host snapshots, filters, scorers and place().

Flow: ``HostView`` (hosts as known + assumed) → ``place()`` samples hosts in a random
order → ``filters`` decide feasibility (cheapest first) → a scorer ranks the feasible
candidates → best one wins. No I/O, no asyncio, no protobuf: the shard owns those.
"""

from controlplane.placement.filters import (
    DEFAULT_FILTERS,
    Filter,
    datastore_reachable,
    fits_resources,
    host_affinity,
    host_anti_affinity,
    host_ready,
    matches_node_selector,
    named,
    networks_reachable,
    not_in_maintenance,
    zone_affinity,
    zone_anti_affinity,
)
from controlplane.placement.model import (
    IMAGE_LABEL_PREFIX,
    ZONE_LABEL,
    HostSnapshot,
    Placement,
    PlacementRequest,
    Resources,
    Verdict,
)
from controlplane.placement.place import Hosts, admit, default_candidates, place, visit_order
from controlplane.placement.scoring import (
    POLICIES,
    Scorer,
    image_locality,
    normalize,
    pack,
    policy,
    spread,
    utilisation_after,
    weighted,
)
from controlplane.placement.sets import SetMember, SetPlacement, place_set
from controlplane.placement.specs import member_of, request_of
from controlplane.placement.view import HostView
from controlplane.placement.zones import ZoneCounts

__all__ = [
    "DEFAULT_FILTERS",
    "IMAGE_LABEL_PREFIX",
    "ZONE_LABEL",
    "Filter",
    "HostSnapshot",
    "HostView",
    "POLICIES",
    "Hosts",
    "Placement",
    "PlacementRequest",
    "Resources",
    "Scorer",
    "SetMember",
    "SetPlacement",
    "Verdict",
    "ZoneCounts",
    "datastore_reachable",
    "default_candidates",
    "admit",
    "fits_resources",
    "host_affinity",
    "host_anti_affinity",
    "host_ready",
    "matches_node_selector",
    "named",
    "networks_reachable",
    "image_locality",
    "normalize",
    "not_in_maintenance",
    "pack",
    "place",
    "place_set",
    "member_of",
    "request_of",
    "policy",
    "spread",
    "utilisation_after",
    "visit_order",
    "weighted",
    "zone_affinity",
    "zone_anti_affinity",
]
