"""Flavors and images: seeded defaults and a watched in-memory cache.

Frontends validate creates against the cache (no etcd read on the hot path);
the cache is rebuilt from etcd by list + watch and is never authoritative.
"""

from __future__ import annotations

import asyncio
import logging

from controlplane.etcd import Compacted, EtcdClient, ops
from controlplane.models import DEFAULT_FLAVORS, DEFAULT_IMAGES, Flavor, Image
from controlplane.store.keys import Keys

log = logging.getLogger(__name__)


async def seed_defaults(client: EtcdClient, keys: Keys) -> None:
    """Create the default flavors and images where absent. Idempotent, safe to
    run from several processes at once (each put is guarded by absence)."""
    requests = [(keys.flavor(f.name), f.to_bytes()) for f in DEFAULT_FLAVORS]
    requests += [(keys.image(i.name), i.to_bytes()) for i in DEFAULT_IMAGES]
    await client.txn([], [ops.txn([ops.absent(key)], [ops.put(key, value)]) for key, value in requests])


class Catalog:
    """Cache of flavors and images. ``start()`` returns once the first list is in."""

    def __init__(self, client: EtcdClient, keys: Keys):
        self._etcd = client
        self._keys = keys
        self.flavors: dict[str, Flavor] = {}
        self.images: dict[str, Image] = {}
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        for prefix, target, decode in (
            (self._keys.flavors_prefix(), self.flavors, Flavor.from_bytes),
            (self._keys.images_prefix(), self.images, Image.from_bytes),
        ):
            ready = asyncio.Event()
            self._tasks.append(asyncio.create_task(self._sync(prefix, target, decode, ready)))
            await ready.wait()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _sync(self, prefix: bytes, target: dict, decode, ready: asyncio.Event) -> None:
        while True:
            kvs, revision = await self._etcd.range_prefix(prefix)
            target.clear()
            for kv in kvs:
                item = decode(kv.value)
                target[item.name] = item
            ready.set()
            try:
                async for batch in self._etcd.watch(prefix, ops.prefix_end(prefix), start_revision=revision + 1):
                    for event in batch.events:
                        name = event.kv.key[len(prefix):].decode()
                        if event.is_delete:
                            target.pop(name, None)
                        else:
                            target[name] = decode(event.kv.value)
            except Compacted:
                log.info("catalog watch compacted; re-listing", extra={"prefix": prefix.decode()})
