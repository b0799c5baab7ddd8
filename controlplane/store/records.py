"""Single-key records (flavors, images, token records): create-if-absent, read,
compare-and-swap update and delete, with the key's mod revision as the etag."""

from __future__ import annotations

from collections.abc import Callable

from controlplane.etcd import EtcdClient, ops
from controlplane.store.errors import AlreadyExists, Conflict, NotFound

_MAX_CAS_ATTEMPTS = 16


class KeyedRecords:
    def __init__(self, client: EtcdClient):
        self._etcd = client

    async def create(self, key: bytes, value: bytes, *, lease: int = 0) -> int:
        """Store ``value`` if ``key`` is absent; its revision. Raises AlreadyExists."""
        result = await self._etcd.txn([ops.absent(key)], [ops.put(key, value, lease=lease)])
        if not result.succeeded:
            raise AlreadyExists(key.decode())
        return result.revision

    async def get(self, key: bytes) -> tuple[bytes, int]:
        """(value, mod revision); raises NotFound."""
        result = await self._etcd.range(key)
        if not result.kvs:
            raise NotFound(key.decode())
        return result.kvs[0].value, result.kvs[0].mod_revision

    async def update(self, key: bytes, change: Callable[[bytes], bytes], *, etag: str = "") -> tuple[bytes, int]:
        """Apply ``change`` by compare-and-swap (keeping the key's lease). Raises
        NotFound, Conflict (stale ``etag``)."""
        for _attempt in range(_MAX_CAS_ATTEMPTS):
            result = await self._etcd.range(key)
            if not result.kvs:
                raise NotFound(key.decode())
            kv = result.kvs[0]
            if etag and etag != f"{kv.mod_revision:x}":
                raise Conflict(f"etag {etag} does not match {kv.mod_revision:x}")
            value = change(kv.value)
            written = await self._etcd.txn([ops.mod_revision_is(key, kv.mod_revision)],
                                           [ops.put(key, value, lease=kv.lease)])
            if written.succeeded:
                return value, written.revision
        raise Conflict(f"{key.decode()} kept changing; retry")

    async def delete(self, key: bytes, *, etag: str = "") -> bytes:
        """Delete the record; its last value. Raises NotFound, Conflict."""
        for _attempt in range(_MAX_CAS_ATTEMPTS):
            value, revision = await self.get(key)
            if etag and etag != f"{revision:x}":
                raise Conflict(f"etag {etag} does not match {revision:x}")
            result = await self._etcd.txn([ops.mod_revision_is(key, revision)], [ops.delete(key)])
            if result.succeeded:
                return value
        raise Conflict(f"{key.decode()} kept changing; retry")
