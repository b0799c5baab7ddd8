"""Per-caller rate limits: one token bucket per identity, pure (time is passed in).

Each frontend limits on its own (no store round trip per request): with N frontends
behind one address a caller gets at most N times the rate. Buckets of callers idle
long enough to be full again are dropped, so memory follows the active callers.
"""

from __future__ import annotations

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

    def acquire(self, key: str, now: float) -> float:
        """Take one token for ``key``. Returns 0.0 when allowed, else the seconds until
        a token will be available (the request is refused and takes nothing)."""
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._max_keys:
                self._evict_full(now)
            bucket = self._buckets[key] = _Bucket(self.burst, now)
        else:
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate

    def _evict_full(self, now: float) -> None:
        refill_s = self.burst / self.rate
        self._buckets = {k: b for k, b in self._buckets.items() if now - b.updated < refill_s}
        if len(self._buckets) >= self._max_keys:  # all active: drop the oldest half
            keep = sorted(self._buckets.items(), key=lambda kv: kv[1].updated)[len(self._buckets) // 2:]
            self._buckets = dict(keep)
