"""Keeps ZoneCounts equal to the zone group counts in etcd (``zones/``): list,
then watch from the next revision; re-list when the watch's revision was compacted.

Shared by every shard of a process, like HostSync. A group that leaves a zone or
enters one may make a waiting VM placeable (a zone freed for zone anti-affinity,
or a group's first VM in a zone for zone affinity), so such changes call
``on_change``; other count changes decide nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from controlplane.etcd import Compacted
from controlplane.etcd.outages import ride_out
from controlplane.placement import ZoneCounts
from controlplane.store.zones import ZoneStore

log = logging.getLogger(__name__)


class ZoneSync:
    def __init__(self, store: ZoneStore, counts: ZoneCounts | None = None):
        self._store = store
        self.counts = counts if counts is not None else ZoneCounts()
        self.ready = asyncio.Event()
        #: Called after a group entered or left a zone (waiting VMs may fit now).
        self.on_change: list[Callable[[], None]] = []

    async def run(self) -> None:
        """List and watch the zone counts until cancelled; rides out etcd outages (re-lists)."""
        await ride_out(self._list_and_watch, "zones")

    async def _list_and_watch(self) -> None:
        while True:
            counts, revision = await self._store.snapshot()
            self.counts.reset({zg: (c.vms, c.revision) for zg, c in counts.items()}, revision)
            self.ready.set()
            self._notify()
            log.info("zone group counts listed", extra={"counts": len(counts), "revision": revision})
            try:
                async for changes, batch_revision in self._store.watch(revision + 1):
                    changed = False
                    for (zone, group), count in changes:
                        changed |= self.counts.update(zone, group, count.vms, count.revision, batch_revision)
                    if changed:
                        self._notify()
            except Compacted:
                log.warning("zone watch compacted; re-listing")

    def confirm(self, zone: str, group: str, vms: int, mod_revision: int, revision: int) -> None:
        """Take a count this process wrote or read at ``revision`` (unless a newer one
        is known), telling the shards when the group entered or left the zone."""
        if self.counts.update(zone, group, vms, mod_revision, revision):
            self._notify()

    def _notify(self) -> None:
        for callback in self.on_change:
            callback()
