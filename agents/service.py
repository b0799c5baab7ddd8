"""The agent process: registers its hosts, watches their bindings, reconciles.

One process may run one host (production, one agent per ESXi host) or many
simulated hosts (scale tests, ``quanta up``), with the same code.

Flow (client-go controller): list bindings at R → watch from R+1 → each change
enqueues its (host, vm) key → workers reconcile; so does each guest-side change a
driver reports (``HostDriver.watch``: a guest shutdown done, an address, a stop
from outside Quanta), and each deadline a reconcile sets (a soft stop's grace);
a periodic resync (every ``resync_s``, or ten times as long as the last listing took
if longer: :func:`resync_after`) re-enqueues everything (a binding it knew as it is in
the queue's background: new work goes first) and scans the hosts for VMs that no
binding wants. A binding that
disappears while its VM is not being deleted (the VM was moved off this host:
host declared dead) makes the worker release the VM here. Either way such a VM
is destroyed only with proof, a tombstone; without one it is quarantined and
reported (``orphans.py``).

Clean shutdown (SIGTERM/SIGINT, :meth:`Agent.stop`): no new work starts, the
reconciles already in driver calls get ``shutdown_grace_s`` to finish, their
statuses are written, then the agent exits. Work not started stays desired state
in etcd for the next agent; a second signal stops at once.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
from collections.abc import Mapping
from dataclasses import dataclass

from agents import metrics
from agents.disks import DiskKeeper
from agents.drivers.protocol import DriverError, HostDriver
from agents.orphans import OrphanKeeper
from agents.reconciler import DEFAULT_BOOTSTRAP_CLEAR_AFTER_S, Key, Reconciler
from agents.remover import Remover
from agents.status_writer import StatusWriter
from controlplane import cooperative
from controlplane.etcd import Compacted, EtcdClient, EtcdError, Lease, LeaseLost
from controlplane.etcd.outages import ride_out
from controlplane.models import NO_OVERCOMMIT, HostRegistration, Overcommit, Resources, now_ns
from controlplane.store.agentdisks import AgentDiskStore
from controlplane.store.audit import AuditLog
from controlplane.store.hostagent import AgentStore
from controlplane.store.keys import Keys
from controlplane.store.orphans import OrphanStore
from controlplane.workqueue import QueueShutDown, WorkQueue

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class AgentConfig:
    etcd: str
    root: str = "/quanta"
    name: str = "agent"
    driver: str = "sim"
    lease_ttl: int = 10
    workers: int = 256
    per_host_concurrency: int = 8
    resync_s: float = 300.0
    """Seconds between periodic resyncs, at least (see :func:`resync_after`)."""
    shutdown_grace_s: float = 20.0
    overcommit: Overcommit = NO_OVERCOMMIT
    """Registered with every host of this agent: placement books up to the raw
    capacity its driver reports times these ratios."""
    bootstrap_clear_after_s: float = DEFAULT_BOOTSTRAP_CLEAR_AFTER_S
    """A guest that does not report that it bootstrapped has its bootstrap data
    cleared after running with an address this long."""


#: A periodic resync comes at least this many times as long after a listing as the
#: listing (and the host scan after it) took: an agent of 500 simulated hosts listed
#: 427,000 bindings in 3 minutes, and a resync every 5 minutes took most of its time.
RESYNC_COST_FACTOR = 10


def resync_after(resync_s: float, listed_s: float) -> float:
    """Seconds from the end of a listing to the next periodic resync: ``resync_s``, or
    RESYNC_COST_FACTOR times ``listed_s`` (what the listing took) when that is longer,
    so re-listing takes at most about a tenth of the agent's time at any size."""
    return max(resync_s, RESYNC_COST_FACTOR * listed_s)


