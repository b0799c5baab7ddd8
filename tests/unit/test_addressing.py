"""Subnet arithmetic (``controlplane/addressing.py``): what a subnet accepts, its pool,
static addresses, and the random choice of a free pool address down to the last one."""

from __future__ import annotations

import ipaddress
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.addressing import choose_free, free_count, parse_subnet, static_problem


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


@settings(max_examples=40, deadline=None)
@given(prefix=st.integers(25, 30), gateway_at=st.integers(-1, 3), seed=st.integers(0, 2**32))
def test_choosing_free_addresses_until_exhausted_hands_out_each_pool_address_once(
        prefix: int, gateway_at: int, seed: int) -> None:
    """Handing out addresses one by one never repeats one, never gives the gateway or
    an address outside the range, finds the very last free one, then says exhausted."""
    net = ipaddress.IPv4Network(f"10.1.2.0/{prefix}")
    hosts = [str(h) for h in net.hosts()]
    gateway = hosts[gateway_at % len(hosts)] if gateway_at >= 0 else ""
    subnet, problems = parse_subnet(str(net), gateway)
    assert subnet is not None, problems
    rng = random.Random(seed)
    taken: set[str] = set()
    while (ip := choose_free(subnet, taken, rng)) is not None:
        assert ip not in taken and ip != gateway and subnet.in_pool(ip)
        taken.add(ip)
        assert free_count(subnet, taken) == subnet.pool_size - len(taken)
    assert len(taken) == subnet.pool_size == len(hosts) - (1 if gateway else 0)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32))
def test_choices_are_spread_so_concurrent_pickers_rarely_collide(seed: int) -> None:
    """Two pickers with the same view of a large pool pick the same address rarely."""
    subnet, _ = parse_subnet("10.0.0.0/16")
    assert subnet is not None
    a, b = random.Random(seed), random.Random(seed + 1)
    same = sum(choose_free(subnet, (), a) == choose_free(subnet, (), b) for _ in range(200))
    assert same <= 2
