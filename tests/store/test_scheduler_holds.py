"""Plans' holds honoured by real ShardSchedulers, in process, on a real etcd: room a
plan holds is taken by no other placement while its key lives and is free once its
lease expired (the next bind on the host drops the stale hold); a set created with
the plan is bound onto the planned hosts in one txn that also consumes the hold.

Holds are written here as PlanVms leaves them (plan15 owns the real writer): the
hold's key under its lease, and ``holds[plan]`` in each planned host's allocation, in
one txn compared by those allocations (``write_hold``)."""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace

import pytest

from controlplane.etcd import EtcdClient, Lease, ops
from controlplane.models import (
    HeldRoom,
    Hold,
    HostAllocation,
    PlannedVm,
    Resources,
    VmRef,
    VmSetState,
    VmSpec,
    VmState,
    now_ns,
)
from controlplane.placement import HostView
from controlplane.store.hostagent import AgentStore
from controlplane.store.hosts import HostStore
from controlplane.store.keys import Keys
from controlplane.store.vms import VmStore
from scheduler import metrics
from scheduler.hostsync import HostSync
from tests.conftest import async_wait_until, describe_tasks, make_projects, running
from tests.store.test_scheduler_sets import SMALL, Shard, admit_set, allocations, bindings_of, host, member, read_set


async def write_hold(client: EtcdClient, keys: Keys, plan: str, vms: Sequence[tuple[str, str, Resources, str]],
                     lease_id: int) -> int:
    """Hold room for ``vms`` ((vm id, host, resources, host group)) of acme/web as PlanVms
    does: holds/{plan} under ``lease_id`` and each host's allocation with holds[plan],
    in one txn. Returns its revision."""
    rooms: dict[str, HeldRoom] = defaultdict(HeldRoom)
    for _vm, on, resources, group in vms:
        room = rooms[on]
        groups = dict(room.groups)
        if group:
            groups[group] = groups.get(group, 0) + 1
        rooms[on] = HeldRoom(room.resources + resources, room.vm_count + 1, groups)
    hold = Hold("acme", "web", plan, tuple(PlannedVm(vm, on, "small", resources) for vm, on, resources, _g in vms),
                now_ns() + 60 * 10**9)
    current = await allocations(client, keys, list(rooms))
    kvs = {h: await client.get(keys.host_alloc(h)) for h in rooms}
    compares = [ops.absent(keys.hold(plan))]
    writes = [ops.put(keys.hold(plan), hold.to_bytes(), lease=lease_id)]
    for on, room in rooms.items():
        kv = kvs[on]
        compares.append(ops.mod_revision_is(keys.host_alloc(on), kv.mod_revision if kv else 0))
        allocation = current[on]
        writes.append(ops.put(keys.host_alloc(on), HostAllocation(
            allocation.resources, allocation.vm_count, allocation.groups,
            {**allocation.holds, plan: room}).to_bytes()))
    result = await client.txn(compares, writes)
    assert result.succeeded
    return result.revision


def let_expire(lease: Lease) -> None:
    """Stop keeping ``lease`` alive without revoking it: etcd expires it after its TTL."""
    assert lease._task is not None
    lease._task.cancel()


def test_held_room_is_taken_by_no_other_vm_until_the_hold_expires(etcd_endpoint: str, root: str) -> None:
    """A host with room for two small VMs, one of them held by a plan: a VM of two
    smalls fits only there and waits, saying so, while the hold lasts; once the hold's
    lease expired (the scheduler wakes it, no other change) it is bound there, and
    that bind drops the stale hold from the allocation."""
    make_projects(etcd_endpoint, root, "acme", "web")

    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client, Lease(client, 10) as lease:
            await AgentStore(client, keys).register([host("host-a", capacity=SMALL + SMALL)], lease.id)
            hold_lease = await Lease(client, 2).grant()
            await write_hold(client, keys, "p-1", [("held-vm", "host-a", SMALL, "")], hold_lease.id)
            shard = Shard(client, keys, lease, 0)
            await shard.acquire()
            vms = VmStore(client, keys)
            big = VmSpec(VmRef("acme", "web", "big"), uuid.uuid4().hex, "medium", "ubuntu", SMALL + SMALL,
                         create_time_ns=now_ns(), shard=0)
            async with running(*shard.coros()) as tasks:
                await vms.create(big)

                async def seen() -> str:
                    record = await vms.get(big.ref)
                    return (f"{record.status.state.name} {record.status.reason!r} {record.status.message!r}; "
                            f"hold key {await client.get(keys.hold('p-1')) is not None}; "
                            f"allocation {(await allocations(client, keys, ['host-a']))['host-a']}; "
                            f"{describe_tasks(tasks)}")

                async def waits() -> bool:
                    return (await vms.get(big.ref)).status.reason == "NoHostFits"

                await async_wait_until(waits, timeout=30, message="the VM waits for the held room", seen=seen)
                status = (await vms.get(big.ref)).status
                assert status.state == VmState.PENDING and "InsufficientMemory" in status.message
                assert await client.get(keys.hold("p-1")) is not None, "the hold lasted while the VM was turned away"
                assert await bindings_of(client, keys) == {}
                assert shard.hosts.plans.keys() == {"p-1"}
                assert metrics.HOLDS.collect()[0].samples[0].value == 1

                let_expire(hold_lease)

                async def bound() -> bool:
                    return "big" in await bindings_of(client, keys)

                await async_wait_until(bound, timeout=30, message="the VM bound once the hold expired", seen=seen)
            assert await client.get(keys.hold("p-1")) is None
            assert (await bindings_of(client, keys))["big"][0] == "host-a"
            allocation = (await allocations(client, keys, ["host-a"]))["host-a"]
            assert allocation == HostAllocation(SMALL + SMALL, 1), "the bind dropped the stale hold"

    asyncio.run(asyncio.wait_for(main(), timeout=120))


