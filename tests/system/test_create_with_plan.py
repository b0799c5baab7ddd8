"""CreateVms with a plan through the real processes (LocalSystem, zero latency): a plan
whose hold ended (or never was) is refused PLAN_EXPIRED, one held for other VMs
PLAN_MISMATCH, nothing written either way; the plan's own VMs are bound onto the hosts
it recorded, and the hold is consumed.

The hold is written as PlanVms leaves it (plan15 owns the real writer): holds/{plan}
under a lease, and holds[plan] in the planned host's allocation, in one txn."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf import duration_pb2

from controlplane.api.errors import ApiError
from controlplane.etcd import EtcdClient, ops
from controlplane.gen.quanta.v1 import vm_pb2
from controlplane.models import HeldRoom, Hold, HostAllocation, PlannedVm, Resources, now_ns
from controlplane.store.keys import Keys
from quanta.client import Client
from quanta.local import LocalSystem
from tests.conftest import wait_until

TENANT = "plans"
ALL_OR_NOTHING = vm_pb2.CreateVmsRequest.ALL_OR_NOTHING
SMALL = Resources(1, 1024, 10)  # the "small" flavor


@pytest.fixture(scope="module")
def system():
    with LocalSystem(hosts=3, frontends=1, latency="zero", metrics=False) as local:
        with local.client(ensure_project=False) as admin:
            admin.create_tenant(TENANT)
        yield local


@pytest.fixture
def admin(system) -> Iterator[Client]:
    with system.client(ensure_project=False) as c:
        yield c


def hold(system: LocalSystem, project: str, plan: str, vms: list[tuple[str, str]], ttl: int = 120) -> None:
    """Hold room for ``vms`` ((vm id, host), each "small") of ``project`` as PlanVms does."""
    async def main() -> None:
        keys = Keys(system.root)
        async with EtcdClient(system.etcd_endpoint) as client:
            lease, _ttl = await client.grant(ttl)
            record = Hold(TENANT, project, plan, tuple(PlannedVm(vm, on, "small", SMALL) for vm, on in vms),
                          now_ns() + ttl * 10**9)
            compares, writes = [ops.absent(keys.hold(plan))], [ops.put(keys.hold(plan), record.to_bytes(), lease=lease)]
            for on in sorted({on for _vm, on in vms}):
                n = sum(1 for _vm, h in vms if h == on)
                kv = await client.get(keys.host_alloc(on))
                assert kv is not None
                allocation = HostAllocation.from_bytes(kv.value)
                room = HeldRoom(Resources(n, 1024 * n, 10 * n), n)
                compares.append(ops.mod_revision_is(keys.host_alloc(on), kv.mod_revision))
                writes.append(ops.put(keys.host_alloc(on), HostAllocation(
                    allocation.resources, allocation.vm_count, allocation.groups,
                    {**allocation.holds, plan: room}).to_bytes()))
            assert (await client.txn(compares, writes)).succeeded

    asyncio.run(main())


def hold_exists(system: LocalSystem, plan: str) -> bool:
    async def main() -> bool:
        async with EtcdClient(system.etcd_endpoint) as client:
            return await client.get(Keys(system.root).hold(plan)) is not None

    return asyncio.run(main())


def create(vm_id: str, flavor: str = "small") -> vm_pb2.CreateVmRequest:
    return vm_pb2.CreateVmRequest(vm_id=vm_id, vm=vm_pb2.Vm(flavor=flavor, image="ubuntu"))


def create_vms(c: Client, parent: str, requests: list[vm_pb2.CreateVmRequest], **fields) -> vm_pb2.CreateVmsResponse:
    return c._call(c._vms.CreateVms, vm_pb2.CreateVmsRequest(parent=parent, requests=requests, **fields), timeout=60)


def error(call) -> ApiError:
    with pytest.raises(ApiError) as info:
        call()
    return info.value


def written(c: Client, parent: str) -> tuple[int, int]:
    """(VMs listed, VMs charged to the quota) in ``parent``."""
    listed = c._call(c._vms.ListVms, vm_pb2.ListVmsRequest(parent=parent, page_size=1000))
    return len(listed.vms), c.get_quota(f"{parent}/quota").usage.vms


def test_create_vms_with_a_plan(system: LocalSystem, admin: Client) -> None:
    name = f"p-{uuid.uuid4().hex[:8]}"
    admin.create_project(name, tenant=TENANT)
    parent = f"tenants/{TENANT}/projects/{name}"
    plan = f"plan-{uuid.uuid4().hex[:8]}"
    hold(system, name, plan, [("cp-0", "sim-00001"), ("cp-1", "sim-00001")])
    with_plan = {"mode": ALL_OR_NOTHING, "plan": f"{parent}/plans/{plan}"}

    expired = error(lambda: create_vms(admin, parent, [create("cp-0"), create("cp-1")], mode=ALL_OR_NOTHING,
                                       plan=f"{parent}/plans/never-held"))
    assert (expired.code, expired.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "PLAN_EXPIRED")
    for requests in ([create("cp-0"), create("cp-9")], [create("cp-0")], [create("cp-0"), create("cp-1", "medium")]):
        mismatch = error(lambda requests=requests: create_vms(admin, parent, requests, **with_plan))
        assert (mismatch.code, mismatch.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "PLAN_MISMATCH"), requests
    for bad in ({"plan": f"{parent}/plans/{plan}"},  # INDEPENDENT
                {"mode": ALL_OR_NOTHING, "plan": f"tenants/{TENANT}/projects/other/plans/{plan}"},
                {"mode": ALL_OR_NOTHING, "plan": plan}):
        invalid = error(lambda bad=bad: create_vms(admin, parent, [create("cp-0"), create("cp-1")], **bad))
        assert invalid.code is grpc.StatusCode.INVALID_ARGUMENT and "plan" in [f for f, _ in invalid.field_violations]
    assert written(admin, parent) == (0, 0), "nothing written by a refused plan"
    assert hold_exists(system, plan)

    made = create_vms(admin, parent, [create("cp-0"), create("cp-1")], request_id="with-plan", **with_plan)
    set_name = made.set.name

    def placed() -> list[str] | None:
        vm_set = admin._call(admin._vms.GetVmSet, vm_pb2.GetVmSetRequest(name=set_name))
        if vm_set.state != vm_pb2.VmSet.PLACED:
            return None
        return [admin._call(admin._vms.GetVm, vm_pb2.GetVmRequest(name=f"{parent}/vms/{vm}")).host
                for vm in ("cp-0", "cp-1")]

    hosts = wait_until(placed, timeout=60, message="the plan's set placed",
                       seen=lambda: admin._call(admin._vms.GetVmSet, vm_pb2.GetVmSetRequest(name=set_name)))
    assert hosts == ["sim-00001", "sim-00001"], hosts
    assert not hold_exists(system, plan), "the set's bind consumed the hold"
    # A retry of the admitted create answers as the first did, though the hold is gone.
    again = create_vms(admin, parent, [create("cp-0"), create("cp-1")], request_id="with-plan", **with_plan)
    assert again.set.name == set_name
    assert written(admin, parent) == (2, 2)


def test_plan_vms_with_a_hold_then_its_create_lands_where_planned(system: LocalSystem, admin: Client) -> None:
    """PlanVms holds room for three host-anti-affine VMs; CreateVms with that plan
    binds each one on the host the plan named, and the hold is consumed."""
    name = f"p-{uuid.uuid4().hex[:8]}"
    admin.create_project(name, tenant=TENANT)
    parent = f"tenants/{TENANT}/projects/{name}"

    def requests() -> list[vm_pb2.CreateVmRequest]:
        return [vm_pb2.CreateVmRequest(vm_id=f"db-{i}", vm=vm_pb2.Vm(
            flavor="small", image="ubuntu", anti_affinity_group="db")) for i in range(3)]

    got = admin._call(admin._vms.PlanVms, vm_pb2.PlanVmsRequest(
        parent=parent, requests=requests(), hold=duration_pb2.Duration(seconds=120)), timeout=60)
    assert got.fits and got.plan.startswith(f"{parent}/plans/"), got
    planned = {p.vm.rsplit("/", 1)[1]: p.host.removeprefix("hosts/") for p in got.placements}
    assert len(set(planned.values())) == 3, planned
    plan_id = got.plan.rsplit("/", 1)[1]
    assert hold_exists(system, plan_id)
    made = create_vms(admin, parent, requests(), mode=ALL_OR_NOTHING, plan=got.plan)

    def hosts() -> dict[str, str] | None:
        vm_set = admin._call(admin._vms.GetVmSet, vm_pb2.GetVmSetRequest(name=made.set.name))
        if vm_set.state != vm_pb2.VmSet.PLACED:
            return None
        return {vm: admin._call(admin._vms.GetVm, vm_pb2.GetVmRequest(name=f"{parent}/vms/{vm}")).host
                for vm in planned}

    assert wait_until(hosts, timeout=60, message="the plan's set placed",
                      seen=lambda: admin._call(admin._vms.GetVmSet,
                                               vm_pb2.GetVmSetRequest(name=made.set.name))) == planned
    assert not hold_exists(system, plan_id)
