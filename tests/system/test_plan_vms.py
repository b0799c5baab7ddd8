"""PlanVms through the real processes (LocalSystem: one frontend, one scheduler, one
host in each of three zones, each with room for one "large" VM): a 3-member ZONE
anti-affine set that cannot fit says so per VM (which filters removed how many
hosts) and writes nothing; once it fits, three distinct zones; a held plan takes its
room in the hosts' allocations under a lease, other placements do not take it, and
when the hold ends the room is free again; a hold's request_id makes a retry return
the first attempt's plan, never a second hold."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf import duration_pb2

from controlplane.api.errors import ApiError
from controlplane.etcd import EtcdClient
from controlplane.gen.quanta.v1 import vm_pb2
from controlplane.models import Hold, HostAllocation
from controlplane.store.keys import Keys
from controlplane.tenancy import UNLIMITED
from quanta.client import Client
from quanta.local import LocalSystem
from tests.conftest import wait_until

TENANT = "plans"
ZONES = ("zone-a", "zone-b", "zone-c")
HOSTS = ("sim-00000", "sim-00001", "sim-00002")  # one per zone, round robin


@pytest.fixture(scope="module")
def system():
    # Each host takes one "large" VM (4 vCPUs, 16 GiB) and not two.
    with LocalSystem(hosts=3, frontends=1, latency="zero", metrics=False, zones=ZONES, host_vcpus=6,
                     host_memory_mib=20 * 1024) as local:
        with local.client(ensure_project=False) as admin:
            admin.create_tenant(TENANT)
        yield local


@pytest.fixture
def admin(system) -> Iterator[Client]:
    with system.client(ensure_project=False) as c:
        yield c


def project(admin: Client, vms: int | None = None) -> str:
    name = f"p-{uuid.uuid4().hex[:8]}"
    admin.create_project(name, tenant=TENANT, quota={"vms": vms} if vms is not None else None)
    return f"tenants/{TENANT}/projects/{name}"


def create(vm_id: str, *, flavor: str = "small", group: str = "cp") -> vm_pb2.CreateVmRequest:
    return vm_pb2.CreateVmRequest(vm_id=vm_id, vm=vm_pb2.Vm(
        flavor=flavor, image="ubuntu", anti_affinity_group=group, anti_affinity_scope=vm_pb2.Vm.ZONE))


def plan(c: Client, parent: str, requests: list[vm_pb2.CreateVmRequest], hold_s: int = 0,
         request_id: str = "") -> vm_pb2.PlanVmsResponse:
    return c._call(c._vms.PlanVms, vm_pb2.PlanVmsRequest(parent=parent, requests=requests, request_id=request_id,
                                                         hold=duration_pb2.Duration(seconds=hold_s)), timeout=60)


def etcd_state(system: LocalSystem) -> tuple[dict[str, HostAllocation], dict[str, Hold]]:
    """Every host's allocation and every hold key, read straight from etcd."""
    async def read() -> tuple[dict[str, HostAllocation], dict[str, Hold]]:
        keys = Keys(system.root)
        async with EtcdClient(system.etcd_endpoint) as client:
            allocs = {}
            for host in HOSTS:
                kv = await client.get(keys.host_alloc(host))
                allocs[host] = HostAllocation.from_bytes(kv.value) if kv else HostAllocation()
            kvs, _ = await client.range_prefix(keys.holds_prefix())
            return allocs, {Hold.from_bytes(kv.value).plan: Hold.from_bytes(kv.value) for kv in kvs}

    return asyncio.run(read())


def audited(c: Client) -> set[tuple[str, str, str]]:
    return {(r.method, r.resource, r.code) for r in c.list_audit(tenant=TENANT)}


