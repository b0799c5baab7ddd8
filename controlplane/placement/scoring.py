"""Scorers: pure ``(request, host) -> float`` functions with results in [0, 1].

Scores are normalised against fixed bounds (Nova's ``weights.normalize`` with known
min and max) rather than against the other candidates, so a host's score does not
depend on which hosts happened to be sampled with it, and scorers can be combined by
weight without one scale drowning another. Higher is better.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from controlplane.placement.model import IMAGE_LABEL_PREFIX, HostSnapshot, PlacementRequest

Scorer = Callable[[PlacementRequest, HostSnapshot], float]


def normalize(value: float, lo: float, hi: float) -> float:
    """Maps ``value`` from [lo, hi] onto [0, 1], clamping outside values; 0 if lo == hi."""
    if hi <= lo:
        return 0.0
    x = (value - lo) / (hi - lo)
    return 0.0 if x < 0.0 else 1.0 if x > 1.0 else x


def _fraction(used: int, capacity: int) -> float:
    # A dimension the host does not have at all counts as full: nothing should prefer it.
    return normalize(used, 0, capacity) if capacity > 0 else 1.0


def utilisation_after(request: PlacementRequest, host: HostSnapshot) -> float:
    """Mean of the vcpu and memory fractions in use once ``request`` lands, in [0, 1]."""
    want, cap, used = request.resources, host.limit, host.allocated
    return (
        _fraction(used.vcpus + want.vcpus, cap.vcpus)
        + _fraction(used.memory_mib + want.memory_mib, cap.memory_mib)
    ) / 2.0


def spread(request: PlacementRequest, host: HostSnapshot) -> float:
    """Prefers the least allocated host (Kubernetes LeastAllocated): 1 - utilisation."""
    return 1.0 - utilisation_after(request, host)


def pack(request: PlacementRequest, host: HostSnapshot) -> float:
    """Prefers the most allocated host that still fits (bin packing): utilisation."""
    return utilisation_after(request, host)


def image_locality(request: PlacementRequest, host: HostSnapshot) -> float:
    """1 when the host already holds the request's image (its agent reports label
    ``image.quanta.io/<image>=true``), else 0: a clone from a local image starts
    sooner and copies nothing over the network."""
    if not request.image:
        return 0.0
    return 1.0 if host.labels.get(IMAGE_LABEL_PREFIX + request.image) == "true" else 0.0


POLICIES: dict[str, Scorer] = {"spread": spread, "pack": pack}


def policy(name: str, *, image_locality_weight: float = 0.0) -> Scorer:
    """The scorer of a policy (a key of POLICIES), with image locality weighted in
    when ``image_locality_weight`` > 0 (1.0: a local image counts as much as the
    whole spread/pack score). Raises KeyError for an unknown policy."""
    base = POLICIES[name]
    if image_locality_weight <= 0:
        return base
    return weighted([(1.0, base), (image_locality_weight, image_locality)])


def weighted(terms: Sequence[tuple[float, Scorer]]) -> Scorer:
    """Combines scorers as a weighted mean, which stays in [0, 1].

    Raises ValueError when ``terms`` is empty or a weight is not positive (to prefer
    the opposite of a scorer, use its counterpart, e.g. ``pack`` for ``spread``).
    """
    if not terms:
        raise ValueError("weighted() needs at least one scorer")
    if any(w <= 0 for w, _ in terms):
        raise ValueError("weights must be positive")
    total = float(sum(w for w, _ in terms))
    pairs = tuple((w / total, s) for w, s in terms)

    def combined(request: PlacementRequest, host: HostSnapshot) -> float:
        # Clamped because float rounding of the weights can overshoot 1 by an ulp.
        return min(1.0, sum(w * s(request, host) for w, s in pairs))

    return combined
