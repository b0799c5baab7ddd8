"""Host lifecycle as scheduler inputs, below the processes: the pure eviction plan,
missing-host clock and host states, and the store's compare-and-swap moves, dead
and drain markers and the host controller's decisions against a real etcd."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Coroutine
from typing import Any

import pytest

from controlplane.api.convert import host_state, vm_to_proto
from controlplane.etcd import EtcdClient, Lease
from controlplane.gen.quanta.v1 import host_pb2, vm_pb2
from controlplane.models import (
    Binding,
    HostAllocation,
    HostRegistration,
    Resources,
    RestartPolicy,
    VmRef,
    VmSpec,
    VmState,
    VmStatus,
    now_ns,
)
from controlplane.placement import HostView
from controlplane.store.errors import NotFound
from controlplane.store.hostagent import AgentStore, BoundVm
from controlplane.store.hosts import HostRecord, HostStore
from controlplane.store.keys import Keys, shard_of
from controlplane.store.lifecycle import REASON_DEAD, REASON_DRAINED, HostEvictor, LifecycleStore, plan_eviction
from controlplane.store.scheduling import HostBind, SchedulingStore
from controlplane.store.shards import ShardLock
from controlplane.store.vms import VmRecord, VmStore
from scheduler.hostsync import HostSync
from scheduler.lifecycle import HostController, MissingClock
from tests.conftest import async_wait_until, describe_tasks, make_projects, running

SHARDS = 4
SMALL = Resources(1, 1024, 10)


def run(coro: Coroutine[Any, Any, Any], timeout: float = 30.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout=timeout))


def make_spec(vm_id: str, policy: RestartPolicy = RestartPolicy.ALWAYS, *, deleting: bool = False,
              group: str = "") -> VmSpec:
    uid = uuid.uuid4().hex
    return VmSpec(VmRef("acme", "web", vm_id), uid, "small", "ubuntu", SMALL, create_time_ns=now_ns(),
                  shard=shard_of(uid, SHARDS), restart_policy=policy, anti_affinity_group=group,
                  delete_time_ns=now_ns() if deleting else 0)


def bound(spec: VmSpec) -> BoundVm:
    return BoundVm(Binding(spec, "h1"), 5, 6)


# --- pure ------------------------------------------------------------------------------

@pytest.mark.parametrize("host_dead, expected", [
    # A live host's ALWAYS VMs are marked (its agent destroys, then queues them); one
    # already marked is waited for, like deletions.
    (False, {"requeue": [], "mark": ["a"], "delete": ["n"], "remove": [], "waiting": 3}),
    (True, {"requeue": ["a", "e"], "mark": [], "delete": ["n"], "remove": ["d", "dn"], "waiting": 0}),
])
def test_plan_eviction_sorts_by_restart_policy_and_deletion(host_dead, expected):
    evicting = BoundVm(Binding(make_spec("e"), "h1", "", REASON_DRAINED, "draining"), 5, 6)
    vms = [bound(make_spec("a")), bound(make_spec("n", RestartPolicy.NEVER)),
           bound(make_spec("d", deleting=True)), bound(make_spec("dn", RestartPolicy.NEVER, deleting=True)), evicting]
    plan = plan_eviction(vms, host_dead=host_dead)
    got = {"requeue": [v.ref.vm_id for v in plan.requeue], "mark": [v.ref.vm_id for v in plan.mark],
           "delete": [v.ref.vm_id for v in plan.delete], "remove": [v.ref.vm_id for v in plan.remove],
           "waiting": plan.waiting}
    assert got == expected
    assert bool(plan)


def test_plan_eviction_of_only_deleting_vms_on_a_live_host_is_empty():
    plan = plan_eviction([bound(make_spec("d", deleting=True))], host_dead=False)
    assert not plan and plan.waiting == 1


def test_missing_clock_declares_after_the_grace_and_forgets_returning_hosts():
    clock = MissingClock(grace_s=10)
    clock.observe("h1", True, now=100)
    clock.observe("h2", True, now=105)
    clock.observe("h1", True, now=108)  # still missing: the clock keeps its first sighting
    assert clock.due(109.9) == []
    assert clock.due(110) == ["h1"]
    assert clock.due(200) == ["h1", "h2"]  # longest missing first
    clock.observe("h1", False, now=200)  # back before being declared: starts over next time
    assert clock.due(200) == ["h2"] and "h1" not in clock
    clock.observe("h1", True, now=201)
    assert clock.due(210) == ["h2"]


def test_restart_policy_round_trips_through_the_store_record_and_the_api():
    spec = make_spec("p", RestartPolicy.NEVER, group="db")
    assert VmSpec.from_bytes(spec.to_bytes()) == spec
    vm = vm_to_proto(VmRecord(spec, VmStatus(VmState.PENDING), 1, 1))
    assert vm.restart_policy == vm_pb2.Vm.NEVER and vm.anti_affinity_group == "db"
    assert vm_to_proto(VmRecord(make_spec("q"), VmStatus(VmState.PENDING), 1, 1)).restart_policy == vm_pb2.Vm.ALWAYS


def test_host_state_shows_dead_until_the_marker_is_lifted():
    reg = HostRegistration("h1", "sim", Resources(8, 8192, 100))
    assert host_state(HostRecord("h1", reg, HostAllocation(), 1, 1)) == host_pb2.Host.READY
    assert host_state(HostRecord("h1", None, HostAllocation(), 1, 1)) == host_pb2.Host.MISSING
    assert host_state(HostRecord("h1", None, HostAllocation(), 1, 1, dead=True)) == host_pb2.Host.DEAD
    assert host_state(HostRecord("h1", reg, HostAllocation(), 1, 1, dead=True)) == host_pb2.Host.DEAD


@pytest.mark.parametrize("registered, maintenance, drain, dead, vms, expected", [
    (True, True, True, False, 2, host_pb2.Host.DRAINING),
    (True, True, True, False, 0, host_pb2.Host.DRAINED),
    (True, True, False, False, 2, host_pb2.Host.READY),  # maintenance alone moves nothing
    (True, False, True, False, 2, host_pb2.Host.READY),  # a drain marker without maintenance is no drain
    (False, True, True, False, 2, host_pb2.Host.MISSING),  # its agent is gone: nothing moves until DEAD
    (True, True, True, True, 2, host_pb2.Host.DEAD),
])
def test_host_state_of_a_drained_host(registered, maintenance, drain, dead, vms, expected):
    reg = HostRegistration("h1", "sim", Resources(8, 8192, 100)) if registered else None
    allocation = HostAllocation()
    for _ in range(vms):
        allocation = allocation.plus(SMALL)
    record = HostRecord("h1", reg, allocation, 1, 1, maintenance=maintenance, dead=dead, drain=drain)
    assert host_state(record) == expected
    assert record.draining == (maintenance and drain)


# --- against etcd ----------------------------------------------------------------------

@pytest.fixture(autouse=True)
def _project(etcd_endpoint: str, root: str) -> None:
    make_projects(etcd_endpoint, root, "acme", "web")


async def bind_all(vms: VmStore, sched: SchedulingStore, host: str, specs: list[VmSpec]) -> None:
    for spec in specs:
        await vms.create(spec)
    queued = {q.spec.ref: q for shard in {s.shard for s in specs} for q in (await sched.list_queue(shard))[0]}
    current = await sched.read_current([host], [])
    result = await sched.bind(None, [HostBind(host, current[0][host][1], current[0][host][0],
                                              [queued[s.ref] for s in specs])])
    assert result.committed == [True]


def test_drain_eviction_requeues_always_and_deletes_never(etcd_endpoint: str, root: str) -> None:
    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client:
            vms, sched, lifecycle = VmStore(client, keys), SchedulingStore(client, keys), LifecycleStore(client, keys)
            keep, gone = make_spec("keep", group="g"), make_spec("gone", RestartPolicy.NEVER)
            await bind_all(vms, sched, "h1", [keep, gone])
            await HostStore(client, keys).drain("h1")  # what the controller acts on

            left = await HostEvictor(lifecycle, vms).evict("h1", dead=False)

            # NEVER: deletion requested; the live host's agent destroys and removes it.
            by_id = {b.ref.vm_id: b for b in left.bound}
            assert by_id["gone"].binding.deleting and (await vms.get(gone.ref)).state == VmState.DELETING
            # ALWAYS on a live host: still bound (it runs until its agent destroys it),
            # marked evicting, not queued yet: it never runs on two hosts at once.
            assert by_id["keep"].binding.evicting and (await vms.get(keep.ref)).status.host == "h1"
            assert (await sched.list_queue(keep.shard))[0] == []
            # A second eviction finds nothing more to do and changes nothing.
            again = await HostEvictor(lifecycle, vms).evict("h1", dead=False)
            assert again.bound == left.bound and again.alloc_revision == left.alloc_revision
            # The agent destroyed it: its removal puts it back in its shard's queue, PENDING.
            assert await AgentStore(client, keys).remove_destroyed("h1", [by_id["keep"]])
            record = await vms.get(keep.ref)
            assert record.status.state == VmState.PENDING and record.status.reason == REASON_DRAINED
            assert [q.spec.uid for q in (await sched.list_queue(keep.shard))[0]] == [keep.uid]
            after = await lifecycle.host_bindings("h1")
            assert [b.ref.vm_id for b in after.bound] == ["gone"]
            assert after.allocation == HostAllocation().plus(gone.resources)  # group "g" left with its VM

    run(main())


def test_a_lifted_drain_moves_nothing_more(etcd_endpoint: str, root: str) -> None:
    """An evictor working from an older read (the drain lifted meanwhile) marks no VM
    and deletes none: every change compares that the drain is still asked for."""

    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client:
            vms, sched, lifecycle = VmStore(client, keys), SchedulingStore(client, keys), LifecycleStore(client, keys)
            hosts = HostStore(client, keys)
            keep, gone = make_spec("keep"), make_spec("gone", RestartPolicy.NEVER)
            await bind_all(vms, sched, "h1", [keep, gone])
            await hosts.drain("h1")
            await hosts.set_maintenance("h1", False)  # lifted before the controller acted

            left = await HostEvictor(lifecycle, vms).evict("h1", dead=False)

            assert not any(b.binding.evicting or b.binding.deleting for b in left.bound)
            assert (await vms.get(gone.ref)).state != VmState.DELETING

    run(main())


def test_a_vm_deleted_while_evicted_is_removed_not_queued_again(etcd_endpoint: str, root: str) -> None:
    """The agent destroyed an evicting VM; the VM's deletion was requested before the
    agent's removal landed. The removal goes by the binding as it is now: the VM goes
    (it was queued again with its old, undeleted spec, and would have run again)."""

    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client:
            vms, sched, lifecycle = VmStore(client, keys), SchedulingStore(client, keys), LifecycleStore(client, keys)
            agent = AgentStore(client, keys)
            vm = make_spec("vm")
            await bind_all(vms, sched, "h1", [vm])
            await HostStore(client, keys).drain("h1")
            await HostEvictor(lifecycle, vms).evict("h1", dead=False)
            (seen,), _ = await agent.list_bindings(["h1"])
            assert seen.binding.evicting  # the agent destroys it for this
            await vms.request_delete(vm.ref)
            assert await agent.remove_destroyed("h1", [seen])
            assert (await sched.list_queue(vm.shard))[0] == []
            with pytest.raises(NotFound):
                await vms.get(vm.ref)
            after = await lifecycle.host_bindings("h1")
            assert after.bound == [] and after.allocation == HostAllocation()

    run(main())


def test_a_move_compares_every_binding_it_read(etcd_endpoint: str, root: str) -> None:
    """A deletion marked after the read makes the move write nothing (the VM can
    be neither lost nor queued while being deleted)."""

    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client:
            vms, sched, lifecycle = VmStore(client, keys), SchedulingStore(client, keys), LifecycleStore(client, keys)
            a, b = make_spec("a"), make_spec("b")
            await bind_all(vms, sched, "h1", [a, b])
            read = await lifecycle.host_bindings("h1")
            await vms.request_delete(b.ref)  # rewrites b's binding: its mod_revision moves on
            assert not await lifecycle.move_off("h1", read, read.bound, [], reason=REASON_DRAINED, message="")
            now = await lifecycle.host_bindings("h1")
            assert sorted(v.ref.vm_id for v in now.bound) == ["a", "b"] and now.allocation == read.allocation
            assert all(q.spec.uid != a.uid for q in (await sched.list_queue(a.shard))[0]), "a was queued"

    run(main())


def test_dead_marker_is_set_once_blocks_binds_and_is_lifted_when_back_and_empty(etcd_endpoint: str,
                                                                               root: str) -> None:
    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client:
            vms, sched, lifecycle = VmStore(client, keys), SchedulingStore(client, keys), LifecycleStore(client, keys)
            hosts, agent = HostStore(client, keys), AgentStore(client, keys)
            lease = await Lease(client, ttl=30).grant()
            reg = HostRegistration("h1", "sim", Resources(64, 65536, 1000))
            await agent.register([reg], lease.id)
            lock = ShardLock(client, keys, 0, "sched-a", lease)
            await lock.acquire()
            fence = lock.fence()

            assert not await lifecycle.declare_dead("h1", fence), "a registered host is not dead"
            await client.delete(keys.host_reg("h1"))  # heartbeat lost
            assert await lifecycle.declare_dead("h1", fence)
            assert not await lifecycle.declare_dead("h1", fence), "declared once only"
            record = await hosts.get("h1")
            assert record.dead and not record.ready

            # No bind lands on a dead host, whatever the binder's view said.
            spec = make_spec("late")
            await vms.create(spec)
            (queued,), _ = await sched.list_queue(spec.shard)
            result = await sched.bind(None, [HostBind("h1", record.alloc_revision, HostAllocation(), [queued])])
            assert result.committed == [False]

            # Lifted only once the host is registered again (and empty), and under the fence.
            assert not await lifecycle.clear_dead("h1", record.dead_revision, record.alloc_revision, fence)
            await agent.register([reg], lease.id)
            record = await hosts.get("h1")
            other = ShardLock(client, keys, 1, "sched-b", lease)
            await other.acquire()
            wrong_fence = ShardLock(client, keys, 0, "sched-b", lease).fence()  # create_revision 0: not the owner
            assert not await lifecycle.clear_dead("h1", record.dead_revision, record.alloc_revision, wrong_fence)
            assert await lifecycle.clear_dead("h1", record.dead_revision, record.alloc_revision, fence)
            assert not (await hosts.get("h1")).dead
            await lease.revoke()

    run(main())


def test_reaper_declares_after_the_grace_and_moves_vms_by_policy(etcd_endpoint: str, root: str) -> None:
    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client:
            vms, sched, lifecycle = VmStore(client, keys), SchedulingStore(client, keys), LifecycleStore(client, keys)
            hosts, agent = HostStore(client, keys), AgentStore(client, keys)
            lease = await Lease(client, ttl=30).grant()
            await agent.register([HostRegistration("h1", "sim", Resources(64, 65536, 1000))], lease.id)
            keep, never, deleting = make_spec("keep"), make_spec("never", RestartPolicy.NEVER), make_spec("del")
            await bind_all(vms, sched, "h1", [keep, never, deleting])
            await vms.request_delete(deleting.ref)
            lock = ShardLock(client, keys, 0, "sched-a", lease)
            await lock.acquire()
            now = [1000.0]
            reaper = HostController(HostSync(hosts, HostView()), lifecycle, HostEvictor(lifecycle, vms), lock.fence,
                                grace_s=60,
                                clock=lambda: now[0])

            await client.delete(keys.host_reg("h1"))
            await reaper.step((await hosts.list())[0])
            now[0] += 59
            await reaper.step((await hosts.list())[0])
            assert not (await hosts.get("h1")).dead, "declared before the grace"
            now[0] += 1
            await reaper.step((await hosts.list())[0])

            record = await hosts.get("h1")
            assert record.dead and record.allocation == HostAllocation()
            assert (await lifecycle.host_bindings("h1")).bound == []
            moved = await vms.get(keep.ref)
            assert moved.status.state == VmState.PENDING and moved.status.reason == REASON_DEAD
            assert any(q.spec.uid == keep.uid for q in (await sched.list_queue(keep.shard))[0])
            for gone in (never, deleting):  # NEVER: deleted; already deleting: removed (the host is dead)
                with pytest.raises(NotFound):
                    await vms.get(gone.ref)
            await lease.revoke()

    run(main())


def test_a_dead_host_eviction_deletes_nothing_once_the_host_is_back(etcd_endpoint: str, root: str) -> None:
    """NEVER-policy deletions of a dead host's VMs compare that the host is still
    declared dead: a reaper acting on a stale view must not delete VMs of a host that
    has come back."""
    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client:
            vms, sched, lifecycle = VmStore(client, keys), SchedulingStore(client, keys), LifecycleStore(client, keys)
            never = make_spec("never", RestartPolicy.NEVER)
            await bind_all(vms, sched, "h1", [never])
            # No dead marker for h1: it is alive (again).
            await HostEvictor(lifecycle, vms).evict("h1", dead=True)
            assert (await vms.get(never.ref)).state != VmState.DELETING

    run(main())


class _FirstEvictionsLeaveEverything(HostEvictor):
    """The first two evictions (at the declaration, and on the dead marker's watch
    event) move nothing, as when every move lost its race."""

    calls = 0

    async def evict(self, host: str, *, dead: bool, fence=None):
        self.calls += 1
        if self.calls <= 2:
            return await self._store.host_bindings(host)
        return await super().evict(host, dead=dead, fence=fence)


def test_the_running_reaper_evicts_again_what_an_eviction_left_behind(etcd_endpoint: str, root: str) -> None:
    """Nothing about the dead host changes after its fruitless evictions: the reaper
    still comes back to it on its tick and moves the VM off."""
    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client:
            vms, sched, lifecycle = VmStore(client, keys), SchedulingStore(client, keys), LifecycleStore(client, keys)
            hosts, agent = HostStore(client, keys), AgentStore(client, keys)
            lease = await Lease(client, ttl=30).grant()
            await agent.register([HostRegistration("h1", "sim", Resources(64, 65536, 1000))], lease.id)
            keep = make_spec("keep")
            await bind_all(vms, sched, "h1", [keep])
            lock = ShardLock(client, keys, 0, "sched-a", lease)
            await lock.acquire()
            sync = HostSync(hosts, HostView())
            evictor = _FirstEvictionsLeaveEverything(lifecycle, vms)
            reaper = HostController(sync, lifecycle, evictor, lock.fence, grace_s=0.2, tick_s=0.1)
            try:
                async with running(sync.run(), reaper.run()) as tasks:
                    await client.delete(keys.host_reg("h1"))  # the agent is gone
                    await async_wait_until(lambda: evictor.calls >= 2, timeout=20,
                                           message="two fruitless evictions",
                                           seen=lambda: f"{evictor.calls} evictions; {describe_tasks(tasks)}")

                    async def moved() -> bool:
                        return (await vms.get(keep.ref)).status.reason == REASON_DEAD

                    async def seen() -> str:
                        status = (await vms.get(keep.ref)).status
                        return (f"{status.state.name} {status.reason!r} on {status.host!r} after {evictor.calls} "
                                f"evictions; {describe_tasks(tasks)}")

                    await async_wait_until(moved, timeout=20, message="the VM moved off the dead host", seen=seen)
            finally:
                await lease.revoke()

    run(main())


def test_drain_marker_goes_with_maintenance_and_with_the_host(etcd_endpoint: str, root: str) -> None:
    """DrainHost's intent: maintenance and the drain marker in one txn; ending
    maintenance ends the drain; forgetting the host forgets both; listings and
    pages show it (a host now has up to 5 keys)."""
    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client:
            hosts, agent = HostStore(client, keys), AgentStore(client, keys)
            lease = await Lease(client, ttl=30).grant()
            names = [f"h{i}" for i in range(5)]
            await agent.register([HostRegistration(h, "sim", Resources(8, 8192, 100)) for h in names], lease.id)
            for host in names:
                await hosts.drain(host)
                await client.put(keys.host_dead(host), b"")  # every key a host can have
            await hosts.drain("h1")  # idempotent
            record = await hosts.get("h1")
            assert record.drain and record.maintenance and record.draining
            for limit in (1, 2, 3):
                seen, after = [], ""
                while True:
                    page, after, _ = await hosts.page(after=after, limit=limit)
                    assert all(r.draining and r.dead for r in page)
                    seen += [r.host for r in page]
                    if not after:
                        break
                assert seen == names, f"pages of {limit}"

            await hosts.set_maintenance("h1", True)  # already in maintenance: the drain stays
            assert (await hosts.get("h1")).draining
            await hosts.set_maintenance("h1", False)
            record = await hosts.get("h1")
            assert not record.maintenance and not record.drain

            await lease.revoke()  # no heartbeat: h2 may be forgotten, markers and all
            await hosts.delete("h2")
            assert await client.get(keys.host_drain("h2")) is None
            assert await client.get(keys.host_maintenance("h2")) is None

    run(main())


def test_the_controller_empties_drained_hosts_only(etcd_endpoint: str, root: str) -> None:
    """A drained live host: its ALWAYS VMs marked evicting (its agent destroys,
    then queues them), its NEVER VMs deleted, under shard 0's fence; a host only
    in maintenance keeps its VMs. When the agent removed what it destroyed, the
    host is DRAINED."""
    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client:
            vms, sched, lifecycle = VmStore(client, keys), SchedulingStore(client, keys), LifecycleStore(client, keys)
            hosts, agent = HostStore(client, keys), AgentStore(client, keys)
            lease = await Lease(client, ttl=30).grant()
            await agent.register([HostRegistration(h, "sim", Resources(64, 65536, 1000)) for h in ("h1", "h2")],
                                 lease.id)
            keep, never, stays = make_spec("keep"), make_spec("never", RestartPolicy.NEVER), make_spec("stays")
            await bind_all(vms, sched, "h1", [keep, never])
            await bind_all(vms, sched, "h2", [stays])
            lock = ShardLock(client, keys, 0, "sched-a", lease)
            await lock.acquire()
            controller = HostController(HostSync(hosts, HostView()), lifecycle, HostEvictor(lifecycle, vms),
                                        lock.fence, grace_s=60)
            await hosts.drain("h1")
            await hosts.set_maintenance("h2", True)

            again = await controller.step((await hosts.list())[0])

            assert again == set(), "everything left waits for the agent"
            by_id = {b.ref.vm_id: b for b in (await lifecycle.host_bindings("h1")).bound}
            assert by_id["keep"].binding.evicting and by_id["keep"].binding.evict_reason == REASON_DRAINED
            assert by_id["never"].binding.deleting and (await vms.get(never.ref)).state == VmState.DELETING
            assert (await sched.list_queue(keep.shard))[0] == [], "queued while it still runs on h1"
            (h2,) = (await lifecycle.host_bindings("h2")).bound
            assert not h2.binding.evicting and not h2.binding.deleting

            # The agent destroyed both: keep goes back to its queue, never is gone; h1 is DRAINED.
            assert await agent.remove_destroyed("h1", list(by_id.values()))
            assert (await vms.get(keep.ref)).status.reason == REASON_DRAINED
            with pytest.raises(NotFound):
                await vms.get(never.ref)
            record = await hosts.get("h1")
            assert host_state(record) == host_pb2.Host.DRAINED and record.allocation == HostAllocation()
            assert await controller.step([record]) == set()
            await lease.revoke()

    run(main())


class _FirstDrainEvictionsMoveNothing(HostEvictor):
    """The first evictions of a live host mark nothing, as when every mark lost its race."""

    calls = 0

    async def evict(self, host: str, *, dead: bool, fence=None):
        self.calls += 1
        if self.calls <= 2 and not dead:
            return await self._store.host_bindings(host)
        return await super().evict(host, dead=dead, fence=fence)


def test_the_running_controller_drains_and_comes_back_to_what_it_left(etcd_endpoint: str, root: str) -> None:
    """A drain recorded while the controller runs is acted on through HostSync; an
    eviction that marked nothing is tried again on the tick, though no key of the
    host changed."""
    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client:
            vms, sched, lifecycle = VmStore(client, keys), SchedulingStore(client, keys), LifecycleStore(client, keys)
            hosts, agent = HostStore(client, keys), AgentStore(client, keys)
            lease = await Lease(client, ttl=30).grant()
            await agent.register([HostRegistration("h1", "sim", Resources(64, 65536, 1000))], lease.id)
            keep = make_spec("keep")
            await bind_all(vms, sched, "h1", [keep])
            lock = ShardLock(client, keys, 0, "sched-a", lease)
            await lock.acquire()
            sync = HostSync(hosts, HostView())
            evictor = _FirstDrainEvictionsMoveNothing(lifecycle, vms)
            controller = HostController(sync, lifecycle, evictor, lock.fence, grace_s=60, tick_s=0.1)
            try:
                async with running(sync.run(), controller.run()):
                    await sync.ready.wait()
                    await hosts.drain("h1")

                    async def marked() -> bool:
                        return all(b.binding.evicting for b in (await lifecycle.host_bindings("h1")).bound)

                    await async_wait_until(marked, timeout=20, message="the VM marked evicting",
                                           seen=lambda: f"{evictor.calls} evictions")
                    assert evictor.calls >= 3, f"marked after {evictor.calls} evictions"
            finally:
                await lease.revoke()

    run(main())
