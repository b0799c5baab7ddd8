"""Whether this process reaches etcd, said once per outage in logs and in metrics.

Every etcd call, watch stream and lease keepalive of a client reports its outcome
here: ``unreachable(error)`` when etcd did not answer (UNAVAILABLE: no member
reachable or none with a leader; a deadline that was the client's own) and
``reachable()`` when any member answered, even with an error of its own. The
first failure logs ``etcd unreachable``; the next answer logs ``etcd reachable
again`` with how long it took and adds that time to
``quanta_etcd_unreachable_seconds_total``. ``quanta_etcd_reachable`` is 0 in
between. An outage shorter than the leases' TTL is ridden out (see lease.py):
these say that it happened.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from prometheus_client import Counter, Gauge

log = logging.getLogger(__name__)

ETCD_REACHABLE = Gauge("quanta_etcd_reachable", "1 while this process's last etcd request was answered, 0 while "
                       "etcd is unreachable (no member answers, or none has a leader).")
ETCD_UNREACHABLE_SECONDS = Counter("quanta_etcd_unreachable_seconds_total",
                                   "Time this process could not reach etcd, added when it reaches etcd again.")
ETCD_OUTAGES = Counter("quanta_etcd_outages_total", "Times this process lost etcd (then reached it again or not).")


class Reachability:
    """Outage bookkeeping for one client. Not thread-safe (one event loop); cheap
    when nothing changes (one attribute test per call)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        #: When the current outage began (clock time); None while etcd answers.
        self.since: float | None = None
        ETCD_REACHABLE.set(1)

    @property
    def ok(self) -> bool:
        return self.since is None

    def unreachable(self, error: str) -> None:
        if self.since is not None:
            return
        self.since = self._clock()
        ETCD_REACHABLE.set(0)
        ETCD_OUTAGES.inc()
        log.warning("etcd unreachable", extra={"error": error})

    def reachable(self) -> float:
        """Mark etcd answering; returns how long the outage that ends here lasted (0: none)."""
        if self.since is None:
            return 0.0
        lasted = max(0.0, self._clock() - self.since)
        self.since = None
        ETCD_REACHABLE.set(1)
        ETCD_UNREACHABLE_SECONDS.inc(lasted)
        log.warning("etcd reachable again", extra={"unreachable_s": round(lasted, 3)})
        return lasted
