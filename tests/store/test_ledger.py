"""The usage ledger against a real etcd: concurrent creates through two frontends
never overshoot a project's quota, deletions give quota back, duplicates within one
group commit do not break the transaction, limit changes take effect at once even
though the ledger caches project state; and the tenancy store's ticket invariants."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest

from controlplane.etcd import EtcdClient
from controlplane.etcd.client import call_deadline
from controlplane.models import Resources, VmRef, VmSpec, now_ns
from controlplane.store.errors import AlreadyExists, NotFound
from controlplane.store.keys import Keys, shard_of
from controlplane.store.ledger import QUOTA_CONFLICTS, Charge, ProjectDeleting, QuotaExceeded, UsageLedger
from controlplane.store.tenancy import HoldsVms, QuotaInvalid, TenancyStore
from controlplane.store.vms import VmRecord, VmStore
from controlplane.tenancy import Limits, Project, Tenant, Usage

TENANT, PROJECT = "acme", "web"
SIZE = Resources(2, 2048, 20)
SHARDS = 4


def run(coro: Coroutine[Any, Any, Any], timeout: float = 60.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout=timeout))


def make_spec(vm_id: str, *, request_id: str = "", project: str = PROJECT, tenant: str = TENANT,
              resources: Resources = SIZE) -> VmSpec:
    uid = uuid.uuid4().hex
    return VmSpec(VmRef(tenant, project, vm_id), uid, "small", "ubuntu", resources, request_id=request_id,
                  create_time_ns=now_ns(), shard=shard_of(uid, SHARDS))


async def make_project(client: EtcdClient, keys: Keys, limits: Limits, *, tenant: str = TENANT,
                       project: str = PROJECT, ticket: Limits | None = None) -> TenancyStore:
    store = TenancyStore(client, keys)
    try:
        await store.create_tenant(Tenant(tenant, quota=ticket or Limits()))
    except AlreadyExists:
        pass
    await store.create_project(Project(tenant, project, quota=limits))
    return store


async def usage_of(client: EtcdClient, keys: Keys, tenant: str = TENANT, project: str = PROJECT) -> Usage:
    """The project's usage as stored: the sum of its stripes."""
    return (await TenancyStore(client, keys).usages(tenant)).get(project, Usage())


async def has_usage_keys(client: EtcdClient, keys: Keys, tenant: str, project: str) -> bool:
    kvs, _revision = await client.range_prefix(keys.usage_prefix(tenant, project))
    return bool(kvs)


async def vm_count(store: VmStore, tenant: str = TENANT, project: str = PROJECT) -> int:
    records, _next, _rev = await store.list(tenant, project, page_size=1000)
    return len(records)


def split(outcomes: list[object]) -> tuple[list[VmRecord], list[BaseException]]:
    made = [o[0] for o in outcomes if isinstance(o, tuple) and o[1]]
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    return made, errors


# --- (a) the quota race -----------------------------------------------------------------

@pytest.mark.parametrize("max_txn_ops", [None, 12], ids=["default-txn", "small-txn"])
def test_fifty_creates_on_two_frontends_make_exactly_the_quota(etcd_endpoint: str, root: str,
                                                                max_txn_ops: int | None) -> None:
    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint, max_txn_ops=max_txn_ops) as one, \
                EtcdClient(etcd_endpoint, max_txn_ops=max_txn_ops) as two:
            await make_project(one, keys, Limits(vms=10))
            front_a, front_b = VmStore(one, keys), VmStore(two, keys)
            creates = [(front_a if i % 2 else front_b).create(make_spec(f"vm-{i:02d}", request_id=f"r-{i}"))
                       for i in range(50)]
            outcomes = await asyncio.gather(*creates, return_exceptions=True)
            made, errors = split(outcomes)
            assert len(made) == 10
            assert len(errors) == 40 and all(isinstance(e, QuotaExceeded) for e in errors), errors
            assert all(e.dimensions == ["vms"] for e in errors)
            assert await usage_of(one, keys) == Usage(10, 20, 20480, 200) == Usage.of_vm(SIZE, 10)
            assert await vm_count(front_a) == 10
            # Exactly the VMs reported made exist (and are queued for scheduling).
            listed, _next, _rev = await front_b.list(TENANT, PROJECT, page_size=100)
            assert {r.spec.uid for r in listed} == {r.spec.uid for r in made}
            for record in made:
                assert await one.get(keys.queue(record.spec.shard, record.ref)) is not None

    run(main())


