"""Pure placement logic: host snapshots, filters, scorers and place().

Flow: ``HostView`` (hosts as known + assumed) → ``place()`` samples hosts in a random
order → ``filters`` decide feasibility (cheapest first) → a scorer ranks the feasible
candidates → best one wins. No I/O, no asyncio, no protobuf: the shard owns those.
"""

from scheduler.placement.filters import (
    DEFAULT_FILTERS,
    Filter,
    fits_resources,
    host_anti_affinity,
    host_ready,
    matches_node_selector,
    named,
    not_in_maintenance,
)
from scheduler.placement.model import (
    HostSnapshot,
    Placement,
    PlacementRequest,
    Resources,
    Verdict,
)
from scheduler.placement.place import Hosts, default_candidates, place, visit_order
from scheduler.placement.scoring import POLICIES, Scorer, normalize, pack, spread, utilisation_after, weighted
from scheduler.placement.view import HostView

__all__ = [
    "DEFAULT_FILTERS",
    "Filter",
    "HostSnapshot",
    "HostView",
    "POLICIES",
    "Hosts",
    "Placement",
    "PlacementRequest",
    "Resources",
    "Scorer",
    "Verdict",
    "default_candidates",
    "fits_resources",
    "host_anti_affinity",
    "host_ready",
    "matches_node_selector",
    "named",
    "normalize",
    "not_in_maintenance",
    "pack",
    "place",
    "spread",
    "utilisation_after",
    "visit_order",
    "weighted",
]
