"""One ShardScheduler in process, on a real etcd, with store calls that fail: what
it assumed for a bind that then failed must not keep other VMs waiting, and a
reason it could not write is written later."""

from __future__ import annotations

import asyncio
import uuid

from controlplane.etcd import EtcdClient, EtcdError, Lease
from controlplane.models import HostRegistration, Resources, VmRef, VmSpec, now_ns
from controlplane.placement.view import HostView
from controlplane.store.hostagent import AgentStore
from controlplane.store.hosts import HostStore
from controlplane.store.keys import Keys
from controlplane.store.scheduling import SchedulingStore
from controlplane.store.shards import ShardLock
from controlplane.store.vms import VmStore
from controlplane.store.zones import ZoneStore
from scheduler.hostsync import HostSync
from scheduler.shard import ShardScheduler
from scheduler.zonesync import ZoneSync
from tests.conftest import async_wait_until, describe_tasks, make_projects, running

SMALL = Resources(1, 1024, 10)


def _spec(vm_id: str, resources: Resources = SMALL) -> VmSpec:
    return VmSpec(VmRef("acme", "web", vm_id), uuid.uuid4().hex, "small", "ubuntu", resources,
                  create_time_ns=now_ns(), shard=0, anti_affinity_group="db")


async def _run_shard(client: EtcdClient, keys: Keys, lease: Lease, store: SchedulingStore, until) -> None:
    """Run shard 0 (with its host and zone sync) until ``until(tasks)`` (a coroutine)
    returns; ``tasks`` are theirs, for a timeout message to tell whether one ended."""
    hosts, zones = HostSync(HostStore(client, keys), HostView()), ZoneSync(ZoneStore(client, keys))
    lock = ShardLock(client, keys, 0, "test", lease)
    await lock.acquire()
    shard = ShardScheduler(0, store, hosts, lock, zones=zones, seed=1)
    async with running(hosts.run(), zones.run(), shard.run()) as tasks:
        await until(tasks)


class _DeletedBeforeItsBind(SchedulingStore):
    """Deletes the VMs of the first bind just before it is sent (a user deleting a
    pending VM while it is being placed): that bind fails, nothing else changes."""

    def __init__(self, client: EtcdClient, keys: Keys, vms: VmStore):
        super().__init__(client, keys)
        self._vms = vms
        self.deleted: list[VmRef] = []

    async def bind(self, fence, binds):
        if not self.deleted:
            self.deleted = [vm.spec.ref for bind in binds for vm in bind.vms]
            for ref in self.deleted:
                await self._vms.request_delete(ref)
        return await super().bind(fence, binds)


def test_a_vm_turned_away_for_a_bind_that_failed_is_placed(etcd_endpoint: str, root: str) -> None:
    """Two anti-affine VMs, one host: the first is assumed there and the second turned
    away (anti-affinity); the first is deleted before its bind commits, so the
    second must be placed although no host's capacity changed."""
    make_projects(etcd_endpoint, root, "acme", "web")

    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client, Lease(client, 10) as lease:
            vms = VmStore(client, keys)
            await AgentStore(client, keys).register(
                [HostRegistration("host-1", "sim", Resources(16, 65536, 1000))], lease.id)
            for vm_id in ("vm-a", "vm-b"):  # both queued before the shard starts: one batch
                await vms.create(_spec(vm_id))
            store = _DeletedBeforeItsBind(client, keys, vms)

            async def until_the_other_is_placed(tasks) -> None:
                await async_wait_until(lambda: store.deleted, timeout=30, message="the first bind",
                                       seen=lambda: f"no bind yet; {describe_tasks(tasks)}")
                (deleted,) = store.deleted
                (other,) = {VmRef("acme", "web", "vm-a"), VmRef("acme", "web", "vm-b")} - {deleted}

                async def bound() -> bool:
                    return (await vms.get(other)).status.host == "host-1"

                async def seen() -> str:
                    status = (await vms.get(other)).status
                    return f"{status.state.name} {status.reason!r} {status.message!r}; {describe_tasks(tasks)}"

                await async_wait_until(bound, timeout=30, message=f"{other.name} placed on host-1", seen=seen)

            await _run_shard(client, keys, lease, store, until_the_other_is_placed)

    asyncio.run(asyncio.wait_for(main(), timeout=90))


class _FirstReasonFails(SchedulingStore):
    """The first write of unschedulable reasons fails (etcd unavailable)."""

    failed = False

    async def write_unschedulable(self, items):
        if not self.failed:
            self.failed = True
            raise EtcdError("injected: etcd unavailable")
        return await super().write_unschedulable(items)


def test_a_reason_that_could_not_be_written_is_written_later(etcd_endpoint: str, root: str) -> None:
    make_projects(etcd_endpoint, root, "acme", "web")

    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client, Lease(client, 10) as lease:
            vms = VmStore(client, keys)
            await AgentStore(client, keys).register(
                [HostRegistration("host-1", "sim", Resources(2, 4096, 100))], lease.id)
            too_big = _spec("too-big", Resources(8, 1024, 10))
            await vms.create(too_big)
            store = _FirstReasonFails(client, keys)

            async def told() -> bool:
                return store.failed and (await vms.get(too_big.ref)).status.reason == "NoHostFits"

            def until_told(tasks):
                async def seen() -> str:
                    status = (await vms.get(too_big.ref)).status
                    return (f"first write failed: {store.failed}; status {status.state.name} {status.reason!r}; "
                            f"{describe_tasks(tasks)}")

                return async_wait_until(told, timeout=30, message="the NoHostFits reason written", seen=seen)

            await _run_shard(client, keys, lease, store, until_told)

    asyncio.run(asyncio.wait_for(main(), timeout=90))
