"""DiskStore against a real etcd: create charged to the quota exactly (and idempotent by
request_id), get/list/update/delete, a disk and its attachment read at one revision,
the watch, the agents' side (AgentDiskStore: the work index, remove_deleted,
detach_done, stale work keys dropped), and creates of VMs that take disks (at most one
VM per disk, however many stores race)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Coroutine
from dataclasses import replace
from typing import Any

import pytest

from controlplane.disks import Attachment, Disk, DiskName, DiskState
from controlplane.etcd import EtcdClient, ops
from controlplane.models import Resources, VmRef, VmSpec, now_ns
from controlplane.store.agentdisks import AgentDiskStore, Next
from controlplane.store.disks import (
    DiskAttached,
    DiskChange,
    DiskChanged,
    DiskDeleting,
    DiskInUse,
    DiskStore,
    deleting_work,
    detaching_ops,
)
from controlplane.store.errors import AlreadyExists, EtagMismatch, NotFound, RequestMismatch
from controlplane.store.keys import Keys, shard_of
from controlplane.store.ledger import QuotaExceeded, UsageLedger
from controlplane.store.tenancy import TenancyStore
from controlplane.store.vms import VmStore
from controlplane.tenancy import Limits, Usage
from tests.conftest import async_wait_until, make_projects

TENANT, PROJECT = "acme", "web"


def run(coro: Coroutine[Any, Any, Any], timeout: float = 30.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout=timeout))


@pytest.fixture(autouse=True)
def _projects(etcd_endpoint: str, root: str) -> None:
    make_projects(etcd_endpoint, root, TENANT, PROJECT, "other")


def make_disk(disk_id: str, size_gib: int = 10, *, request_id: str = "", project: str = PROJECT,
              labels: dict[str, str] | None = None) -> Disk:
    at = now_ns()
    return Disk(TENANT, project, disk_id, uuid.uuid4().hex, size_gib, labels=labels or {}, create_time_ns=at,
                update_time_ns=at, request_id=request_id)


def make_vm(vm_id: str, *disks) -> VmSpec:
    uid = uuid.uuid4().hex
    return VmSpec(VmRef(TENANT, PROJECT, vm_id), uid, "small", "ubuntu", Resources(1, 1024, 10),
                  create_time_ns=now_ns(), shard=shard_of(uid, 4),
                  disks=tuple(view.disk.attached_as() for view in disks))


async def usage(client: EtcdClient, keys: Keys, project: str = PROJECT) -> Usage:
    return await TenancyStore(client, keys).usage(TENANT, project)


def test_create_get_update_delete_with_exact_quota(etcd_endpoint: str, root: str) -> None:
    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client:
            store = DiskStore(client, keys)
            view, created = await store.create(make_disk("data-1", 20, labels={"role": "etcd"}))
            assert created and view.state is DiskState.AVAILABLE and view.vm == ""
            assert await usage(client, keys) == Usage(data_disks=1, data_disk_gib=20)
            got = await store.get(DiskName(TENANT, PROJECT, "data-1"))
            assert got.disk == view.disk and got.etag == view.etag
            with pytest.raises(AlreadyExists):
                await store.create(make_disk("data-1", 5))
            assert await usage(client, keys) == Usage(data_disks=1, data_disk_gib=20)

            with pytest.raises(EtagMismatch):
                await store.update(got.disk.ref, lambda d: d.with_(description="x"), etag="1")
            updated, changed = await store.update(got.disk.ref, lambda d: d.with_(labels={"role": "db"}),
                                                  etag=got.etag)
            assert changed and updated.disk.labels == {"role": "db"} and updated.revision > got.revision
            with pytest.raises(ValueError):
                await store.update(got.disk.ref, lambda d: d.with_(size_gib=30))

            with pytest.raises(EtagMismatch):
                await store.delete(got.disk.ref, etag=got.etag)  # stale since the update
            deleted, changed = await store.delete(got.disk.ref, etag=updated.etag)
            assert changed and deleted.state is DiskState.DELETING
            assert await usage(client, keys) == Usage()  # released with the mark
            again, changed = await store.delete(got.disk.ref)
            assert not changed and again.state is DiskState.DELETING
            assert await usage(client, keys) == Usage()  # released once

            # The agents' side: the disk is in its class's work index, then removed with it.
            agents = AgentDiskStore(client, keys)
            assert (await agents.list_deleting("other-class"))[0] == []
            (work,), _revision = await agents.list_deleting("standard")
            assert (work.disk_id, work.uid) == ("data-1", got.disk.uid)
            now = await agents.deleting_now(work)
            assert now.next is Next.DESTROY and now.record_revision == deleted.revision
            assert not await agents.remove_deleted(work, now.record_revision - 1)
            assert await agents.remove_deleted(work, now.record_revision)
            with pytest.raises(NotFound):
                await store.get(got.disk.ref)
            assert (await agents.list_deleting("standard"))[0] == []
            assert (await agents.deleting_now(work)).next is Next.NOTHING

    run(main())


def test_create_is_idempotent_by_request_id(etcd_endpoint: str, root: str) -> None:
    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client:
            store = DiskStore(client, keys)
            disk = make_disk("d-req", 8, request_id="req-1")
            first, created = await store.create(disk)
            retry, again = await store.create(replace(disk, uid=uuid.uuid4().hex))
            assert created and not again and retry.disk.uid == first.disk.uid
            with pytest.raises(RequestMismatch):
                await store.create(replace(disk, size_gib=9))
            assert await usage(client, keys) == Usage(data_disks=1, data_disk_gib=8)

    run(main())


def test_concurrent_creates_over_two_ledgers_stop_at_the_disk_limit(etcd_endpoint: str, root: str) -> None:
    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as one, EtcdClient(etcd_endpoint) as two:
            await TenancyStore(one, keys).update_project(TENANT, PROJECT,
                                                         lambda p: p.with_(quota=Limits(data_disks=2)))
            stores = [DiskStore(c, keys, ledger=UsageLedger(c, keys, stripe=i)) for i, c in enumerate((one, two))]
            outcomes = await asyncio.gather(
                *(stores[i % 2].create(make_disk(f"q-{i}", 5)) for i in range(5)), return_exceptions=True)
            made = [o for o in outcomes if not isinstance(o, BaseException)]
            refused = [o for o in outcomes if isinstance(o, QuotaExceeded)]
            assert len(made) == 2 and len(refused) == 3, outcomes
            assert refused[0].dimensions == ["data_disks"]
            assert await usage(one, keys) == Usage(data_disks=2, data_disk_gib=10)
            views, _next, _rev = await stores[0].list(TENANT, PROJECT, page_size=10)
            assert len(views) == 2

    run(main())


def test_list_pages_selector_and_one_revision(etcd_endpoint: str, root: str) -> None:
    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client:
            store = DiskStore(client, keys)
            # Ids that sort around each other's key prefixes ("a-b/" < "a/" < "ab/").
            ids = ["a", "a-b", "ab", "b", "c"]
            for disk_id in ids:
                await store.create(make_disk(disk_id, labels={"odd": str(ids.index(disk_id) % 2)}))
            await store.create(make_disk("elsewhere", project="other"))
            # An attachment beside "a" (as a VM's create writes it) shows in the same read.
            await client.put(keys.disk_attachment(TENANT, PROJECT, "a"),
                             Attachment("tenants/acme/projects/web/vms/v", "u").to_bytes())
            seen: list[str] = []
            after: str | None = ""
            revision = 0
            while after is not None:
                views, after, revision = await store.list(TENANT, PROJECT, page_size=2, after=after,
                                                          revision=revision)
                seen += [v.disk.disk_id for v in views]
                for v in views:
                    assert (v.state is DiskState.ATTACHED) == (v.disk.disk_id == "a")
                await store.create(make_disk(f"late-{len(seen)}"))  # after the listing's revision
            assert seen == sorted(ids, key=lambda i: i + "/")  # key order: "a-b/" < "a/"
            odd, _after, _rev = await store.list(TENANT, PROJECT, page_size=100,
                                                 selector=lambda d: d.labels.get("odd") == "1")
            assert sorted(v.disk.disk_id for v in odd) == ["a-b", "b"]

    run(main())


def test_watch_reports_record_and_attachment_changes(etcd_endpoint: str, root: str) -> None:
    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client:
            store = DiskStore(client, keys)
            await store.create(make_disk("before"))
            start = await store.current_revision()
            got: list[DiskChange] = []

            async def consume() -> None:
                async for batch in store.watch(TENANT, PROJECT, start_revision=start + 1):
                    got.extend(batch)

            task = asyncio.create_task(consume())
            try:
                view, _ = await store.create(make_disk("w"))
                att = keys.disk_attachment(TENANT, PROJECT, "w")
                await client.put(att, Attachment("tenants/acme/projects/web/vms/v", "u").to_bytes())
                # An unseen disk's attachment: read at the change's revision.
                await client.put(keys.disk_attachment(TENANT, PROJECT, "before"),
                                 Attachment("tenants/acme/projects/web/vms/x", "u2", True).to_bytes())
                await client.delete(att)
                await store.delete(view.disk.ref)
                deleting = await store.get(view.disk.ref)
                (work,), _ = await AgentDiskStore(client, keys).list_deleting("standard")
                await AgentDiskStore(client, keys).remove_deleted(work, deleting.revision)

                def done() -> bool:
                    return len(got) >= 6

                await async_wait_until(done, timeout=30, message="six disk changes",
                                       seen=lambda: [(c.view.disk.disk_id, c.view.state.name) for c in got])
            finally:
                task.cancel()
            shown = [(c.view.disk.disk_id, c.view.state.name, c.deleted, c.created) for c in got]
            assert shown == [("w", "AVAILABLE", False, True), ("w", "ATTACHED", False, False),
                             ("before", "DETACHING", False, False), ("w", "AVAILABLE", False, False),
                             ("w", "DELETING", False, False), ("w", "DELETING", True, False)], shown
            assert [c.revision for c in got] == sorted(c.revision for c in got)

    run(main())


def test_a_disk_goes_to_exactly_one_of_many_racing_creates(etcd_endpoint: str, root: str) -> None:
    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as one, EtcdClient(etcd_endpoint) as two:
            disks = DiskStore(one, keys)
            view, _ = await disks.create(make_disk("shared", 30))
            stores = [VmStore(c, keys, ledger=UsageLedger(c, keys, stripe=i)) for i, c in enumerate((one, two))]
            specs = [make_vm(f"vm-{i}", view) for i in range(6)]
            outcomes = await asyncio.gather(
                *(stores[i % 2].create(spec, disk_revisions={"shared": view.revision})
                  for i, spec in enumerate(specs)), return_exceptions=True)
            made = [o for o in outcomes if not isinstance(o, BaseException)]
            assert len(made) == 1, outcomes
            assert all(isinstance(o, DiskInUse) for o in outcomes if isinstance(o, BaseException)), outcomes
            winner = made[0][0]
            now = await disks.get(view.disk.ref)
            assert now.state is DiskState.ATTACHED and now.vm == winner.ref.name
            assert now.attachment is not None and now.attachment.vm_uid == winner.spec.uid
            # The VMs charge no disk quota; the disk its own, once.
            assert await usage(one, keys) == Usage(1, 1, 1024, 10, 1, 30)
            with pytest.raises(DiskAttached):
                await disks.delete(view.disk.ref)

    run(main())


def test_a_create_refuses_a_deleting_or_changed_disk(etcd_endpoint: str, root: str) -> None:
    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client:
            disks, vms = DiskStore(client, keys), VmStore(client, keys)
            view, _ = await disks.create(make_disk("relabelled"))
            await disks.update(view.disk.ref, lambda d: d.with_(labels={"x": "y"}))
            with pytest.raises(DiskChanged):
                await vms.create(make_vm("vm-a", view), disk_revisions={"relabelled": view.revision})
            gone, _ = await disks.create(make_disk("gone"))
            await disks.delete(gone.disk.ref)
            with pytest.raises(DiskDeleting):
                await vms.create(make_vm("vm-b", gone), disk_revisions={"gone": gone.revision})
            with pytest.raises(ValueError):
                await vms.create(make_vm("vm-c", view))  # no revision: a bug, not a race
            for vm_id in ("vm-a", "vm-b", "vm-c"):
                with pytest.raises(NotFound):
                    await vms.get(VmRef(TENANT, PROJECT, vm_id))

    run(main())


def test_detach_done_compares_the_attachment_and_its_work_key(etcd_endpoint: str, root: str) -> None:
    """The detaching mark writes the attachment and its work key in one txn
    (disks.detaching_ops); the agents' detach_done deletes both, compared as marked."""
    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client:
            disks, agents = DiskStore(client, keys), AgentDiskStore(client, keys)
            view, _ = await disks.create(make_disk("det"))
            ref = VmRef(TENANT, PROJECT, "v")
            key = keys.disk_attachment(TENANT, PROJECT, "det")
            work_key = keys.disk_work_detaching(TENANT, PROJECT, "det")
            await client.txn([], detaching_ops(keys, TENANT, PROJECT, "det", Attachment(ref.name, "u")))
            (marked,), _ = await agents.list_detaching()
            assert (marked.disk_id, marked.vm, marked.vm_uid) == ("det", ref.name, "u")
            assert marked.mod_revision == (await disks.get(view.disk.ref)).attachment_revision
            assert not await agents.detach_done(replace(marked, mod_revision=marked.mod_revision - 1))
            assert (await disks.get(view.disk.ref)).state is DiskState.DETACHING
            assert await agents.detach_done(marked)
            assert (await disks.get(view.disk.ref)).state is DiskState.AVAILABLE
            result = await client.txn([], [ops.get(key), ops.get(work_key)])
            assert result.kvs(0) == [] and result.kvs(1) == []
            assert not await agents.detach_done(marked)  # another agent: nothing left

    run(main())


