"""Subnet arithmetic (``controlplane/addressing.py``): what a subnet accepts, its pool,
static addresses, and the search for free pool addresses by windows (``PoolSearch``),
held against a model of the pool's keys down to the last free address."""

from __future__ import annotations

import ipaddress
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.addressing import MAX_WINDOWS, WINDOW, PoolSearch, Skip, parse_subnet, pool_spans, static_problem


def test_the_default_range_is_every_host_address_and_the_pool_skips_the_gateway() -> None:
    subnet, problems = parse_subnet("10.20.0.0/24", "10.20.0.1", ["10.0.0.53"])
    assert problems == [] and subnet is not None
    assert (subnet.range_start, subnet.range_end) == ("10.20.0.1", "10.20.0.254")
    assert subnet.pool_size == 253  # 254 host addresses but the gateway
    assert subnet.prefix_length == 24
    assert not subnet.in_pool("10.20.0.1") and subnet.in_pool("10.20.0.2") and not subnet.in_pool("10.20.0.255")


def test_a_26_without_gateway_has_62_addresses() -> None:
    subnet, _ = parse_subnet("10.9.0.64/26")
    assert subnet is not None and subnet.pool_size == 62


@pytest.mark.parametrize(("args", "field"), [
    (("",), "subnet.cidr"),
    (("10.0.0.7/24",), "subnet.cidr"),  # host bits set
    (("fd00::/64",), "subnet.cidr"),
    (("10.0.0.0/31",), "subnet.cidr"),
    (("10.0.0.0/24", "10.0.1.1"), "subnet.gateway"),
    (("10.0.0.0/24", "10.0.0.0"), "subnet.gateway"),  # the network address
    (("10.0.0.0/24", "nope"), "subnet.gateway"),
    (("10.0.0.0/24", "", ["8.8.8"]), "subnet.dns_servers[0]"),
    (("10.0.0.0/24", "", [], "10.0.0.200", "10.0.0.100"), "subnet.range_end"),
    (("10.0.0.0/24", "", [], "10.0.0.10", "10.0.0.255"), "subnet.range_end"),  # the broadcast address
    (("10.0.0.0/30", "10.0.0.1", [], "10.0.0.1", "10.0.0.1"), "subnet.range_start"),  # only the gateway
])
def test_a_bad_subnet_is_refused_with_the_field_at_fault(args: tuple, field: str) -> None:
    subnet, problems = parse_subnet(*args)
    assert subnet is None
    assert field in [path for path, _why in problems], problems


def test_a_static_address_is_a_host_address_but_not_the_gateway() -> None:
    subnet, _ = parse_subnet("10.0.0.0/24", "10.0.0.1", [], "10.0.0.100", "10.0.0.200")
    assert subnet is not None
    assert static_problem(subnet, "10.0.0.5") is None  # outside the range is fine
    assert "gateway" in (static_problem(subnet, "10.0.0.1") or "")
    assert static_problem(subnet, "10.0.0.0") and static_problem(subnet, "10.0.0.255")
    assert static_problem(subnet, "10.0.1.5") and static_problem(subnet, "x")


def _serve(search: PoolSearch, taken: set[int]) -> list[tuple[int, int, int, int, bool]]:
    """Answer the search's reads from ``taken`` as etcd would (keys in order, at most
    ``limit``, ``more`` when more keys were left out); returns the reads made, each
    (first, last, limit, the last address it covered, whether it came back full)."""
    reads = []
    while (read := search.next_read()) is not None:
        first, last, limit = read
        keys = sorted(v for v in taken if first <= v <= last)
        full = bool(limit) and len(keys) > limit
        reads.append((first, last, limit, keys[limit - 1] if full else last, full))
        search.seen(keys[:limit] if full else keys, full)
    return reads


def _circular_free(lo: int, hi: int, start: int, blocked: set[int]) -> list[int]:
    return [v for v in [*range(start, hi + 1), *range(lo, start)] if v not in blocked]