def test_quota_in_resource_dimensions(etcd_endpoint: str, root: str) -> None:
    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as one, EtcdClient(etcd_endpoint) as two:
            # 7 VMs' worth of memory, unlimited VM count.
            await make_project(one, keys, Limits(memory_mib=7 * 2048, vcpus=100))
            front_a, front_b = VmStore(one, keys), VmStore(two, keys)
            outcomes = await asyncio.gather(*((front_a, front_b)[i % 2].create(make_spec(f"vm-{i}"))
                                              for i in range(20)), return_exceptions=True)
            made, errors = split(outcomes)
            assert len(made) == 7 and len(errors) == 13
            assert all(isinstance(e, QuotaExceeded) and e.dimensions == ["memory_mib"] for e in errors)
            assert await usage_of(one, keys) == Usage.of_vm(SIZE, 7)

    run(main())


# --- (b) deletion releases quota --------------------------------------------------------

def test_deleting_pending_vms_releases_quota(etcd_endpoint: str, root: str) -> None:
    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as one, EtcdClient(etcd_endpoint) as two:
            await make_project(one, keys, Limits(vms=10))
            front_a, front_b = VmStore(one, keys), VmStore(two, keys)
            made = [(await front_a.create(make_spec(f"vm-{i}")))[0] for i in range(10)]
            with pytest.raises(QuotaExceeded):
                await front_a.create(make_spec("vm-over"))

            # Deleted through the other frontend: front_a's cached state is now stale.
            deletions = await asyncio.gather(*(front_b.request_delete(r.ref) for r in made[:3]))
            assert all(d.removed for d in deletions)
            assert await usage_of(one, keys) == Usage.of_vm(SIZE, 7)
            for record in made[:3]:
                with pytest.raises(NotFound):
                    await front_a.get(record.ref)

            outcomes = await asyncio.gather(*(front_a.create(make_spec(f"vm-new-{i}")) for i in range(5)),
                                            return_exceptions=True)
            new, errors = split(outcomes)
            assert len(new) == 3 and len(errors) == 2 and all(isinstance(e, QuotaExceeded) for e in errors)
            assert await usage_of(one, keys) == Usage.of_vm(SIZE, 10)
            assert await vm_count(front_a) == 10

            # Deleting again is idempotent and releases nothing twice.
            for record in made[3:]:
                await front_a.request_delete(record.ref)
            assert await usage_of(one, keys) == Usage.of_vm(SIZE, 3)
            with pytest.raises(NotFound):
                await front_b.request_delete(made[3].ref)
            assert await usage_of(one, keys) == Usage.of_vm(SIZE, 3)

    run(main())


def test_concurrent_creates_and_deletes_keep_usage_exact(etcd_endpoint: str, root: str) -> None:
    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as one, EtcdClient(etcd_endpoint) as two:
            await make_project(one, keys, Limits(vms=10))
            front_a, front_b = VmStore(one, keys), VmStore(two, keys)
            first = [(await front_a.create(make_spec(f"old-{i}")))[0] for i in range(10)]
            # Delete all ten on one frontend while the other tries twenty creates.
            deletes = [front_a.request_delete(r.ref) for r in first]
            creates = [front_b.create(make_spec(f"new-{i}")) for i in range(20)]
            outcomes = await asyncio.gather(*deletes, *creates, return_exceptions=True)
            assert not [o for o in outcomes[:10] if isinstance(o, BaseException)]
            made, errors = split(outcomes[10:])
            assert all(isinstance(e, QuotaExceeded) for e in errors)
            assert 0 <= len(made) <= 10 and len(made) + len(errors) == 20
            count = await vm_count(front_a)
            assert count == len(made)
            assert await usage_of(one, keys) == Usage.of_vm(SIZE, count)

    run(main())


# --- (c) duplicates within one group commit ---------------------------------------------

