"""Zone anti-affinity, host/zone affinity and image locality: table-driven and
Hypothesis tests of the pure filters, scorer and ZoneCounts; the zone group counts
in etcd (bind compares them, removals and moves decrement them); and real processes
(2 schedulers, 4 shards, hosts in 3 zones) creating one zone-anti-affine group at once."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.api.errors import ApiError
from controlplane.etcd import EtcdClient
from controlplane.models import ZONE_LABEL, Binding, HostAllocation, Resources, Scope, VmRef, VmSpec, now_ns
from controlplane.placement import (
    DEFAULT_FILTERS,
    HostSnapshot,
    HostView,
    PlacementRequest,
    Verdict,
    ZoneCounts,
    host_affinity,
    image_locality,
    place,
    policy,
    spread,
    zone_affinity,
    zone_anti_affinity,
)
from controlplane.store.hostagent import AgentStore
from controlplane.store.keys import Keys, shard_of
from controlplane.store.lifecycle import LifecycleStore
from controlplane.store.scheduling import HostBind, SchedulingStore
from controlplane.store.zones import ZoneCount, ZoneStore
from quanta.local import LocalSystem
from scheduler.simulate import queue_specs, seed_hosts
from tests.conftest import describe_vms, seen_in, wait_until

PROPS = settings(max_examples=150, deadline=None)
CAP = Resources(16, 65536, 1000)
SMALL = Resources(1, 1024, 10)
FITS = Verdict(True)
NONE = Resources()


def host(host_id: str = "h", *, zone: str = "", groups: dict | None = None, labels: dict | None = None,
         allocated: Resources = NONE) -> HostSnapshot:
    all_labels = dict(labels or {})
    if zone:
        all_labels[ZONE_LABEL] = zone
    return HostSnapshot(host_id, True, CAP, allocated, labels=all_labels, groups=groups or {})


def req(*, spread_zones: bool = False, avoid: frozenset = frozenset(), affinity: str = "",
        affinity_zones: frozenset | None = None, image: str = "") -> PlacementRequest:
    return PlacementRequest("k", "u", SMALL, anti_affinity_group="db" if spread_zones else "",
                            zone_spread=spread_zones, avoid_zones=avoid, host_affinity_group=affinity,
                            affinity_zones=affinity_zones, image=image)


# --- pure filters and scorer --------------------------------------------------------------


@pytest.mark.parametrize(("name", "filter_", "request_", "host_", "want"), [
    ("not zone-scoped", zone_anti_affinity, req(), host(), FITS),
    ("zone-scoped, zone free", zone_anti_affinity, req(spread_zones=True, avoid=frozenset({"b"})), host(zone="a"),
     FITS),
    ("zone-scoped, zone taken", zone_anti_affinity, req(spread_zones=True, avoid=frozenset({"a"})), host(zone="a"),
     Verdict(False, "ZoneAntiAffinity")),
    ("zone-scoped, host without zone", zone_anti_affinity, req(spread_zones=True), host(),
     Verdict(False, "HostWithoutZone")),
    ("zone with a slash is no zone", zone_anti_affinity, req(spread_zones=True), host(zone="a/b"),
     Verdict(False, "HostWithoutZone")),
    ("no host affinity", host_affinity, req(), host(), FITS),
    ("host runs the group", host_affinity, req(affinity="db"), host(groups={"db": 2}), FITS),
    ("host runs another group", host_affinity, req(affinity="db"), host(groups={"web": 1}),
     Verdict(False, "HostAffinity")),
    ("no zone affinity", zone_affinity, req(), host(zone="a"), FITS),
    ("zone runs the group", zone_affinity, req(affinity_zones=frozenset({"a", "c"})), host(zone="a"), FITS),
    ("zone does not", zone_affinity, req(affinity_zones=frozenset({"c"})), host(zone="a"),
     Verdict(False, "ZoneAffinity")),
    ("group runs nowhere yet", zone_affinity, req(affinity_zones=frozenset()), host(zone="a"),
     Verdict(False, "ZoneAffinity")),
    ("host without zone never matches", zone_affinity, req(affinity_zones=frozenset({""})), host(),
     Verdict(False, "ZoneAffinity")),
])
def test_filters(name, filter_, request_, host_, want) -> None:
    assert filter_(request_, host_) == want, name


@pytest.mark.parametrize(("name", "request_", "labels", "want"), [
    ("image held", req(image="ubuntu"), {"image.quanta.io/ubuntu": "true"}, 1.0),
    ("other image held", req(image="ubuntu"), {"image.quanta.io/debian": "true"}, 0.0),
    ("label not true", req(image="ubuntu"), {"image.quanta.io/ubuntu": "false"}, 0.0),
    ("no image asked", req(), {"image.quanta.io/ubuntu": "true"}, 0.0),
])
def test_image_locality(name, request_, labels, want) -> None:
    assert image_locality(request_, host(labels=labels)) == want, name


def test_policy_weighs_image_locality_into_spread() -> None:
    busy_local = host("local", labels={"image.quanta.io/ubuntu": "true"}, allocated=Resources(4, 16384, 0))
    idle_remote = host("remote")
    request = req(image="ubuntu")
    assert policy("spread") is spread
    assert spread(request, idle_remote) > spread(request, busy_local)
    scorer = policy("spread", image_locality_weight=1.0)
    assert scorer(request, busy_local) > scorer(request, idle_remote)
    assert scorer(request, idle_remote) == pytest.approx(spread(request, idle_remote) / 2)
    with pytest.raises(KeyError):
        policy("nope")


def test_zone_counts_assume_forget_and_stale_updates() -> None:
    counts = ZoneCounts()
    counts.reset({("a", "t/p/db"): (1, 10)}, revision=10)
    assert counts.zones_with("t/p/db") == {"a"}
    counts.assume("b", "t/p/db")
    assert counts.zones_with("t/p/db") == {"a", "b"}
    assert counts.committed("b", "t/p/db") == (0, 0)  # assumptions never reach the bind's compare
    counts.forget("b", "t/p/db")
    assert counts.zones_with("t/p/db") == {"a"}
    assert counts.update("a", "t/p/db", 0, 0, revision=12) is True  # gone: presence flipped
    assert counts.update("a", "t/p/db", 1, 10, revision=11) is False  # older than what we know: ignored
    assert counts.zones_with("t/p/db") == frozenset()
    assert counts.update("a", "t/p/db", 2, 13, revision=13) is True
    assert counts.update("a", "t/p/db", 3, 14, revision=14) is False  # still present: decides nothing new
    assert counts.committed("a", "t/p/db") == (3, 14)


_zone_host_st = st.builds(
    host,
    host_id=st.text("abcdefgh", min_size=1, max_size=4),
    zone=st.sampled_from(["", "a", "b", "c"]),
    groups=st.dictionaries(st.sampled_from(["db", "web"]), st.integers(1, 2), max_size=2),
    labels=st.dictionaries(st.sampled_from(["image.quanta.io/ubuntu", "gpu"]), st.just("true"), max_size=2),
)
_zones_st = st.frozensets(st.sampled_from(["a", "b", "c"]))


@PROPS
@given(hosts=st.lists(_zone_host_st, max_size=12, unique_by=lambda h: h.host_id), spread_zones=st.booleans(),
       avoid=_zones_st, affinity=st.sampled_from(["", "db"]), affinity_zones=st.none() | _zones_st,
       seed=st.integers(0, 2**32))
def test_place_never_breaks_a_zone_or_affinity_constraint(hosts, spread_zones, avoid, affinity, affinity_zones,
                                                         seed) -> None:
    request = req(spread_zones=spread_zones, avoid=avoid, affinity=affinity, affinity_zones=affinity_zones,
                  image="ubuntu")
    placement = place(request, HostView(hosts), rng=random.Random(seed),
                      scorer=policy("spread", image_locality_weight=1.0))
    feasible = [h for h in hosts if all(f(request, h).ok for f in DEFAULT_FILTERS)]
    if placement.host_id is None:
        assert feasible == []
        assert sum(placement.filtered.values()) == len(hosts)
        return
    chosen = next(h for h in hosts if h.host_id == placement.host_id)
    if spread_zones:
        assert chosen.zone and chosen.zone not in avoid
    if affinity:
        assert chosen.groups.get(affinity, 0) > 0
    if affinity_zones is not None:
        assert chosen.zone in affinity_zones


@PROPS
@given(zones=st.lists(st.sampled_from(["a", "b", "c", "d"]), min_size=1, max_size=8), n=st.integers(1, 8),
       seed=st.integers(0, 2**32))
def test_assumed_zone_counts_spread_one_batch_one_per_zone(zones, n, seed) -> None:
    """What a shard does within one batch: place, assume the zone, place the next."""
    hosts = [host(f"h{i}", zone=z) for i, z in enumerate(zones)]
    view, counts, rng = HostView(hosts), ZoneCounts(), random.Random(seed)
    placed = []
    for _ in range(n):
        request = req(spread_zones=True, avoid=counts.zones_with("t/p/db"))
        placement = place(request, view, rng=rng)
        if placement.host_id is None:
            assert set(placement.filtered) == {"ZoneAntiAffinity"}
            continue
        zone = view.get(placement.host_id).zone
        counts.assume(zone, "t/p/db")
        view.assume(placement.host_id, SMALL, group="db")
        placed.append(zone)
    assert len(placed) == min(n, len(set(zones)))
    assert len(set(placed)) == len(placed)


# --- zone group counts in etcd ---------------------------------------------------------------


def run(coro: Coroutine[Any, Any, Any], timeout: float = 30.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout=timeout))


def _spec(i: int, *, shards: int = 1) -> VmSpec:
    uid = uuid.uuid4().hex
    return VmSpec(VmRef("t", "p", f"vm-{i}"), uid, "small", "ubuntu", SMALL, create_time_ns=now_ns(),
                  shard=shard_of(uid, shards), anti_affinity_group="db", anti_affinity_scope=Scope.ZONE)


def test_zone_counts_guard_binds_and_follow_removals_and_moves(etcd_endpoint, root) -> None:
    """Two binds of one zone-scoped group onto two hosts of one zone, each from the
    same read (as two shards would make them): the second fails on the zone count.
    The agent's removal and a drain's move give the count back."""

    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client:
            hosts = await seed_hosts(client, keys, 2, CAP, labels={ZONE_LABEL: "a"})
            specs = [_spec(0), _spec(1)]
            await queue_specs(client, keys, specs)
            sched, zones = SchedulingStore(client, keys), ZoneStore(client, keys)
            queued, _ = await sched.list_queue(0)
            by_id = {q.spec.ref.vm_id: q for q in queued}
            empty = {("a", "t/p/db"): ZoneCount()}
            allocs = {h: (await client.get(keys.host_alloc(h))).mod_revision for h in hosts}
            first = HostBind(hosts[0], allocs[hosts[0]], HostAllocation(),
                             [by_id["vm-0"]], "a", empty)
            second = HostBind(hosts[1], allocs[hosts[1]], HostAllocation(),
                              [by_id["vm-1"]], "a", empty)
            assert (await sched.bind(None, [first])).committed == [True]
            assert (await sched.bind(None, [second])).committed == [False]  # same zone count read: lost
            assert (await zones.read([("a", "t/p/db")]))[0][("a", "t/p/db")].vms == 1
            binding = Binding.from_bytes((await client.get(keys.binding(hosts[0], specs[0].ref))).value)
            assert binding.zone == "a"

            # The agent removes the destroyed VM: the count goes (the key is deleted at zero).
            agent = AgentStore(client, keys)
            bound, _ = await agent.list_bindings([hosts[0]])
            assert await agent.remove_destroyed(hosts[0], bound)
            assert (await zones.read([("a", "t/p/db")]))[0][("a", "t/p/db")] == ZoneCount()
            assert await client.get(keys.zone_group("a", "t/p/db")) is None

            # vm-1 binds now (its view refreshed); a drain moves it off and gives the zone back.
            alloc_kv = await client.get(keys.host_alloc(hosts[1]))
            retry = HostBind(hosts[1], alloc_kv.mod_revision, second.committed, second.vms, "a",
                             {("a", "t/p/db"): ZoneCount()})
            assert (await sched.bind(None, [retry])).committed == [True]
            assert (await zones.read([("a", "t/p/db")]))[0][("a", "t/p/db")].vms == 1
            lifecycle = LifecycleStore(client, keys)
            read = await lifecycle.host_bindings(hosts[1])
            assert await lifecycle.move_off(hosts[1], read, read.bound, [], reason="HostDrained", message="m")
            assert await client.get(keys.zone_group("a", "t/p/db")) is None
            assert len((await sched.list_queue(0))[0]) == 1  # back in the queue, to be placed again

    run(main())


# --- real processes ---------------------------------------------------------------------------

ZONES = ("a", "b", "c")


@pytest.fixture
def zoned_system(etcd_server, tmp_path):
    """2 scheduler processes, 4 shards, 6 sim hosts in zones a, b, c (2 each)."""
    agent = ["--hosts", "6", "--host-prefix", "sim", "--latency", "zero", "--zones", ",".join(ZONES)]
    with LocalSystem(etcd_endpoint=etcd_server.endpoint, root=f"/zones-{uuid.uuid4().hex[:8]}", hosts=6,
                     schedulers=2, shards=4, frontends=1, lease_ttl=3, metrics=False, data_dir=str(tmp_path),
                     agents=[agent]) as system:
        yield system


def _vms(client) -> dict[str, Any]:
    return {vm.name.rsplit("/", 1)[1]: vm for vm in client.list_vms()}


def _placed(client) -> dict[str, Any] | None:
    vms = _vms(client)
    return {vm_id: vm for vm_id, vm in vms.items() if vm.host}


def test_zone_anti_affine_vms_created_at_once_land_one_per_zone(zoned_system) -> None:
    n = 7
    with zoned_system.client(project="zones") as client:
        zone_of = {h.name.split("/", 1)[1]: h.labels[ZONE_LABEL] for h in client.list_hosts()}
        assert sorted(Counter(zone_of.values()).values()) == [2, 2, 2]
        with pytest.raises(ApiError) as bad:
            client.create_vm("lonely", flavor="small", image="ubuntu", anti_affinity_scope="ZONE")
        assert bad.value.code is grpc.StatusCode.INVALID_ARGUMENT
        assert bad.value.field_violations == [("vm.anti_affinity_scope", "ZONE needs an anti_affinity_group")]
        with ThreadPoolExecutor(n) as pool:
            list(pool.map(lambda i: client.create_vm(f"db-{i}", flavor="small", image="ubuntu",
                                                      anti_affinity_group="db", anti_affinity_scope="ZONE"),
                          range(n)))

        def settled() -> dict | None:
            vms = _vms(client)
            placed = {v: vm for v, vm in vms.items() if vm.host}
            waiting = [vm for vm in vms.values() if not vm.host and any(
                c.reason == "NoHostFits" and "6 ZoneAntiAffinity" in c.message for c in vm.conditions)]
            return vms if len(placed) == len(ZONES) and len(waiting) == n - len(ZONES) else None

        vms = wait_until(settled, timeout=60, message="one VM per zone placed, the others waiting with the reason",
                         seen=seen_in(zoned_system, client))
        placed = {v: vm for v, vm in vms.items() if vm.host}
        assert sorted(zone_of[vm.host] for vm in placed.values()) == list(ZONES)
        assert all(vm.anti_affinity_scope == vm.ZONE and vm.anti_affinity_group == "db" for vm in vms.values())
        waiting = [vm for vm in vms.values() if not vm.host]
        assert all(vm.state == vm.PENDING for vm in waiting)
        assert all(c.message == "0/6 hosts fit: 6 ZoneAntiAffinity" for vm in waiting for c in vm.conditions)

        # Deleting one frees its zone: exactly one waiting VM lands there, the rest keep waiting.
        gone_id, gone = next(iter(placed.items()))
        freed = zone_of[gone.host]
        client.delete_vm(gone_id)

        def refilled() -> dict | None:
            now = _placed(client)
            if gone_id in now or len(now) != len(ZONES):
                return None
            return now

        now = wait_until(refilled, timeout=60, message=f"a waiting VM placed in the freed zone {freed}",
                         seen=lambda: f"{describe_vms(client.list_vms(), want=None)}; hosts' zones {zone_of}")
        newcomer = set(now) - set(placed)
        assert len(newcomer) == 1
        assert zone_of[now[newcomer.pop()].host] == freed
        assert sorted(zone_of[vm.host] for vm in now.values()) == list(ZONES)
        assert sum(1 for vm in _vms(client).values() if not vm.host) == n - len(ZONES) - 1


def test_a_vm_waiting_for_its_affinity_group_is_placed_when_the_group_arrives(etcd_endpoint: str,
                                                                              root: str) -> None:
    """A group appearing on a host (a bind this process made) wakes VMs affine to it;
    it is not a capacity change, and once was not noticed at all."""
    from scheduler.service import SchedulerConfig, run_scheduler
    from tests.conftest import async_wait_until

    async def bound(client: EtcdClient, keys: Keys) -> dict[str, str]:
        kvs, _revision = await client.range_prefix(keys.bindings_prefix())
        return {b.spec.ref.vm_id: b.host for b in (Binding.from_bytes(kv.value) for kv in kvs)}

    def spec(name: str, **kwargs) -> VmSpec:
        uid = uuid.uuid4().hex
        return VmSpec(VmRef("t", "p", name), uid, "small", "ubuntu", Resources(1, 1024, 10), create_time_ns=now_ns(),
                      shard=shard_of(uid, 1), **kwargs)

    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client:
            await seed_hosts(client, keys, 4, Resources(16, 65536, 1000))
            await queue_specs(client, keys, [spec("follower", affinity_group="g", affinity_scope=Scope.HOST)])
            scheduler = asyncio.create_task(run_scheduler(SchedulerConfig(
                etcd=etcd_endpoint, root=root, shards=1, lease_ttl=5, name="s")))
            try:
                async def seen() -> str:
                    state = f"ended: {scheduler.exception()!r}" if scheduler.done() else "running"
                    return f"bound {await bound(client, keys)}; the scheduler {state}"

                await async_wait_until(lambda: _reason_of(client, keys, "follower"), timeout=30,
                                       message="the follower to wait for its group, with a reason", seen=seen)
                await queue_specs(client, keys, [spec("leader", anti_affinity_group="g")])
                placed = await async_wait_until(lambda: _both(bound(client, keys)), timeout=30,
                                                message="the follower placed once the leader is", seen=seen)
                assert placed["follower"] == placed["leader"]
            finally:
                scheduler.cancel()
                await asyncio.gather(scheduler, return_exceptions=True)

    async def _both(found):
        placed = await found
        return placed if {"leader", "follower"} <= placed.keys() else None

    run(main(), timeout=90)


async def _reason_of(client: EtcdClient, keys: Keys, vm_id: str) -> str | None:
    from controlplane.models import VmStatus

    kv = await client.get(keys.vm_status(VmRef("t", "p", vm_id)))
    return VmStatus.from_bytes(kv.value).message if kv is not None and kv.value else None