@settings(max_examples=300, deadline=None)
@given(size=st.integers(1, 700), density=st.floats(0, 1), seed=st.integers(0, 2**32), data=st.data())
def test_a_search_finds_the_first_free_addresses_from_its_start_in_few_reads(
        size: int, density: float, seed: int, data: st.DataObject) -> None:
    """Whatever the pool holds: the picks are the first ``want`` free addresses in
    address order from the start (wrapping), never a taken or skipped one; fewer only
    when the search saw the whole range; windows never overlap, the whole range is
    read only after MAX_WINDOWS full windows, and one read suffices when the window
    from the start holds enough free addresses."""
    lo = 1000
    hi = lo + size - 1
    rng = random.Random(seed)
    taken = {v for v in range(lo, hi + 1) if rng.random() < density}
    skip = set(data.draw(st.sets(st.integers(lo, hi), max_size=8)))
    start = data.draw(st.integers(lo, hi))
    want = data.draw(st.integers(1, 80))
    search = PoolSearch(lo, hi, start, want, skip)
    reads = _serve(search, taken)
    assert search.done and 1 <= len(reads) <= MAX_WINDOWS + 3
    free = _circular_free(lo, hi, start, taken | skip)
    assert search.picked == free[:want]
    if len(search.picked) < want:
        assert search.complete and search.taken == taken
        assert search.free_besides(skip) == len(free)
    ahead = sorted(v for v in taken if v >= start)
    window_end = ahead[WINDOW - 1] if len(ahead) > WINDOW else hi
    if len([v for v in range(start, window_end + 1) if v not in taken | skip]) >= want:
        assert len(reads) == 1 and reads[0][:3] == (start, hi, WINDOW)
    windows = [r for r in reads if r[2]]
    if len(windows) < len(reads):  # the whole range, once, last, after MAX_WINDOWS full windows
        assert reads[-1][:3] == (lo, hi, 0) and sum(r[4] for r in windows) == MAX_WINDOWS
    assert windows[0][0] == start
    covered = sorted(v for first, _last, _limit, end, _full in windows for v in range(first, end + 1))
    assert len(covered) == len(set(covered))  # no window reads what another did
    if search.complete and len(windows) == len(reads):
        assert covered == list(range(lo, hi + 1))  # the windows saw it all


@settings(max_examples=40, deadline=None)
@given(prefix=st.integers(25, 30), gateway_at=st.integers(-1, 3), seed=st.integers(0, 2**32))
def test_searching_one_address_at_a_time_hands_out_each_pool_address_once(
        prefix: int, gateway_at: int, seed: int) -> None:
    """Handing out addresses one by one from random starts never repeats one, never
    gives the gateway or an address outside the range, finds the very last free one,
    then says exhausted (a complete search with nothing free)."""
    net = ipaddress.IPv4Network(f"10.1.2.0/{prefix}")
    hosts = [str(h) for h in net.hosts()]
    gateway = hosts[gateway_at % len(hosts)] if gateway_at >= 0 else ""
    subnet, problems = parse_subnet(str(net), gateway)
    assert subnet is not None, problems
    lo, hi = subnet.bounds
    hard = {subnet.gateway_value} if subnet.gateway_value is not None else set()
    rng = random.Random(seed)
    taken: set[int] = set()
    while True:
        search = PoolSearch(lo, hi, lo + rng.randrange(hi - lo + 1), 1, Skip(hard, set()))
        _serve(search, taken)
        if not search.picked:
            assert search.complete and search.free_besides(hard) == 0
            break
        ip = str(ipaddress.IPv4Address(search.picked[0]))
        assert search.picked[0] not in taken and ip != gateway and subnet.in_pool(ip)
        taken.add(search.picked[0])
    assert len(taken) == subnet.pool_size == len(hosts) - (1 if gateway else 0)
    assert sum(b - a + 1 for a, b in pool_spans(lo, hi, subnet.gateway_value)) == subnet.pool_size


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32))
def test_searches_from_random_starts_rarely_collide(seed: int) -> None:
    """Two pickers with the same view of a large pool pick the same address rarely."""
    subnet, _ = parse_subnet("10.0.0.0/16")
    assert subnet is not None
    lo, hi = subnet.bounds
    a, b = random.Random(seed), random.Random(seed + 1)

    def pick(rng: random.Random) -> int:
        search = PoolSearch(lo, hi, lo + rng.randrange(hi - lo + 1), 1)
        _serve(search, set())
        return search.picked[0]

    same = sum(pick(a) == pick(b) for _ in range(200))
    assert same <= 2
