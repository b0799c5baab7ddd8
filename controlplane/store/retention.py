"""Records that expire after a retention (create request_ids, audit records) live
under leases, so they need no cleanup: a create retried within the retention never
makes a second VM (even after the first was deleted), and old records do not pile up.

One lease per time window per process, granted lazily and never kept alive: a
record written in a window lives at least ``retention_s`` and at most one
window longer. A frontend that dies just leaves its leases to expire. If etcd
refuses the lease (revoked by hand, or etcd restored from a backup without it), the
next record gets a new one.
"""

from __future__ import annotations

import asyncio
import time

from controlplane.etcd import EtcdClient

DEFAULT_RETENTION_S = 24 * 3600


class RetentionLeases:
    def __init__(self, client: EtcdClient, retention_s: int = DEFAULT_RETENTION_S):
        self._etcd = client
        self.retention_s = retention_s
        self._window_s = max(60, retention_s // 24)
        self._lease = 0
        self._renew_at = 0.0
        self._lock = asyncio.Lock()
        client.on_lease_not_found.append(self._forget)

    def _forget(self) -> None:
        """etcd lost a lease (perhaps ours): grant a new one next time."""
        self._lease = 0

    async def current(self) -> int:
        """The lease id to attach a new request record to. Grants one per window."""
        if self._lease and time.monotonic() < self._renew_at:
            return self._lease
        async with self._lock:
            if not self._lease or time.monotonic() >= self._renew_at:
                self._lease, _ttl = await self._etcd.grant(self.retention_s + self._window_s)
                self._renew_at = time.monotonic() + self._window_s
        return self._lease
