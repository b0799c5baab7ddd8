"""RateLimiter: bursts, refusals with the right wait, refill over passed-in time,
independent keys, bounded memory, argument checks; and a Hypothesis property that
no sequence of requests gets more than burst + rate x elapsed through."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.auth.ratelimit import MIN_SHARE, DemandMeter, RateLimiter, share


def test_burst_then_refusal_with_the_wait() -> None:
    limiter = RateLimiter(rate=2.0, burst=3)
    assert [limiter.acquire("alice", 100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.acquire("alice", 100.0) == pytest.approx(0.5)
    # A refusal takes nothing: asking again at once gives the same wait.
    assert limiter.acquire("alice", 100.0) == pytest.approx(0.5)
    assert limiter.acquire("alice", 100.25) == pytest.approx(0.25)
    assert limiter.acquire("alice", 100.5) == 0.0
    assert limiter.acquire("alice", 100.5) == pytest.approx(0.5)


def test_refill_over_time() -> None:
    limiter = RateLimiter(rate=10.0, burst=5)
    for _ in range(5):
        assert limiter.acquire("k", 0.0) == 0.0
    assert limiter.acquire("k", 0.0) > 0
    # 0.3 s at 10/s: three more.
    assert [limiter.acquire("k", 0.3) for _ in range(4)][:3] == [0.0, 0.0, 0.0]
    assert limiter.acquire("k", 0.3) == pytest.approx(0.1)


def test_refill_is_capped_at_burst() -> None:
    limiter = RateLimiter(rate=1.0, burst=2)
    assert limiter.acquire("k", 0.0) == 0.0
    # An hour idle still allows only one burst.
    results = [limiter.acquire("k", 3600.0) for _ in range(3)]
    assert results[:2] == [0.0, 0.0]
    assert results[2] == pytest.approx(1.0)


def test_fractional_tokens_wait() -> None:
    limiter = RateLimiter(rate=4.0, burst=1)
    assert limiter.acquire("k", 0.0) == 0.0
    assert limiter.acquire("k", 0.1) == pytest.approx(0.15)  # 0.4 of a token: 0.6 / 4 to go
    assert limiter.acquire("k", 0.25) == 0.0


def test_keys_are_independent() -> None:
    limiter = RateLimiter(rate=1.0, burst=2)
    assert limiter.acquire("alice", 0.0) == 0.0
    assert limiter.acquire("alice", 0.0) == 0.0
    assert limiter.acquire("alice", 0.0) == pytest.approx(1.0)
    assert limiter.acquire("bob", 0.0) == 0.0
    assert limiter.acquire("bob", 0.0) == 0.0
    assert limiter.acquire("bob", 0.0) == pytest.approx(1.0)
    # Bob being refused did not cost Alice anything, nor the other way round.
    assert limiter.acquire("alice", 1.0) == 0.0
    assert limiter.acquire("carol", 0.0) == 0.0


def test_memory_stays_bounded_and_limiting_keeps_working() -> None:
    limiter = RateLimiter(rate=1.0, burst=2, max_keys=10)
    for i in range(1000):
        now = i * 0.001  # all active: eviction has to drop live buckets
        assert limiter.acquire(f"caller-{i}", now) == 0.0
        assert len(limiter._buckets) <= 10
    # Limiting still works for a key made after all that.
    assert limiter.acquire("late", 1.0) == 0.0
    assert limiter.acquire("late", 1.0) == 0.0
    assert limiter.acquire("late", 1.0) == pytest.approx(1.0)


def test_eviction_drops_idle_callers_before_active_ones() -> None:
    limiter = RateLimiter(rate=1.0, burst=2, max_keys=3)
    limiter.acquire("idle-1", 0.0)
    limiter.acquire("idle-2", 0.0)
    # A busy caller, exhausted, keeps asking.
    assert limiter.acquire("busy", 9.0) == 0.0
    assert limiter.acquire("busy", 9.0) == 0.0
    assert limiter.acquire("busy", 9.5) == pytest.approx(0.5)
    # New callers at t=10 push past max_keys: the idle ones (full again) go, the busy
    # one stays, still limited.
    assert limiter.acquire("new-1", 10.0) == 0.0
    assert limiter.acquire("new-2", 10.0) == 0.0
    assert set(limiter._buckets) <= {"busy", "new-1", "new-2"}
    assert "busy" in limiter._buckets
    assert limiter.acquire("busy", 10.0) == 0.0  # the one token refilled since 9.0
    assert limiter.acquire("busy", 10.0) == pytest.approx(1.0)


def test_eviction_of_all_active_keeps_the_most_recent() -> None:
    limiter = RateLimiter(rate=1.0, burst=100, max_keys=4)  # refill takes 100 s: nobody is idle
    for i in range(4):
        limiter.acquire(f"k{i}", float(i))
    limiter.acquire("k4", 4.0)
    assert "k4" in limiter._buckets and "k3" in limiter._buckets
    assert "k0" not in limiter._buckets
    assert len(limiter._buckets) <= 4


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 5), (1, 0), (1, 0.5), (1, -3), (0, 0)])
def test_bad_arguments(rate: float, burst: float) -> None:
    with pytest.raises(ValueError):
        RateLimiter(rate, burst)


# --- properties -------------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(rate=st.floats(0.1, 100), burst=st.integers(1, 20),
       steps=st.lists(st.tuples(st.floats(0, 2), st.sampled_from(["a", "b", "c"])), min_size=1, max_size=200))
def test_never_more_than_burst_plus_rate_times_elapsed(rate: float, burst: int,
                                                        steps: list[tuple[float, str]]) -> None:
    limiter = RateLimiter(rate, burst, max_keys=1000)
    now = 0.0
    admitted: dict[str, int] = {}
    for gap, key in steps:
        now += gap
        wait = limiter.acquire(key, now)
        assert wait >= 0.0
        if wait == 0.0:
            admitted[key] = admitted.get(key, 0) + 1
        else:
            assert wait <= 1.0 / rate + 1e-9
        assert admitted.get(key, 0) <= burst + rate * now + 1e-6


@settings(max_examples=300, deadline=None)
@given(rate=st.floats(0.1, 100), burst=st.integers(1, 5), gaps=st.lists(st.floats(0, 1), max_size=50))
def test_waiting_as_told_succeeds(rate: float, burst: int, gaps: list[float]) -> None:
    limiter = RateLimiter(rate, burst)
    now = 0.0
    for gap in gaps:
        now += gap
        limiter.acquire("k", now)
    # Exhaust, then wait exactly what a refusal says (plus float slack): admitted.
    while (wait := limiter.acquire("k", now)) == 0.0:
        pass
    assert limiter.acquire("k", now + wait * (1 + 1e-9) + 1e-12) == 0.0


# --- shares of a caller's rate across frontends ---------------------------------------


def test_a_share_holds_and_refills_its_part_of_the_rate_and_burst() -> None:
    limiter = RateLimiter(rate=10.0, burst=10)
    assert [limiter.acquire("k", 0.0, 0.5) for _ in range(5)] == [0.0] * 5  # half the burst
    assert limiter.acquire("k", 0.0, 0.5) == pytest.approx(0.2)  # refilling at 5/s
    assert limiter.acquire("k", 0.2, 0.5) == 0.0
    # A tiny share still holds one token, refilled at the tiny rate.
    tiny = RateLimiter(rate=10.0, burst=10)
    assert tiny.acquire("k", 0.0, 0.01) == 0.0
    assert tiny.acquire("k", 0.0, 0.01) == pytest.approx(10.0)


@pytest.mark.parametrize(("own", "others", "want"), [
    (5.0, [], 1.0),           # nobody else sees the caller: all of it
    (0.0, [0.0], 1.0),
    (6.0, [14.0], 0.3 + 0.0),  # demands within the rate: each its own (nothing left over)
    (4.0, [6.0], 0.2 + 0.25),  # ... plus half of what is left (20 - 10) / 2 / 20
    (30.0, [30.0], 0.5),      # over the rate, evenly: half each
    (5.0, [100.0], 0.25),     # the one asking less than half gets all it asks
    (100.0, [5.0], 0.75),     # ... and the busy one the rest
    (100.0, [5.0, 100.0], 0.375),  # three frontends: 5, then (20 - 5) / 2 each
    (0.0, [50.0], MIN_SHARE),  # just turned to this frontend: not shut out
])
def test_share_is_max_min_fair(own: float, others: list[float], want: float) -> None:
    assert share(own, others, 20.0) == pytest.approx(want)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0.01, 1000), min_size=1, max_size=6), st.floats(1, 1000))
def test_shares_never_grant_more_than_the_rate_in_total_when_all_are_busy(demands: list[float],
                                                                         rate: float) -> None:
    """Every frontend computing its share from the same demands: together they grant
    at most the rate (once each frontend's floor is accounted for), and each at least
    its demand or an equal part."""
    grants = [share(d, demands[:i] + demands[i + 1:], rate) * rate for i, d in enumerate(demands)]
    assert sum(grants) <= rate * (1 + 1e-9) + MIN_SHARE * rate * len(demands)
    for d, g in zip(demands, grants, strict=True):
        assert g >= min(d, rate / len(demands)) * (1 - 1e-9) or g >= MIN_SHARE * rate


def test_demand_meter_rates_over_windows() -> None:
    meter = DemandMeter(window_s=1.0)
    for i in range(30):
        meter.record("busy", 10.0 + i / 30)
    meter.record("idle", 10.5)
    assert meter.rate("busy", 10.99) == pytest.approx(30.0)  # the window so far
    assert meter.busy(10.99, threshold=5.0) == {}  # no full window yet
    assert meter.busy(11.0, threshold=5.0) == {"busy": pytest.approx(30.0)}
    for i in range(10):
        meter.record("busy", 11.0 + i / 10)
    assert meter.rate("busy", 11.5) == pytest.approx(30.0)  # the last window's, while higher
    assert meter.busy(12.0, threshold=5.0) == {"busy": pytest.approx(10.0)}
    assert meter.busy(14.0, threshold=0.0) == {}  # two idle windows: forgotten
