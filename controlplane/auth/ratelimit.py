"""Per-caller rate limits: one token bucket per identity, pure (time is passed in).

Each frontend limits on its own (no store round trip per request), with a max-min
fair share of the caller's rate given the caller's demand at every frontend (see
:func:`share` and :mod:`controlplane.auth.rateshare`): a caller spread over N
frontends gets about the rate in total, one stuck to a single frontend all of it.
Buckets of callers idle long enough to be full again are dropped, so memory follows
the active callers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """``rate`` requests per second per key, bursts of up to ``burst``."""

    def __init__(self, rate: float, burst: float, *, max_keys: int = 100_000):
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._max_keys = max_keys
        self._buckets: dict[str, _Bucket] = {}

    def acquire(self, key: str, now: float, share: float = 1.0) -> float:
        """Take one token for ``key``, from a bucket that holds and refills ``share``
        (0 < share <= 1) of the rate and burst (never less than one token). Returns
        0.0 when allowed, else the seconds until a token will be available (the
        request is refused and takes nothing)."""
        rate = self.rate * share
        burst = max(1.0, self.burst * share)
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._max_keys:
                self._evict_full(now)
            bucket = self._buckets[key] = _Bucket(burst, now)
        else:
            bucket.tokens = min(burst, bucket.tokens + (now - bucket.updated) * rate)
            bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / rate

    def _evict_full(self, now: float) -> None:
        refill_s = self.burst / self.rate
        self._buckets = {k: b for k, b in self._buckets.items() if now - b.updated < refill_s}
        if len(self._buckets) >= self._max_keys:  # all active: drop the oldest half
            keep = sorted(self._buckets.items(), key=lambda kv: kv[1].updated)[len(self._buckets) // 2:]
            self._buckets = dict(keep)


MIN_SHARE = 0.01


def share(own: float, others: Sequence[float], rate: float) -> float:
    """The part (0..1] of a caller's ``rate`` one frontend may grant, from the caller's
    demand (requests/s) here (``own``) and at each other frontend that sees it.

    Max-min fair: while the demands add up to no more than the rate, every frontend
    gets its demand and an equal part of the rest; beyond that, each gets at most an
    equal part of the rate, and what frontends asking less leave goes to the others
    (water-filling). So a frontend that sees little of the caller always gets what it
    sees, and a busy one cannot take the others' part. All of it while nobody else
    sees the caller; never below MIN_SHARE."""
    demands = sorted([max(own, 0.0), *(d for d in others if d > 0)])
    if len(demands) == 1 or rate <= 0:
        return 1.0
    remaining = rate
    for i, demand in enumerate(demands):
        equal = remaining / (len(demands) - i)
        if demand > equal:  # this one and every larger one are capped at the level
            return max(MIN_SHARE, min(own, equal) / rate)
        remaining -= demand
    # Everyone's demand fits: share out what is left evenly.
    return max(MIN_SHARE, min(1.0, (own + remaining / len(demands)) / rate))


class DemandMeter:
    """Requests per second per key, over fixed windows of ``window_s`` (time passed in).

    ``rate`` is the last full window's rate, or the current window's so far if
    higher (a burst shows at once). Keys idle for a window are forgotten."""

    def __init__(self, window_s: float = 1.0):
        if window_s <= 0:
            raise ValueError("window_s must be > 0")
        self.window_s = window_s
        self._start: float | None = None
        self._current: dict[str, int] = {}
        self._last: dict[str, float] = {}

    def _roll(self, now: float) -> None:
        if self._start is None:
            self._start = now
        elapsed = now - self._start
        if elapsed >= self.window_s:
            # Longer than a window (idle time in between) averages over all of it.
            self._last = {k: n / elapsed for k, n in self._current.items()}
            self._current = {}
            self._start = now

    def record(self, key: str, now: float) -> None:
        self._roll(now)
        self._current[key] = self._current.get(key, 0) + 1

    def rate(self, key: str, now: float) -> float:
        self._roll(now)
        return max(self._last.get(key, 0.0), self._current.get(key, 0) / self.window_s)

    def busy(self, now: float, threshold: float) -> dict[str, float]:
        """The last full window's rates of at least ``threshold``."""
        self._roll(now)
        return {k: r for k, r in self._last.items() if r >= threshold}