def test_same_name_and_same_request_in_one_burst(etcd_endpoint: str, root: str) -> None:
    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client:
            await make_project(client, keys, Limits(vms=50))
            store = VmStore(client, keys)
            # Warm the request-retention lease, so a burst reaches the ledger without
            # awaiting anything and lands in one pending batch.
            await store.create(make_spec("warm", request_id="warm"))

            same_name = [make_spec("twin") for _ in range(3)]
            same_request = [make_spec(f"retry-{i}", request_id="req-1") for i in range(3)]
            same_both = [make_spec("both", request_id="req-2") for _ in range(3)]
            others = [make_spec(f"other-{i}") for i in range(5)]
            outcomes = await asyncio.gather(*(store.create(s) for s in (*same_name, *same_request, *same_both,
                                                                         *others)),
                                            return_exceptions=True)

            name_outcomes, request_outcomes = outcomes[:3], outcomes[3:6]
            both_outcomes, other_outcomes = outcomes[6:9], outcomes[9:]
            # One VM under the name; the others are told it exists (not an etcd error).
            made, errors = split(name_outcomes)
            assert len(made) == 1 and len(errors) == 2
            assert all(type(e) is AlreadyExists for e in errors), errors
            # One VM for the request id; the retries return it, whatever name they asked for.
            made_req, errors = split(request_outcomes)
            assert not errors and len(made_req) == 1
            assert all(o[0].spec.uid == made_req[0].spec.uid for o in request_outcomes)
            made_both, errors = split(both_outcomes)
            assert not errors and len(made_both) == 1
            assert all(o[0] == made_both[0] for o in both_outcomes)
            assert len(split(other_outcomes)[0]) == 5

            assert await vm_count(store) == 1 + 1 + 1 + 1 + 5
            assert await usage_of(client, keys) == Usage.of_vm(SIZE, 9)
            # The retries under other names made nothing.
            for spec in same_request:
                if spec.uid != made_req[0].spec.uid:
                    with pytest.raises(NotFound):
                        await store.get(spec.ref)

    run(main())


def test_same_name_on_two_frontends(etcd_endpoint: str, root: str) -> None:
    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as one, EtcdClient(etcd_endpoint) as two:
            await make_project(one, keys, Limits(vms=5))
            front_a, front_b = VmStore(one, keys), VmStore(two, keys)
            outcomes = await asyncio.gather(*((front_a, front_b)[i % 2].create(make_spec("vm-x"))
                                              for i in range(6)), return_exceptions=True)
            made, errors = split(outcomes)
            assert len(made) == 1 and len(errors) == 5
            assert all(type(e) is AlreadyExists for e in errors), errors
            assert await usage_of(one, keys) == Usage.of_vm(SIZE, 1)

    run(main())


# --- (d) limit changes take effect at once ----------------------------------------------

def test_lowered_limit_is_respected_immediately(etcd_endpoint: str, root: str) -> None:
    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client, EtcdClient(etcd_endpoint) as admin_client:
            await make_project(client, keys, Limits(vms=10))
            admin = TenancyStore(admin_client, keys)
            store = VmStore(client, keys)
            made, errors = split(await asyncio.gather(*(store.create(make_spec(f"a-{i}")) for i in range(5)),
                                                      return_exceptions=True))
            assert len(made) == 5 and not errors  # the ledger now caches limit 10, usage 5

            await admin.update_project(TENANT, PROJECT, lambda p: p.with_(quota=Limits(vms=6)))
            made, errors = split(await asyncio.gather(*(store.create(make_spec(f"b-{i}")) for i in range(3)),
                                                      return_exceptions=True))
            assert len(made) == 1 and len(errors) == 2
            assert all(isinstance(e, QuotaExceeded) and e.limits == Limits(vms=6) for e in errors)
            assert await usage_of(client, keys) == Usage.of_vm(SIZE, 6)

            # Lowered below usage: nothing more fits, deletions still work.
            await admin.update_project(TENANT, PROJECT, lambda p: p.with_(quota=Limits(vms=2)))
            with pytest.raises(QuotaExceeded):
                await store.create(make_spec("c-0"))
            await store.request_delete(made[0].ref)
            assert await usage_of(client, keys) == Usage.of_vm(SIZE, 5)
            with pytest.raises(QuotaExceeded):
                await store.create(make_spec("c-1"))

    run(main())


