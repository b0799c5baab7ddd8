"""Subnet arithmetic for networks that Quanta hands addresses out of: the one place for
what a subnet accepts, what its pool is, which address a static NIC may ask for, and
how a free pool address is chosen. Pure: no I/O, randomness passed in.

Vocabulary: a subnet is an IPv4 ``cidr`` with an optional ``gateway`` (never handed
out) and a *range* ``range_start..range_end`` (inclusive, inside the cidr's host
addresses), the *pool* STATIC_POOL addresses come from: the range minus the gateway.
A STATIC address may be any host address of the cidr but the gateway (in the range
or not); it and the pool's share one key space (``addresses/{network uid}/{ip}``),
so an address is never handed out twice whichever mode asked for it.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Collection, Sequence
from dataclasses import dataclass

MIN_PREFIX = 8
MAX_PREFIX = 30
MAX_DNS_SERVERS = 8
#: Random draws before :func:`choose_free` falls back to listing the free addresses.
_DRAWS = 32


@dataclass(frozen=True, slots=True)
class Subnet:
    """A subnet as stored (range resolved): see the module docstring."""

    cidr: str
    gateway: str = ""
    dns_servers: tuple[str, ...] = ()
    range_start: str = ""
    range_end: str = ""

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.cidr)

    @property
    def prefix_length(self) -> int:
        return self.network.prefixlen

    def _bounds(self) -> tuple[int, int]:
        return int(ipaddress.IPv4Address(self.range_start)), int(ipaddress.IPv4Address(self.range_end))

    def _gateway_in_range(self) -> bool:
        if not self.gateway:
            return False
        lo, hi = self._bounds()
        return lo <= int(ipaddress.IPv4Address(self.gateway)) <= hi

    @property
    def pool_size(self) -> int:
        """How many addresses STATIC_POOL may hand out (the range but the gateway)."""
        lo, hi = self._bounds()
        return hi - lo + 1 - self._gateway_in_range()

    def in_pool(self, ip: str) -> bool:
        lo, hi = self._bounds()
        value = int(ipaddress.IPv4Address(ip))
        return lo <= value <= hi and ip != self.gateway


def _address(value: str, field: str, out: list[tuple[str, str]]) -> ipaddress.IPv4Address | None:
    try:
        return ipaddress.IPv4Address(value)
    except ValueError:
        out.append((field, f"{value!r} is not an IPv4 address"))
        return None


def _host_bounds(net: ipaddress.IPv4Network) -> tuple[int, int]:
    """First and last host address (not the network and broadcast addresses)."""
    return int(net.network_address) + 1, int(net.broadcast_address) - 1


def parse_subnet(cidr: str, gateway: str = "", dns_servers: Sequence[str] = (), range_start: str = "",
                 range_end: str = "", *, field: str = "subnet") -> tuple[Subnet | None, list[tuple[str, str]]]:
    """The subnet to store (range resolved: by default every host address of the
    cidr, the gateway excluded from the pool), or None and the field violations
    ((path, why), paths under ``field``) that refuse it. A cidr with host bits set
    is refused (say "10.0.0.0/24", not "10.0.0.7/24")."""
    out: list[tuple[str, str]] = []
    if not cidr:
        return None, [(f"{field}.cidr", "required in a subnet, e.g. \"10.20.0.0/24\"")]
    try:
        net = ipaddress.IPv4Network(cidr, strict=True)
    except ValueError as err:
        return None, [(f"{field}.cidr", f"{cidr!r} is not an IPv4 network in CIDR form ({err})")]
    if not MIN_PREFIX <= net.prefixlen <= MAX_PREFIX:
        return None, [(f"{field}.cidr", f"prefix length {net.prefixlen}; {MIN_PREFIX} to {MAX_PREFIX}")]
    first, last = _host_bounds(net)
    gw = _address(gateway, f"{field}.gateway", out) if gateway else None
    if gw is not None and not first <= int(gw) <= last:
        out.append((f"{field}.gateway", f"{gateway} is not a host address of {cidr}"))
    if len(dns_servers) > MAX_DNS_SERVERS:
        out.append((f"{field}.dns_servers", f"{len(dns_servers)} servers; at most {MAX_DNS_SERVERS}"))
    for i, server in enumerate(dns_servers):
        _address(server, f"{field}.dns_servers[{i}]", out)
    bounds = []
    for name, value, default in (("range_start", range_start, first), ("range_end", range_end, last)):
        if not value:
            bounds.append(default)
            continue
        address = _address(value, f"{field}.{name}", out)
        if address is None:
            continue
        if not first <= int(address) <= last:
            out.append((f"{field}.{name}", f"{value} is not a host address of {cidr}"))
        bounds.append(int(address))
    if len(bounds) == 2 and bounds[0] > bounds[1]:
        out.append((f"{field}.range_end", "the range ends before it starts"))
    if out:
        return None, out
    subnet = Subnet(str(net), str(gw) if gw is not None else "",
                    tuple(str(ipaddress.IPv4Address(s)) for s in dns_servers),
                    str(ipaddress.IPv4Address(bounds[0])), str(ipaddress.IPv4Address(bounds[1])))
    if subnet.pool_size <= 0:
        return None, [(f"{field}.range_start", "the range holds no address but the gateway")]
    return subnet, []


def static_problem(subnet: Subnet, ip: str) -> str | None:
    """Why a STATIC NIC may not ask for ``ip`` on ``subnet`` (None: it may): it must
    be an IPv4 host address of the cidr, not the gateway."""
    try:
        address = ipaddress.IPv4Address(ip)
    except ValueError:
        return f"{ip!r} is not an IPv4 address"
    first, last = _host_bounds(subnet.network)
    if not first <= int(address) <= last:
        return f"{ip} is not a host address of {subnet.cidr}"
    if ip == subnet.gateway:
        return f"{ip} is the gateway of {subnet.cidr}"
    return None


def choose_free(subnet: Subnet, taken: Collection[str], rng: random.Random) -> str | None:
    """A free address of the pool (not in ``taken``), chosen at random so that
    concurrent frontends rarely pick the same one; None when the pool is exhausted.
    Draws at random first (cheap for a large, sparse pool); then lists what is free
    and picks among it (a nearly full pool), so it finds the last free address."""
    lo, hi = subnet._bounds()
    size = hi - lo + 1
    gateway = int(ipaddress.IPv4Address(subnet.gateway)) if subnet.gateway else -1
    used = {int(ipaddress.IPv4Address(ip)) for ip in taken}
    if len(used) < size // 2:
        for _ in range(_DRAWS):
            value = lo + rng.randrange(size)
            if value != gateway and value not in used:
                return str(ipaddress.IPv4Address(value))
    free = [v for v in range(lo, hi + 1) if v != gateway and v not in used]
    return str(ipaddress.IPv4Address(rng.choice(free))) if free else None


def free_count(subnet: Subnet, taken: Collection[str]) -> int:
    """How many pool addresses are not in ``taken``."""
    return subnet.pool_size - sum(1 for ip in set(taken) if subnet.in_pool(ip))