def test_a_stale_work_key_is_dropped_compared(etcd_endpoint: str, root: str) -> None:
    """No writer leaves a work key without what it indexes; one found (a store edited by
    hand) is dropped by the agent that acts on it, and only while it is as listed."""
    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client:
            disks, agents = DiskStore(client, keys), AgentDiskStore(client, keys)
            ref = VmRef(TENANT, PROJECT, "v")
            # A detaching work key whose attachment is gone.
            await client.txn([], detaching_ops(keys, TENANT, PROJECT, "lost", Attachment(ref.name, "u")))
            await client.delete(keys.disk_attachment(TENANT, PROJECT, "lost"))
            (stale,), _ = await agents.list_detaching()
            assert not await agents.detach_done(stale)
            assert (await agents.list_detaching())[0] == []
            # A deleting work key whose record is gone, and one whose record is another disk's.
            view, _ = await disks.create(make_disk("gone"))
            await disks.delete(view.disk.ref)
            await client.delete(keys.disk(TENANT, PROJECT, "gone"))
            again, _ = await disks.create(make_disk("reused"))
            await client.txn([], [deleting_work(keys, replace(again.disk, uid="an-older-uid"))])
            listed, _ = await agents.list_deleting("standard")
            assert sorted(d.disk_id for d in listed) == ["gone", "reused"]
            for work in listed:
                assert (await agents.deleting_now(work)).next is Next.NOTHING
            assert (await agents.list_deleting("standard"))[0] == []
            assert (await disks.get(again.disk.ref)).state is DiskState.AVAILABLE  # untouched

    run(main())


