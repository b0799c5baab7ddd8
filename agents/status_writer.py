"""Batches VM status writes: many updates, one etcd round trip.

Updates queued while a write is in flight go out together in the next one, and
a newer update of the same VM replaces an older one not yet written (so a
client may see CREATING → RUNNING as one step when creation is fast); the writes
an older one carried (``StatusUpdate.also``) go with the newer one.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

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
        """Queue a status write; never blocks. The last update per VM wins (keeping the
        ``also`` writes of the one it replaces, if of the same binding)."""
        self._merge(update, newer=True)
        self._wakeup.set()

    def _merge(self, update: StatusUpdate, *, newer: bool) -> None:
        key = (update.host, update.ref)
        other = self._pending.get(key)
        if other is not None and other.binding_create_revision == update.binding_create_revision:
            new, old = (update, other) if newer else (other, update)
            if old.also:
                update = replace(new, also=(*old.also, *new.also))
            else:
                update = new
        self._pending[key] = update

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
                    self._merge(update, newer=False)
                await asyncio.sleep(0.5)
                self._wakeup.set()
                continue
            metrics.STATUS_WRITES.inc(sum(applied))
