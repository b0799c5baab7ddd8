"""All-or-nothing VM sets placed by real ShardSchedulers, in process, on a real etcd:
a set binds every member in one transaction or takes nothing, says why while it
does not fit, loses a race for the last room whole, and fails at its deadline with
its members removed and their quota released.

Sets are written here as the frontend's admission (CreateVms, ALL_OR_NOTHING) leaves
them: every member's spec, status and queue entry with ``vm_set`` and the set's
shard, and the set's record PENDING (``admit_set``)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence

from controlplane.etcd import EtcdClient, Lease, ops
from controlplane.models import (
    ZONE_LABEL,
    Binding,
    HostAllocation,
    HostRegistration,
    Resources,
    Scope,
    VmRef,
    VmSet,
    VmSetRef,
    VmSetState,
    VmSpec,
    VmState,
    VmStatus,
    now_ns,
)
from controlplane.placement.view import HostView
from controlplane.store.hostagent import AgentStore
from controlplane.store.hosts import HostStore
from controlplane.store.keys import Keys
from controlplane.store.ledger import Charge, UsageLedger
from controlplane.store.scheduling import SchedulingStore
from controlplane.store.shards import ShardLock
from controlplane.store.tenancy import TenancyStore
from controlplane.store.vms import VmStore
from controlplane.store.zones import ZoneStore
from controlplane.tenancy import Usage
from scheduler.hostsync import HostSync
from scheduler.shard import ShardScheduler
from scheduler.zonesync import ZoneSync
from tests.conftest import async_wait_until, describe_tasks, make_projects, running

SMALL = Resources(1, 1024, 10)
ROOMY = Resources(16, 65536, 1000)


def member(set_id: str, vm_id: str, *, shard: int, group: str = "", scope: Scope = Scope.HOST,
           resources: Resources = SMALL) -> VmSpec:
    return VmSpec(VmRef("acme", "web", vm_id), uuid.uuid4().hex, "small", "ubuntu", resources,
                  create_time_ns=now_ns(), shard=shard, anti_affinity_group=group, anti_affinity_scope=scope,
                  vm_set=set_id)


async def admit_set(client: EtcdClient, keys: Keys, set_id: str, specs: Sequence[VmSpec], *, shard: int,
                    deadline_ns: int = 0) -> VmSet:
    """What the admission of an all-or-nothing set writes, in ONE txn with the quota of
    all its members (as CreateVms does; the frontend owns the real one): the set's
    record PENDING, and each member's spec, status PENDING and queue entry, with
    spec.vm_set and spec.shard the set's."""
    vm_set = VmSet(VmSetRef("acme", "web", set_id), uuid.uuid4().hex, tuple(s.ref.vm_id for s in specs), shard,
                   create_time_ns=now_ns(), deadline_ns=deadline_ns)
    record_key = keys.vm_set("acme", "web", set_id)
    compares, writes = [ops.absent(record_key)], [ops.put(record_key, vm_set.to_bytes())]
    for spec in specs:
        assert spec.vm_set == set_id and spec.shard == shard
        status = VmStatus(VmState.PENDING, update_time_ns=spec.create_time_ns, accepted_time_ns=spec.create_time_ns)
        compares.append(ops.absent(keys.vm_spec(spec.ref)))
        writes += [ops.put(keys.vm_spec(spec.ref), spec.to_bytes()),
                   ops.put(keys.vm_status(spec.ref), status.to_bytes()),
                   ops.put(keys.queue(shard, spec.ref), spec.to_bytes())]
    usage = sum((Usage.of_vm(spec.resources) for spec in specs), Usage())
    await UsageLedger(client, keys).apply("acme", "web", Charge(usage, compares, writes))
    return vm_set


async def read_set(client: EtcdClient, keys: Keys, set_id: str) -> tuple[VmSet, int]:
    kv = await client.get(keys.vm_set("acme", "web", set_id))
    assert kv is not None
    return VmSet.from_bytes(VmSetRef("acme", "web", set_id), kv.value), kv.mod_revision