def test_raised_limit_after_a_refusal_lets_the_next_create_through(etcd_endpoint: str, root: str) -> None:
    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client, EtcdClient(etcd_endpoint) as admin_client:
            await make_project(client, keys, Limits(vms=3))
            admin = TenancyStore(admin_client, keys)
            store = VmStore(client, keys)
            for i in range(3):
                await store.create(make_spec(f"a-{i}"))
            with pytest.raises(QuotaExceeded):
                await store.create(make_spec("refused"))  # the ledger caches: full at 3/3

            await admin.update_project(TENANT, PROJECT, lambda p: p.with_(quota=Limits(vms=5)))
            record, created = await store.create(make_spec("after-raise"))
            assert created and record.ref.vm_id == "after-raise"
            made, errors = split(await asyncio.gather(*(store.create(make_spec(f"b-{i}")) for i in range(3)),
                                                      return_exceptions=True))
            assert len(made) == 1 and len(errors) == 2
            assert await usage_of(client, keys) == Usage.of_vm(SIZE, 5)

            # Unlimited: everything fits.
            await admin.update_project(TENANT, PROJECT, lambda p: p.with_(quota=Limits()))
            made, errors = split(await asyncio.gather(*(store.create(make_spec(f"c-{i}")) for i in range(10)),
                                                      return_exceptions=True))
            assert len(made) == 10 and not errors
            assert await usage_of(client, keys) == Usage.of_vm(SIZE, 15)

    run(main())


def test_usage_changed_by_another_frontend_is_seen_before_refusing(etcd_endpoint: str, root: str) -> None:
    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as one, EtcdClient(etcd_endpoint) as two:
            await make_project(one, keys, Limits(vms=2))
            front_a, front_b = VmStore(one, keys), VmStore(two, keys)
            first, _ = await front_a.create(make_spec("a"))
            second, _ = await front_a.create(make_spec("b"))
            with pytest.raises(QuotaExceeded):
                await front_a.create(make_spec("c"))
            await front_b.request_delete(first.ref)  # front_a still caches 2/2
            record, created = await front_a.create(make_spec("d"))
            assert created and record.ref.vm_id == "d"
            assert await usage_of(one, keys) == Usage.of_vm(SIZE, 2)
            assert second.ref != record.ref

    run(main())


# --- (e) no such project ----------------------------------------------------------------

def test_create_in_a_missing_project_is_not_found(etcd_endpoint: str, root: str) -> None:
    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client:
            await make_project(client, keys, Limits(vms=5))
            store = VmStore(client, keys)
            with pytest.raises(NotFound):
                await store.create(make_spec("vm-1", project="nope"))
            with pytest.raises(NotFound):
                await store.create(make_spec("vm-1", tenant="nobody", project="nope"))
            outcomes = await asyncio.gather(*(store.create(make_spec(f"vm-{i}", project="nope"))
                                              for i in range(5)), return_exceptions=True)
            assert all(isinstance(o, NotFound) for o in outcomes), outcomes
            assert await vm_count(store, TENANT, "nope") == 0
            assert not await has_usage_keys(client, keys, TENANT, "nope")

    run(main())


def test_create_after_the_project_is_deleted_is_not_found(etcd_endpoint: str, root: str) -> None:
    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client, EtcdClient(etcd_endpoint) as admin_client:
            await make_project(client, keys, Limits(vms=5))
            store = VmStore(client, keys)
            record, _ = await store.create(make_spec("vm-1"))
            await store.request_delete(record.ref)  # the ledger caches the project as it was
            await TenancyStore(admin_client, keys).delete_project(TENANT, PROJECT)
            with pytest.raises(NotFound):
                await store.create(make_spec("vm-2"))
            assert await vm_count(store) == 0
            assert not await has_usage_keys(client, keys, TENANT, PROJECT)

    run(main())


