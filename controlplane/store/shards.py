"""Ownership of scheduler shards through etcd keys under a session lease.

A shard is owned by whoever created its key; the key lives under the owner's
lease, so it disappears when the owner dies. Every write the shard guards
carries ``fence()``, a compare on the key's create_revision (etcd's
``Mutex.IsOwner()`` idea), so a process that lost the shard cannot write.

Each live scheduler process also keeps a member key under the same session
lease (``shards/members/{lease id}``); members and owners share the ``shards/``
prefix, so one range and one watch (``ShardDirectory``) show who is alive and
who owns what, which is all a process needs to compute its fair share.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from controlplane.etcd import EtcdClient, KeyValue, Lease, ops, prefix_end
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

    async def try_acquire(self) -> bool:
        """Take the shard if nobody holds it; never waits. True if this lease owns it now."""
        value = rec.ShardOwner(owner=self.owner, acquire_time_ns=now_ns()).SerializeToString()
        result = await self._etcd.txn(
            [ops.absent(self._key)], [ops.put(self._key, value, lease=self._lease.id)], [ops.get(self._key)]
        )
        if result.succeeded:
            self.create_revision = result.revision
            log.info("shard acquired", extra={"shard": self.shard})
            return True
        holder = result.kvs(0)
        if holder and holder[0].lease == self._lease.id:
            self.create_revision = holder[0].create_revision
            return True
        return False

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


def member_id(lease_id: int) -> str:
    """A scheduler process's member id: its session lease, so it is unique and dies with it."""
    return f"{lease_id:016x}"


@dataclass(frozen=True, slots=True)
class ShardHolder:
    member: str  # member id of the owner (its lease)
    owner: str  # the owner's process name
    create_revision: int  # what the owner's fence compares
    acquire_time_ns: int


@dataclass
class ShardTable:
    """Live scheduler members and shard owners, as folded from the ``shards/`` keys."""

    members: dict[str, str] = field(default_factory=dict)  # member id -> process name
    owners: dict[int, ShardHolder] = field(default_factory=dict)
    revision: int = 0

    def apply(self, keys: Keys, kv: KeyValue, deleted: bool) -> None:
        rest = kv.key[len(keys.shards_prefix()):].decode()
        if rest.startswith("members/"):
            member = rest[len("members/"):]
            if deleted:
                self.members.pop(member, None)
            else:
                self.members[member] = rec.ShardOwner.FromString(kv.value).owner
            return
        try:
            shard = int(rest)
        except ValueError:
            return  # not ours
        if deleted:
            self.owners.pop(shard, None)
        else:
            value = rec.ShardOwner.FromString(kv.value)
            self.owners[shard] = ShardHolder(member_id(kv.lease), value.owner, kv.create_revision,
                                             value.acquire_time_ns)


class ShardDirectory:
    """Scheduler membership and shard ownership: join, then list + watch."""

    def __init__(self, client: EtcdClient, keys: Keys):
        self._etcd = client
        self._keys = keys

    async def join(self, lease: Lease, name: str) -> str:
        """Announce this process as a live member under its session lease; returns its
        member id. Idempotent (a repeated join rewrites the same key)."""
        member = member_id(lease.id)
        value = rec.ShardOwner(owner=name, acquire_time_ns=now_ns()).SerializeToString()
        await self._etcd.put(self._keys.shard_member(member), value, lease=lease.id)
        return member

    async def snapshot(self) -> ShardTable:
        """Members and owners at one revision (``table.revision``)."""
        kvs, revision = await self._etcd.range_prefix(self._keys.shards_prefix())
        table = ShardTable(revision=revision)
        for kv in kvs:
            table.apply(self._keys, kv, False)
        return table

    async def watch(self, table: ShardTable) -> AsyncIterator[ShardTable]:
        """Fold changes after ``table.revision`` into ``table``, yielding it after each
        batch. Raises Compacted (take a new snapshot then)."""
        prefix = self._keys.shards_prefix()
        async for batch in self._etcd.watch(prefix, prefix_end(prefix), start_revision=table.revision + 1):
            for event in batch.events:
                table.apply(self._keys, event.kv, event.is_delete)
            table.revision = batch.revision
            yield table

    async def queue_depths(self, shards: int) -> list[int]:
        """Queued VMs per shard (count-only reads, all in flight at once)."""
        prefixes = [self._keys.queue_prefix(s) for s in range(shards)]
        results = await asyncio.gather(*(self._etcd.range(p, prefix_end(p), count_only=True) for p in prefixes))
        return [r.count for r in results]
