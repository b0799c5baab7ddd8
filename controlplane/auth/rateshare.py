"""Rate limits shared by the frontends: each caller's limit holds across all of them.

Every frontend meters what each caller asks of it (requests/s, refused ones too: a
share must follow demand, not what was let through) and publishes the busy callers'
demand about once a second in one key of its own (``rate-demand/{frontend}``, under
its lease, so a dead frontend's demand goes with it — within the lease TTL if it
crashed). It mirrors the others' keys, and grants each caller a max-min fair part of
the rate given the caller's demand at every frontend
(:func:`controlplane.auth.ratelimit.share`). A caller spread over N frontends gets
about the rate in total, not N times it; one whose connection sticks to one frontend
gets all of it there; a frontend that sees little of a caller gets what it sees.
After a caller's demand moves, the shares follow within about two intervals (the
last full window is what is published) plus the watch's delay.

A frontend publishes only callers asking at least ``threshold`` of the rate divided
by the number of frontends (so all unpublished demand together stays under that
part of the rate), and at most ``max_published`` of them, the busiest, so its key
stays small whatever the number of callers.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

from controlplane.auth.ratelimit import DemandMeter, share
from controlplane.etcd import EtcdClient, EtcdError, Lease
from controlplane.gen.quanta.store.v1 import tenancy_pb2 as trec
from controlplane.models import now_ns
from controlplane.store.keys import Keys
from controlplane.store.mirror import PrefixMirror

log = logging.getLogger(__name__)


class RateShares:
    def __init__(self, client: EtcdClient, keys: Keys, *, rate: float, interval_s: float = 1.0,
                 threshold: float = 0.05, max_published: int = 1000, lease_ttl_s: int = 10,
                 frontend: str | None = None):
        self._etcd = client
        self._keys = keys
        self.frontend = frontend or uuid.uuid4().hex[:12]
        self._interval_s = interval_s
        self._rate = rate
        self._threshold = rate * threshold
        self._max_published = max_published
        self._lease_ttl_s = lease_ttl_s
        self._meter = DemandMeter(interval_s)
        self._others = PrefixMirror(client, keys.rate_demand_prefix(), trec.RateDemand.FromString)
        self._task: asyncio.Task | None = None

    def record(self, identity: str, now: float) -> float:
        """Count one request of ``identity`` here; returns the share of its rate this
        frontend may grant it now (0 < share <= 1)."""
        self._meter.record(identity, now)
        others = [demand.per_second.get(identity, 0.0) for name, demand in self._others.items.items()
                  if name != self.frontend]
        return share(self._meter.rate(identity, now), others, self._rate)

    async def start(self) -> None:
        await self._others.start()
        self._task = asyncio.create_task(self._publish(), name="rate-demand")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._others.stop()

    def _busy(self) -> dict[str, float]:
        frontends = 1 + sum(1 for name in self._others.items if name != self.frontend)
        busy = self._meter.busy(time.monotonic(), self._threshold / frontends)
        if len(busy) > self._max_published:
            busy = dict(sorted(busy.items(), key=lambda item: item[1], reverse=True)[:self._max_published])
        return busy

    async def _publish(self) -> None:
        """Write this frontend's busy callers every interval, while anything is busy
        (and once more when nothing is), under a lease kept alive. A failed write is
        retried next interval (the key stays, under the live lease); a lost lease or
        any other failure starts over after a pause."""
        key = self._keys.rate_demand(self.frontend)
        while True:
            try:
                async with Lease(self._etcd, self._lease_ttl_s) as lease:
                    last: dict[str, float] | None = None
                    while not lease.lost.is_set():
                        busy = self._busy()
                        if busy or last:
                            try:
                                await self._etcd.put(key, trec.RateDemand(per_second=busy, time_ns=now_ns())
                                                     .SerializeToString(), lease=lease.id)
                                last = busy
                            except EtcdError as err:
                                log.warning("rate demand not published; retrying", extra={"error": str(err)})
                        await asyncio.sleep(self._interval_s)
            except Exception:  # noqa: BLE001 - the publisher must outlive any failure
                log.exception("rate demand publisher failed; starting over")
            await asyncio.sleep(self._interval_s)