def test_a_zone_anti_affine_set_on_two_zones_does_not_fit_and_on_three_it_does(system, admin: Client) -> None:
    parent = project(admin, vms=5)
    requests = [create(f"cp-{i}") for i in range(3)]
    admin.set_maintenance(HOSTS[2])  # zone-c takes nothing new: two zones left
    try:
        before = etcd_state(system)
        got = plan(admin, parent, requests)
        assert not got.fits and not got.plan
        names = [p.vm for p in got.placements]
        assert names == [f"{parent}/vms/cp-{i}" for i in range(3)]
        placed = [p for p in got.placements if p.host]
        unplaced = [p for p in got.placements if not p.host]
        assert sorted(p.host for p in placed) == [f"hosts/{HOSTS[0]}", f"hosts/{HOSTS[1]}"]
        assert len(unplaced) == 1
        assert dict(unplaced[0].filtered) == {"ZoneAntiAffinity": 2, "HostInMaintenance": 1}, unplaced[0]
        assert "0/3 hosts fit" in unplaced[0].message and "ZoneAntiAffinity" in unplaced[0].message
        assert (got.quota_headroom.vms, got.quota_headroom.vcpus) == (2, UNLIMITED)
        # Nothing written: no VM, no hold, no allocation touched, no audit record.
        assert list(admin._call(admin._vms.ListVms, vm_pb2.ListVmsRequest(parent=parent)).vms) == []
        assert etcd_state(system) == before
    finally:
        admin.set_maintenance(HOSTS[2], False)
    got = plan(admin, parent, requests)
    assert got.fits and not got.plan and not got.HasField("expire_time")
    assert sorted(p.host for p in got.placements) == [f"hosts/{h}" for h in HOSTS], "three distinct zones"
    assert all(not p.filtered and not p.message for p in got.placements)
    # Over quota: placed, but it does not fit (the headroom says by how much).
    over = plan(admin, project(admin, vms=2), requests)
    assert not over.fits and over.quota_headroom.vms == -1 and all(p.host for p in over.placements)
    assert not any(m == "PlanVms" for m, _r, _c in audited(admin)), "plans without a hold are not audited"


def test_bad_plans_are_refused_precisely(admin: Client) -> None:
    parent = project(admin)

    def refused(requests, hold_s=0) -> ApiError:
        with pytest.raises(ApiError) as info:
            plan(admin, parent, requests, hold_s)
        return info.value

    def fields(err: ApiError) -> list[str]:
        assert err.code == grpc.StatusCode.INVALID_ARGUMENT, err
        return [f for f, _ in err.field_violations]

    assert fields(refused([vm_pb2.CreateVmRequest(vm=vm_pb2.Vm(flavor="small", image="ubuntu"))])) == \
        ["requests[0].vm_id"]
    assert fields(refused([create("a"), create("a")])) == ["requests[1].vm_id"]
    assert fields(refused([create("a")], hold_s=601)) == ["hold"]
    assert fields(refused([])) == ["requests"]
    assert fields(refused([create("a", flavor="nope")])) == ["requests[0].vm.flavor"]
    admin._call(admin._vms.CreateVm, vm_pb2.CreateVmRequest(
        parent=parent, vm_id="taken", vm=vm_pb2.Vm(flavor="small", image="ubuntu")))
    taken = refused([create("taken")])
    assert taken.code == grpc.StatusCode.ALREADY_EXISTS
    missing = pytest.raises(ApiError, plan, admin, f"tenants/{TENANT}/projects/nope", [create("a")]).value
    assert missing.code == grpc.StatusCode.NOT_FOUND