def test_a_project_being_deleted_takes_no_new_vms(etcd_endpoint: str, root: str) -> None:
    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client, EtcdClient(etcd_endpoint) as admin_client:
            await make_project(client, keys, Limits())  # unlimited: a commit compares only its own stripe
            store = VmStore(client, keys)
            kept, _ = await store.create(make_spec("vm-1", request_id="req-1"))  # the ledger caches the project
            tenancy = TenancyStore(admin_client, keys)
            marked = await tenancy.mark_project_deleting(TENANT, PROJECT)
            assert marked.deleting
            assert (await tenancy.mark_project_deleting(TENANT, PROJECT)) == marked  # idempotent
            with pytest.raises(ProjectDeleting):
                await store.create(make_spec("vm-2"))
            outcomes = await asyncio.gather(*(store.create(make_spec(f"c-{i}")) for i in range(10)),
                                            return_exceptions=True)
            assert all(isinstance(o, ProjectDeleting) for o in outcomes), outcomes
            # A retry of a create that succeeded before still gets its VM; deletions go on.
            again, created = await store.create(make_spec("vm-1", request_id="req-1"))
            assert (again.spec.uid, created) == (kept.spec.uid, False)
            await store.request_delete(kept.ref)
            assert (await usage_of(client, keys)).vms == 0
            await tenancy.delete_project(TENANT, PROJECT)
            with pytest.raises(NotFound):
                await store.create(make_spec("vm-3"))
            with pytest.raises(NotFound):
                await tenancy.mark_project_deleting(TENANT, PROJECT)

    run(main())


# --- (f) tenancy invariants -------------------------------------------------------------

def test_project_limits_must_fit_the_tenant_ticket(etcd_endpoint: str, root: str) -> None:
    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client:
            store = TenancyStore(client, keys)
            await store.create_tenant(Tenant(TENANT, quota=Limits(vms=20, vcpus=40)))

            with pytest.raises(QuotaInvalid) as caught:  # vcpus left unlimited
                await store.create_project(Project(TENANT, "p1", quota=Limits(vms=5)))
            assert [f for f, _why in caught.value.violations] == ["quota.vcpus"]
            with pytest.raises(QuotaInvalid) as caught:  # nothing limited at all
                await store.create_project(Project(TENANT, "p1"))
            assert {f for f, _why in caught.value.violations} == {"quota.vms", "quota.vcpus"}
            with pytest.raises(QuotaInvalid) as caught:  # more than the whole ticket
                await store.create_project(Project(TENANT, "p1", quota=Limits(vms=21, vcpus=10)))
            assert [f for f, _why in caught.value.violations] == ["quota.vms"]
            with pytest.raises(NotFound):
                await store.get_project(TENANT, "p1")

            await store.create_project(Project(TENANT, "p1", quota=Limits(vms=15, vcpus=30)))
            tenant, _rev = await store.get_tenant(TENANT)
            assert tenant.allocated == Usage(vms=15, vcpus=30)
            with pytest.raises(QuotaInvalid) as caught:  # over what is left (5 VMs)
                await store.create_project(Project(TENANT, "p2", quota=Limits(vms=6, vcpus=5)))
            assert [f for f, _why in caught.value.violations] == ["quota.vms"]
            assert "(5)" in caught.value.violations[0][1]
            await store.create_project(Project(TENANT, "p2", quota=Limits(vms=5, vcpus=10, memory_mib=4096)))
            tenant, _rev = await store.get_tenant(TENANT)
            assert tenant.allocated == Usage(vms=20, vcpus=40, memory_mib=4096)

            # Raising a project beyond the ticket is refused too, and changes nothing.
            with pytest.raises(QuotaInvalid):
                await store.update_project(TENANT, "p1", lambda p: p.with_(quota=Limits(vms=16, vcpus=30)))
            with pytest.raises(QuotaInvalid):
                await store.update_project(TENANT, "p1", lambda p: p.with_(quota=Limits(vms=15)))
            assert (await store.get_project(TENANT, "p1"))[0].quota == Limits(vms=15, vcpus=30)
            assert (await store.get_tenant(TENANT))[0].allocated == Usage(vms=20, vcpus=40, memory_mib=4096)
            # Lowering one project makes room for the other.
            await store.update_project(TENANT, "p1", lambda p: p.with_(quota=Limits(vms=10, vcpus=30)))
            await store.update_project(TENANT, "p2", lambda p: p.with_(quota=Limits(vms=10, vcpus=10)))
            assert (await store.get_tenant(TENANT))[0].allocated == Usage(vms=20, vcpus=40)

    run(main())


