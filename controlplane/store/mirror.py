"""An in-memory mirror of one etcd prefix, kept by list + watch.

For small, read-mostly sets that every frontend consults on every request (flavors,
images, tenants, projects, token revocations): reads are dict lookups, never a store
round trip. A mirror is a cache, never authoritative: writes that must hold against
it compare the keys in their own transaction.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Generic, TypeVar

from controlplane.etcd import Compacted, EtcdClient, EtcdError, ops

log = logging.getLogger(__name__)

T = TypeVar("T")


class PrefixMirror(Generic[T]):
    """``items`` maps each key under ``prefix`` (without the prefix, decoded) to its
    decoded value. ``start()`` returns once the first list is in; a compacted watch
    re-lists. ``revision`` is the store revision the mirror reflects."""

    def __init__(self, client: EtcdClient, prefix: bytes, decode: Callable[[bytes], T]):
        self._etcd = client
        self._prefix = prefix
        self._decode = decode
        self.items: dict[str, T] = {}
        self.revision = 0
        self._task: asyncio.Task | None = None
        self._changed = asyncio.Condition()

    async def start(self) -> None:
        ready = asyncio.Event()
        self._task = asyncio.create_task(self._sync(ready))
        waiter = asyncio.create_task(ready.wait())
        done, _ = await asyncio.wait({self._task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if self._task in done:
            waiter.cancel()
            self._task.result()  # raises what stopped the first list

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def wait_for_revision(self, revision: int, timeout: float = 5.0) -> bool:
        """Block until the mirror reflects ``revision`` of a write under its prefix (one
        this process just made); False on timeout. A revision of another prefix may
        never show here: wait only for writes of this one."""
        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(lambda: self.revision >= revision)
            return True
        except TimeoutError:
            return False

    async def _sync(self, ready: asyncio.Event) -> None:
        """List, then watch; re-list after a compaction or any store failure (with
        backoff), for as long as the mirror runs: a mirror that stopped following would
        go on answering from stale data (e.g. a revocation list missing revocations)."""
        prefix, end = self._prefix, ops.prefix_end(self._prefix)
        delay = 0.1
        while True:
            try:
                kvs, revision = await self._etcd.range_prefix(prefix)
                self.items = {kv.key[len(prefix):].decode(): self._decode(kv.value) for kv in kvs}
                await self._advance(revision)
                ready.set()
                delay = 0.1
                async for batch in self._etcd.watch(prefix, end, start_revision=revision + 1, progress_notify=True):
                    for event in batch.events:
                        name = event.kv.key[len(prefix):].decode()
                        if event.is_delete:
                            self.items.pop(name, None)
                        else:
                            self.items[name] = self._decode(event.kv.value)
                    await self._advance(batch.revision)
            except Compacted:
                log.info("mirror watch compacted; re-listing", extra={"prefix": prefix.decode()})
            except EtcdError as err:
                if not ready.is_set():
                    raise  # the first list failed: the caller's start() reports it
                log.warning("mirror lost the store; re-listing", extra={"prefix": prefix.decode(), "error": str(err)})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _advance(self, revision: int) -> None:
        async with self._changed:
            self.revision = max(self.revision, revision)
            self._changed.notify_all()