def test_a_project_holding_disks_is_not_deleted_until_they_are(etcd_endpoint: str, root: str) -> None:
    """A project's deletion never leaves disks behind with no project (their data on a
    datastore, their record found again by a project made under the same id)."""
    from controlplane.store.tenancy import HoldsDisks

    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client:
            store, tenancy = DiskStore(client, keys), TenancyStore(client, keys)
            view, _ = await store.create(make_disk("keep-me", 5, project="other"))
            with pytest.raises(HoldsDisks) as caught:
                await tenancy.delete_project(TENANT, "other")
            assert caught.value.disks == 1
            assert await client.get(keys.project(TENANT, "other")) is not None
            await store.delete(view.disk.ref)  # DELETING: its quota released, agents collect it
            await tenancy.delete_project(TENANT, "other")
            assert await client.get(keys.project(TENANT, "other")) is None

    run(main())


def test_delete_attached_never_marks_a_disk_another_vm_took_since_it_was_read(etcd_endpoint: str,
                                                                               root: str) -> None:
    """DeleteVm(delete_disks) on a VM being deleted already reads the VM and its disk;
    the VM is then finally removed (its attachment deleted, as claims.release_ops does)
    and the disk attached to another VM (its record unchanged). Marking the disk with the
    earlier view must fail: the attachment is compared as read, not only the record."""
    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client:
            disks, vms = DiskStore(client, keys), VmStore(client, keys)
            view, _ = await disks.create(make_disk("moved", 12))
            one, _ = await vms.create(make_vm("vm-1", view), disk_revisions={"moved": view.revision})
            read = await disks.get(view.disk.ref)
            assert read.attachment is not None and read.attachment.vm_uid == one.spec.uid
            # vm-1 finally removed: its attachment goes (the record stays as it was).
            await client.txn([], [ops.delete(keys.disk_attachment(TENANT, PROJECT, "moved"))])
            two, _ = await vms.create(make_vm("vm-2", view), disk_revisions={"moved": view.revision})
            before = await usage(client, keys)
            assert await disks.delete_attached([read]) == 0
            now = await disks.get(view.disk.ref)
            assert not now.disk.deleting and now.state is DiskState.ATTACHED
            assert now.attachment is not None and now.attachment.vm_uid == two.spec.uid
            assert await usage(client, keys) == before  # its quota still held
            # Read again, the disk is vm-2's: marking it as vm-2's (its own view) works.
            assert await disks.delete_attached([now]) > 0
            assert (await disks.get(view.disk.ref)).disk.deleting

    run(main())
