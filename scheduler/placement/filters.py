"""Feasibility filters: pure ``(request, host) -> Verdict`` functions.

Each filter carries a ``name`` (for logs and metrics). A rejected ``Verdict`` carries
a CamelCase ``reason`` that ``place()`` counts for the "no host fits" message. Filters
run once per visited host, so they must be cheap and must not allocate on success.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, cast

from scheduler.placement.model import FITS, HostSnapshot, PlacementRequest, Verdict


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
_NO_VCPUS = Verdict(False, "InsufficientVcpus")
_NO_MEMORY = Verdict(False, "InsufficientMemory")
_NO_DISK = Verdict(False, "InsufficientDisk")


@named("HostReady")
def host_ready(request: PlacementRequest, host: HostSnapshot) -> Verdict:
    """Rejects hosts that are not registered and heartbeating."""
    return FITS if host.ready else _NOT_READY


@named("FitsResources")
def fits_resources(request: PlacementRequest, host: HostSnapshot) -> Verdict:
    """Rejects hosts whose free capacity is below the request in any dimension.

    Reports the first short dimension in the order memory, vcpus, disk: memory is the
    dimension that runs out first on VM hosts, so it is the most telling reason.
    """
    want, cap, used = request.resources, host.capacity, host.allocated
    # Compared field by field rather than via ``host.free``: no allocation per host.
    if want.memory_mib > cap.memory_mib - used.memory_mib:
        return _NO_MEMORY
    if want.vcpus > cap.vcpus - used.vcpus:
        return _NO_VCPUS
    if want.disk_gib > cap.disk_gib - used.disk_gib:
        return _NO_DISK
    return FITS


# Cheapest first: a boolean check before arithmetic over three dimensions.
DEFAULT_FILTERS: tuple[Filter, ...] = (host_ready, fits_resources)
