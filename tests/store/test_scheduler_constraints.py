"""Placement constraints: maintenance, node selectors, host anti-affinity and
allocatable capacity (how overcommit makes it: tests/unit/test_overcommit.py), as
table-driven and Hypothesis tests of the pure filters, and anti-affinity under
parallel placement by two scheduler processes on real etcd."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Coroutine
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.etcd import EtcdClient
from controlplane.models import Binding, HostAllocation, Resources, VmRef, VmSpec
from controlplane.placement import (
    DEFAULT_FILTERS,
    HostSnapshot,
    HostView,
    PlacementRequest,
    Verdict,
    fits_resources,
    host_anti_affinity,
    matches_node_selector,
    not_in_maintenance,
    pack,
    place,
    spread,
)
from controlplane.store.hosts import HostStore
from controlplane.store.keys import Keys
from scheduler.service import SchedulerConfig, run_scheduler
from scheduler.simulate import make_specs, queue_specs, seed_hosts
from tests.conftest import async_wait_until, describe_tasks, running

PROPS = settings(max_examples=150, deadline=None)
CAP = Resources(16, 65536, 1000)
NONE = Resources()
SMALL = Resources(1, 1024, 10)
FITS = Verdict(True)


def host(host_id: str = "h", *, labels: dict | None = None, maintenance: bool = False,
         allocatable_: Resources | None = None, allocated: Resources = NONE,
         groups: dict | None = None) -> HostSnapshot:
    return HostSnapshot(host_id, True, CAP, allocated, labels=labels or {}, maintenance=maintenance,
                        allocatable=allocatable_, groups=groups or {})


def req(resources: Resources = SMALL, *, selector: dict | None = None,
        group: str = "") -> PlacementRequest:
    return PlacementRequest("k", "u", resources, node_selector=selector or {}, anti_affinity_group=group)


@pytest.mark.parametrize(("name", "filter_", "request_", "host_", "want"), [
    ("in service", not_in_maintenance, req(), host(), FITS),
    ("in maintenance", not_in_maintenance, req(), host(maintenance=True), Verdict(False, "HostInMaintenance")),
    ("no selector", matches_node_selector, req(), host(), FITS),
    ("selector met", matches_node_selector, req(selector={"gpu": "a100"}), host(labels={"gpu": "a100", "x": "y"}),
     FITS),
    ("selector value differs", matches_node_selector, req(selector={"gpu": "a100"}), host(labels={"gpu": "t4"}),
     Verdict(False, "NodeSelectorMismatch")),
    ("selector label absent", matches_node_selector, req(selector={"gpu": "a100"}), host(),
     Verdict(False, "NodeSelectorMismatch")),
    ("one of two labels missing", matches_node_selector, req(selector={"a": "1", "b": "2"}), host(labels={"a": "1"}),
     Verdict(False, "NodeSelectorMismatch")),
    ("no group", host_anti_affinity, req(), host(groups={"db": 1}), FITS),
    ("group absent on host", host_anti_affinity, req(group="db"), host(groups={"web": 3}), FITS),
    ("group present on host", host_anti_affinity, req(group="db"), host(groups={"db": 1}),
     Verdict(False, "AntiAffinity")),
    ("overcommitted vcpus fit", fits_resources, req(Resources(20, 1024, 10)),
     host(allocatable_=Resources(64, 65536, 1000)), FITS),
    ("without overcommit they do not", fits_resources, req(Resources(20, 1024, 10)), host(),
     Verdict(False, "InsufficientVcpus")),
    ("overcommit counts what is allocated", fits_resources, req(Resources(20, 1024, 10)),
     host(allocatable_=Resources(64, 65536, 1000), allocated=Resources(50, 0, 0)), Verdict(False, "InsufficientVcpus")),
])
def test_filters(name, filter_, request_, host_, want) -> None:
    assert filter_(request_, host_) == want, name


def test_spread_and_pack_prefer_opposite_hosts() -> None:
    hosts = HostView([host("empty"), host("half", allocated=Resources(8, 32768, 0))])
    rng = random.Random(1)
    assert place(req(), hosts, rng=rng, scorer=spread, candidates=2).host_id == "empty"
    assert place(req(), hosts, rng=rng, scorer=pack, candidates=2).host_id == "half"


def test_view_assumes_groups_until_forgotten() -> None:
    view = HostView([host("a", groups={"web": 1})])
    committed = view.get("a")
    view.assume("a", Resources(1, 1, 1), group="db")
    assert view.get("a").groups == {"web": 1, "db": 1}
    assert host_anti_affinity(req(group="db"), view.get("a")) == Verdict(False, "AntiAffinity")
    view.forget("a", Resources(1, 1, 1), group="db")
    assert view.get("a") is committed


def test_allocation_counts_groups_both_ways() -> None:
    alloc = HostAllocation().plus(Resources(1, 1, 1), group="db").plus(Resources(1, 1, 1), group="db")
    assert alloc.groups == {"db": 2}
    assert HostAllocation.from_bytes(alloc.to_bytes()) == alloc
    assert alloc.minus(Resources(1, 1, 1), group="db").minus(Resources(1, 1, 1), group="db").groups == {}


_host_st = st.builds(
    host,
    host_id=st.text("abcdefgh", min_size=1, max_size=4),
    labels=st.dictionaries(st.sampled_from(["zone", "gpu"]), st.sampled_from(["a", "b"]), max_size=2),
    maintenance=st.booleans(),
    allocated=st.builds(Resources, st.integers(0, 20), st.integers(0, 70000), st.integers(0, 1100)),
    groups=st.dictionaries(st.sampled_from(["db", "web"]), st.integers(1, 3), max_size=2),
)


@PROPS
@given(hosts=st.lists(_host_st, max_size=12, unique_by=lambda h: h.host_id),
       selector=st.dictionaries(st.sampled_from(["zone", "gpu"]), st.sampled_from(["a", "b"]), max_size=2),
       group=st.sampled_from(["", "db", "web"]), seed=st.integers(0, 2**32))
def test_place_never_picks_a_host_that_violates_a_constraint(hosts, selector, group, seed) -> None:
    request = req(Resources(2, 4096, 10), selector=selector, group=group)
    placement = place(request, HostView(hosts), rng=random.Random(seed))
    feasible = [h for h in hosts if all(f(request, h).ok for f in DEFAULT_FILTERS)]
    if placement.host_id is None:
        assert feasible == []
        assert sum(placement.filtered.values()) == len(hosts)  # every host explained
    else:
        chosen = next(h for h in hosts if h.host_id == placement.host_id)
        assert not chosen.maintenance
        assert all(chosen.labels.get(k) == v for k, v in selector.items())
        assert not group or chosen.groups.get(group, 0) == 0
        assert chosen in feasible


# --- two scheduler processes on real etcd ------------------------------------------------


def run(coro: Coroutine[Any, Any, Any], timeout: float = 60.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout=timeout))


async def _bindings(client: EtcdClient, keys: Keys) -> list[Binding]:
    kvs, _ = await client.range_prefix(keys.bindings_prefix())
    return [Binding.from_bytes(kv.value) for kv in kvs]


def test_anti_affine_vms_placed_at_once_by_two_processes_never_share_a_host(etcd_endpoint, root) -> None:
    """6 VMs of one group on 4 hosts, one of them in maintenance, queued before two
    scheduler processes (one shard each) start, so both place at the same moment from
    views that cannot see each other's assumptions: 3 land, one per host in service,
    and 3 wait with the reason."""
    shards = 2

    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client:
            hosts = await seed_hosts(client, keys, 4, CAP)
            await HostStore(client, keys).set_maintenance(hosts[3], True)
            specs: list = []
            while len({s.shard for s in specs}) < shards:  # both processes must have some to place
                specs = make_specs(6, shards, Resources(1, 1024, 10), anti_affinity_group="db")
            await queue_specs(client, keys, specs)
            schedulers = [run_scheduler(SchedulerConfig(etcd=etcd_endpoint, root=root, shards=shards, lease_ttl=5,
                                                        name=f"sched-{i}")) for i in range(2)]
            async with running(*schedulers) as tasks:
                async def seen() -> str:
                    placed = Counter(b.host for b in await _bindings(client, keys))
                    return f"bound per host {dict(placed)}; {describe_tasks(tasks)}"

                bound = await async_wait_until(
                    lambda: _full(client, keys, 3), timeout=30, message="3 anti-affine VMs bound", seen=seen)
                assert Counter(b.host for b in bound) == {h: 1 for h in hosts[:3]}
                # The others stay queued, each with the reason why.
                queued = [kv for shard in range(shards) for kv in
                          (await client.range_prefix(keys.queue_prefix(shard)))[0]]
                assert len(queued) == 3
                async def reasons_seen() -> str:
                    written = [await client.get(keys.vm_status(s.ref)) for s in specs]
                    return f"{sum(kv is not None for kv in written)} of {len(specs)} statuses; {await seen()}"

                statuses = await async_wait_until(lambda: _reasons(client, keys, specs, bound), timeout=10,
                                                  message="unschedulable reasons written", seen=reasons_seen)
                assert all(m == "0/4 hosts fit: 3 AntiAffinity, 1 HostInMaintenance" for m in statuses), statuses
                alloc_groups = [HostAllocation.from_bytes((await client.get(keys.host_alloc(h))).value).groups
                                for h in hosts]
                group = specs[0].host_group  # scoped: {tenant}/{project}/db
                assert group.endswith("/db") and alloc_groups == [{group: 1}] * 3 + [{}]
                assert len(await _bindings(client, keys)) == 3  # and no more came later

    run(main())


async def _full(client: EtcdClient, keys: Keys, n: int) -> list[Binding] | None:
    bound = await _bindings(client, keys)
    return bound if len(bound) >= n else None


async def _reasons(client: EtcdClient, keys: Keys, specs, bound) -> list[str] | None:
    from controlplane.models import VmStatus

    placed = {b.spec.ref for b in bound}
    messages = []
    for spec in specs:
        if spec.ref in placed:
            continue
        kv = await client.get(keys.vm_status(spec.ref))
        if kv is None:
            return None
        messages.append(VmStatus.from_bytes(kv.value).message)
    return messages


def test_groups_of_different_projects_never_meet_on_a_host() -> None:
    """Anti-affinity groups are counted per tenant and project: acme's "db" neither
    blocks nor reveals globex's "db"."""
    def spec(tenant: str, project: str) -> VmSpec:
        return VmSpec(VmRef(tenant, project, "v"), "u", "small", "ubuntu", Resources(1, 1, 1),
                      anti_affinity_group="db")

    acme, globex, other_project = spec("acme", "web"), spec("globex", "web"), spec("acme", "ops")
    assert len({acme.host_group, globex.host_group, other_project.host_group}) == 3
    occupied = host(groups={acme.host_group: 1})
    assert host_anti_affinity(req(group=globex.host_group), occupied) == FITS
    assert host_anti_affinity(req(group=acme.host_group), occupied) != FITS
