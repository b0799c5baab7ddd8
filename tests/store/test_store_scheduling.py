"""Scheduler and agent store paths against a real etcd: batched binds with
per-host compares and shard fencing, ShardLock hand-over, removal of destroyed
VMs, and status writes guarded by the binding incarnation."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Coroutine
from typing import Any

import pytest

from agents.status_writer import StatusWriter
from controlplane.etcd import EtcdClient, Lease
from controlplane.models import (
    Binding,
    HostAllocation,
    Resources,
    VmRef,
    VmSpec,
    VmState,
    VmStatus,
    now_ns,
)
from controlplane.store.hostagent import AgentStore, StatusUpdate
from controlplane.store.keys import Keys, shard_of
from controlplane.store.scheduling import HostBind, QueuedVm, SchedulingStore
from controlplane.store.shards import ShardLock
from controlplane.store.vms import VmStore
from tests.conftest import make_projects

SHARDS = 4
SMALL = Resources(1, 1024, 10)


def run(coro: Coroutine[Any, Any, Any], timeout: float = 20.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout=timeout))


@pytest.fixture(autouse=True)
def _projects(etcd_endpoint: str, root: str) -> None:
    """The projects these tests create VMs in (a VM's quota is charged to its project)."""
    make_projects(etcd_endpoint, root, "acme", "web")


def make_spec(vm_id: str, *, request_id: str = "", resources: Resources = SMALL) -> VmSpec:
    uid = uuid.uuid4().hex
    return VmSpec(VmRef("acme", "web", vm_id), uid, "small", "ubuntu", resources,
                  request_id=request_id, create_time_ns=now_ns(), shard=shard_of(uid, SHARDS))


async def queue_vms(vms: VmStore, sched: SchedulingStore, *specs: VmSpec) -> list[QueuedVm]:
    """Create VMs through the frontend path; return their queue entries."""
    for spec in specs:
        await vms.create(spec)
    queued: dict[VmRef, QueuedVm] = {}
    for shard in {s.shard for s in specs}:
        for q in (await sched.list_queue(shard))[0]:
            queued[q.spec.ref] = q
    return [queued[s.ref] for s in specs]


def total(specs: list[VmSpec]) -> HostAllocation:
    alloc = HostAllocation()
    for spec in specs:
        alloc = alloc.plus(spec.resources)
    return alloc


# --- bind ------------------------------------------------------------------------------

def test_bind_moves_vm_from_queue_to_host(etcd_endpoint: str, root: str) -> None:
    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client:
            vms, sched = VmStore(client, keys), SchedulingStore(client, keys)
            spec = make_spec("vm-1", request_id="r1")
            (queued,) = await queue_vms(vms, sched, spec)
            assert queued.spec == spec
            alloc = HostAllocation().plus(spec.resources)
            result = await sched.bind(None, [HostBind("h1", 0, HostAllocation(), [queued])])
            assert result.fenced and result.committed == [True]

            assert await client.get(keys.queue(spec.shard, spec.ref)) is None
            binding_kv = await client.get(keys.binding("h1", spec.ref))
            assert binding_kv is not None and binding_kv.mod_revision == result.revision
            assert Binding.from_bytes(binding_kv.value) == Binding(spec, "h1")
            record = await vms.get(spec.ref)
            assert record.status.state == VmState.SCHEDULED and record.status.host == "h1"
            assert record.status.accepted_time_ns == spec.create_time_ns
            assert record.status_revision == result.revision and record.spec_revision < result.revision
            allocs = (await sched.read_current(["h1", "h-none"], []))[0]
            assert allocs["h1"] == (alloc, result.revision)
            assert allocs["h-none"] == (HostAllocation(), 0)

            # The same bind again is stale on every compare: it changes nothing.
            again = await sched.bind(None, [HostBind("h1", 0, HostAllocation(), [queued])])
            assert again.fenced and again.committed == [False]
            assert again.revision == result.revision

    run(main())


def test_stale_host_fails_alone_in_a_batched_bind(etcd_endpoint: str, root: str) -> None:
    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client:
            vms, sched = VmStore(client, keys), SchedulingStore(client, keys)
            s1, s2 = make_spec("vm-a"), make_spec("vm-b")
            q1, q2 = await queue_vms(vms, sched, s1, s2)
            # h1's allocation moves on after the scheduler read it.
            seen = await client.put(keys.host_alloc("h1"), HostAllocation().to_bytes())
            await client.put(keys.host_alloc("h1"), HostAllocation(Resources(2, 2048, 20), 2).to_bytes())

            result = await sched.bind(None, [
                HostBind("h1", seen, HostAllocation(), [q1]),
                HostBind("h2", 0, HostAllocation(), [q2]),
            ])
            assert result.fenced and result.committed == [False, True]

            # h1: nothing of the stale bind landed.
            assert await client.get(keys.queue(s1.shard, s1.ref)) is not None
            assert await client.get(keys.binding("h1", s1.ref)) is None
            assert (await vms.get(s1.ref)).status.state == VmState.PENDING
            assert ((await sched.read_current(["h1"], []))[0])["h1"][0] == HostAllocation(Resources(2, 2048, 20), 2)
            # h2: committed in the same round trip.
            assert await client.get(keys.queue(s2.shard, s2.ref)) is None
            assert await client.get(keys.binding("h2", s2.ref)) is not None
            assert (await vms.get(s2.ref)).status.host == "h2"
            assert ((await sched.read_current(["h2"], []))[0])["h2"] == (
                HostAllocation().plus(s2.resources), result.revision)

    run(main())


def test_bind_with_a_lost_fence_writes_nothing(etcd_endpoint: str, root: str) -> None:
    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client:
            vms, sched = VmStore(client, keys), SchedulingStore(client, keys)
            s1, s2 = make_spec("vm-f1"), make_spec("vm-f2")
            q1, q2 = await queue_vms(vms, sched, s1, s2)
            lease = await Lease(client, ttl=10).grant()
            lock = ShardLock(client, keys, 0, "sched-a", lease)
            await lock.acquire()
            assert lock.create_revision > 0

            # While owned, the fence lets a bind through.
            ok = await sched.bind(lock.fence(), [HostBind("h1", 0, HostAllocation(), [q1])])
            assert ok.fenced and ok.committed == [True]

            fence = lock.fence()
            await lease.revoke()  # the shard key goes with the lease
            assert await client.get(keys.shard(0)) is None
            before = await vms.current_revision()
            alloc_h1 = (await sched.read_current(["h1", "h2"], []))[0]
            lost = await sched.bind(fence, [
                HostBind("h1", alloc_h1["h1"][1], alloc_h1["h1"][0], [q2]),
            ])
            assert lost.fenced is False and lost.committed == [False]
            assert await vms.current_revision() == before
            assert await client.get(keys.queue(s2.shard, s2.ref)) is not None
            assert await client.get(keys.binding("h1", s2.ref)) is None
            assert (await sched.read_current(["h1", "h2"], []))[0] == alloc_h1

    run(main())


# --- shard ownership -------------------------------------------------------------------

def test_shard_lock_waits_for_the_holders_lease(etcd_endpoint: str, root: str) -> None:
    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client:
            lease_a = await Lease(client, ttl=10).grant()
            lease_b = await Lease(client, ttl=10).grant()
            try:
                lock_a = ShardLock(client, keys, 3, "sched-a", lease_a)
                lock_b = ShardLock(client, keys, 3, "sched-b", lease_b)
                await lock_a.acquire()
                fence_a = lock_a.fence()
                # A second acquire with the same lease is re-entrant.
                await ShardLock(client, keys, 3, "sched-a", lease_a).acquire()

                waiting = asyncio.ensure_future(lock_b.acquire())
                done, _ = await asyncio.wait({waiting}, timeout=0.5)
                assert not done, "acquired a shard that another lease holds"
                assert lock_b.create_revision == 0
                assert (await client.get(keys.shard(3))).lease == lease_a.id

                await lease_a.revoke()
                done, _ = await asyncio.wait({waiting}, timeout=5)
                assert done, ("timed out after 5s waiting for sched-b to acquire shard 3 once sched-a's lease "
                              f"was revoked; last seen: the shard key {await client.get(keys.shard(3))}")
                waiting.result()
                held = await client.get(keys.shard(3))
                assert held is not None and held.lease == lease_b.id
                assert lock_b.create_revision == held.create_revision
                # The old owner's fence no longer holds; the new one's does.
                assert not (await client.txn([fence_a], [])).succeeded
                assert (await client.txn([lock_b.fence()], [])).succeeded

                await lock_b.release()
                assert await client.get(keys.shard(3)) is None
                await lock_b.release()  # idempotent
            finally:
                await lease_a.revoke()
                await lease_b.revoke()

    run(main())


# --- agent: removal and statuses --------------------------------------------------------

async def bind_all(vms: VmStore, sched: SchedulingStore, host: str, specs: list[VmSpec]) -> None:
    queued = await queue_vms(vms, sched, *specs)
    result = await sched.bind(None, [HostBind(host, 0, HostAllocation(), queued)])
    assert result.committed == [True]


def test_concurrent_removals_on_one_host_both_land(etcd_endpoint: str, root: str) -> None:
    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as c1, EtcdClient(etcd_endpoint) as c2:
            vms, sched = VmStore(c1, keys), SchedulingStore(c1, keys)
            specs = [make_spec("vm-r1", request_id="rq1"), make_spec("vm-r2", resources=Resources(2, 2048, 20))]
            await bind_all(vms, sched, "h1", specs)
            bound, _ = await AgentStore(c1, keys).list_bindings(["h1"])
            assert sorted(b.ref.vm_id for b in bound) == ["vm-r1", "vm-r2"]

            attempts = []

            async def remove(store: AgentStore, vm) -> None:
                for attempt in range(1, 20):
                    if await store.remove_destroyed("h1", [vm]):
                        attempts.append(attempt)
                        return
                raise AssertionError("removal never applied")

            await asyncio.gather(remove(AgentStore(c1, keys), bound[0]), remove(AgentStore(c2, keys), bound[1]))
            assert len(attempts) == 2

            allocs = (await sched.read_current(["h1"], []))[0]
            assert allocs["h1"][0] == HostAllocation()
            for spec in specs:
                prefix = keys.vm_prefix(spec.ref)
                assert (await c1.range_prefix(prefix))[0] == []
                assert await c1.get(keys.binding("h1", spec.ref)) is None
            assert (await c1.get(keys.request("acme", "web", "rq1"))).lease != 0  # kept until it expires
            assert (await AgentStore(c1, keys).list_bindings(["h1"]))[0] == []

    run(main())


def test_remove_destroyed_retry_after_it_applied(etcd_endpoint: str, root: str) -> None:
    """A retry (e.g. after a timeout whose txn did apply) must neither shrink the
    allocation twice nor fail forever."""

    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client:
            vms, sched, agent = VmStore(client, keys), SchedulingStore(client, keys), AgentStore(client, keys)
            specs = [make_spec("vm-x"), make_spec("vm-y")]
            await bind_all(vms, sched, "h1", specs)
            bound = {b.ref.vm_id: b for b in (await agent.list_bindings(["h1"]))[0]}
            assert await agent.remove_destroyed("h1", [bound["vm-x"]])
            assert ((await sched.read_current(["h1"], []))[0])["h1"][0] == total(specs[1:])

            # Retried alone, and together with a VM still to remove.
            assert await agent.remove_destroyed("h1", [bound["vm-x"]])
            assert ((await sched.read_current(["h1"], []))[0])["h1"][0] == total(specs[1:])
            assert await agent.remove_destroyed("h1", [bound["vm-x"], bound["vm-y"]])
            assert ((await sched.read_current(["h1"], []))[0])["h1"][0] == HostAllocation()
            assert (await agent.list_bindings(["h1"]))[0] == []

    run(main())


def test_write_statuses_skips_another_binding_incarnation(etcd_endpoint: str, root: str) -> None:
    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client:
            vms, sched, agent = VmStore(client, keys), SchedulingStore(client, keys), AgentStore(client, keys)
            specs = [make_spec("vm-s1"), make_spec("vm-s2")]
            await bind_all(vms, sched, "h1", specs)
            bound = {b.ref.vm_id: b for b in (await agent.list_bindings(["h1"]))[0]}
            running = VmStatus(VmState.RUNNING, host="h1", update_time_ns=now_ns())
            applied = await agent.write_statuses([
                StatusUpdate("h1", specs[0].ref, bound["vm-s1"].create_revision, running),
                StatusUpdate("h1", specs[1].ref, bound["vm-s2"].create_revision + 1, running),
            ])
            assert applied == [True, False]
            # The right incarnation number on the wrong host is another binding key.
            assert await agent.write_statuses(
                [StatusUpdate("h2", specs[1].ref, bound["vm-s2"].create_revision, running)]) == [False]
            assert (await vms.get(specs[0].ref)).status == running
            assert (await vms.get(specs[1].ref)).status.state == VmState.SCHEDULED

            # After removal, a late status write cannot resurrect the VM.
            assert await agent.remove_destroyed("h1", [bound["vm-s1"]])
            late = await agent.write_statuses(
                [StatusUpdate("h1", specs[0].ref, bound["vm-s1"].create_revision, running)])
            assert late == [False]
            assert await client.get(keys.vm_status(specs[0].ref)) is None

    run(main())


def test_an_awaited_status_write_lands_before_it_returns_in_order_with_the_batch(etcd_endpoint, root) -> None:
    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client:
            vms, sched, agent = VmStore(client, keys), SchedulingStore(client, keys), AgentStore(client, keys)
            specs = [make_spec("vm-w1"), make_spec("vm-w2")]
            await bind_all(vms, sched, "h1", specs)
            bound = {b.ref.vm_id: b for b in (await agent.list_bindings(["h1"]))[0]}
            writer = StatusWriter(agent)
            task = asyncio.create_task(writer.run())
            try:
                first, second = (VmStatus(state, host="h1", update_time_ns=now_ns())
                                 for state in (VmState.CREATING, VmState.RUNNING))
                # Batched, then awaited: the awaited one is the last word, in etcd when it returns.
                writer.submit(StatusUpdate("h1", specs[0].ref, bound["vm-w1"].create_revision, first))
                assert await writer.write(StatusUpdate("h1", specs[0].ref, bound["vm-w1"].create_revision, second))
                assert (await vms.get(specs[0].ref)).status == second
                # Another binding incarnation: not applied, and the caller is told.
                assert not await writer.write(
                    StatusUpdate("h1", specs[1].ref, bound["vm-w2"].create_revision + 1, second))
                assert (await vms.get(specs[1].ref)).status.state == VmState.SCHEDULED
                # Many awaited at once: one batch, each told.
                results = await asyncio.gather(*(writer.write(StatusUpdate(
                    "h1", spec.ref, bound[spec.ref.vm_id].create_revision, first)) for spec in specs))
                assert results == [True, True]
                assert [(await vms.get(spec.ref)).status for spec in specs] == [first, first]
            finally:
                writer.close()
                await task

    run(main())


def test_read_current_reports_queue_entries_that_left(etcd_endpoint: str, root: str) -> None:
    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client:
            vms = VmStore(client, keys)
            sched = SchedulingStore(client, keys)
            kept, gone = make_spec("kept"), make_spec("gone")
            queued = await queue_vms(vms, sched, kept, gone)
            await vms.request_delete(gone.ref)  # leaves the queue while "in flight"
            allocations, entries = await sched.read_current(["h1"], queued)
            assert allocations == {"h1": (HostAllocation(), 0)}
            assert entries[gone.ref] is None
            assert entries[kept.ref] == next(q for q in queued if q.spec.ref == kept.ref)

    run(main())