def test_a_set_made_with_a_plan_binds_onto_its_planned_hosts_and_consumes_the_hold_in_one_txn(
        etcd_endpoint: str, root: str) -> None:
    """Two small hosts fully held by a plan for two anti-affine members, and a roomy
    host that placement would otherwise choose: the plan's set binds each member on
    the host the plan recorded (the held room free to them, their own held group no
    bar), and in that one revision the hold's key and holds[plan] on both hosts are
    gone, each allocation exactly its member."""
    make_projects(etcd_endpoint, root, "acme", "web")

    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client, Lease(client, 10) as lease, Lease(client, 60) as held:
            agents = AgentStore(client, keys)
            await agents.register([host("host-1", capacity=SMALL), host("host-2", capacity=SMALL)], lease.id)
            await write_hold(client, keys, "p-2", [("m-0", "host-2", SMALL, "acme/web/cp"),
                                                   ("m-1", "host-1", SMALL, "acme/web/cp")], held.id)
            await agents.register([host("host-3")], lease.id)  # roomy: not planned
            shard = Shard(client, keys, lease, 0)
            await shard.acquire()
            async with running(*shard.coros()) as tasks:
                async def seen() -> str:
                    vm_set = (await read_set(client, keys, "cp"))[0] if await client.get(
                        keys.vm_set("acme", "web", "cp")) else None
                    return (f"set {vm_set}; bound {await bindings_of(client, keys)}; "
                            f"hold {await client.get(keys.hold('p-2')) is not None}; {describe_tasks(tasks)}")

                specs = [member("cp", f"m-{i}", shard=0, group="cp") for i in range(2)]
                specs = [replace(s, plan="p-2") for s in specs]
                assert all(s.host_group == "acme/web/cp" for s in specs)
                await admit_set(client, keys, "cp", specs, shard=0)

                async def placed() -> bool:
                    return (await read_set(client, keys, "cp"))[0].state == VmSetState.PLACED

                await async_wait_until(placed, timeout=30, message="the plan's set placed", seen=seen)
                vm_set, record_revision = await read_set(client, keys, "cp")
                bound = await bindings_of(client, keys)
                assert {vm: on for vm, (on, _rev) in bound.items()} == {"m-0": "host-2", "m-1": "host-1"}
                assert {rev for _on, rev in bound.values()} == {record_revision}, "one txn for the whole set"
                assert await client.get(keys.hold("p-2")) is None
                for name in ("host-1", "host-2"):
                    kv = await client.get(keys.host_alloc(name))
                    assert kv is not None and kv.mod_revision == record_revision
                    assert HostAllocation.from_bytes(kv.value) == HostAllocation(SMALL, 1, {"acme/web/cp": 1})

    asyncio.run(asyncio.wait_for(main(), timeout=120))


def test_a_plans_set_waits_while_its_planned_host_cannot_take_it(etcd_endpoint: str, root: str) -> None:
    """A plan whose host went into maintenance: the set says why (on the plan's hosts)
    and takes nothing; once the hold is gone, it is placed as any set, elsewhere."""
    make_projects(etcd_endpoint, root, "acme", "web")

    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client, Lease(client, 10) as lease:
            agents = AgentStore(client, keys)
            await agents.register([host("host-1", capacity=SMALL), host("host-2")], lease.id)
            hold_lease = await Lease(client, 2).grant()
            await write_hold(client, keys, "p-3", [("m-0", "host-1", SMALL, "")], hold_lease.id)
            await client.put(keys.host_maintenance("host-1"), b"")
            shard = Shard(client, keys, lease, 0)
            await shard.acquire()
            spec = member("solo", "m-0", shard=0)
            spec = replace(spec, plan="p-3")
            async with running(*shard.coros()) as tasks:
                await admit_set(client, keys, "solo", [spec], shard=0)

                async def seen() -> str:
                    return f"{(await read_set(client, keys, 'solo'))[0]}; {describe_tasks(tasks)}"

                async def told() -> bool:
                    return (await read_set(client, keys, "solo"))[0].reason == "SetDoesNotFit"

                await async_wait_until(told, timeout=30, message="the set says its planned host fits not", seen=seen)
                message = (await read_set(client, keys, "solo"))[0].message
                assert "plan p-3" in message and "HostInMaintenance" in message
                assert await bindings_of(client, keys) == {}
                let_expire(hold_lease)

                async def placed() -> bool:
                    return (await read_set(client, keys, "solo"))[0].state == VmSetState.PLACED

                await async_wait_until(placed, timeout=30, message="placed as any set once the hold ended",
                                       seen=seen)
            assert (await bindings_of(client, keys))["m-0"][0] == "host-2"

    asyncio.run(asyncio.wait_for(main(), timeout=120))


