"""Orphans need proof, against a real etcd and the sim driver: every txn that takes a
VM off a host writes its tombstone; an agent destroys a VM no binding wants only by
its tombstone and quarantines the others (reported, never destroyed) until an
operator adopts (quota charged) or destroys them."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Coroutine
from typing import Any

import pytest

from agents import metrics
from agents.drivers.protocol import HostCapacity, VmRequest
from agents.drivers.sim import SimHypervisor
from agents.orphans import OrphanKeeper, sort_unknown
from controlplane.etcd import EtcdClient, Lease
from controlplane.gen.quanta.store.v1 import records_pb2 as rec
from controlplane.models import Binding, HostAllocation, Resources, VmRef, VmSpec, VmState, now_ns
from controlplane.store.errors import AlreadyExists, NotFound
from controlplane.store.hostagent import AgentStore, BoundVm
from controlplane.store.keys import Keys, shard_of
from controlplane.store.ledger import QuotaExceeded, UsageLedger
from controlplane.store.lifecycle import LifecycleStore
from controlplane.store.orphans import OrphanStore, spec_record
from controlplane.store.scheduling import HostBind, SchedulingStore
from controlplane.store.tenancy import TenancyStore
from controlplane.store.vms import VmStore
from controlplane.tenancy import Limits, Project
from tests.conftest import async_wait_until, make_projects, running

SMALL = Resources(1, 1024, 10)
HOST = "h1"


def run(coro: Coroutine[Any, Any, Any], timeout: float = 30.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout=timeout))


def make_spec(vm_id: str, project: str = "web") -> VmSpec:
    uid = uuid.uuid4().hex
    return VmSpec(VmRef("acme", project, vm_id), uid, "small", "ubuntu", SMALL, create_time_ns=now_ns(),
                  shard=shard_of(uid, 1))


def request(spec: VmSpec) -> VmRequest:
    return VmRequest(spec.uid, spec.ref.name, spec.image, spec.resources.vcpus, spec.resources.memory_mib,
                     spec.resources.disk_gib, record=spec_record(spec))


@pytest.fixture(autouse=True)
def _project(etcd_endpoint: str, root: str) -> None:
    make_projects(etcd_endpoint, root, "acme", "web")


async def bind(client: EtcdClient, keys: Keys, specs: list[VmSpec]) -> list[BoundVm]:
    vms, sched = VmStore(client, keys), SchedulingStore(client, keys)
    for spec in specs:
        await vms.create(spec)
    queued = {q.spec.ref: q for q in (await sched.list_queue(0))[0]}
    allocation = HostAllocation()
    for spec in specs:
        allocation = allocation.plus(spec.resources)
    current = await sched.read_current([HOST], [])
    assert (await sched.bind(None, [HostBind(HOST, current[0][HOST][1], allocation,
                                             [queued[s.ref] for s in specs])])).committed == [True]
    return (await LifecycleStore(client, keys).host_bindings(HOST)).bound


async def tombstone(client: EtcdClient, keys: Keys, uid: str) -> str | None:
    kv = await client.get(keys.tombstone(HOST, uid))
    return rec.Tombstone.FromString(kv.value).reason if kv else None


def test_the_rule_destroys_only_what_a_tombstone_condemns() -> None:
    found = [("h1", "a"), ("h1", "b"), ("h2", "a")]
    assert sort_unknown(found, {("h1", "a")}) == ([("h1", "a")], [("h1", "b"), ("h2", "a")])
    assert sort_unknown(found, set()) == ([], found)  # a restored store: nothing destroyed


def test_removal_and_moves_off_a_dead_host_write_tombstones(etcd_endpoint: str, root: str) -> None:
    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client:
            deleted, moved, dead_deleted = make_spec("deleted"), make_spec("moved"), make_spec("dead-deleted")
            bound = {b.ref.vm_id: b for b in await bind(client, keys, [deleted, moved, dead_deleted])}
            assert await tombstone(client, keys, deleted.uid) is None
            # The agent's removal of a deleted VM: its tombstone says so.
            gone = BoundVm(Binding(deleted.marked_deleted(now_ns()), HOST), bound["deleted"].create_revision,
                           bound["deleted"].mod_revision)
            assert await AgentStore(client, keys).remove_destroyed(HOST, [gone])
            assert await tombstone(client, keys, deleted.uid) == "deleted"
            # A dead host's VMs moved off (placed again) or removed (being deleted).
            lifecycle = LifecycleStore(client, keys)
            read = await lifecycle.host_bindings(HOST)
            by_id = {b.ref.vm_id: b for b in read.bound}
            assert await lifecycle.move_off(HOST, read, [by_id["moved"]], [by_id["dead-deleted"]],
                                            reason="HostDead", message="dead")
            assert await tombstone(client, keys, moved.uid) == "moved"
            assert await tombstone(client, keys, dead_deleted.uid) == "deleted"
            # Under a lease: they expire by themselves.
            kv = await client.get(keys.tombstone(HOST, moved.uid))
            assert kv.lease != 0

    run(main())


def test_unknown_vms_are_quarantined_and_tombstoned_ones_destroyed(etcd_endpoint: str, root: str) -> None:
    async def main() -> None:
        keys = Keys(root)
        hv = SimHypervisor()
        host = hv.add_host(HOST, HostCapacity(64, 256 * 1024, 10_000))
        async with EtcdClient(etcd_endpoint) as client, Lease(client, 10) as lease:
            wanted, condemned, unknown = make_spec("wanted"), make_spec("condemned"), make_spec("unknown")
            for spec in (wanted, condemned, unknown):
                await host.create_vm(request(spec))
            store = OrphanStore(client, keys)
            await client.txn([], await store.tombstones.put_ops(HOST, condemned.uid, condemned.ref.name, "deleted"))
            keeper = OrphanKeeper({HOST: host}, store, agent="agent-x")
            keeper.start(lease.id)

            await keeper.scan({(HOST, wanted.uid)})

            # The tombstoned VM is destroyed; the unknown one stays, quarantined and reported.
            assert {vm.vm_uid for vm in await host.list_vms()} == {wanted.uid, unknown.uid}
            assert set(keeper.quarantined) == {(HOST, unknown.uid)}
            assert metrics.ORPHAN_VMS._value.get() == 1
            listed, _ = await store.list()
            assert [(o.host, o.uid, o.vm, o.agent) for o in listed] == [(HOST, unknown.uid, unknown.ref.name,
                                                                        "agent-x")]
            assert listed[0].spec == unknown
            assert (await client.get(keys.orphan(HOST, unknown.uid))).lease == lease.id
            # Scanning again changes nothing: still there, recorded once, never destroyed.
            await keeper.scan({(HOST, wanted.uid)})
            assert {vm.vm_uid for vm in await host.list_vms()} == {wanted.uid, unknown.uid}
            # A binding gone without a deletion and without a tombstone: quarantined, not destroyed.
            await keeper.release(HOST, wanted.uid)
            assert set(keeper.quarantined) == {(HOST, unknown.uid), (HOST, wanted.uid)}
            assert await host.get_vm(wanted.uid) is not None

    run(main())


def test_operators_adopt_or_destroy_quarantined_vms(etcd_endpoint: str, root: str) -> None:
    async def main() -> None:
        keys = Keys(root)
        hv = SimHypervisor()
        host = hv.add_host(HOST, HostCapacity(64, 256 * 1024, 10_000))
        async with EtcdClient(etcd_endpoint) as client, Lease(client, 10) as lease:
            await TenancyStore(client, keys).create_project(Project("acme", "tight", quota=Limits(vms=0)))
            keep, drop, over = make_spec("keep"), make_spec("drop"), make_spec("over", project="tight")
            for spec in (keep, drop, over):
                await host.create_vm(request(spec))
            ledger = UsageLedger(client, keys)
            store = OrphanStore(client, keys, ledger)
            keeper = OrphanKeeper({HOST: host}, store, agent="agent-x")
            keeper.start(lease.id)
            await keeper.scan(set())
            assert len(keeper.quarantined) == 3
            async with running(keeper.watch()):
                # Adopt: the VM is back under its project, bound to its host, its quota charged.
                record = await store.adopt(HOST, keep.uid)
                assert record.spec == keep and record.status.state == VmState.SCHEDULED
                vms = VmStore(client, keys, ledger=ledger)
                assert (await vms.get(keep.ref)).spec.uid == keep.uid
                bound = (await LifecycleStore(client, keys).host_bindings(HOST))
                assert [b.binding.spec.uid for b in bound.bound] == [keep.uid]
                assert bound.allocation == HostAllocation().plus(SMALL)
                usage = await TenancyStore(client, keys).usage("acme", "web")
                assert usage.vms == 1
                with pytest.raises(NotFound):
                    await store.get(HOST, keep.uid)
                # Its name taken now: a second VM under that name cannot be adopted.
                twin = make_spec("keep")
                await host.create_vm(request(twin))
                await keeper.scan({(HOST, keep.uid)})
                with pytest.raises(AlreadyExists):
                    await store.adopt(HOST, twin.uid)
                # Over quota: refused, nothing written, still quarantined.
                with pytest.raises(QuotaExceeded):
                    await store.adopt(HOST, over.uid)
                assert (await store.get(HOST, over.uid)).spec == over
                with pytest.raises(NotFound):
                    await vms.get(over.ref)
                # Destroy: the record goes, the tombstone is written, the agent destroys it.
                await store.destroy(HOST, drop.uid)
                assert await tombstone(client, keys, drop.uid) == "destroyed"
                async def destroyed() -> bool:
                    return await host.get_vm(drop.uid) is None

                await async_wait_until(destroyed, message="the condemned VM destroyed by its agent",
                                       seen=lambda: f"quarantined: {sorted(keeper.quarantined)}")
                await async_wait_until(lambda: (HOST, drop.uid) not in keeper.quarantined and
                                       (HOST, keep.uid) not in keeper.quarantined,
                                       message="the keeper forgot the adopted and destroyed VMs",
                                       seen=lambda: f"quarantined: {sorted(keeper.quarantined)}")
            assert {vm.vm_uid for vm in await host.list_vms()} == {keep.uid, twin.uid, over.uid}

    run(main())


def test_a_vm_with_nics_or_disks_is_not_adoptable_as_recorded() -> None:
    from dataclasses import replace

    from controlplane.models import AddressMode, DiskRef, Nic
    from controlplane.store.orphans import unadoptable

    plain = make_spec("plain")
    assert unadoptable(plain) is None
    nic = Nic("tenants/acme/projects/web/networks/cp", "net-uid", "cp", AddressMode.STATIC_POOL, "10.0.0.5", 24)
    assert "NICs or persistent disks" in (unadoptable(replace(plain, nics=(nic,))) or "")
    assert "NICs or persistent disks" in (unadoptable(replace(plain, disks=(DiskRef("d1", "u1", 5),))) or "")
