"""Batches VM status writes: many updates, one etcd round trip.

Updates queued while a write is in flight go out together in the next one, and
a newer update of the same VM replaces an older one not yet written (so a
client may see CREATING → RUNNING as one step when creation is fast); the writes
an older one carried (``StatusUpdate.also``) go with the newer one.

:meth:`write` is the same path, awaited: for the rare status that must be in etcd
before the caller goes on (a power cycle's intent, see ``agents.reconciler``). It
rides in the next batch like any other, so it is never overtaken by an older
update of the same VM.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
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
        #: Callers of :meth:`write` waiting for the pending update of their VM.
        self._waiters: dict[tuple[str, VmRef], list[asyncio.Future[bool]]] = {}
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

    async def write(self, update: StatusUpdate) -> bool:
        """Submit ``update`` and wait until it (or a newer update of the same VM that
        replaced it) is written. True if it was applied; False if its binding is gone
        or of another incarnation (nothing written), or it was discarded. Retries
        through etcd outages like every write here, so it may wait long."""
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault((update.host, update.ref), []).append(waiter)
        self.submit(update)
        return await waiter

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
        _resolve(self._waiters.pop((host, ref), ()), False)

    async def run(self) -> None:
        while True:
            if not self._closing:
                await self._wakeup.wait()
            self._wakeup.clear()
            batch = list(self._pending.values())
            self._pending.clear()
            waiters, self._waiters = self._waiters, {}
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
                for key, futures in waiters.items():
                    self._waiters.setdefault(key, []).extend(futures)
                await asyncio.sleep(0.5)
                self._wakeup.set()
                continue
            metrics.STATUS_WRITES.inc(sum(applied))
            for update, ok in zip(batch, applied, strict=True):
                _resolve(waiters.get((update.host, update.ref), ()), ok)


def _resolve(futures: Iterable[asyncio.Future[bool]], ok: bool) -> None:
    for future in futures:
        if not future.done():
            future.set_result(ok)