@pytest.mark.parametrize("out", ["maintenance", "dead"])
def test_a_plans_set_binds_and_gives_back_the_room_held_on_a_planned_host_gone_out_of_placement(
        etcd_endpoint: str, root: str, out: str) -> None:
    """A plan for two members on two hosts; one member deleted, and its planned host
    then put in maintenance (or declared dead): the set still binds its other member
    (the host left without members only gives its held room back, which a host out of
    placement must not refuse), and that host's allocation drops holds[plan]."""
    make_projects(etcd_endpoint, root, "acme", "web")

    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client, Lease(client, 10) as lease, Lease(client, 60) as held:
            agents = AgentStore(client, keys)
            await agents.register([host("host-1", capacity=SMALL), host("host-2", capacity=SMALL)], lease.id)
            await write_hold(client, keys, "p-4", [("m-0", "host-1", SMALL, ""), ("m-1", "host-2", SMALL, "")],
                             held.id)
            specs = [replace(member("pair", f"m-{i}", shard=0), plan="p-4") for i in range(2)]
            await admit_set(client, keys, "pair", specs, shard=0)
            vms = VmStore(client, keys)
            assert (await vms.request_delete(specs[1].ref)).removed
            await client.put(keys.host_maintenance("host-2") if out == "maintenance" else keys.host_dead("host-2"),
                             b"")
            shard = Shard(client, keys, lease, 0)
            await shard.acquire()
            conflicts = metrics.BIND_CONFLICTS.collect()[0].samples[0].value
            async with running(*shard.coros()) as tasks:
                async def seen() -> str:
                    return (f"{(await read_set(client, keys, 'pair'))[0]}; bound {await bindings_of(client, keys)}; "
                            f"allocations {await allocations(client, keys, ['host-1', 'host-2'])}; "
                            f"{describe_tasks(tasks)}")

                async def placed() -> bool:
                    return (await read_set(client, keys, "pair"))[0].state == VmSetState.PLACED

                await async_wait_until(placed, timeout=30, message="the plan's set placed", seen=seen)
            _set, record_revision = await read_set(client, keys, "pair")
            assert await bindings_of(client, keys) == {"m-0": ("host-1", record_revision)}
            assert await client.get(keys.hold("p-4")) is None
            assert await allocations(client, keys, ["host-1", "host-2"]) == {
                "host-1": HostAllocation(SMALL, 1), "host-2": HostAllocation()}, "the held room was given back"
            kv = await client.get(keys.host_alloc("host-2"))
            assert kv is not None and kv.mod_revision == record_revision, "in the set's one txn"
            assert metrics.BIND_CONFLICTS.collect()[0].samples[0].value == conflicts, "no bind lost a race"

    asyncio.run(asyncio.wait_for(main(), timeout=120))


def test_the_host_view_never_sees_an_allocation_holding_room_before_its_plan_is_live(
        etcd_endpoint: str, root: str) -> None:
    """A scheduler's host view (one watch of holds and hosts) while 20 plans, each
    written as PlanVms does (its hold's key and the allocation in one txn), hold room
    on a host: whenever the view takes an allocation in, every plan it holds room for
    is already live and its room counted as taken, never free for a moment."""
    make_projects(etcd_endpoint, root, "acme", "web")

    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client, Lease(client, 10) as lease, Lease(client, 60) as held:
            await AgentStore(client, keys).register([host("host-a")], lease.id)
            sync = HostSync(HostStore(client, keys), HostView())
            missed: list[str] = []
            taken: list[int] = []

            def check(hosts: list[str] | None) -> None:
                stored = sync.allocation("host-a")
                snapshot = sync.view.committed("host-a")
                if stored is None or snapshot is None:
                    return
                unknown = [plan for plan in stored[0].holds if plan not in sync.plans]
                if unknown or snapshot.vm_count != len(stored[0].holds):
                    missed.append(f"revision {stored[1]}: holds {sorted(stored[0].holds)}, live {sorted(sync.plans)}, "
                                  f"counted {snapshot.vm_count}")
                taken.append(snapshot.vm_count)

            sync.on_records.append(check)
            async with running(sync.run()) as tasks:
                await async_wait_until(sync.ready.is_set, timeout=10, message="listed",
                                       seen=lambda: describe_tasks(tasks))
                for i in range(20):
                    await write_hold(client, keys, f"p-{i}", [(f"vm-{i}", "host-a", SMALL, "")], held.id)
                await async_wait_until(lambda: taken and taken[-1] == 20, timeout=30,
                                       message="all 20 holds counted", seen=lambda: f"{taken}; {missed}")
            assert missed == [], missed
            assert sync.plans.keys() == {f"p-{i}" for i in range(20)}

    asyncio.run(asyncio.wait_for(main(), timeout=60))
