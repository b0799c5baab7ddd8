"""Value types of placement: what a host offers, what a VM asks for, what was decided.

Everything here is immutable and free of I/O, so filters and scorers can be pure
functions and tests can build any situation from literals.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

# One resource type for the whole system: placement shares the control plane's.
from controlplane.models import IMAGE_LABEL_PREFIX, ZONE_LABEL, Resources, datastore_label, zone_of

# Shared, read-only empty mappings: defaults that no caller can mutate by accident.
# (Given through default_factory: dataclasses reject unhashable plain defaults.)
EMPTY_LABELS: Mapping[str, str] = MappingProxyType({})
_NO_COUNTS: Mapping[str, int] = MappingProxyType({})
_NO_ZONES: frozenset[str] = frozenset()
_NOTHING: frozenset[str] = frozenset()

__all__ = ["IMAGE_LABEL_PREFIX", "ZONE_LABEL", "HostSnapshot", "Placement", "PlacementRequest", "Resources",
           "Verdict"]


@dataclass(frozen=True, slots=True)
class HostSnapshot:
    """One host as the scheduler last saw it (plus any placements it assumed).

    ``alloc_revision`` is the etcd mod_revision of the host's allocation key (0 when the
    key is absent). Placement never interprets it; the bind transaction compares it.
    ``capacity`` is raw; ``allocatable`` is what may be booked: capacity times the host's
    overcommit setting (``HostRegistration.allocatable``; default: capacity).
    Placement reads it as ``limit``, which is typed as always set.
    ``groups`` counts the VMs of each anti-affinity group on the host; it is part of the
    allocation, so the same compare that guards capacity guards anti-affinity.
    ``networks``: the network backings (port groups) the host reaches (its registration).
    """

    host_id: str
    ready: bool
    capacity: Resources
    allocated: Resources
    vm_count: int = 0
    # Excluded from hash: a Mapping is not hashable, and host_id already identifies.
    labels: Mapping[str, str] = field(default_factory=lambda: EMPTY_LABELS, hash=False)
    alloc_revision: int = 0
    maintenance: bool = False
    allocatable: Resources | None = None
    groups: Mapping[str, int] = field(default_factory=lambda: _NO_COUNTS, hash=False)
    networks: frozenset[str] = _NOTHING

    def __post_init__(self) -> None:
        if self.allocatable is None:
            object.__setattr__(self, "allocatable", self.capacity)

    @property
    def zone(self) -> str:
        """The host's availability zone (label ``topology.quanta.io/zone``), "" if none."""
        return zone_of(self.labels)

    @property
    def limit(self) -> Resources:
        """What may be allocated on the host: ``allocatable`` (filled with capacity by
        ``__post_init__`` when given as None)."""
        return self.capacity if self.allocatable is None else self.allocatable

    @property
    def free(self) -> Resources:
        """Allocatable minus allocation; negative where the host is over-committed."""
        return self.limit - self.allocated

    def with_allocated(self, delta: Resources, vm_delta: int,
                       group_deltas: Mapping[str, int] = _NO_COUNTS) -> HostSnapshot:
        """A copy with ``delta`` added to ``allocated``, ``vm_delta`` to ``vm_count``
        and each of ``group_deltas`` to its group's count (zero counts dropped).

        The revision is kept: an assumed placement is not a new etcd state.
        """
        groups = self.groups
        if group_deltas:
            groups = dict(groups)
            for group, d in group_deltas.items():
                n = groups.get(group, 0) + d
                if n > 0:
                    groups[group] = n
                else:
                    groups.pop(group, None)
        return HostSnapshot(
            host_id=self.host_id,
            ready=self.ready,
            capacity=self.capacity,
            allocated=self.allocated + delta,
            vm_count=self.vm_count + vm_delta,
            labels=self.labels,
            alloc_revision=self.alloc_revision,
            maintenance=self.maintenance,
            allocatable=self.allocatable,
            groups=groups,
            networks=self.networks,
        )


@dataclass(frozen=True, slots=True)
class PlacementRequest:
    """A workload that needs a host: its store key, uid, size and labels, the host
    labels it requires (``node_selector``) and its anti-affinity group, if any.

    Zone constraints arrive resolved, so that filters stay ``(request, host)``
    lookups: whoever builds the request (the shard, from its zone counts, committed
    plus assumed) names the zones. ``zone_spread``: the VM must land in a zone
    (hosts without one do not qualify) that is not in ``avoid_zones``, the zones
    already holding a zone-scoped VM of its group. ``host_affinity_group``: only
    hosts running a VM of that group. ``affinity_zones``: only hosts in one of
    these zones (None: no zone affinity; empty: no zone qualifies yet).
    ``image``: for image locality scoring. ``backings``: the network backings of its
    NICs, all of which the host must reach; ``datastore_classes``: the classes of its
    persistent disks, each of which the host must carry the label
    ``datastore_label(class)`` = "true" for.
    """

    vm_key: str
    uid: str
    resources: Resources
    labels: Mapping[str, str] = field(default_factory=lambda: EMPTY_LABELS, hash=False)
    node_selector: Mapping[str, str] = field(default_factory=lambda: EMPTY_LABELS, hash=False)
    anti_affinity_group: str = ""
    zone_spread: bool = False
    avoid_zones: frozenset[str] = _NO_ZONES
    host_affinity_group: str = ""
    affinity_zones: frozenset[str] | None = None
    image: str = ""
    backings: frozenset[str] = _NOTHING
    datastore_classes: frozenset[str] = _NOTHING
    # The host labels of datastore_classes, made once here so filters build no strings.
    datastore_labels: tuple[str, ...] = field(default=(), init=False, compare=False)

    def __post_init__(self) -> None:
        if self.datastore_classes:
            object.__setattr__(self, "datastore_labels",
                               tuple(datastore_label(c) for c in sorted(self.datastore_classes)))


@dataclass(frozen=True, slots=True)
class Verdict:
    """A filter's answer; ``reason`` is a short CamelCase word when ``ok`` is false."""

    ok: bool
    reason: str = ""


# Filters return this shared instance on success so the hot path does not allocate.
FITS = Verdict(True)


@dataclass(frozen=True, slots=True)
class Placement:
    """The outcome of one ``place()`` call.

    ``filtered`` counts, per rejection reason, how many visited hosts were removed.
    When ``host_id`` is None every host was visited, so ``visited == total`` and the
    counts explain the whole fleet.
    """

    host_id: str | None
    score: float
    filtered: Mapping[str, int] = field(default_factory=lambda: _NO_COUNTS, hash=False)
    visited: int = 0
    total: int = 0

    def message(self) -> str:
        """A human summary, e.g. ``"0/12 hosts fit: 10 InsufficientMemory, 2 HostNotReady"``."""
        if self.host_id is not None:
            return f"placed on {self.host_id} after visiting {self.visited}/{self.total} hosts"
        fit = self.visited - sum(self.filtered.values())
        head = f"{fit}/{self.total} hosts fit"
        if not self.filtered:
            return head
        # Largest cause first: that is the one an operator has to act on.
        parts = sorted(self.filtered.items(), key=lambda kv: (-kv[1], kv[0]))
        return head + ": " + ", ".join(f"{n} {reason}" for reason, n in parts)
