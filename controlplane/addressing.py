"""Subnet arithmetic for networks that Quanta hands addresses out of: the one place for
what a subnet accepts, what its pool is, which address a static NIC may ask for, and
how free pool addresses are found. Pure: no I/O, randomness passed in.

Vocabulary: a subnet is an IPv4 ``cidr`` with an optional ``gateway`` (never handed
out: its network claims it on the backing, ``store/networks.py``) and a *range*
``range_start..range_end`` (inclusive, inside the cidr's host addresses), the *pool*
STATIC_POOL addresses come from: the range minus the gateway. A STATIC address may
be any host address of the cidr but the gateway (in the range or not). Every address
handed out on a backing (port group: one L2 segment) shares one key space,
``addresses/{backing}/{ip}`` with the address as 8 hex digits (``keys.ip_key``),
whichever network on the backing and whichever mode asked for it: an address is
never handed out twice on one segment, and a pool's range is one key range, read
from any point in address order.

Finding free addresses (:class:`PoolSearch`) costs a window, not the pool: from a
random start in the range, one keys-only read of at most :data:`WINDOW` keys; the
first free addresses of what it covers; a window that comes back full without
enough is followed by the next one, past the range's end wrapping to its start; only
after :data:`MAX_WINDOWS` full windows is the whole range read. So a create in a
pool that is not nearly full reads a window or two whatever the pool holds (linear
probing: expected cost 1/(1 - load)^2 addresses, half full: 4).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Container, Sequence
from dataclasses import dataclass, field

MIN_PREFIX = 8
MAX_PREFIX = 30
MAX_DNS_SERVERS = 8
#: Keys one window read of a pool returns at most (:class:`PoolSearch`).
WINDOW = 64
#: Full windows a search reads before it reads the whole range at once.
MAX_WINDOWS = 8


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

    @property
    def bounds(self) -> tuple[int, int]:
        """The range's first and last address, as ints."""
        return int(ipaddress.IPv4Address(self.range_start)), int(ipaddress.IPv4Address(self.range_end))

    @property
    def gateway_value(self) -> int | None:
        """The gateway as an int, or None when the subnet has none."""
        return int(ipaddress.IPv4Address(self.gateway)) if self.gateway else None

    def _gateway_in_range(self) -> bool:
        value = self.gateway_value
        if value is None:
            return False
        lo, hi = self.bounds
        return lo <= value <= hi

    @property
    def pool_size(self) -> int:
        """How many addresses STATIC_POOL may hand out (the range but the gateway)."""
        lo, hi = self.bounds
        return hi - lo + 1 - self._gateway_in_range()

    def in_pool(self, ip: str) -> bool:
        lo, hi = self.bounds
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


def to_int(ip: str) -> int:
    return int(ipaddress.IPv4Address(ip))


def to_ip(value: int) -> str:
    return str(ipaddress.IPv4Address(value))


def pool_spans(lo: int, hi: int, gateway: int | None) -> tuple[tuple[int, int], ...]:
    """A pool (range ``lo..hi``, ``gateway`` never handed out) as inclusive spans of
    ints: the range, split around the gateway."""
    if gateway is None or not lo <= gateway <= hi:
        return ((lo, hi),)
    return tuple((a, b) for a, b in ((lo, gateway - 1), (gateway + 1, hi)) if a <= b)


def first_free(start: int, end: int, skip: Container[int], want: int) -> list[int]:
    """The first ``want`` addresses (ints) of [start, end], ascending, not in ``skip``
    (fewer when [start, end] has fewer). Costs ``want`` plus the skipped addresses met."""
    out: list[int] = []
    value = start
    while value <= end and len(out) < want:
        if value not in skip:
            out.append(value)
        value += 1
    return out


@dataclass(slots=True)
class PoolSearch:
    """Finding ``want`` free addresses of one pool (inclusive ``lo..hi``), pure: it
    says which key range to read next (:meth:`next_read`), is told what the read
    returned (:meth:`seen`), and ends with :attr:`picked` (the first free addresses in
    address order from ``start``, wrapping past ``hi`` to ``lo``) and, when it looked
    at the whole range (:attr:`complete`), every taken address of it (:attr:`taken`).

    ``skip``: addresses that are not free though no key says so (the gateway, this
    call's other addresses, proposals of this process in flight). The reads are
    windows of at most :data:`WINDOW` keys, from ``start`` to ``hi`` and then (the
    wrap) from ``lo`` to ``start - 1``: a window covers up to its last key when it
    comes back full, else to the end of its part; the next window starts after what
    the last one covered. Enough free addresses end the search. After
    :data:`MAX_WINDOWS` full windows it reads the whole range at once (the pool is
    nearly full: linear probing's cost grows as 1/(1 - load)^2)."""

    lo: int
    hi: int
    start: int
    want: int
    skip: Container[int] = frozenset()
    picked: list[int] = field(default_factory=list)
    taken: set[int] = field(default_factory=set)
    complete: bool = False
    _at: int = -1  # where the next window starts
    _wrapped: bool = False  # in the part lo..start-1
    _full_windows: int = 0
    _phase: str = "scan"  # "scan" -> "done", or -> "all" -> "done"

    def __post_init__(self) -> None:
        if not self.lo <= self.start <= self.hi:
            raise ValueError(f"start {self.start} is outside {self.lo}..{self.hi}")
        self._at = self.start

    @property
    def done(self) -> bool:
        return self._phase == "done"

    def _part_end(self) -> int:
        return self.start - 1 if self._wrapped else self.hi

    def next_read(self) -> tuple[int, int, int] | None:
        """(first, last, limit) of the next read of the pool's keys (inclusive; limit
        0: none), or None when the search is done."""
        if self._phase == "scan":
            return self._at, self._part_end(), WINDOW
        if self._phase == "all":
            return self.lo, self.hi, 0
        return None

    def seen(self, taken: Sequence[int], full: bool) -> None:
        """What the read :meth:`next_read` asked for returned: the taken addresses in
        it (ascending) and whether it stopped at its limit (``full``: more follow)."""
        first, last, _limit = self.next_read() or (0, 0, 0)
        self.taken.update(taken)
        skip = Skip(self.taken, self.skip)
        if self._phase == "all":
            self.picked = []
            for a, b in ((self.start, self.hi), (self.lo, self.start - 1)):
                self.picked += first_free(a, b, skip, self.want - len(self.picked))
            self.complete, self._phase = True, "done"
            return
        covered = taken[-1] if full and taken else last
        self.picked += first_free(first, covered, skip, self.want - len(self.picked))
        if len(self.picked) >= self.want:
            self._phase = "done"
            return
        if full:
            self._full_windows += 1
            if self._full_windows >= MAX_WINDOWS:
                self._phase = "all"
                return
        self._at = covered + 1
        if self._at > self._part_end():
            if self._wrapped or self.start == self.lo:
                self.complete, self._phase = True, "done"
                return
            self._wrapped, self._at = True, self.lo

    def free_besides(self, hard: Collection[int]) -> int:
        """With :attr:`complete`: how many addresses of lo..hi are free but for ``hard``
        (what :attr:`skip` holds that is no proposal in flight): fewer than ``want``
        means the pool is exhausted; else only proposals in flight stand in the way."""
        blocked = {v for v in (*self.taken, *hard) if self.lo <= v <= self.hi}
        return self.hi - self.lo + 1 - len(blocked)


@dataclass(frozen=True, slots=True)
class Skip:
    """Membership in either of two collections, read live, without copying them."""

    a: Container[int]
    b: Container[int]

    def __contains__(self, value: object) -> bool:
        return value in self.a or value in self.b