class Agent:
    def __init__(self, config: AgentConfig, client: EtcdClient, drivers: Mapping[str, HostDriver]):
        self.config = config
        self._etcd = client
        self._keys = Keys(config.root)
        self._store = AgentStore(client, self._keys)
        self._drivers = drivers
        self._hosts = sorted(drivers)
        self._queue: WorkQueue[Key] = WorkQueue(base_delay_s=0.05, max_delay_s=30.0)
        self.statuses = StatusWriter(self._store)
        # A VM removed: its detaching attachments (a detach not reconciled before its
        # deletion) are checked again, and go now that its spec has; its DELETING disks
        # are free to be destroyed.
        self.remover = Remover(self._store, on_removed=lambda vm: self.disks.vm_removed(vm.binding.spec))
        self.orphans = OrphanKeeper(drivers, OrphanStore(client, self._keys), agent=config.name)
        #: Each host's labels as registered (which datastore classes it reaches).
        self._host_labels: dict[str, dict[str, str]] = {}
        self.disks = DiskKeeper(AgentDiskStore(client, self._keys), drivers, self._host_labels,
                                self._detaching, resync_s=config.resync_s)
        self.reconciler = Reconciler(drivers, self.statuses, self.remover,
                                     per_host_concurrency=config.per_host_concurrency, orphans=self.orphans,
                                     store=self._store, audit=AuditLog(client, self._keys), agent=config.name,
                                     requeue_after=self._queue.add_after,
                                     bootstrap_clear_after_s=config.bootstrap_clear_after_s, disks=self.disks)
        self._stopping = asyncio.Event()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def stop(self) -> None:
        """Begin a clean shutdown (see the module doc); :meth:`run` then returns. Idempotent."""
        self._stopping.set()

    async def run(self) -> None:
        """Run until :meth:`stop` (returns once drained) or cancelled (stops at once);
        raises LeaseLost if the heartbeat lease is lost."""
        async with Lease(self._etcd, self.config.lease_ttl) as lease:
            await self._register(lease)
            for host, driver in self._drivers.items():
                driver.watch(functools.partial(self._vm_changed, host))
            self.orphans.start(lease.id)
            metrics.HOSTS.labels("ready").set(len(self._hosts))
            try:
                async with asyncio.TaskGroup() as group:
                    lease_watch = group.create_task(self._watch_lease(lease))
                    writers = [group.create_task(self.statuses.run()), group.create_task(self.remover.run())]
                    sync = group.create_task(ride_out(self._sync_bindings, "bindings"))
                    decisions = group.create_task(self.orphans.watch())
                    disks = group.create_task(self.disks.run())
                    workers = [group.create_task(self._worker()) for _ in range(self.config.workers)]
                    await self._stopping.wait()
                    decisions.cancel()
                    disks.cancel()
                    await self._drain(sync, workers, writers)
                    lease_watch.cancel()
            finally:
                metrics.HOSTS.labels("ready").set(0)
                self._queue.shutdown()

    async def _drain(self, sync: asyncio.Task, workers: list[asyncio.Task], writers: list[asyncio.Task]) -> None:
        loop = asyncio.get_running_loop()
        grace = self.config.shutdown_grace_s
        deadline = loop.time() + grace
        sync.cancel()  # a scan it was making is redone by the next agent's resync
        self.reconciler.stop()
        self._queue.shutdown()
        inflight = self.reconciler.acting
        log.info("stopping: no new work; letting in-flight host operations finish",
                 extra={"inflight": inflight, "grace_s": grace})
        _, late = await asyncio.wait(workers, timeout=grace) if workers else (set(), set())
        for task in late:  # past the grace: the next agent adopts or redoes these (all idempotent)
            task.cancel()
        abandoned = self.reconciler.acting if late else 0
        self.statuses.close()
        self.remover.close()
        _, unwritten = await asyncio.wait(writers, timeout=max(deadline - loop.time(), 1.0))
        for task in unwritten:
            task.cancel()
        log.info("agent stopped cleanly" if not late and not unwritten else "agent stopped after its grace period",
                 extra={"inflight": inflight, "abandoned": abandoned, "writes_unfinished": bool(unwritten)})

    async def _register(self, lease: Lease) -> None:
        registrations = []
        for host in self._hosts:
            cap = await self._drivers[host].capacity()
            self._host_labels[host] = dict(cap.labels)
            registrations.append(HostRegistration(
                host=host, driver=self.config.driver, capacity=Resources(cap.vcpus, cap.memory_mib, cap.disk_gib),
                labels=dict(cap.labels), agent=self.config.name, register_time_ns=now_ns(),
                overcommit=self.config.overcommit, networks=frozenset(cap.networks)))
        await self._store.register(registrations, lease.id)
        log.info("hosts registered", extra={"hosts": len(registrations), "lease": f"{lease.id:x}"})

    def _detaching(self, uid: str) -> None:
        """An attachment of the VM ``uid`` is marked detaching: reconcile it, if it is ours."""
        key = self.reconciler.key_of_uid(uid)
        if key is not None:
            self._queue.add(key)

    def _vm_changed(self, host: str, uid: str) -> None:
        """A driver's watch: something changed on the VM (a guest-side event)."""
        key = self.reconciler.key_of(host, uid)
        if key is not None:
            self._queue.add(key)

    async def _watch_lease(self, lease: Lease) -> None:
        await lease.lost.wait()
        raise LeaseLost(f"agent heartbeat lease {lease.id:x} lost")

    async def _sync_bindings(self) -> None:
        desired = self.reconciler.desired
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            bound, revision = await self._store.list_bindings(self._hosts)
            listed = {(vm.binding.host, vm.ref): vm for vm in bound}
            async for key in cooperative.each(list(desired)):
                if key not in listed:
                    self.reconciler.unbind(key)
                    self._queue.add(key)
            async for key in cooperative.each(listed):
                known = desired.get(key)
                unchanged = known is not None and known.mod_revision == listed[key].mod_revision
                self.reconciler.set_desired(key, listed[key])
                # A binding known as it is: a resync's check, queued behind new work.
                self._queue.add(key, background=unchanged)
            await self._scan_hosts()
            listed_s = loop.time() - started
            next_resync_s = resync_after(self.config.resync_s, listed_s)
            log.info("bindings listed", extra={"vms": len(listed), "revision": revision,
                                               "seconds": round(listed_s, 1), "next_resync_s": round(next_resync_s)})
            try:
                async with asyncio.timeout(next_resync_s):
                    async for changes, _revision in self._store.watch_bindings(self._hosts, revision + 1):
                        for change in changes:
                            key = (change.host, change.ref)
                            if change.bound is None:
                                self.reconciler.unbind(key)
                            else:
                                self.reconciler.set_desired(key, change.bound)
                            self._queue.add(key)
            except TimeoutError:
                log.info("periodic resync")
            except Compacted:
                log.warning("bindings watch compacted; re-listing")

    async def _scan_hosts(self) -> None:
        """Settle VMs the hosts have that no binding wants (e.g. made for a VM whose
        deletion completed while this agent was down: destroyed by its tombstone; or
        made after the backup the store was restored from: quarantined)."""
        # By (host, uid): a VM moved between two hosts of this agent is wanted on one only.
        wanted = {(vm.binding.host, vm.binding.spec.uid) for vm in self.reconciler.desired.values()}
        try:
            await self.orphans.scan(wanted)
        except (DriverError, EtcdError) as err:
            log.warning("host scan failed; the next resync scans again", extra={"error": str(err)})

    async def _worker(self) -> None:
        while True:
            # A reconcile whose driver answers without I/O (sim) never suspends: without
            # this, a queue of thousands would hold the loop and starve the heartbeat.
            await cooperative.pause()
            try:
                key = await self._queue.get()
            except QueueShutDown:
                return
            try:
                await self.reconciler.reconcile(key)
                self._queue.forget(key)
            except DriverError as err:
                log.info("transient driver fault; will retry",
                         extra={"vm": key[1].name, "host": key[0], "reason": err.reason})
                self._queue.add_rate_limited(key)
            except Exception:
                log.exception("reconcile failed; will retry", extra={"vm": key[1].name, "host": key[0]})
                self._queue.add_rate_limited(key)
            finally:
                self._queue.done(key)


async def run_agent(config: AgentConfig, drivers: Mapping[str, HostDriver]) -> None:
    client = EtcdClient(config.etcd)
    try:
        await client.wait_ready()
        agent = Agent(config, client, drivers)
        _stop_cleanly_on_signals(agent)
        await agent.run()
    finally:
        await client.close()


def _stop_cleanly_on_signals(agent: Agent) -> None:
    """SIGTERM/SIGINT begin a clean stop; a second one cancels at once. (Replaces the
    process's cancel-at-once handlers, see controlplane.process.)"""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    if task is None:
        raise RuntimeError("call from a task: a second signal cancels the calling task")

    def on_signal() -> None:
        if agent.stopping:
            task.cancel()
        else:
            agent.stop()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
