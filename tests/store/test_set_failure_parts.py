"""A set's failure has an op budget of its own (SchedulingStore.fail_set, scheduling.
failure_parts), against a real etcd: members that took disks while pending (AttachDisk
is allowed on a pending VM) make the removal larger than the admission was; it is
then cut into parts that each fit max_txn_ops, and the set never shows members
missing while bindable: every part but the last leaves the record PENDING marked
failing (never bound, only finished failing with its own reason, whatever a reader's
clock says), the last writes it FAILED."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from controlplane.disks import Disk
from controlplane.etcd import EtcdClient, Lease, ops, prefix_end
from controlplane.models import HostAllocation, Resources, VmSetState, now_ns
from controlplane.store.disks import DiskStore, attach_ops
from controlplane.store.hostagent import AgentStore
from controlplane.store.keys import Keys
from controlplane.store.ledger import txn_ops
from controlplane.store.scheduling import HostBind, SchedulingStore, failure_charge, failure_parts
from controlplane.store.tenancy import TenancyStore
from controlplane.store.vms import VmStore
from controlplane.tenancy import Usage
from tests.conftest import async_wait_until, make_projects, running
from tests.store.test_scheduler_sets import SMALL, Shard, admit_set, bindings_of, host, member, read_set

LIMIT = 48  # this client's max_txn_ops (the server takes more): a small set overflows it


def test_a_failure_larger_than_one_txn_is_made_in_parts(etcd_endpoint: str, root: str) -> None:
    make_projects(etcd_endpoint, root, "acme", "web")

    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint, max_txn_ops=LIMIT) as client:
            specs = [member("grown", f"g-{i}", shard=0) for i in range(8)]
            vm_set = await admit_set(client, keys, "grown", specs, shard=0)
            disks, vms = DiskStore(client, keys), VmStore(client, keys)
            # Each pending member takes 4 disks after its admission (AttachDisk's txn).
            for spec in specs:
                for j in range(4):
                    disk_id = f"{spec.ref.vm_id}-d{j}"
                    view, _ = await disks.create(Disk("acme", "web", disk_id, f"u-{disk_id}", 1,
                                                      create_time_ns=now_ns()))
                    ref = view.disk.attached_as()
                    compares, writes = attach_ops(keys, spec.ref, spec.uid, [ref], {ref.disk_id: view.revision})
                    await vms.update_spec(spec.ref, lambda s, ref=ref: replace(s, disks=(*s.disks, ref)),
                                          guard=compares, also=writes)
            store = SchedulingStore(client, keys)
            queued, _ = await store.list_queue(0)
            assert len(queued) == 8 and all(len(q.spec.disks) == 4 for q in queued)
            fence_key = keys.shard(0)
            await client.put(fence_key, b"owner")
            fence = ops.present(fence_key)
            record, revision = await read_set(client, keys, "grown")
            # One txn would not fit: the failure is cut, every part fitting.
            whole = failure_charge(keys, fence, record, revision, queued)
            assert txn_ops(whole) > LIMIT
            parts = failure_parts(keys, fence, record, queued, LIMIT)
            assert len(parts) > 1 and [vm for part in parts for vm in part] == queued
            assert all(txn_ops(failure_charge(keys, fence, record, revision, part)) <= LIMIT for part in parts)
            before = await TenancyStore(client, keys).usage("acme", "web")

            assert await store.fail_set(fence, vm_set, revision, queued, reason="DeadlineExceeded", message="late")
            failed, _ = await read_set(client, keys, "grown")
            assert (failed.state, failed.reason) == (VmSetState.FAILED, "DeadlineExceeded")
            assert (await store.list_queue(0))[0] == []
            vms_left, _ = await client.range_prefix(keys.vms_prefix("acme", "web"))
            assert vms_left == []
            attachments = [kv for kv in (await client.range_prefix(keys.disks_prefix("acme", "web")))[0]
                           if kv.key.endswith(b"/attachment")]
            assert attachments == []  # every disk given back (AVAILABLE)
            after = await TenancyStore(client, keys).usage("acme", "web")
            assert before - after == Usage.of_vm(SMALL, 8)
            # A second failure of the same members finds their entries gone: nothing written.
            assert not await store.fail_set(fence, vm_set, revision, queued, reason="DeadlineExceeded", message="x")

    asyncio.run(asyncio.wait_for(main(), timeout=120))


def test_a_failure_that_fits_is_one_txn_and_a_part_leaves_the_set_past_its_deadline(etcd_endpoint: str,
                                                                                     root: str) -> None:
    """Without growth, one part (as before); with it, a failure stopped after its first
    part (a member's entry changed meanwhile) leaves the record PENDING with its deadline
    past and the reason: never bound with members missing, failed again when read."""
    make_projects(etcd_endpoint, root, "acme", "web")

    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint, max_txn_ops=LIMIT) as client:
            store = SchedulingStore(client, keys)
            fence_key = keys.shard(0)
            await client.put(fence_key, b"owner")
            fence = ops.present(fence_key)
            specs = [member("small", f"s-{i}", shard=0, resources=Resources(1, 512, 5)) for i in range(3)]
            await admit_set(client, keys, "small", specs, shard=0)
            record, _ = await read_set(client, keys, "small")
            queued, _ = await store.list_queue(0)
            assert len(failure_parts(keys, fence, record, queued, LIMIT)) == 1
            for q in queued:  # cleared for the next set
                await client.delete(keys.vm_prefix(q.spec.ref), prefix_end(keys.vm_prefix(q.spec.ref)))
                await client.delete(keys.queue(0, q.spec.ref))

            deadline = now_ns() + 3_600 * 10**9
            specs = [member("cut", f"c-{i}", shard=0) for i in range(8)]
            vm_set = await admit_set(client, keys, "cut", specs, shard=0, deadline_ns=deadline)
            queued, _ = await store.list_queue(0)
            record, revision = await read_set(client, keys, "cut")
            # The last member's entry changes meanwhile (requeued): its part fails.
            last = queued[-1]
            await client.put(keys.queue(0, last.spec.ref), last.spec.to_bytes())
            parts = failure_parts(keys, fence, record, queued, 20)
            assert len(parts) > 1
            async with EtcdClient(etcd_endpoint, max_txn_ops=20) as tight:
                assert not await SchedulingStore(tight, keys).fail_set(fence, vm_set, revision, queued,
                                                                       reason="SetTooLarge", message="too big")
            now, _ = await read_set(client, keys, "cut")
            assert now.state == VmSetState.PENDING and now.reason == "SetTooLarge" and now.failing
            assert now.deadline_ns <= now_ns() < deadline  # past: the scheduler fails it, never binds it
            left = {q.spec.ref for q in (await store.list_queue(0))[0]}
            assert last.spec.ref in left and len(left) < 8

    asyncio.run(asyncio.wait_for(main(), timeout=120))


def test_a_set_left_failing_between_parts_is_finished_failed_whatever_the_clock(etcd_endpoint: str,
                                                                                root: str) -> None:
    """A failure in parts stopped after its first part leaves the record marked failing
    (PENDING, its reason and message). Another scheduler, whose clock reads the
    deadline as still ahead, neither binds the members left (room enough for all of
    them) nor re-fails the set as DeadlineExceeded: it finishes the failure with the
    original reason and message; the store refuses to bind a failing set."""
    make_projects(etcd_endpoint, root, "acme", "web")

    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client, Lease(client, 10) as lease:
            store = SchedulingStore(client, keys)
            fence_key = keys.shard(0)
            await client.put(fence_key, b"owner")
            fence = ops.present(fence_key)
            specs = [member("torn", f"t-{i}", shard=0) for i in range(8)]
            vm_set = await admit_set(client, keys, "torn", specs, shard=0, deadline_ns=now_ns() + 3_600 * 10**9)
            queued, _ = await store.list_queue(0)
            _record, revision = await read_set(client, keys, "torn")
            last = queued[-1]
            await client.put(keys.queue(0, last.spec.ref), last.spec.to_bytes())  # its part fails
            async with EtcdClient(etcd_endpoint, max_txn_ops=20) as tight:
                assert not await SchedulingStore(tight, keys).fail_set(fence, vm_set, revision, queued,
                                                                       reason="SetTooLarge", message="too big")
            torn, revision = await read_set(client, keys, "torn")
            assert torn.state == VmSetState.PENDING and torn.failing
            assert (torn.reason, torn.message) == ("SetTooLarge", "too big")
            left = (await store.list_queue(0))[0]
            assert 0 < len(left) < 8
            # A clock that lags: the deadline is still ahead for the next reader.
            await client.put(keys.vm_set("acme", "web", "torn"), replace(torn, deadline_ns=now_ns() + 3_600 * 10**9)
                             .to_bytes())
            torn, revision = await read_set(client, keys, "torn")
            await AgentStore(client, keys).register([host("roomy")], lease.id)
            alloc = await client.get(keys.host_alloc("roomy"))
            with pytest.raises(ValueError):
                await store.bind_set(fence, torn, revision, [HostBind("roomy", alloc.mod_revision if alloc else 0,
                                                                      HostAllocation(), left)])
            await client.delete(fence_key)
            shard = Shard(client, keys, lease, 0)
            await shard.acquire()
            async with running(*shard.coros()):
                async def finished() -> bool:
                    return (await read_set(client, keys, "torn"))[0].state != VmSetState.PENDING

                await async_wait_until(finished, timeout=60.0, message="the failing set finished",
                                       seen=lambda: read_set(client, keys, "torn"))
            done, _ = await read_set(client, keys, "torn")
            assert (done.state, done.reason, done.message) == (VmSetState.FAILED, "SetTooLarge", "too big")
            assert not done.failing
            assert await bindings_of(client, keys) == {}
            assert (await store.list_queue(0))[0] == []

    asyncio.run(asyncio.wait_for(main(), timeout=120))