async def bindings_of(client: EtcdClient, keys: Keys) -> dict[str, tuple[str, int]]:
    """vm id -> (host, the binding's mod_revision)."""
    kvs, _revision = await client.range_prefix(keys.bindings_prefix())
    return {(b := Binding.from_bytes(kv.value)).spec.ref.vm_id: (b.host, kv.mod_revision) for kv in kvs}


async def allocations(client: EtcdClient, keys: Keys, hosts: Sequence[str]) -> dict[str, HostAllocation]:
    result = await client.txn([], [ops.get(keys.host_alloc(h)) for h in hosts])
    return {h: HostAllocation.from_bytes(result.kvs(i)[0].value) if result.kvs(i) else HostAllocation()
            for i, h in enumerate(hosts)}


def host(host_id: str, zone: str = "", capacity: Resources = ROOMY) -> HostRegistration:
    return HostRegistration(host_id, "sim", capacity, labels={ZONE_LABEL: zone} if zone else {})


class Shard:
    """One scheduler shard as a process runs it: its own host and zone views and lock."""

    def __init__(self, client: EtcdClient, keys: Keys, lease: Lease, shard: int, store: SchedulingStore | None = None):
        self.hosts = HostSync(HostStore(client, keys), HostView())
        self.zones = ZoneSync(ZoneStore(client, keys))
        self.lock = ShardLock(client, keys, shard, f"test-{shard}", lease)
        self.scheduler = ShardScheduler(shard, store or SchedulingStore(client, keys), self.hosts, self.lock,
                                        zones=self.zones, seed=shard)

    async def acquire(self) -> None:
        await self.lock.acquire()

    def coros(self) -> list:
        return [self.hosts.run(), self.zones.run(), self.scheduler.run()]


def test_a_zone_anti_affine_set_waits_whole_then_binds_in_one_transaction(etcd_endpoint: str, root: str) -> None:
    """3 members, each in its own zone, on 2 zones: nothing is bound, nothing is taken,
    the record and the members say why; a third zone appears: all three bind in one
    transaction (one mod_revision on every binding and on the record, PLACED)."""
    make_projects(etcd_endpoint, root, "acme", "web")

    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client, Lease(client, 10) as lease:
            agents = AgentStore(client, keys)
            await agents.register([host("host-a", "zone-a"), host("host-b", "zone-b")], lease.id)
            specs = [member("cp", f"cp-{i}", shard=0, group="control", scope=Scope.ZONE) for i in range(3)]
            await admit_set(client, keys, "cp", specs, shard=0)
            shard = Shard(client, keys, lease, 0)
            await shard.acquire()
            async with running(*shard.coros()) as tasks:
                async def told() -> bool:
                    vm_set, _ = await read_set(client, keys, "cp")
                    return vm_set.reason == "SetDoesNotFit"

                async def seen() -> str:
                    vm_set, _ = await read_set(client, keys, "cp")
                    return (f"{vm_set.state.name} {vm_set.reason!r} {vm_set.message!r}; "
                            f"bound {await bindings_of(client, keys)}; {describe_tasks(tasks)}")

                await async_wait_until(told, timeout=30, message="the set's shortfall on its record", seen=seen)
                vm_set, _ = await read_set(client, keys, "cp")
                assert vm_set.state == VmSetState.PENDING
                assert "1 of 3 members fits no host" in vm_set.message and "ZoneAntiAffinity" in vm_set.message
                assert await bindings_of(client, keys) == {}
                assert await allocations(client, keys, ["host-a", "host-b"]) == {
                    "host-a": HostAllocation(), "host-b": HostAllocation()}
                assert (await ZoneStore(client, keys).snapshot())[0] == {}
                vms = VmStore(client, keys)

                async def members_told() -> bool:
                    statuses = [(await vms.get(s.ref)).status for s in specs]
                    return all(s.state == VmState.PENDING and s.reason == "SetDoesNotFit" for s in statuses)

                await async_wait_until(members_told, timeout=30, message="every member says why", seen=seen)

                await agents.register([host("host-c", "zone-c")], lease.id)

                async def placed() -> bool:
                    return (await read_set(client, keys, "cp"))[0].state == VmSetState.PLACED

                await async_wait_until(placed, timeout=30, message="the set placed once a third zone came",
                                       seen=seen)
            bound = await bindings_of(client, keys)
            assert sorted(bound) == ["cp-0", "cp-1", "cp-2"]
            assert sorted(h for h, _ in bound.values()) == ["host-a", "host-b", "host-c"]
            vm_set, record_revision = await read_set(client, keys, "cp")
            assert {rev for _, rev in bound.values()} == {record_revision}, "one transaction for the whole set"
            assert not vm_set.reason
            allocated = await allocations(client, keys, ["host-a", "host-b", "host-c"])
            assert all(a.vm_count == 1 for a in allocated.values())
            counts, _ = await ZoneStore(client, keys).snapshot()
            assert {zone: c.vms for (zone, _g), c in counts.items()} == {"zone-a": 1, "zone-b": 1, "zone-c": 1}

    asyncio.run(asyncio.wait_for(main(), timeout=120))


