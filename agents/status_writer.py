"""Batches VM status writes: many updates, one etcd round trip.

Updates queued while a write is in flight go out together in the next one, and
a newer update of the same VM replaces an older one not yet written (so a
client may see CREATING → RUNNING as one step when creation is fast).
"""

from __future__ import annotations

import asyncio
import logging

from agents import metrics
from controlplane.etcd import EtcdError
from controlplane.models import VmRef
from controlplane.store.hostagent import AgentStore, StatusUpdate

log = logging.getLogger(__name__)


class StatusWriter:
    def __init__(self, store: AgentStore):
        self._store = store
        self._pending: dict[tuple[str, VmRef], StatusUpdate] = {}
        self._wakeup = asyncio.Event()
        self._closing = False

    def close(self) -> None:
        """Make :meth:`run` return once every update submitted so far is written."""
        self._closing = True
        self._wakeup.set()

    def submit(self, update: StatusUpdate) -> None:
        """Queue a status write; never blocks. The last update per VM wins."""
        self._pending[(update.host, update.ref)] = update
        self._wakeup.set()

    def discard(self, host: str, ref: VmRef) -> None:
        """Drop a not-yet-written update (the VM is being removed)."""
        self._pending.pop((host, ref), None)

    async def run(self) -> None:
        while True:
            if not self._closing:
                await self._wakeup.wait()
            self._wakeup.clear()
            batch = list(self._pending.values())
            self._pending.clear()
            if not batch:
                if self._closing:
                    return
                continue
            try:
                applied = await self._store.write_statuses(batch)
            except EtcdError as err:
                log.warning("status write failed; retrying", extra={"count": len(batch), "error": str(err)})
                for update in batch:
                    self._pending.setdefault((update.host, update.ref), update)
                await asyncio.sleep(0.5)
                self._wakeup.set()
                continue
            metrics.STATUS_WRITES.inc(sum(applied))
