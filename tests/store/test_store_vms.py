"""VmStore against a real etcd: idempotent and race-free create, paginated list
at one revision, deletion of pending and bound VMs, etags, and the change watch."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import Coroutine
from dataclasses import replace
from typing import Any

import pytest

from controlplane.etcd import EtcdClient, ops
from controlplane.models import (
    Binding,
    HostAllocation,
    HostRegistration,
    Resources,
    VmRef,
    VmSpec,
    VmState,
    VmStatus,
    now_ns,
)
from controlplane.store.cluster import ensure_cluster_config
from controlplane.store.errors import AlreadyExists, Conflict, HostFull, NotFound, RequestMismatch
from controlplane.store.hosts import HostStore
from controlplane.store.idempotency import fingerprint
from controlplane.store.keys import Keys, shard_of
from controlplane.store.retention import RetentionLeases
from controlplane.store.scheduling import HostBind, SchedulingStore
from controlplane.store.tenancy import TenancyStore
from controlplane.store.vms import VmChange, VmRecord, VmStore
from controlplane.tenancy import Usage
from tests.conftest import make_projects

SHARDS = 4
TENANT, PROJECT = "acme", "web"


def run(coro: Coroutine[Any, Any, Any], timeout: float = 20.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout=timeout))


@pytest.fixture(autouse=True)
def _projects(etcd_endpoint: str, root: str) -> None:
    """The projects these tests create VMs in (a VM's quota is charged to its project)."""
    make_projects(etcd_endpoint, root, "acme", "web", "other")


def make_spec(vm_id: str, *, request_id: str = "", labels: dict[str, str] | None = None,
              project: str = PROJECT) -> VmSpec:
    uid = uuid.uuid4().hex
    return VmSpec(VmRef(TENANT, project, vm_id), uid, "small", "ubuntu", Resources(1, 1024, 10),
                  labels=labels or {}, request_id=request_id, create_time_ns=now_ns(),
                  shard=shard_of(uid, SHARDS))


async def bind(client: EtcdClient, keys: Keys, spec: VmSpec, host: str = "h1") -> int:
    sched = SchedulingStore(client, keys)
    queued = next(q for q in (await sched.list_queue(spec.shard))[0] if q.spec.ref == spec.ref)
    result = await sched.bind(None, [HostBind(host, 0, HostAllocation(), [queued])])
    assert result.committed == [True]
    return result.revision


# --- create ----------------------------------------------------------------------------

def test_create_then_get(etcd_endpoint: str, root: str) -> None:
    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client:
            store = VmStore(client, keys)
            spec = make_spec("vm-1", request_id="req-1", labels={"env": "prod"})
            record, created = await store.create(spec)
            assert created
            assert record.spec == spec
            assert record.state == VmState.PENDING
            assert record.spec_revision == record.status_revision == record.resource_version
            assert record.etag == f"{record.spec_revision:x}"

            got = await store.get(spec.ref)
            assert got == record
            assert got.status.accepted_time_ns == spec.create_time_ns
            # It is queued for its shard, with the spec.
            queue = await client.get(keys.queue(spec.shard, spec.ref))
            assert queue is not None and VmSpec.from_bytes(queue.value) == spec
            with pytest.raises(NotFound):
                await store.get(VmRef(TENANT, PROJECT, "vm-none"))

    run(main())


def test_create_retry_with_same_request_id_returns_the_first(etcd_endpoint: str, root: str) -> None:
    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client:
            store = VmStore(client, keys)
            first, created = await store.create(make_spec("vm-1", request_id="req-1"))
            assert created
            before = await store.current_revision()
            # The retry carries a fresh uid (a frontend mints one per attempt).
            retry, created = await store.create(make_spec("vm-1", request_id="req-1"))
            assert not created
            assert retry == first
            assert await store.current_revision() == before  # nothing was written

            # The same request id under another name still returns the first VM.
            other_name, created = await store.create(make_spec("vm-2", request_id="req-1"))
            assert not created and other_name.spec.uid == first.spec.uid
            assert await store.current_revision() == before
            with pytest.raises(NotFound):
                await store.get(VmRef(TENANT, PROJECT, "vm-2"))

    run(main())


def test_create_with_a_reused_request_id_and_other_parameters_is_refused(etcd_endpoint: str, root: str) -> None:
    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client:
            store = VmStore(client, keys)

            async def create(vm_id: str, request_id: str, **changes: Any) -> tuple[VmRecord, bool]:
                spec = dataclasses.replace(make_spec(vm_id, request_id=request_id), **changes)
                return await store.create(spec, fingerprint=fingerprint(spec, chosen_id=True))

            first, created = await create("vm-1", "req-1")
            assert created
            before = await store.current_revision()
            retry, created = await create("vm-1", "req-1")  # a true retry: the first answer
            assert (retry, created) == (first, False)
            for vm_id, changes in (("vm-2", {}), ("vm-1", {"flavor": "large"}), ("vm-1", {"labels": {"a": "b"}})):
                with pytest.raises(RequestMismatch) as refused:
                    await create(vm_id, "req-1", **changes)
                assert refused.value.made == first.ref.name
            assert await store.current_revision() == before  # nothing was written
            with pytest.raises(NotFound):
                await store.get(VmRef(TENANT, PROJECT, "vm-2"))

            # Concurrent creates with one request_id and different ids: one VM, the others refused.
            outcomes = await asyncio.gather(*(create(f"c-{i}", "req-2") for i in range(6)), return_exceptions=True)
            made = [o for o in outcomes if not isinstance(o, BaseException)]
            assert len(made) == 1 and made[0][1]
            assert all(isinstance(o, RequestMismatch) for o in outcomes if isinstance(o, BaseException))

            # A record without a fingerprint (written before they existed) keeps the old rule.
            old, _ = await store.create(make_spec("vm-3", request_id="req-3"))
            again, created = await create("vm-4", "req-3")
            assert (again.spec.uid, created) == (old.spec.uid, False)

    run(main())


def test_create_same_name_other_request_is_already_exists(etcd_endpoint: str, root: str) -> None:
    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client:
            store = VmStore(client, keys)
            first, _ = await store.create(make_spec("vm-1", request_id="req-1"))
            with pytest.raises(AlreadyExists):
                await store.create(make_spec("vm-1", request_id="req-2"))
            with pytest.raises(AlreadyExists):
                await store.create(make_spec("vm-1"))
            assert (await store.get(first.ref)).spec.uid == first.spec.uid
            # The losing request left no record: it can create another name.
            _, created = await store.create(make_spec("vm-2", request_id="req-2"))
            assert created

    run(main())


def test_concurrent_creates_of_one_name_make_exactly_one(etcd_endpoint: str, root: str) -> None:
    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as c1, EtcdClient(etcd_endpoint) as c2:
            frontends = [VmStore(c1, keys), VmStore(c2, keys)]
            specs = [make_spec("contested", request_id=f"req-{i}") for i in range(20)]
            results = await asyncio.gather(
                *(frontends[i % 2].create(spec) for i, spec in enumerate(specs)), return_exceptions=True)
            winners = [r for r in results if isinstance(r, tuple) and r[1]]
            assert len(winners) == 1, results
            losers = [r for r in results if not (isinstance(r, tuple) and r[1])]
            assert len(losers) == 19 and all(isinstance(r, AlreadyExists) for r in losers), losers
            stored = await frontends[1].get(specs[0].ref)
            assert stored.spec.uid == winners[0][0].spec.uid
            # Exactly one queue entry and one request record.
            queued = [kv for shard in range(SHARDS)
                      for kv in (await c1.range_prefix(keys.queue_prefix(shard)))[0]]
            assert [VmSpec.from_bytes(kv.value).uid for kv in queued] == [stored.spec.uid]
            requests, _ = await c1.range_prefix(f"{root}/v1/requests/".encode())
            assert len(requests) == 1

    run(main())


# --- list ------------------------------------------------------------------------------

def test_list_pages_every_vm_once_at_one_revision(etcd_endpoint: str, root: str) -> None:
    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client:
            store = VmStore(client, keys)
            # Ids whose string order differs from their numeric order (vm-1, vm-10, vm-2).
            ids = {f"vm-{i}" for i in range(25)}
            await asyncio.gather(*(store.create(make_spec(vm_id)) for vm_id in ids))
            await store.create(make_spec("vm-elsewhere", project="other"))

            page1, after, revision = await store.list(TENANT, PROJECT, page_size=10)
            assert len(page1) == 10 and after == page1[-1].ref
            # Created after the first page: a list at that revision must not see them.
            await asyncio.gather(*(store.create(make_spec(f"vm-late-{i}")) for i in range(3)))
            page2, after, rev2 = await store.list(TENANT, PROJECT, page_size=10, after=after, revision=revision)
            assert len(page2) == 10 and after == page2[-1].ref and rev2 == revision
            page3, after, rev3 = await store.list(TENANT, PROJECT, page_size=10, after=after, revision=revision)
            assert len(page3) == 5 and after is None and rev3 == revision

            listed = [r.ref.vm_id for r in page1 + page2 + page3]
            assert sorted(listed) == sorted(ids)  # every VM exactly once, no late one
            assert listed == sorted(listed)  # in key order
            assert all(r.resource_version <= revision for r in page1 + page2 + page3)

            # A fresh list sees the late ones; an exact fit ends with no next page.
            now, _, _ = await store.list(TENANT, PROJECT, page_size=100)
            assert len(now) == 28
            exact, after, _ = await store.list(TENANT, PROJECT, page_size=28)
            assert len(exact) == 28 and after is None

    run(main())


def test_list_with_selector(etcd_endpoint: str, root: str) -> None:
    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client:
            store = VmStore(client, keys)
            for i in range(6):
                await store.create(make_spec(f"vm-{i}", labels={"env": "prod" if i % 2 else "dev"}))

            def prod(spec: VmSpec) -> bool:
                return spec.labels.get("env") == "prod"

            records, after, _ = await store.list(TENANT, PROJECT, page_size=10, selector=prod)
            assert [r.ref.vm_id for r in records] == ["vm-1", "vm-3", "vm-5"] and after is None
            # Paged: a page scans page_size VMs and may return fewer after filtering.
            seen: list[str] = []
            after = None
            pages = 0
            while True:
                records, after, _ = await store.list(TENANT, PROJECT, page_size=2, after=after, selector=prod)
                pages += 1
                assert len(records) <= 2
                seen += [r.ref.vm_id for r in records]
                if after is None:
                    break
            assert seen == ["vm-1", "vm-3", "vm-5"] and pages == 3

    run(main())


# --- delete ----------------------------------------------------------------------------

def test_delete_pending_vm_removes_every_key_but_the_request_record(etcd_endpoint: str, root: str) -> None:
    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client:
            store = VmStore(client, keys)
            spec = make_spec("vm-1", request_id="req-1")
            await store.create(spec)
            deletion = await store.request_delete(spec.ref)
            assert deletion.removed and deletion.revision > 0
            assert deletion.record.state == VmState.DELETING and deletion.record.spec.uid == spec.uid
            assert await client.get(keys.vm_spec(spec.ref)) is None
            assert await client.get(keys.vm_status(spec.ref)) is None
            assert await client.get(keys.queue(spec.shard, spec.ref)) is None
            with pytest.raises(NotFound):
                await store.request_delete(spec.ref)
            # The request_id is remembered (under an expiring lease): a late retry of
            # the create must not make a second VM.
            record = await client.get(keys.request(TENANT, PROJECT, "req-1"))
            assert record is not None and record.lease != 0
            with pytest.raises(AlreadyExists, match="no longer exists"):
                await store.create(make_spec("vm-1", request_id="req-1"))
            assert await client.get(keys.vm_spec(spec.ref)) is None

    run(main())


def test_delete_bound_vm_marks_spec_and_binding(etcd_endpoint: str, root: str) -> None:
    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client:
            store = VmStore(client, keys)
            spec = make_spec("vm-1")
            await store.create(spec)
            await bind(client, keys, spec, "h1")
            spec_revision_before = (await store.get(spec.ref)).spec_revision

            deletion = await store.request_delete(spec.ref)
            record, revision = deletion.record, deletion.revision
            assert not deletion.removed and record.state == VmState.DELETING
            assert record.spec.deleting and record.spec_revision == revision
            assert record.status.state == VmState.SCHEDULED  # status stays the agent's

            stored = await store.get(spec.ref)
            assert stored.state == VmState.DELETING and stored.spec == record.spec
            binding = await client.get(keys.binding("h1", spec.ref))
            assert binding is not None and binding.mod_revision == revision
            assert Binding.from_bytes(binding.value).deleting

            # Idempotent: a second request changes nothing.
            again = await store.request_delete(spec.ref)
            assert again.record == stored and again.revision == revision and not again.removed
            assert (await client.get(keys.binding("h1", spec.ref))).mod_revision == revision
            # A retry of a deletion that applied (its answer lost), with the etag it was
            # sent with, gets the same answer: not a conflict with itself.
            retried = await store.request_delete(spec.ref, etag=f"{spec_revision_before:x}")
            assert retried.record == stored and not retried.changed

    run(main())


def test_delete_with_stale_etag_is_conflict(etcd_endpoint: str, root: str) -> None:
    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client:
            store = VmStore(client, keys)
            record, _ = await store.create(make_spec("vm-1"))
            with pytest.raises(Conflict):
                await store.request_delete(record.ref, etag=f"{record.spec_revision + 1:x}")
            assert (await store.get(record.ref)).spec == record.spec  # untouched
            deleted = await store.request_delete(record.ref, etag=record.etag)
            assert deleted.removed
            with pytest.raises(NotFound):
                await store.get(record.ref)

    run(main())


# --- change: one path rewrites every copy of the spec ---------------------------------

class CountingClient(EtcdClient):
    """A real client that counts its round trips to etcd (reads and txns)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.round_trips = 0

    async def range(self, *args, **kwargs):
        self.round_trips += 1
        return await super().range(*args, **kwargs)

    async def txn(self, *args, **kwargs):
        self.round_trips += 1
        return await super().txn(*args, **kwargs)


def relabel(**labels: str):
    return lambda spec: replace(spec, labels={**spec.labels, **labels})


def test_update_spec_rewrites_queue_entry_of_a_pending_vm(etcd_endpoint: str, root: str) -> None:
    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client:
            store = VmStore(client, keys)
            record, _ = await store.create(make_spec("vm-1", labels={"a": "1"}))
            update = await store.update_spec(record.ref, relabel(b="2"), etag=record.etag)
            assert update.changed and not update.removed
            assert update.record.spec.labels == {"a": "1", "b": "2"} and update.record.spec_revision == update.revision
            spec_kv = await client.get(keys.vm_spec(record.ref))
            queue_kv = await client.get(keys.queue(record.spec.shard, record.ref))
            assert spec_kv.mod_revision == queue_kv.mod_revision == update.revision  # one txn
            assert VmSpec.from_bytes(queue_kv.value) == VmSpec.from_bytes(spec_kv.value) == update.record.spec
            # As wanted already: nothing written.
            again = await store.update_spec(record.ref, relabel(b="2"))
            assert not again.changed and (await client.get(keys.vm_spec(record.ref))).mod_revision == update.revision
            with pytest.raises(Conflict):
                await store.update_spec(record.ref, relabel(c="3"), etag=record.etag)  # stale etag
            with pytest.raises(ValueError):
                await store.update_spec(record.ref, lambda spec: replace(spec, shard=spec.shard + 1))

    run(main())


def test_update_spec_charges_quota_for_what_the_vm_holds(etcd_endpoint: str, root: str) -> None:
    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client:
            store, tenancy = VmStore(client, keys), TenancyStore(client, keys)
            record, _ = await store.create(make_spec("vm-1"))
            assert (await tenancy.usages(TENANT))[PROJECT] == Usage.of_vm(Resources(1, 1024, 10))
            await store.update_spec(record.ref, lambda spec: replace(spec, resources=Resources(2, 2048, 20)))
            assert (await tenancy.usages(TENANT))[PROJECT] == Usage.of_vm(Resources(2, 2048, 20))
            assert (await store.get(record.ref)).spec.resources == Resources(2, 2048, 20)

    run(main())


def test_update_spec_rewrites_the_binding_and_keeps_its_placement(etcd_endpoint: str, root: str) -> None:
    """A bound VM's binding is rewritten with the spec, keeping what placement and a
    drain wrote into it (zone, eviction); what it holds on the host cannot change."""

    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client:
            store = VmStore(client, keys)
            plain, evicting = make_spec("vm-1"), make_spec("vm-2")
            for spec in (plain, evicting):
                await store.create(spec)
                await bind(client, keys, spec, "h1" if spec is plain else "h2")
            marked = Binding(evicting, "h2", "", "HostDrained", "drained")
            await client.put(keys.binding("h2", evicting.ref), marked.to_bytes())

            for spec, host, before in ((plain, "h1", Binding(plain, "h1")), (evicting, "h2", marked)):
                update = await store.update_spec(spec.ref, relabel(tier="gold"))
                binding_kv = await client.get(keys.binding(host, spec.ref))
                assert binding_kv.mod_revision == update.revision == update.record.spec_revision
                assert Binding.from_bytes(binding_kv.value) == replace(before, spec=update.record.spec)
                assert (await store.get(spec.ref)).spec == update.record.spec
            # A resize moves the host's allocation too (test_store_vm_changes.py): h1 has no
            # registration here, so it takes no growth; a change of groups is a move, never a rewrite.
            with pytest.raises(HostFull):
                await store.update_spec(plain.ref, lambda spec: replace(spec, resources=Resources(2, 2048, 20)))
            with pytest.raises(ValueError):
                await store.update_spec(plain.ref, lambda spec: replace(spec, anti_affinity_group="g"))

    run(main())


def test_delete_of_a_bound_vm_reads_no_more_than_before(etcd_endpoint: str, root: str) -> None:
    """The hot path: one read of the VM and one txn; its binding is not read first."""

    async def main() -> None:
        keys = Keys(root)
        async with CountingClient(etcd_endpoint) as client:
            store = VmStore(client, keys)
            spec = make_spec("vm-1", labels={"a": "1", "b": "2", "c": "3"})
            await store.create(spec)
            await bind(client, keys, spec)
            client.round_trips = 0
            deletion = await store.request_delete(spec.ref)
            assert Binding.from_bytes((await client.get(keys.binding("h1", spec.ref))).value).deleting
            assert client.round_trips == 3 and not deletion.removed  # get, txn, and the get above

    run(main())


# --- watch -----------------------------------------------------------------------------

def test_watch_reports_created_status_and_deleted_changes(etcd_endpoint: str, root: str) -> None:
    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client:
            store = VmStore(client, keys)
            start = await store.current_revision() + 1
            changes: list[VmChange] = []
            deleted_ref = VmRef(TENANT, PROJECT, "vm-b")

            async def consume() -> None:
                async with contextlib.aclosing(store.watch(TENANT, PROJECT, start_revision=start)) as watch:
                    async for batch in watch:
                        changes.extend(batch)
                        if any(c.deleted and c.ref == deleted_ref for c in changes):
                            return

            consumer = asyncio.ensure_future(asyncio.wait_for(consume(), timeout=5))
            a = make_spec("vm-a")
            created_a, _ = await store.create(a)
            bound_at = await bind(client, keys, a, "h1")
            b = make_spec("vm-b")
            created_b, _ = await store.create(b)
            deleted_at = (await store.request_delete(b.ref)).revision
            await store.create(make_spec("vm-x", project="other"))  # another project: not seen
            try:
                await consumer
            except TimeoutError:
                raise AssertionError("timed out after 5s waiting for vm-b's deletion in the watch; last seen: "
                                     f"{[(c.ref.vm_id, c.deleted, c.revision) for c in changes]}") from None

            assert [(c.ref.vm_id, c.deleted) for c in changes] == [
                ("vm-a", False), ("vm-a", False), ("vm-b", False), ("vm-b", True)]
            added, status_only, added_b, deleted = changes
            # Created: spec and status in one revision, like an ADDED event.
            assert added.record == created_a
            assert added.revision == added.record.spec_revision == added.record.status_revision
            # Status-only change (the bind), completed with the spec as it was then.
            assert status_only.revision == bound_at
            assert status_only.record == VmRecord(a, status_only.record.status, created_a.spec_revision, bound_at)
            assert status_only.record.status.state == VmState.SCHEDULED
            assert status_only.record.status.host == "h1"
            assert added_b.record == created_b
            # Deleted: the record as it was before the deletion.
            assert deleted.revision == deleted_at
            assert deleted.record == created_b

    run(main())


def test_watch_completes_a_change_to_a_vm_its_full_cache_held(etcd_endpoint: str, root: str) -> None:
    # One revision that adds a VM to a full cache and changes half of a VM the cache
    # held: adding the first must not evict the second before its change is completed.
    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client:
            store = VmStore(client, keys)
            held, _ = await store.create(make_spec("vm-held"))
            start = await store.current_revision() + 1
            added = make_spec("vm-added")
            status = VmStatus(VmState.PENDING, reason="Unschedulable", update_time_ns=now_ns())
            revision = (await client.txn([], [
                ops.put(keys.vm_spec(added.ref), added.to_bytes()),
                ops.put(keys.vm_status(added.ref), status.to_bytes()),
                ops.put(keys.vm_status(held.ref), status.to_bytes()),
            ])).revision
            async with contextlib.aclosing(store.watch(TENANT, PROJECT, start_revision=start, seed=[held],
                                                       cache_size=1)) as watch:
                batch = await anext(watch)
            assert batch == [VmChange(False, VmRecord(added, status, revision, revision), added.ref, revision),
                             VmChange(False, VmRecord(held.spec, status, held.spec_revision, revision), held.ref,
                                      revision)]

    run(main())


def test_cluster_config_first_writer_wins(etcd_endpoint: str, root: str) -> None:
    async def main() -> None:
        async with EtcdClient(etcd_endpoint) as client:
            keys = Keys(root)
            results = await asyncio.gather(*(ensure_cluster_config(client, keys, shards=n) for n in (3, 5, 7)))
            assert len({r.shards for r in results}) == 1 and results[0].shards in (3, 5, 7)
            assert (await ensure_cluster_config(client, keys)).shards == results[0].shards
            assert (await ensure_cluster_config(client, keys, shards=9)).shards == results[0].shards
            assert (await ensure_cluster_config(client, Keys(root + "-other"))).shards == 1

    run(main())


def test_request_records_share_one_lease_per_window(etcd_endpoint: str, root: str) -> None:
    async def main() -> None:
        async with EtcdClient(etcd_endpoint) as client:
            leases = RetentionLeases(client, retention_s=3600)
            first, second = await asyncio.gather(leases.current(), leases.current())
            assert first == second != 0
            alive = await client.put(f"{root}/probe".encode(), b"", lease=first)
            assert alive > 0  # the lease exists
            await client.revoke(first)

    run(main())


def test_host_pages_cover_every_host_once(etcd_endpoint: str, root: str) -> None:
    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client:
            # 7 hosts: some with a registration and an allocation, some with only one of them;
            # ids where key order differs from string order ("h-1-x/" < "h-1/").
            names = ["h-0", "h-1", "h-1-x", "h-2", "h-2-y", "h-20", "h-3"]
            for i, host in enumerate(names):
                if i % 3 != 2:
                    await client.put(keys.host_reg(host), HostRegistration(
                        host, "sim", Resources(8, 8192, 100)).to_bytes())
                if i % 3 != 1:
                    await client.put(keys.host_alloc(host), HostAllocation(Resources(1, 1024, 10), 1).to_bytes())
            store = HostStore(client, keys)
            for limit in (1, 2, 3, 7, 100):
                seen, after, revision, pages = [], "", 0, 0
                while True:
                    records, after, revision = await store.page(after=after, limit=limit, revision=revision)
                    assert len(records) <= limit
                    seen += [r.host for r in records]
                    pages += 1
                    if not after:
                        break
                assert sorted(seen) == sorted(names) and len(seen) == len(set(seen)), limit
                assert pages <= 7 // limit + 2

    run(main())


def test_host_pages_leave_out_a_host_with_only_a_marker(etcd_endpoint: str, root: str) -> None:
    # A maintenance marker outlives the host's registration and allocation: no record, as in list().
    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client:
            await client.put(keys.host_reg("h-1"), HostRegistration("h-1", "sim", Resources(8, 8192, 100)).to_bytes())
            await client.put(keys.host_maintenance("h-0"), b"")
            store = HostStore(client, keys)
            records, after, _revision = await store.page(limit=10)
            assert [r.host for r in records] == [r.host for r in (await store.list())[0]] == ["h-1"]
            assert after == ""

    run(main())