def test_two_sets_racing_for_the_last_room_one_wins_whole(etcd_endpoint: str, root: str) -> None:
    """Three hosts with room for one VM each; two host-anti-affine sets of two, in two
    shards of two schedulers with their own views, placed at once: one set binds
    whole, the other takes nothing and says why."""
    make_projects(etcd_endpoint, root, "acme", "web")

    async def main() -> None:
        keys = Keys(root)
        names = ["host-1", "host-2", "host-3"]
        async with EtcdClient(etcd_endpoint) as client, Lease(client, 10) as lease:
            await AgentStore(client, keys).register([host(h, capacity=SMALL) for h in names], lease.id)
            sets = {"red": 0, "blue": 1}
            for set_id, shard_no in sets.items():
                await admit_set(client, keys, set_id, [member(set_id, f"{set_id}-{i}", shard=shard_no, group=set_id)
                                                       for i in range(2)], shard=shard_no)
            shards = [Shard(client, keys, lease, shard_no) for shard_no in sets.values()]
            for shard in shards:
                await shard.acquire()
            vms = VmStore(client, keys)

            async def reasons() -> dict[str, str]:
                return {f"{s}-{i}": (await vms.get(VmRef("acme", "web", f"{s}-{i}"))).status.reason
                        for s in sets for i in range(2)}

            async with running(*(c for shard in shards for c in shard.coros())) as tasks:
                async def settled() -> bool:
                    records = [(await read_set(client, keys, s))[0] for s in sets]
                    if sorted((r.state, r.reason) for r in records) != [
                            (VmSetState.PENDING, "SetDoesNotFit"), (VmSetState.PLACED, "")]:
                        return False
                    # The members' statuses are written after the set's record.
                    (loser,) = [r.ref.set_id for r in records if r.state == VmSetState.PENDING]
                    reason = await reasons()
                    return all(reason[f"{loser}-{i}"] == "SetDoesNotFit" for i in range(2))

                async def seen() -> str:
                    records = [(await read_set(client, keys, s))[0] for s in sets]
                    return (f"{[(r.ref.set_id, r.state.name, r.reason, r.message) for r in records]}; "
                            f"members' reasons {await reasons()}; "
                            f"bound {await bindings_of(client, keys)}; {describe_tasks(tasks)}")

                await async_wait_until(settled, timeout=30, message="one set placed, the other waiting", seen=seen)
            records = {s: (await read_set(client, keys, s)) for s in sets}
            (winner,) = [s for s, (r, _) in records.items() if r.state == VmSetState.PLACED]
            (loser,) = set(sets) - {winner}
            bound = await bindings_of(client, keys)
            assert sorted(bound) == [f"{winner}-0", f"{winner}-1"], "the winner whole, nothing of the loser"
            assert len({h for h, _ in bound.values()}) == 2
            assert {rev for _, rev in bound.values()} == {records[winner][1]}
            allocated = await allocations(client, keys, names)
            assert sum(a.vm_count for a in allocated.values()) == 2
            for i in range(2):
                record = await vms.get(VmRef("acme", "web", f"{loser}-{i}"))
                assert record.status.state == VmState.PENDING and record.status.reason == "SetDoesNotFit"
                assert await client.get(keys.queue(sets[loser], record.ref)) is not None

    asyncio.run(asyncio.wait_for(main(), timeout=120))