def test_a_held_plan_keeps_its_room_from_other_placements_until_the_hold_ends(system, admin: Client) -> None:
    parent = project(admin)
    hold_s = 4
    started = time.time()
    got = plan(admin, parent, [create(f"db-{i}", flavor="large", group="db") for i in range(3)], hold_s=hold_s)
    assert got.fits, got
    plan_id = got.plan.rsplit("/", 1)[1]
    assert got.plan == f"{parent}/plans/{plan_id}" and plan_id.startswith("plan-")
    assert started + hold_s - 2 <= got.expire_time.seconds <= time.time() + hold_s + 1
    allocations, holds = etcd_state(system)
    assert set(holds) == {plan_id}
    assert sorted(vm.host for vm in holds[plan_id].vms) == sorted(HOSTS)
    for host in HOSTS:
        room = allocations[host].holds[plan_id]
        assert (room.resources.vcpus, room.resources.memory_mib, room.vm_count) == (4, 16384, 1)
    wait_until(lambda: ("PlanVms", got.plan, "OK") in audited(admin), timeout=30,
               message="the held plan's audit record", seen=lambda: sorted(audited(admin)))
    # A large VM fits only where the plan holds room: it is not placed while the hold lasts.
    other = project(admin)
    admin._call(admin._vms.CreateVm, vm_pb2.CreateVmRequest(
        parent=other, vm_id="big", vm=vm_pb2.Vm(flavor="large", image="ubuntu")))

    def big() -> vm_pb2.Vm:
        return admin._call(admin._vms.GetVm, vm_pb2.GetVmRequest(name=f"{other}/vms/big"))

    def told() -> bool:
        vm = big()
        held = plan_id in etcd_state(system)[1]
        assert vm.host == "" or not held, f"placed on {vm.host} while the plan holds the room"
        return vm.state == vm_pb2.Vm.PENDING and any(c.reason == "NoHostFits" for c in vm.conditions) and held

    wait_until(told, timeout=30, message="the big VM waits for room while the plan holds it",
               seen=lambda: (big(), etcd_state(system)[1].keys()))
    wait_until(lambda: big().state == vm_pb2.Vm.RUNNING, timeout=60,
               message="the big VM placed once the hold ended", seen=lambda: (big(), etcd_state(system)[1].keys()))
    assert plan_id not in etcd_state(system)[1]


def test_a_projects_holds_count_against_its_quota_for_further_plans(admin: Client) -> None:
    """Plans cannot hold more of the fleet than their project may use: a held plan's
    VMs count against the quota of the next plan (not of creates)."""
    parent = project(admin, vms=3)
    first = plan(admin, parent, [create(f"a-{i}", group=f"ga{i}") for i in range(2)], hold_s=30)
    assert first.fits and first.plan and first.quota_headroom.vms == 1
    second = plan(admin, parent, [create(f"b-{i}", group=f"gb{i}") for i in range(2)], hold_s=30)
    assert not second.fits and not second.plan and second.quota_headroom.vms == -1, second
    one = plan(admin, parent, [create("c-0", group="gc")])
    assert one.fits and one.quota_headroom.vms == 0


def test_a_held_plans_retry_with_its_request_id_returns_the_same_plan_and_holds_once(system, admin: Client) -> None:
    """The same request_id twice with a hold: the same plan (name, expire_time, hosts),
    one hold key, the quota counting it once; the request_id with other VMs while the
    hold lasts: ALREADY_EXISTS REQUEST_ID_REUSED, nothing held."""
    parent = project(admin, vms=5)
    vms = [create(f"r-{i}", group=f"gr{i}") for i in range(2)]
    first = plan(admin, parent, vms, hold_s=30, request_id="rid-1")
    assert first.fits and first.plan and first.quota_headroom.vms == 3, first
    again = plan(admin, parent, vms, hold_s=30, request_id="rid-1")
    assert again.plan == first.plan and again.expire_time == first.expire_time
    assert list(again.placements) == list(first.placements) and again.fits
    assert again.quota_headroom.vms == 3, "the retry counts the hold once"
    mine = [h for h in etcd_state(system)[1].values() if h.name.startswith(parent + "/")]
    assert [h.name for h in mine] == [first.plan], "one hold, not two"
    with pytest.raises(ApiError) as refused:
        plan(admin, parent, [create("other", group="go")], hold_s=30, request_id="rid-1")
    assert refused.value.code == grpc.StatusCode.ALREADY_EXISTS and refused.value.reason == "REQUEST_ID_REUSED"
    assert [h.name for h in etcd_state(system)[1].values() if h.name.startswith(parent + "/")] == [first.plan]
    # Another request_id is another plan; without a hold the request_id is ignored.
    other = plan(admin, parent, [create("other", group="go")], hold_s=30, request_id="rid-2")
    assert other.plan and other.plan != first.plan
    assert not plan(admin, parent, vms, request_id="rid-1").plan