def test_concurrent_project_creates_cannot_over_allocate_the_ticket(etcd_endpoint: str, root: str) -> None:
    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as one, EtcdClient(etcd_endpoint) as two:
            stores = (TenancyStore(one, keys), TenancyStore(two, keys))
            await stores[0].create_tenant(Tenant(TENANT, quota=Limits(vms=10)))
            outcomes = await asyncio.gather(*(stores[i % 2].create_project(Project(TENANT, f"p{i}",
                                                                                   quota=Limits(vms=3)))
                                              for i in range(6)), return_exceptions=True)
            created = [o for o in outcomes if isinstance(o, int)]
            refused = [o for o in outcomes if isinstance(o, BaseException)]
            assert len(created) == 3 and len(refused) == 3
            assert all(isinstance(e, QuotaInvalid) for e in refused), refused
            tenant, _rev = await stores[0].get_tenant(TENANT)
            assert tenant.allocated == Usage(vms=9)
            projects, _rev = await stores[1].list_projects(TENANT)
            assert len(projects) == 3

    run(main())


def test_ticket_cannot_go_below_what_is_allocated(etcd_endpoint: str, root: str) -> None:
    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client:
            store = TenancyStore(client, keys)
            await store.create_tenant(Tenant(TENANT, quota=Limits(vms=20)))
            await store.create_project(Project(TENANT, "p1", quota=Limits(vms=12)))

            with pytest.raises(QuotaInvalid) as caught:
                await store.set_ticket(TENANT, Limits(vms=11))
            assert [f for f, _why in caught.value.violations] == ["limits.vms"]
            with pytest.raises(QuotaInvalid) as caught:  # p1 is unlimited in vcpus
                await store.set_ticket(TENANT, Limits(vms=20, vcpus=100))
            assert [f for f, _why in caught.value.violations] == ["limits.vcpus"]
            assert "p1" in caught.value.violations[0][1]
            assert (await store.get_tenant(TENANT))[0].quota == Limits(vms=20)

            tenant, _rev = await store.set_ticket(TENANT, Limits(vms=12))  # exactly what is allocated
            assert tenant.quota == Limits(vms=12)
            with pytest.raises(QuotaInvalid):
                await store.create_project(Project(TENANT, "p2", quota=Limits(vms=1)))
            tenant, _rev = await store.set_ticket(TENANT, Limits())  # unlimited again
            await store.create_project(Project(TENANT, "p2"))

    run(main())


def test_delete_project_waits_for_its_vms_and_returns_its_limits(etcd_endpoint: str, root: str) -> None:
    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client:
            tenancy = TenancyStore(client, keys)
            await tenancy.create_tenant(Tenant(TENANT, quota=Limits(vms=20, vcpus=100)))
            await tenancy.create_project(Project(TENANT, PROJECT, quota=Limits(vms=8, vcpus=40)))
            await tenancy.create_project(Project(TENANT, "keep", quota=Limits(vms=4, vcpus=10)))
            vms = VmStore(client, keys)
            records = [(await vms.create(make_spec(f"vm-{i}", request_id=f"r-{i}")))[0] for i in range(3)]

            with pytest.raises(HoldsVms) as caught:
                await tenancy.delete_project(TENANT, PROJECT)
            assert caught.value.vms == 3
            assert (await tenancy.get_project(TENANT, PROJECT))[0].quota == Limits(vms=8, vcpus=40)
            assert (await tenancy.get_tenant(TENANT))[0].allocated == Usage(vms=12, vcpus=50)

            for record in records[:2]:
                await vms.request_delete(record.ref)
            with pytest.raises(HoldsVms) as caught:
                await tenancy.delete_project(TENANT, PROJECT)
            assert caught.value.vms == 1
            await vms.request_delete(records[2].ref)

            deleted = await tenancy.delete_project(TENANT, PROJECT)
            assert deleted.project_id == PROJECT
            with pytest.raises(NotFound):
                await tenancy.get_project(TENANT, PROJECT)
            assert not await has_usage_keys(client, keys, TENANT, PROJECT)
            assert await client.get(keys.request(TENANT, PROJECT, "r-0")) is None  # request records went too
            tenant, _rev = await tenancy.get_tenant(TENANT)
            assert tenant.allocated == Usage(vms=4, vcpus=10)
            assert set(await tenancy.usages(TENANT)) == set()  # "keep" never held a VM: no stripes
            assert (await tenancy.get_project(TENANT, "keep"))[0].quota == Limits(vms=4, vcpus=10)
            with pytest.raises(NotFound):
                await tenancy.delete_project(TENANT, PROJECT)

            # The freed ticket can be given out again; the same name starts from zero.
            await tenancy.create_project(Project(TENANT, PROJECT, quota=Limits(vms=16, vcpus=90)))
            assert await usage_of(client, keys) == Usage()
            record, created = await vms.create(make_spec("vm-0", request_id="r-0"))
            assert created and record.spec.request_id == "r-0"

    run(main())


