"""store/addresses.Pool.key_ranges: the one rule for which keys a pool's addresses are
(counted by NetworkStore and AddressPicker.preview alike): exactly the range on the
backing but its own gateway, and nothing of another backing."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controlplane.addressing import parse_subnet, to_int
from controlplane.store.addresses import Pool
from controlplane.store.keys import Keys

pytestmark = pytest.mark.unit

KEYS = Keys("/t")
LO = to_int("10.0.0.0")


@given(start=st.integers(1, 62), length=st.integers(0, 61), gateway=st.integers(0, 62))
def test_the_key_ranges_hold_exactly_the_pool(start: int, length: int, gateway: int) -> None:
    end = min(start + length, 62)
    subnet, problems = parse_subnet("10.0.0.0/26", f"10.0.0.{gateway}" if gateway else "", (), f"10.0.0.{start}",
                                    f"10.0.0.{end}")
    if subnet is None:  # the range holds only the gateway
        assert problems
        return
    pool = Pool.of("pg/a", subnet)
    ranges = pool.key_ranges(KEYS)
    every = [KEYS.address_at("pg/a", v) for v in range(LO, LO + 64)]
    inside = {key for key in every if any(a <= key < b for a, b in ranges)}
    assert inside == {KEYS.address_at("pg/a", LO + i) for i in range(start, end + 1) if i != gateway}
    assert len(inside) == pool.size == subnet.pool_size
    # Another backing's keys (even one whose name extends this one's) are in none of them.
    assert not any(a <= KEYS.address_at(other, LO + start) < b for a, b in ranges for other in ("pg/a0", "pg/b"))
