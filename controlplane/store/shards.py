"""Ownership of scheduler shards through etcd keys under a session lease.

A shard is owned by whoever created its key; the key lives under the owner's
lease, so it disappears when the owner dies. Every write the shard guards
carries ``fence()``, a compare on the key's create_revision (etcd's
``Mutex.IsOwner()`` idea), so a process that lost the shard cannot write.
"""

from __future__ import annotations

import logging

from controlplane.etcd import EtcdClient, Lease, ops
from controlplane.etcd.ops import Compare
from controlplane.gen.quanta.store.v1 import records_pb2 as rec
from controlplane.models import now_ns
from controlplane.store.keys import Keys

log = logging.getLogger(__name__)


class ShardLock:
    def __init__(self, client: EtcdClient, keys: Keys, shard: int, owner: str, lease: Lease):
        self._etcd = client
        self._key = keys.shard(shard)
        self.shard = shard
        self.owner = owner
        self._lease = lease
        self.create_revision = 0

    def fence(self) -> Compare:
        return ops.create_revision_is(self._key, self.create_revision)

    async def acquire(self) -> None:
        """Block until this process owns the shard (waits out a dead owner's lease)."""
        value = rec.ShardOwner(owner=self.owner, acquire_time_ns=now_ns()).SerializeToString()
        while True:
            result = await self._etcd.txn(
                [ops.absent(self._key)], [ops.put(self._key, value, lease=self._lease.id)], [ops.get(self._key)]
            )
            if result.succeeded:
                self.create_revision = result.revision
                log.info("shard acquired", extra={"shard": self.shard})
                return
            holder = result.kvs(0)
            if holder and holder[0].lease == self._lease.id:
                self.create_revision = holder[0].create_revision
                return
            if holder:
                log.info("shard held by another; waiting", extra={
                    "shard": self.shard, "holder": rec.ShardOwner.FromString(holder[0].value).owner})
                async for batch in self._etcd.watch(self._key, start_revision=holder[0].mod_revision + 1):
                    if any(ev.is_delete for ev in batch.events):
                        break

    async def release(self) -> None:
        """Give the shard up (idempotent)."""
        await self._etcd.txn([self.fence()], [ops.delete(self._key)])
        self.create_revision = 0