class _PausingClient(EtcdClient):
    """A real client that runs ``after_projects_listed`` (once) right after it lists a
    tenant's projects: a deterministic interleaving of another writer, no sleeps."""

    after_projects_listed: Callable[[], Awaitable[None]] | None = None

    async def _after(self, keys: list[bytes]) -> None:
        hook = self.after_projects_listed
        if hook is not None and any(b"/projects/" in key for key in keys):
            self.after_projects_listed = None
            await hook()

    async def range_prefix(self, prefix: bytes, *, revision: int = 0):
        result = await super().range_prefix(prefix, revision=revision)
        await self._after([prefix])
        return result

    async def txn(self, compares, success, failure=()):
        result = await super().txn(compares, success, failure)
        reads = [op.request_range.key for op in (*success, *failure) if op.HasField("request_range")]
        await self._after(reads)
        return result


def test_set_ticket_cannot_miss_a_project_made_meanwhile(etcd_endpoint: str, root: str) -> None:
    """A ticket that limits vcpus must not be set while some project is unlimited in
    vcpus, even when that project is created between set_ticket's read of the project
    list and its write of the tenant."""
    async def main() -> None:
        keys = Keys(root)
        async with _PausingClient(etcd_endpoint) as client, EtcdClient(etcd_endpoint) as other_client:
            store, other = TenancyStore(client, keys), TenancyStore(other_client, keys)
            await store.create_tenant(Tenant(TENANT, quota=Limits(vms=20)))
            await store.create_project(Project(TENANT, "p1", quota=Limits(vms=5, vcpus=10)))

            async def create_meanwhile() -> None:
                # Allowed now: the ticket does not limit vcpus yet.
                await other.create_project(Project(TENANT, "p2", quota=Limits(vms=5)))

            client.after_projects_listed = create_meanwhile
            try:
                await store.set_ticket(TENANT, Limits(vms=20, vcpus=100))
            except QuotaInvalid:
                pass
            assert client.after_projects_listed is None, "the interleaving did not happen"
            tenant, _rev = await store.get_tenant(TENANT)
            projects = [p for p, _rev in (await store.list_projects(TENANT))[0]]
            assert {p.project_id for p in projects} == {"p1", "p2"}
            unlimited = [p.project_id for p in projects if p.quota.vcpus is None]
            assert tenant.quota.vcpus is None or not unlimited, (
                f"the ticket limits vcpus to {tenant.quota.vcpus} but {unlimited} are unlimited in vcpus")

    run(main())


# --- usage stripes ----------------------------------------------------------------------


def test_frontends_on_different_stripes_do_not_conflict_on_an_unlimited_project(etcd_endpoint: str,
                                                                                   root: str) -> None:
    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as c1, EtcdClient(etcd_endpoint) as c2:
            await make_project(c1, keys, Limits())
            stores = [VmStore(c1, keys, ledger=UsageLedger(c1, keys, stripe=1)),
                      VmStore(c2, keys, ledger=UsageLedger(c2, keys, stripe=2))]
            conflicts = QUOTA_CONFLICTS._value.get()
            await asyncio.gather(*(stores[i % 2].create(make_spec(f"vm-{i}")) for i in range(60)))
            assert QUOTA_CONFLICTS._value.get() == conflicts
            kvs, _revision = await c1.range_prefix(keys.usage_prefix(TENANT, PROJECT))
            assert [kv.key.rsplit(b"/", 1)[1] for kv in kvs] == [b"01", b"02"]
            assert await usage_of(c1, keys) == Usage.of_vm(make_spec("x").resources, 60)

    run(main())


