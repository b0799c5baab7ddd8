"""The scheduler process: one etcd client, one host view shared by its shards,
one session lease that guards every shard it owns.

Losing the session lease cancels all shard work (TaskGroup) and the process
exits non-zero, so a supervisor restarts it with a fresh session.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from dataclasses import dataclass

from controlplane.etcd import EtcdClient, Lease, LeaseLost
from controlplane.store.cluster import ensure_cluster_config
from controlplane.store.hosts import HostStore
from controlplane.store.keys import Keys
from controlplane.store.scheduling import SchedulingStore
from controlplane.store.shards import ShardLock
from scheduler import metrics
from scheduler.hostsync import HostSync
from scheduler.placement import HostView
from scheduler.shard import ShardScheduler

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    etcd: str
    root: str = "/quanta"
    shards: int | None = None  # proposed if the system has no shard count yet
    lease_ttl: int = 10
    batch_size: int = 256
    name: str = f"{socket.gethostname()}-{os.getpid()}"


async def run_scheduler(config: SchedulerConfig) -> None:
    """Run until cancelled; raises LeaseLost when the session lease is lost."""
    keys = Keys(config.root)
    client = EtcdClient(config.etcd)
    try:
        await client.wait_ready()
        cluster = await ensure_cluster_config(client, keys, shards=config.shards)
        view = HostView()
        hosts = HostSync(HostStore(client, keys), view)
        store = SchedulingStore(client, keys)
        async with Lease(client, config.lease_ttl) as lease, asyncio.TaskGroup() as group:
            group.create_task(hosts.run(), name="hosts")
            group.create_task(_watch_lease(lease), name="lease")
            for shard in range(cluster.shards):
                group.create_task(_run_shard(shard, client, keys, store, hosts, lease, config),
                                  name=f"shard-{shard}")
    finally:
        await client.close()


async def _watch_lease(lease: Lease) -> None:
    await lease.lost.wait()
    raise LeaseLost(f"scheduler session lease {lease.id:x} lost")


async def _run_shard(shard: int, client: EtcdClient, keys: Keys, store: SchedulingStore, hosts: HostSync,
                     lease: Lease, config: SchedulerConfig) -> None:
    lock = ShardLock(client, keys, shard, config.name, lease)
    await lock.acquire()
    metrics.SHARDS_OWNED.inc()
    metrics.SHARD_CHANGES.labels("acquired").inc()
    try:
        await ShardScheduler(shard, store, hosts, lock, batch_size=config.batch_size).run()
    finally:
        metrics.SHARDS_OWNED.dec()
        metrics.SHARD_CHANGES.labels("released").inc()
