"""A plan's hold on real etcd (controlplane/store/plans.py, fleet.py): the room
appears in the planned hosts' allocations and the hold's key lives under a lease of
its own; the lease's end removes the key, and with it the room (the entry left in an
allocation counts for nothing, and the next hold there drops it comparing the key
absent); a racing change of a planned host's allocation (or of a relied-on zone
count) makes the hold fail whole, its lease revoked."""

from __future__ import annotations

import asyncio

from controlplane.etcd import EtcdClient, Lease
from controlplane.models import ZONE_LABEL, HeldRoom, Hold, HostAllocation, HostRegistration, PlannedVm, Resources
from controlplane.store.fleet import Fleet, FleetStore
from controlplane.store.hostagent import AgentStore
from controlplane.store.keys import Keys
from controlplane.store.plans import HeldHost, HoldStore
from controlplane.store.zones import ZoneCount, encode
from tests.conftest import async_wait_until

CAP = Resources(8, 16384, 200)
VM = Resources(2, 4096, 20)
ROOM = HeldRoom(VM, 1, {"acme/web/db": 1})


def _host(name: str, zone: str) -> HostRegistration:
    return HostRegistration(host=name, driver="sim", capacity=CAP, labels={ZONE_LABEL: zone})


def _hold(plan: str, hosts: list[str], ttl_s: int = 30) -> Hold:
    return Hold("acme", "web", plan, tuple(PlannedVm(f"vm-{h}", h, "small", VM) for h in hosts), ttl_s)


def _held(fleet: Fleet, hosts: list[str]) -> list[HeldHost]:
    return [HeldHost(h, fleet.hosts[h].allocation, fleet.hosts[h].alloc_revision, ROOM) for h in hosts]


async def _allocation(client: EtcdClient, keys: Keys, host: str) -> HostAllocation:
    kv = await client.get(keys.host_alloc(host))
    return HostAllocation.from_bytes(kv.value) if kv else HostAllocation()


def test_a_hold_takes_room_under_its_own_lease_until_the_lease_ends(etcd_endpoint: str, root: str) -> None:
    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client, Lease(client, 30) as heartbeat:
            await AgentStore(client, keys).register([_host("h1", "z1"), _host("h2", "z2")], heartbeat.id)
            fleets, holds = FleetStore(client, keys), HoldStore(client, keys)
            fleet = await fleets.read()
            assert fleet.plans == {}
            result = await holds.hold(_hold("plan-a", ["h1", "h2"]), _held(fleet, ["h1", "h2"]), ttl_s=3,
                                      live=fleet.plans)
            assert result.committed and result.lease
            for h in ("h1", "h2"):
                allocation = await _allocation(client, keys, h)
                assert allocation.holds == {"plan-a": ROOM}
                assert (allocation.resources, allocation.vm_count) == (Resources(), 0), "held, not bound"
            kv = await client.get(keys.hold("plan-a"))
            assert kv is not None and kv.lease == result.lease
            assert Hold.from_bytes(kv.value).vms[0].host == "h1"
            assert 0 < await client.time_to_live(result.lease) <= 3

            fleet = await fleets.read()
            assert set(fleet.plans) == {"plan-a"}
            view, _counts = fleet.view()
            h1 = view.get("h1")
            assert h1 is not None and h1.allocated == VM and h1.vm_count == 1
            assert dict(h1.groups) == {"acme/web/db": 1}

            async def gone() -> bool:
                return await client.get(keys.hold("plan-a")) is None

            async def seen() -> str:
                return f"lease ttl {await client.time_to_live(result.lease)}"

            await async_wait_until(gone, timeout=20, message="the hold's key gone with its lease", seen=seen)
            fleet = await fleets.read()
            assert fleet.plans == {}
            assert (await _allocation(client, keys, "h1")).holds == {"plan-a": ROOM}, "left, stale"
            view, _counts = fleet.view()
            h1 = view.get("h1")
            assert h1 is not None and h1.allocated == Resources() and h1.vm_count == 0 and not h1.groups

            # The next hold there drops the stale entry, comparing its key absent.
            again = await holds.hold(_hold("plan-b", ["h1"]), _held(fleet, ["h1"]), ttl_s=30, live=fleet.plans)
            assert again.committed
            assert (await _allocation(client, keys, "h1")).holds == {"plan-b": ROOM}
            await client.revoke(again.lease)

    asyncio.run(asyncio.wait_for(main(), timeout=60))


def test_a_racing_allocation_change_fails_the_hold_whole(etcd_endpoint: str, root: str) -> None:
    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client, Lease(client, 30) as heartbeat:
            await AgentStore(client, keys).register([_host("h1", "z1"), _host("h2", "z2")], heartbeat.id)
            fleets, holds = FleetStore(client, keys), HoldStore(client, keys)
            fleet = await fleets.read()
            # Another writer binds on h2 after the plan read the fleet.
            bound = HostAllocation(VM, 1, {"acme/web/other": 1})
            await client.put(keys.host_alloc("h2"), bound.to_bytes())
            result = await holds.hold(_hold("plan-x", ["h1", "h2"]), _held(fleet, ["h1", "h2"]), ttl_s=30,
                                      live=fleet.plans)
            assert not result.committed
            assert await _allocation(client, keys, "h1") == HostAllocation(), "nothing held anywhere"
            assert await _allocation(client, keys, "h2") == bound
            assert await client.get(keys.hold("plan-x")) is None

            # A zone count the plan relied on changes: the hold fails too.
            fleet = await fleets.read()
            zg = ("z1", "acme/web/cp")
            await client.put(keys.zone_group(*zg), encode(1))
            result = await holds.hold(_hold("plan-y", ["h1"]), _held(fleet, ["h1"]), ttl_s=30, live=fleet.plans,
                                      zone_counts={zg: fleet.zones.get(zg, ZoneCount())})
            assert not result.committed
            assert await _allocation(client, keys, "h1") == HostAllocation()
            assert await client.get(keys.hold("plan-y")) is None
            # Read again, it holds.
            fleet = await fleets.read()
            assert fleet.zones[zg].vms == 1
            result = await holds.hold(_hold("plan-y", ["h1"]), _held(fleet, ["h1"]), ttl_s=30, live=fleet.plans,
                                      zone_counts={zg: fleet.zones[zg]})
            assert result.committed
            assert await holds.release("plan-y")
            assert await client.get(keys.hold("plan-y")) is None

    asyncio.run(asyncio.wait_for(main(), timeout=60))