def test_a_set_that_never_fits_fails_at_its_deadline_with_its_quota_back(etcd_endpoint: str, root: str) -> None:
    make_projects(etcd_endpoint, root, "acme", "web")

    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client, Lease(client, 10) as lease:
            await AgentStore(client, keys).register([host("host-1", capacity=SMALL)], lease.id)
            tenancy = TenancyStore(client, keys)
            before = await tenancy.usage("acme", "web")
            specs = [member("late", f"late-{i}", shard=0, group="late") for i in range(2)]
            await admit_set(client, keys, "late", specs, shard=0, deadline_ns=now_ns() + 3_000_000_000)
            assert await tenancy.usage("acme", "web") == before + Usage.of_vm(SMALL, 2)
            shard = Shard(client, keys, lease, 0)
            await shard.acquire()
            async with running(*shard.coros()) as tasks:
                async def failed() -> bool:
                    return (await read_set(client, keys, "late"))[0].state == VmSetState.FAILED

                async def seen() -> str:
                    vm_set, _ = await read_set(client, keys, "late")
                    return f"{vm_set.state.name} {vm_set.reason!r} {vm_set.message!r}; {describe_tasks(tasks)}"

                # Told first (one member fits, the other does not: anti-affinity on one host).
                await async_wait_until(lambda: _reason(client, keys, "late", "SetDoesNotFit"), timeout=30,
                                       message="the shortfall before the deadline", seen=seen)
                assert await bindings_of(client, keys) == {}
                await async_wait_until(failed, timeout=30, message="the set failed at its deadline", seen=seen)
            vm_set, _ = await read_set(client, keys, "late")
            assert vm_set.reason == "DeadlineExceeded" and "2 pending member(s)" in vm_set.message
            # The last shortfall is kept in the failure's message (the API's VM_SET_FAILED says it).
            assert "; last shortfall: " in vm_set.message and "AntiAffinity" in vm_set.message, vm_set.message
            for spec in specs:
                assert await client.get(keys.vm_spec(spec.ref)) is None
                assert await client.get(keys.vm_status(spec.ref)) is None
                assert await client.get(keys.queue(0, spec.ref)) is None
            assert await tenancy.usage("acme", "web") == before
            assert await bindings_of(client, keys) == {}

    asyncio.run(asyncio.wait_for(main(), timeout=120))


async def _reason(client: EtcdClient, keys: Keys, set_id: str, reason: str) -> bool:
    return (await read_set(client, keys, set_id))[0].reason == reason


def test_a_set_whose_bind_exceeds_max_txn_ops_fails_with_the_reason(etcd_endpoint: str, root: str) -> None:
    """32 host-anti-affine members over 32 hosts: their one bind txn would take more
    ops than etcd allows (measured on the built txn): the set fails, taking nothing."""
    make_projects(etcd_endpoint, root, "acme", "web")

    async def main() -> None:
        keys = Keys(root)
        names = [f"host-{i:02d}" for i in range(32)]
        async with EtcdClient(etcd_endpoint) as client, Lease(client, 10) as lease:
            await AgentStore(client, keys).register([host(h) for h in names], lease.id)
            specs = [member("big", f"big-{i:02d}", shard=0, group="big") for i in range(32)]
            await admit_set(client, keys, "big", specs, shard=0)
            shard = Shard(client, keys, lease, 0)
            await shard.acquire()
            async with running(*shard.coros()) as tasks:
                async def seen() -> str:
                    vm_set, _ = await read_set(client, keys, "big")
                    return f"{vm_set.state.name} {vm_set.reason!r} {vm_set.message!r}; {describe_tasks(tasks)}"

                await async_wait_until(lambda: _reason(client, keys, "big", "SetTooLarge"), timeout=30,
                                       message="the set failed as too large", seen=seen)
            vm_set, _ = await read_set(client, keys, "big")
            assert vm_set.state == VmSetState.FAILED and "--max-txn-ops" in vm_set.message
            assert await bindings_of(client, keys) == {}
            assert all(a == HostAllocation() for a in (await allocations(client, keys, names)).values())
            assert await client.get(keys.vm_spec(specs[0].ref)) is None
            assert await TenancyStore(client, keys).usage("acme", "web") == Usage()

    asyncio.run(asyncio.wait_for(main(), timeout=120))