def test_a_limit_set_later_counts_every_stripe(etcd_endpoint: str, root: str) -> None:
    """Usage charged on several stripes while the project was unlimited all counts
    against a limit set afterwards, whichever frontend checks it."""
    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as c1, EtcdClient(etcd_endpoint) as c2:
            tenancy = await make_project(c1, keys, Limits())
            one = VmStore(c1, keys, ledger=UsageLedger(c1, keys, stripe=1))
            two = VmStore(c2, keys, ledger=UsageLedger(c2, keys, stripe=2))
            for i in range(3):
                await one.create(make_spec(f"a-{i}"))
                await two.create(make_spec(f"b-{i}"))
            await tenancy.update_project(TENANT, PROJECT, lambda p: p.with_(quota=Limits(vms=7)))
            await one.create(make_spec("a-last"))
            with pytest.raises(QuotaExceeded):
                await two.create(make_spec("b-over"))
            with pytest.raises(QuotaExceeded):
                await one.create(make_spec("a-over"))
            assert (await usage_of(c1, keys)).vms == 7

    run(main())


def test_creates_with_large_bootstrap_data_are_batched_under_etcds_request_limit():
    """etcd's default --max-request-bytes is 1.5 MiB; 40 concurrent creates with 60 KiB
    of user data each (2.4 MiB) must not go in one group commit, or etcd refuses it
    ("request is too large") and every create of the batch fails."""
    from controlplane.etcd.client import DEFAULT_MAX_REQUEST_BYTES
    from controlplane.etcd.server import EtcdServer
    from controlplane.models import BootstrapFormat
    from controlplane.store import bootstrap

    server = EtcdServer(max_request_bytes=DEFAULT_MAX_REQUEST_BYTES).start()
    try:
        async def scenario() -> None:
            keys = Keys(f"/big-{uuid.uuid4().hex[:8]}")
            async with EtcdClient(server.endpoint, max_txn_ops=4096,
                                  max_request_bytes=DEFAULT_MAX_REQUEST_BYTES) as client:
                await make_project(client, keys, Limits())
                store = VmStore(client, keys)

                async def create(i: int) -> None:
                    spec = make_spec(f"big-{i:02d}")
                    data = bootstrap.BootstrapData(spec.uid, BootstrapFormat.CLOUD_INIT, bytes([i]) * 60 * 1024)
                    await store.create(spec, also=[bootstrap.put_op(keys, spec.ref, data)])

                await asyncio.gather(*(create(i) for i in range(40)))
                assert (await usage_of(client, keys)).vms == 40
                kvs, _revision = await client.range_prefix(keys._k("bootstrap/"))
                assert len(kvs) == 40
        run(scenario())
    finally:
        server.stop()


def test_an_outcome_whose_caller_is_gone_is_not_an_unretrieved_error(etcd_endpoint: str, root: str,
                                                                       caplog) -> None:
    """A caller (with a call deadline, so it waits on its batch through a shield) is
    cancelled before its batch fails: the failure reaches nobody, and is not logged as
    asyncio's "Future exception was never retrieved" (a slow etcd made thousands)."""
    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client:
            ledger = UsageLedger(client, keys)
            call_deadline.set(time.monotonic() + 30)
            gone = asyncio.create_task(ledger.apply(TENANT, "nope", Charge(Usage(vms=1))))
            await asyncio.sleep(0)  # one turn: it has queued its charge and waits for the batch
            gone.cancel()
            assert (await asyncio.gather(gone, return_exceptions=True))[0].__class__ is asyncio.CancelledError
            with pytest.raises(NotFound):  # same lane, later or same batch: the first one has failed by now
                await ledger.apply(TENANT, "nope", Charge(Usage(vms=1)))
        del gone
        gc.collect()

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        run(main())
    unretrieved = [r.getMessage() for r in caplog.records if "never retrieved" in r.getMessage()]
    assert not unretrieved, unretrieved
