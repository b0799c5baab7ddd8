"""All-or-nothing sets against a real etcd (controlplane/store/vmsets.py): a set is
admitted in one revision (every member, the set's record, the quota) or not at all
(over quota, a member's name taken), a retry with its request_id returns the same set,
and a set larger than one etcd transaction is refused, measured on the ops built."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Coroutine
from typing import Any

import pytest

from controlplane.etcd import EtcdClient, EtcdError, ops, prefix_end
from controlplane.etcd.server import ETCD_MAX_TXN_OPS
from controlplane.models import BootstrapFormat, Resources, VmRef, VmSet, VmSetRef, VmSpec, VmState, now_ns
from controlplane.store import idempotency
from controlplane.store.bootstrap import BootstrapData
from controlplane.store.errors import AlreadyExists, RequestMismatch
from controlplane.store.keys import Keys, shard_of
from controlplane.store.ledger import QuotaExceeded, UsageLedger
from controlplane.store.retention import RetentionLeases
from controlplane.store.tenancy import TenancyStore
from controlplane.store.vms import VmStore
from controlplane.store.vmsets import Member, SetTooLarge, VmSetStore, admission, most_members
from controlplane.tenancy import Limits, Project, Tenant, Usage

TENANT, PROJECT = "acme", "web"
SIZE = Resources(2, 2048, 20)
SHARDS = 4


def run(coro: Coroutine[Any, Any, Any], timeout: float = 120.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout=timeout))


async def setup(client: EtcdClient, keys: Keys, limits: Limits | None = None) -> tuple[VmStore, VmSetStore]:
    tenancy = TenancyStore(client, keys)
    await tenancy.create_tenant(Tenant(TENANT))
    await tenancy.create_project(Project(TENANT, PROJECT, quota=limits or Limits()))
    ledger = UsageLedger(client, keys)
    requests = RetentionLeases(client)
    return VmStore(client, keys, requests, ledger), VmSetStore(client, keys, requests, ledger)


def make_set(n: int, *, set_id: str = "", request_id: str = "", bootstrap: int = 0,
             prefix: str = "m") -> tuple[VmSet, list[Member]]:
    """A set of ``n`` members (the first ``bootstrap`` of them with bootstrap data)."""
    uid = uuid.uuid4().hex
    shard = shard_of(uid, SHARDS)
    ref = VmSetRef(TENANT, PROJECT, set_id or f"set-{uid[:8]}")
    at = now_ns()
    members = []
    for i in range(n):
        vm_uid = uuid.uuid4().hex
        spec = VmSpec(VmRef(TENANT, PROJECT, f"{prefix}-{i}"), vm_uid, "small", "ubuntu", SIZE, create_time_ns=at,
                      shard=shard, vm_set=ref.set_id)
        data = BootstrapData(vm_uid, BootstrapFormat.CLOUD_INIT, b"#cloud-config\n") if i < bootstrap else None
        members.append(Member(spec, data))
    vm_set = VmSet(ref, uid, tuple(m.spec.ref.vm_id for m in members), shard, create_time_ns=at,
                   deadline_ns=at + 600 * 10**9, request_id=request_id)
    return vm_set, members


def fingerprint(members: list[Member], set_id: str = "") -> bytes:
    return idempotency.set_fingerprint([idempotency.fingerprint(m.spec, chosen_id=True) for m in members],
                                       set_id=set_id, deadline_s=600)


async def stored(client: EtcdClient, root: str) -> dict[bytes, int]:
    """Every key under the test's root but the tenant's and project's records, with its
    mod_revision."""
    kvs, _ = await client.range_prefix(root.encode() + b"/")
    return {kv.key: kv.mod_revision for kv in kvs if b"/v1/tenants/" not in kv.key and b"/v1/projects/" not in kv.key}


def test_a_set_is_admitted_in_one_revision(etcd_endpoint: str, root: str) -> None:
    async def main() -> None:
        async with EtcdClient(etcd_endpoint) as client:
            keys = Keys(root)
            vms, sets = await setup(client, keys)
            vm_set, members = make_set(5, bootstrap=2, request_id="r-1")
            admitted = await sets.admit(vm_set, members, fingerprint=fingerprint(members))
            assert admitted.created and len(admitted.vms) == 5
            rev = admitted.revision
            # Read back at that one revision: every member's spec, status, queue entry
            # (all in the set's shard), the two bootstrap keys, the set and the usage.
            read = await client.txn([], [
                *(ops.get(keys.vm_prefix(m.spec.ref), prefix_end(keys.vm_prefix(m.spec.ref)), revision=rev)
                  for m in members),
                *(ops.get(keys.queue(vm_set.shard, m.spec.ref), revision=rev) for m in members),
                *(ops.get(keys.bootstrap(m.spec.ref), revision=rev) for m in members),
                ops.get(keys.vm_set(TENANT, PROJECT, vm_set.ref.set_id), revision=rev),
                ops.get(keys.usage_prefix(TENANT, PROJECT), prefix_end(keys.usage_prefix(TENANT, PROJECT)),
                        revision=rev),
                ops.get(keys.request(TENANT, PROJECT, "r-1"), revision=rev),
            ])
            n = len(members)
            for i, m in enumerate(members):
                pair = read.kvs(i)
                assert [kv.mod_revision for kv in pair] == [rev, rev], m.spec.ref
                spec = VmSpec.from_bytes(next(kv for kv in pair if kv.key.endswith(b"/spec")).value)
                assert (spec.vm_set, spec.shard) == (vm_set.ref.set_id, vm_set.shard)
                assert [kv.mod_revision for kv in read.kvs(n + i)] == [rev]
                assert [kv.mod_revision for kv in read.kvs(2 * n + i)] == ([rev] if i < 2 else [])
            (set_kv,) = read.kvs(3 * n)
            assert set_kv.mod_revision == rev
            assert VmSet.from_bytes(vm_set.ref, set_kv.value) == vm_set
            (usage_kv,) = read.kvs(3 * n + 1)
            assert usage_kv.mod_revision == rev
            assert Usage.from_bytes(usage_kv.value) == Usage.of_vm(SIZE, 5)
            assert [kv.mod_revision for kv in read.kvs(3 * n + 2)] == [rev]
            # The members read back as PENDING VMs of the set.
            got = await sets.members(vm_set)
            assert [r.spec.ref for r in got] == [m.spec.ref for m in members]
            assert {r.state for r in got} == {VmState.PENDING}
            one = await vms.get(members[0].spec.ref)
            assert one.spec.vm_set == vm_set.ref.set_id
            assert (await sets.get(vm_set.ref))[1] == rev

    run(main())


def test_a_set_over_quota_writes_nothing(etcd_endpoint: str, root: str) -> None:
    async def main() -> None:
        async with EtcdClient(etcd_endpoint) as client:
            keys = Keys(root)
            vms, sets = await setup(client, keys, Limits(vms=4))
            vm_set, members = make_set(5, bootstrap=1, request_id="r-over")
            with pytest.raises(QuotaExceeded) as refused:
                await sets.admit(vm_set, members, fingerprint=fingerprint(members))
            assert refused.value.dimensions == ["vms"] and refused.value.usage.vms == 5
            assert await stored(client, root) == {}
            assert await client.get(keys.request(TENANT, PROJECT, "r-over")) is None
            # Four fit: the same quota takes a set of four whole.
            vm_set, members = make_set(4)
            assert (await sets.admit(vm_set, members)).created

    run(main())


def test_a_retry_with_the_sets_request_id_returns_the_same_set(etcd_endpoint: str, root: str) -> None:
    async def main() -> None:
        async with EtcdClient(etcd_endpoint) as client:
            keys = Keys(root)
            _vms, sets = await setup(client, keys, Limits(vms=3))
            vm_set, members = make_set(3, set_id="ctl", request_id="r-same")
            first = await sets.admit(vm_set, members, fingerprint=fingerprint(members, "ctl"))
            # The retry builds new uids (as a frontend does); the quota is full now.
            again_set, again_members = make_set(3, set_id="ctl", request_id="r-same")
            again = await sets.admit(again_set, again_members, fingerprint=fingerprint(again_members, "ctl"))
            assert not again.created
            assert again.vm_set == first.vm_set
            assert [r.spec.uid for r in again.vms] == [m.spec.uid for m in members]
            usage = (await TenancyStore(client, keys).usages(TENANT))[PROJECT]
            assert usage == Usage.of_vm(SIZE, 3)  # charged once
            # The same request_id for another set is refused, naming what it made.
            other_set, other_members = make_set(2, set_id="ctl", request_id="r-same", prefix="o")
            with pytest.raises(RequestMismatch) as mismatch:
                await sets.admit(other_set, other_members, fingerprint=fingerprint(other_members, "ctl"))
            assert mismatch.value.made == vm_set.ref.name

    run(main())


def test_a_taken_member_name_admits_nothing(etcd_endpoint: str, root: str) -> None:
    async def main() -> None:
        async with EtcdClient(etcd_endpoint) as client:
            keys = Keys(root)
            vms, sets = await setup(client, keys)
            vm_set, members = make_set(4, request_id="r-taken", bootstrap=4)
            taken = members[2].spec
            uid = uuid.uuid4().hex
            await vms.create(VmSpec(taken.ref, uid, "small", "ubuntu", SIZE, create_time_ns=now_ns(),
                                    shard=shard_of(uid, SHARDS)))
            before = await stored(client, root)
            with pytest.raises(AlreadyExists) as refused:
                await sets.admit(vm_set, members, fingerprint=fingerprint(members))
            assert str(refused.value) == taken.ref.name
            assert await stored(client, root) == before
            assert await client.get(keys.request(TENANT, PROJECT, "r-taken")) is None
            # And a set whose own name is taken.
            vm_set2, members2 = make_set(1, set_id="dup", prefix="a")
            await sets.admit(vm_set2, members2)
            vm_set3, members3 = make_set(1, set_id="dup", prefix="b")
            with pytest.raises(AlreadyExists) as refused:
                await sets.admit(vm_set3, members3)
            assert str(refused.value) == vm_set3.ref.name
            assert not (await vms.names_taken([members3[0].spec.ref]))[0]

    run(main())


@pytest.mark.parametrize("limit", [128, ETCD_MAX_TXN_OPS])
def test_a_set_larger_than_one_txn_is_refused_and_the_largest_fits(etcd_endpoint: str, root: str,
                                                                    limit: int) -> None:
    """The client's max_txn_ops (the server's --max-txn-ops, or less) bounds a set; the
    largest set measured to fit commits on the real etcd, one more is refused before
    any write. At the server's own limit, the measure is exact: etcd itself refuses a
    set one larger."""
    most, most_b = most_members(limit, with_bootstrap=False), most_members(limit, with_bootstrap=True)
    assert 1 <= most_b < most

    async def main() -> None:
        async with EtcdClient(etcd_endpoint, max_txn_ops=limit) as client:
            keys = Keys(root)
            _vms, sets = await setup(client, keys)
            audit = [ops.put(keys.audit(TENANT, 1, "x"), b"")]
            for n, with_bootstrap in ((most, 0), (most_b, most_b)):
                before = await stored(client, root)
                vm_set, members = make_set(n + 1, request_id=f"r-{n}", bootstrap=with_bootstrap, prefix=f"x{n}")
                with pytest.raises(SetTooLarge) as refused:
                    await sets.admit(vm_set, members, also=audit, fingerprint=fingerprint(members))
                assert (refused.value.most, refused.value.most_with_bootstrap, refused.value.limit) == \
                    (most, most_b, limit)
                assert f"at most {most} VMs per set ({most_b} when every VM has bootstrap data)" in \
                    str(refused.value)
                if limit == ETCD_MAX_TXN_OPS:
                    # Past our check, etcd refuses it itself: the measure is not too strict.
                    charge = admission(keys, vm_set, members, also=audit, request=(
                        keys.request(TENANT, PROJECT, "x"), ops.put(keys.request(TENANT, PROJECT, "x"), b"")))
                    with pytest.raises(EtcdError, match="too many operations"):
                        await sets._ledger.apply(TENANT, PROJECT, charge)
                assert await stored(client, root) == before
                vm_set, members = make_set(n, request_id=f"ok-{n}", bootstrap=with_bootstrap, prefix=f"y{n}")
                assert sets.too_large(vm_set, members, also=audit) is None
                admitted = await sets.admit(vm_set, members, also=audit, fingerprint=fingerprint(members))
                assert admitted.created and len(await sets.members(vm_set)) == n

    run(main())


@pytest.mark.parametrize("limit", [128, ETCD_MAX_TXN_OPS])
def test_sets_and_single_creates_share_group_commits_within_the_limit(etcd_endpoint: str, root: str,
                                                                      limit: int) -> None:
    """The ledger batches charges by what etcd counts (a set's nested txn included):
    the largest sets racing single creates all commit, each whole (at the server's own
    limit, a batch counted without the nested txn is refused by etcd)."""
    most = most_members(limit, with_bootstrap=False)

    async def main() -> None:
        async with EtcdClient(etcd_endpoint, max_txn_ops=limit) as client:
            keys = Keys(root)
            vms, sets = await setup(client, keys)
            made = [make_set(most, prefix=f"s{i}") for i in range(3)]
            singles = [VmSpec(VmRef(TENANT, PROJECT, f"one-{i}"), uid, "small", "ubuntu", SIZE,
                              create_time_ns=now_ns(), shard=shard_of(uid, SHARDS))
                       for i, uid in enumerate(uuid.uuid4().hex for _ in range(600))]
            outcomes = await asyncio.gather(*(vms.create(spec) for spec in singles[:300]),
                                            *(sets.admit(s, m) for s, m in made),
                                            *(vms.create(spec) for spec in singles[300:]))
            assert all(o[1] for o in outcomes[:300] + outcomes[303:])
            for (vm_set, _members), admitted in zip(made, outcomes[300:303], strict=True):
                assert admitted.created
                assert {r.spec_revision for r in await sets.members(vm_set)} == {admitted.revision}
            usage = (await TenancyStore(client, keys).usages(TENANT))[PROJECT]
            assert usage == Usage.of_vm(SIZE, 600 + 3 * most)

    run(main())


def test_a_set_made_with_a_plan_is_admitted_only_while_the_plan_is_held(etcd_endpoint: str, root: str) -> None:
    """The plan's hold is compared in the admission txn, not only checked before it: a
    hold that ends between the frontend's check and the admission admits nothing."""
    from dataclasses import replace

    from controlplane.store.errors import PlanEnded

    async def main() -> None:
        async with EtcdClient(etcd_endpoint) as client:
            keys = Keys(root)
            _vms, sets = await setup(client, keys)
            vm_set, members = make_set(2, request_id="planned")
            members = [Member(replace(m.spec, plan="plan-0123456789abcdef"), m.bootstrap) for m in members]
            lease, _ttl = await client.grant(60)
            await client.put(keys.hold("plan-0123456789abcdef"), b"held", lease=lease)
            await client.revoke(lease)  # the hold ends (as its lease would) after the check
            before = await stored(client, root)
            with pytest.raises(PlanEnded):
                await sets.admit(vm_set, members, fingerprint=fingerprint(members))
            assert await stored(client, root) == before
            # Held: admitted.
            await client.put(keys.hold("plan-0123456789abcdef"), b"held")
            admitted = await sets.admit(vm_set, members, fingerprint=fingerprint(members))
            assert admitted.created and [r.spec.plan for r in admitted.vms] == ["plan-0123456789abcdef"] * 2

    run(main())
