"""The scheduler process: one etcd client, one host view shared by its shards,
one session lease that guards its membership and every shard it owns.

Several processes share the shards (``ShardManager``): each announces itself as
a member under its session lease, watches members and shard owners, and keeps
its fair share (``balance.plan``): it takes free shards while under its quota
and releases its surplus when a process joins. A dead process's member and
shard keys go with its lease, so within the lease TTL the others take its
shards over. Every bind still compares the shard key's create_revision (fence).

The owner of shard 0 also runs the ``HostController`` (lifecycle.py): hosts
missing past ``host_dead_after_s`` are declared dead and their VMs moved off, and
drained hosts (DrainHost) are emptied.

Losing the session lease cancels all shard work (TaskGroup) and the process
exits non-zero, so a supervisor restarts it with a fresh session. An etcd outage
shorter than the lease's TTL is ridden out: the list + watch loops list again
(controlplane.etcd.outages), failed binds are retried, the shards stay owned.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from controlplane.etcd import Compacted, EtcdClient, EtcdError, Lease, LeaseLost
from controlplane.etcd.outages import ride_out
from controlplane.placement import HostView, policy
from controlplane.store.cluster import ensure_cluster_config
from controlplane.store.hosts import HostStore
from controlplane.store.keys import Keys
from controlplane.store.lifecycle import HostEvictor, LifecycleStore
from controlplane.store.scheduling import SchedulingStore
from controlplane.store.shards import ShardDirectory, ShardLock, ShardTable
from controlplane.store.vms import VmStore
from controlplane.store.zones import ZoneStore
from scheduler import balance, metrics
from scheduler.hostsync import HostSync
from scheduler.lifecycle import HostController
from scheduler.shard import ShardLost, ShardScheduler
from scheduler.zonesync import ZoneSync

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    etcd: str
    root: str = "/quanta"
    shards: int | None = None  # proposed if the system has no shard count yet
    lease_ttl: int = 10
    batch_size: int = 256
    policy: str = "spread"  # a key of placement.POLICIES
    image_locality_weight: float = 0.5  # weight of image_locality next to the policy's scorer (0: off)
    name: str = f"{socket.gethostname()}-{os.getpid()}"
    host_dead_after_s: float = 60.0  # a host missing this long is declared dead (by shard 0's owner)


async def run_scheduler(config: SchedulerConfig) -> None:
    """Run until cancelled; raises LeaseLost when the session lease is lost."""
    keys = Keys(config.root)
    client = EtcdClient(config.etcd)
    try:
        await client.wait_ready()
        cluster = await ensure_cluster_config(client, keys, shards=config.shards)
        view = HostView()
        hosts = HostSync(HostStore(client, keys), view)
        zones = ZoneSync(ZoneStore(client, keys))
        store = SchedulingStore(client, keys)

        lifecycle = LifecycleStore(client, keys)
        evictor = HostEvictor(lifecycle, VmStore(client, keys))

        async def run_shard(lock: ShardLock) -> None:
            shard = ShardScheduler(lock.shard, store, hosts, lock, zones=zones, batch_size=config.batch_size,
                                   scorer=policy(config.policy, image_locality_weight=config.image_locality_weight))
            if lock.shard != 0:
                await shard.run()
                return
            # Shard 0's owner also declares missing hosts dead and empties dead and
            # drained hosts: exactly one process at a time.
            controller = HostController(hosts, lifecycle, evictor, lock.fence, grace_s=config.host_dead_after_s)
            async with asyncio.TaskGroup() as group:
                group.create_task(shard.run(), name=f"shard-{lock.shard}")
                group.create_task(controller.run(), name="host-controller")

        async with Lease(client, config.lease_ttl) as lease, asyncio.TaskGroup() as group:
            group.create_task(hosts.run(), name="hosts")
            group.create_task(zones.run(), name="zones")
            group.create_task(_watch_lease(lease), name="lease")
            manager = ShardManager(client, keys, cluster.shards, lease, config.name, run_shard,
                                   resync_s=config.lease_ttl)
            group.create_task(manager.run(), name="shards")
    finally:
        await client.close()


async def _watch_lease(lease: Lease) -> None:
    await lease.lost.wait()
    raise LeaseLost(f"scheduler session lease {lease.id:x} lost")


class ShardManager:
    """Keeps this process's fair share of shards running.

    ``run_shard(lock)`` runs one owned shard until cancelled, or raises ShardLost
    when a bind was fenced off; any other exception ends ``run()`` with it (the
    process then exits and is restarted). Not restartable: one per session lease.
    """

    def __init__(self, client: EtcdClient, keys: Keys, shards: int, lease: Lease, name: str,
                 run_shard: Callable[[ShardLock], Coroutine[Any, Any, None]], *, resync_s: float = 10.0):
        self._etcd = client
        self._keys = keys
        self._directory = ShardDirectory(client, keys)
        self.shards = shards
        self._lease = lease
        self.name = name
        self._run_shard = run_shard
        self._resync_s = resync_s
        self.member = ""
        self._table = ShardTable()
        self._running: dict[int, tuple[ShardLock, asyncio.Task]] = {}
        self._orphans: dict[int, ShardLock] = {}  # stopped, but the key may still be ours
        self._wake = asyncio.Event()
        self._failure: BaseException | None = None

    @property
    def owned(self) -> list[int]:
        """The shards this process runs now."""
        return sorted(self._running)

    async def run(self) -> None:
        self.member = await self._directory.join(self._lease, self.name)
        log.info("scheduler joined", extra={"member": self.member, "shards": self.shards})
        watcher = asyncio.create_task(ride_out(self._watch, "shards"), name="shard-watch")
        try:
            while True:
                if watcher.done():
                    watcher.result()  # raises what ended the watch
                if self._failure is not None:
                    raise self._failure
                self._wake.clear()
                try:
                    await self._reconcile()
                except EtcdError as err:
                    log.warning("shard reconcile failed; retrying", extra={"error": str(err)})
                    await asyncio.sleep(0.5)
                    continue
                try:
                    # Not wait_for: on 3.11 it can swallow a cancel that races the event.
                    async with asyncio.timeout(self._resync_s):
                        await self._wake.wait()
                except TimeoutError:
                    pass
        finally:
            watcher.cancel()
            for shard in list(self._running):
                await self._stop(shard, "released")
            await asyncio.gather(watcher, return_exceptions=True)

    async def _watch(self) -> None:
        while True:
            table = await self._directory.snapshot()
            self._table = table
            self._wake.set()
            try:
                async for _ in self._directory.watch(table):  # folds into the same table
                    self._wake.set()
            except Compacted:
                log.warning("shard watch compacted; re-listing")

    async def _reconcile(self) -> None:
        table = self._table
        for shard, lock in list(self._orphans.items()):
            await lock.release()  # an earlier release failed half-way; finish it
            del self._orphans[shard]
        # A shard we run whose key is gone or was re-created (by another lease) is lost;
        # a table older than our acquisition cannot tell yet.
        for shard, (lock, _task) in list(self._running.items()):
            holder = table.owners.get(shard)
            if table.revision >= lock.create_revision and (
                    holder is None or holder.create_revision != lock.create_revision):
                await self._stop(shard, "lost")
        taken: dict[int, str] = {}  # lost acquisitions in this round, before the watch shows the winner
        while True:
            # Our own shards as we run them, not as the (possibly lagging) table says.
            owners = {s: h.member for s, h in table.owners.items() if h.member != self.member}
            owners.update(taken)
            owners.update({s: "?" for s in self._orphans})
            owners.update({s: self.member for s in self._running})
            step = balance.plan(self.shards, table.members, owners, self.member)
            for shard in step.release:
                await self._stop(shard, "released", delete=True)
            if not step.acquire:
                return
            for shard in step.acquire:
                lock = ShardLock(self._etcd, self._keys, shard, self.name, self._lease)
                if await lock.try_acquire():
                    self._start(lock)
                else:
                    taken[shard] = "?"

    def _start(self, lock: ShardLock) -> None:
        task = asyncio.create_task(self._run_shard(lock), name=f"shard-{lock.shard}")
        self._running[lock.shard] = (lock, task)
        task.add_done_callback(functools.partial(self._shard_ended, lock.shard))
        metrics.SHARDS_OWNED.set(len(self._running))
        metrics.SHARD_CHANGES.labels("acquired").inc()
        log.info("shard started", extra={"shard": lock.shard, "owned": self.owned})

    def _shard_ended(self, shard: int, task: asyncio.Task) -> None:
        running = self._running.get(shard)
        if running is None or running[1] is not task or task.cancelled():
            return  # stopped on purpose
        del self._running[shard]
        metrics.SHARDS_OWNED.set(len(self._running))
        error = task.exception()
        if _only(error, ShardLost):
            metrics.SHARD_CHANGES.labels("lost").inc()
            log.warning("shard lost", extra={"shard": shard})
        elif error is not None:
            self._failure = error
        self._wake.set()

    async def _stop(self, shard: int, event: str, *, delete: bool = False) -> None:
        """Stop the shard's work, then (``delete``) give its key up so another may take it."""
        lock, task = self._running.pop(shard)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        if delete:
            self._orphans[shard] = lock  # until the key is surely gone
            await lock.release()
            del self._orphans[shard]
        metrics.SHARDS_OWNED.set(len(self._running))
        metrics.SHARD_CHANGES.labels(event).inc()
        log.info("shard stopped", extra={"shard": shard, "event": event, "owned": self.owned})


def _only(error: BaseException | None, kind: type[BaseException]) -> bool:
    """True if ``error`` is ``kind``, or an exception group made only of ``kind``
    (what a TaskGroup raises when one of its tasks raised it)."""
    if isinstance(error, BaseExceptionGroup):
        return all(_only(e, kind) for e in error.exceptions)
    return isinstance(error, kind)
