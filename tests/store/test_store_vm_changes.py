"""VmStore.update_spec against a real etcd for the changes of issue 12: a bound VM's
resize moves its binding, its host's allocation and its project's quota in one
transaction and never overshoots either under concurrent resizes from several
frontends; a ``check`` decides on the record the commit compares (race-free with a
bind or a requeue); a VM's bootstrap data is stored in its create's transaction and
goes with a pending delete and with the unbind that removes it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Coroutine
from dataclasses import replace
from typing import Any

import pytest

from controlplane.etcd import EtcdClient, ops
from controlplane.models import (
    Binding,
    BootstrapFormat,
    HostAllocation,
    HostRegistration,
    Resources,
    VmRef,
    VmSpec,
    VmState,
    now_ns,
)
from controlplane.store import bindings, bootstrap
from controlplane.store.bindings import HostRead, Unbind
from controlplane.store.errors import AlreadyExists, Conflict, EtagMismatch, HostFull
from controlplane.store.keys import Keys, shard_of
from controlplane.store.ledger import QuotaExceeded
from controlplane.store.scheduling import HostBind, SchedulingStore
from controlplane.store.tenancy import TenancyStore
from controlplane.store.vms import VmRecord, VmStore
from controlplane.tenancy import Limits, Project, Tenant, Usage

SHARDS = 4
TENANT, PROJECT = "acme", "web"
SMALL = Resources(1, 1024, 10)


def run(coro: Coroutine[Any, Any, Any], timeout: float = 60.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout=timeout))


def make_spec(vm_id: str, resources: Resources = SMALL, **kwargs) -> VmSpec:
    uid = uuid.uuid4().hex
    return VmSpec(VmRef(TENANT, PROJECT, vm_id), uid, "small", "ubuntu", resources, create_time_ns=now_ns(),
                  shard=shard_of(uid, SHARDS), **kwargs)


UNLIMITED = Limits()


async def make_project(client: EtcdClient, keys: Keys, limits: Limits = UNLIMITED) -> None:
    store = TenancyStore(client, keys)
    try:
        await store.create_tenant(Tenant(TENANT))
    except AlreadyExists:
        pass
    await store.create_project(Project(TENANT, PROJECT, quota=limits))


async def register(client: EtcdClient, keys: Keys, host: str, capacity: Resources) -> None:
    await client.put(keys.host_reg(host), HostRegistration(host, "sim", capacity).to_bytes())


async def bind_all(client: EtcdClient, keys: Keys, specs: list[VmSpec], host: str) -> None:
    """Bind ``specs`` onto ``host`` as the scheduler does (one bind txn)."""
    sched = SchedulingStore(client, keys)
    queued = []
    for shard in {s.shard for s in specs}:
        queued += [q for q in (await sched.list_queue(shard))[0] if q.spec.ref in {s.ref for s in specs}]
    alloc_kv = await client.get(keys.host_alloc(host))
    alloc = HostAllocation.from_bytes(alloc_kv.value) if alloc_kv else HostAllocation()
    result = await sched.bind(None, [HostBind(host, alloc_kv.mod_revision if alloc_kv else 0, alloc, queued)])
    assert result.committed == [True]


async def unbind(client: EtcdClient, keys: Keys, ref: VmRef, host: str, *, requeue: bool) -> None:
    """Unbind ``ref`` from ``host`` as an agent or the host evictor does (bindings.unbind)."""
    binding_kv = await client.get(keys.binding(host, ref))
    alloc_kv = await client.get(keys.host_alloc(host))
    txn = bindings.unbind(keys, HostRead(host, HostAllocation.from_bytes(alloc_kv.value), alloc_kv.mod_revision),
                          [Unbind(Binding.from_bytes(binding_kv.value), binding_kv.mod_revision, requeue)],
                          zone_counts={}, at=now_ns(), tombstone_lease=0)
    assert (await client.txn(txn.compares, txn.writes)).succeeded


async def usage(client: EtcdClient, keys: Keys) -> Usage:
    return (await TenancyStore(client, keys).usages(TENANT)).get(PROJECT, Usage())


async def allocation(client: EtcdClient, keys: Keys, host: str) -> HostAllocation:
    kv = await client.get(keys.host_alloc(host))
    return HostAllocation.from_bytes(kv.value) if kv else HostAllocation()


def resized(resources: Resources):
    return lambda spec: replace(spec, resources=resources, flavor=f"r{resources.vcpus}")


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


# --- resize ----------------------------------------------------------------------------

def test_a_bound_vms_resize_moves_binding_allocation_and_quota_in_one_revision(etcd_endpoint: str,
                                                                               root: str) -> None:
    async def main() -> None:
        keys = Keys(root)
        async with CountingClient(etcd_endpoint) as client:
            await make_project(client, keys)
            await register(client, keys, "h1", Resources(8, 8192, 100))
            store = VmStore(client, keys)
            spec = make_spec("vm-1", anti_affinity_group="g")
            await store.create(spec)
            await bind_all(client, keys, [spec], "h1")
            client.round_trips = 0
            update = await store.update_spec(spec.ref, resized(Resources(4, 4096, 40)))
            # The VM as read, its binding + allocation + registration in one read, the commit.
            assert client.round_trips == 3
            assert update.changed and update.record.spec.resources == Resources(4, 4096, 40)
            spec_kv = await client.get(keys.vm_spec(spec.ref))
            binding_kv = await client.get(keys.binding("h1", spec.ref))
            alloc_kv = await client.get(keys.host_alloc("h1"))
            usage_kvs, _rev = await client.range_prefix(keys.usage_prefix(TENANT, PROJECT))
            assert spec_kv.mod_revision == binding_kv.mod_revision == alloc_kv.mod_revision == update.revision
            assert max(kv.mod_revision for kv in usage_kvs) == update.revision  # the quota moved in it too
            assert Binding.from_bytes(binding_kv.value).spec == update.record.spec
            assert HostAllocation.from_bytes(alloc_kv.value) == HostAllocation(Resources(4, 4096, 40), 1,
                                                                               {spec.host_group: 1})
            assert await usage(client, keys) == Usage.of_vm(Resources(4, 4096, 40))
            # A shrink gives both back.
            await store.update_spec(spec.ref, resized(Resources(1, 512, 5)))
            assert (await allocation(client, keys, "h1")).resources == Resources(1, 512, 5)
            assert await usage(client, keys) == Usage.of_vm(Resources(1, 512, 5))

    run(main())


def test_a_resize_past_the_hosts_allocatable_is_refused_and_changes_nothing(etcd_endpoint: str, root: str) -> None:
    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client:
            await make_project(client, keys)
            await register(client, keys, "h1", Resources(4, 8192, 100))
            store = VmStore(client, keys)
            a, b = make_spec("vm-a"), make_spec("vm-b")
            for spec in (a, b):
                await store.create(spec)
            await bind_all(client, keys, [a, b], "h1")
            before = await client.range_prefix(keys.base.encode())
            with pytest.raises(HostFull) as full:
                await store.update_spec(a.ref, resized(Resources(4, 1024, 10)))  # 4 + 1 vCPUs > 4
            assert full.value.dimensions == ["vcpus"] and full.value.host == "h1"
            assert [(kv.key, kv.mod_revision) for kv in (await client.range_prefix(keys.base.encode()))[0]] == \
                [(kv.key, kv.mod_revision) for kv in before[0]]
            # Exactly to the allocatable fits.
            await store.update_spec(a.ref, resized(Resources(3, 1024, 10)))
            assert (await allocation(client, keys, "h1")).resources == Resources(4, 2048, 20)
            # A host without a registration (its agent gone) takes no growth, but a shrink.
            await client.delete(keys.host_reg("h1"))
            with pytest.raises(HostFull) as unregistered:
                await store.update_spec(b.ref, resized(Resources(2, 1024, 10)))
            assert not unregistered.value.registered
            await store.update_spec(a.ref, resized(Resources(2, 1024, 10)))
            assert (await allocation(client, keys, "h1")).resources == Resources(3, 2048, 20)

    run(main())


def test_concurrent_resizes_from_several_frontends_never_overshoot_quota_nor_host(etcd_endpoint: str,
                                                                                 root: str) -> None:
    """12 VMs of one project on two hosts, each resized up and down many times at once
    through three frontends (own client, ledger and stripe each): every moment the
    project's usage is within its quota and each host's allocation within its
    allocatable, and at the end both equal exactly what the VMs hold."""

    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as c0, EtcdClient(etcd_endpoint) as c1, \
                EtcdClient(etcd_endpoint) as c2:
            quota = Limits(vcpus=30)
            await make_project(c0, keys, quota)
            allocatable = {"h1": Resources(14, 10**6, 10**6), "h2": Resources(12, 10**6, 10**6)}
            for host, capacity in allocatable.items():
                await register(c0, keys, host, capacity)
            fronts = [VmStore(c, keys) for c in (c0, c1, c2)]
            specs = [make_spec(f"vm-{i:02d}") for i in range(12)]
            for spec in specs:
                await fronts[0].create(spec)
            await bind_all(c0, keys, specs[:6], "h1")
            await bind_all(c0, keys, specs[6:], "h2")
            refused: list[BaseException] = []
            done = 0
            checking = True

            async def watchdog() -> None:
                # Usage and both allocations, read over and over while the resizes run.
                while checking:
                    used = await usage(c0, keys)
                    assert not quota.exceeded(used), used
                    for host, limit in allocatable.items():
                        assert (await allocation(c0, keys, host)).resources.fits_within(limit)
                    await asyncio.sleep(0)

            async def resizer(i: int) -> None:
                nonlocal done
                spec = specs[i]
                for round_ in range(6):
                    vcpus = 1 + (i * 7 + round_ * 5) % 5
                    try:
                        await fronts[(i + round_) % 3].update_spec(spec.ref, resized(Resources(vcpus, 1024, 10)))
                        done += 1
                    except (QuotaExceeded, HostFull) as err:
                        refused.append(err)

            guard = asyncio.create_task(watchdog())
            try:
                await asyncio.gather(*(resizer(i) for i in range(12)))
            finally:
                checking = False
                await guard
            assert done > 0 and refused, (done, refused)  # both outcomes happened
            records = [await fronts[0].get(s.ref) for s in specs]
            held = Usage()
            for record in records:
                held = held + Usage.of_vm(record.spec.resources)
            assert await usage(c0, keys) == held
            assert not quota.exceeded(held)
            for host, members in (("h1", records[:6]), ("h2", records[6:])):
                total = sum((r.spec.resources for r in members), Resources())
                assert (await allocation(c0, keys, host)).resources == total
                assert total.fits_within(allocatable[host])
                for r in members:
                    binding_kv = await c0.get(keys.binding(host, r.ref))
                    assert Binding.from_bytes(binding_kv.value).spec == r.spec

    run(main())


def test_a_pending_vms_resize_rewrites_its_queue_entry_and_quota(etcd_endpoint: str, root: str) -> None:
    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client:
            await make_project(client, keys, Limits(vcpus=3))
            store = VmStore(client, keys)
            spec = make_spec("vm-1")
            await store.create(spec)
            update = await store.update_spec(spec.ref, resized(Resources(3, 1024, 10)))
            queue_kv = await client.get(keys.queue(spec.shard, spec.ref))
            assert queue_kv.mod_revision == update.revision and VmSpec.from_bytes(queue_kv.value) == update.record.spec
            with pytest.raises(QuotaExceeded):
                await store.update_spec(spec.ref, resized(Resources(4, 1024, 10)))
            assert (await store.get(spec.ref)).spec == update.record.spec
            assert await usage(client, keys) == Usage.of_vm(Resources(3, 1024, 10))

    run(main())


# --- check: decided on what the commit compares ----------------------------------------

class Interloper(EtcdClient):
    """A real client that, before its first write txn, lets ``before_write`` change
    the store: a bind or a requeue racing the change being built."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.before_write = None

    async def txn(self, compares, success=(), failure=(), **kwargs):
        writes = any(op.WhichOneof("request") != "request_range" for op in success)
        if writes and self.before_write is not None:
            hook, self.before_write = self.before_write, None
            await hook()
        return await super().txn(compares, success, failure, **kwargs)


def refuse_pending(seen: list[VmState]):
    def check(record: VmRecord) -> None:
        seen.append(record.status.state)
        if record.status.state is VmState.PENDING:
            raise LookupError("pending")
    return check


def test_a_check_sees_a_requeue_that_raced_the_change(etcd_endpoint: str, root: str) -> None:
    """Read bound, then requeued before the commit: the binding compare fails, the
    check runs again on the VM as it now is (PENDING), and refuses; nothing written."""

    async def main() -> None:
        keys = Keys(root)
        async with Interloper(etcd_endpoint) as client, EtcdClient(etcd_endpoint) as other:
            await make_project(client, keys)
            store = VmStore(client, keys)
            spec = make_spec("vm-1")
            await store.create(spec)
            await bind_all(client, keys, [spec], "h1")

            async def requeue() -> None:
                await unbind(other, keys, spec.ref, "h1", requeue=True)

            client.before_write = requeue
            seen: list[VmState] = []
            with pytest.raises(LookupError):
                await store.update_spec(spec.ref, lambda s: replace(s, labels={"x": "y"}), check=refuse_pending(seen))
            assert seen == [VmState.SCHEDULED, VmState.PENDING]
            after = await store.get(spec.ref)
            assert after.spec.labels == {} and after.status.state is VmState.PENDING

    run(main())


def test_a_check_sees_a_bind_that_raced_the_change(etcd_endpoint: str, root: str) -> None:
    """Read pending (refused at once), and the other way: read pending and allowed,
    bound before the commit: the queue compare fails, and the change lands in the
    binding instead, after a second check on the bound VM."""

    async def main() -> None:
        keys = Keys(root)
        async with Interloper(etcd_endpoint) as client, EtcdClient(etcd_endpoint) as other:
            await make_project(client, keys)
            store = VmStore(client, keys)
            spec = make_spec("vm-1")
            await store.create(spec)
            seen: list[VmState] = []
            with pytest.raises(LookupError):
                await store.update_spec(spec.ref, lambda s: replace(s, labels={"x": "y"}), check=refuse_pending(seen))
            assert seen == [VmState.PENDING]

            client.before_write = lambda: bind_all(other, keys, [spec], "h1")
            states: list[VmState] = []
            update = await store.update_spec(spec.ref, lambda s: replace(s, labels={"x": "y"}),
                                             check=lambda r: states.append(r.status.state))
            assert states == [VmState.PENDING, VmState.SCHEDULED]
            binding_kv = await client.get(keys.binding("h1", spec.ref))
            assert Binding.from_bytes(binding_kv.value).spec == update.record.spec
            assert await client.get(keys.queue(spec.shard, spec.ref)) is None

    run(main())


# --- bootstrap data ----------------------------------------------------------------------

def _with_bootstrap(keys: Keys, vm_id: str) -> tuple[VmSpec, bootstrap.BootstrapData]:
    spec = make_spec(vm_id)
    data = bootstrap.BootstrapData(spec.uid, BootstrapFormat.CLOUD_INIT, b"#cloud-config\nsecret: 1\n",
                                   bootstrap.render_metadata(instance_id=spec.uid, hostname=vm_id))
    return replace(spec, bootstrap=data.summary()), data


def test_bootstrap_data_is_stored_in_the_create_txn_and_goes_with_a_pending_delete(etcd_endpoint: str,
                                                                                    root: str) -> None:
    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client:
            await make_project(client, keys)
            store = VmStore(client, keys)
            spec, data = _with_bootstrap(keys, "vm-1")
            record, created = await store.create(spec, also=[bootstrap.put_op(keys, spec.ref, data)])
            assert created
            kv = await client.get(keys.bootstrap(spec.ref))
            assert kv is not None and kv.mod_revision == record.spec_revision
            assert await bootstrap.read(client, keys, spec.ref, spec.uid) == data
            assert await bootstrap.read(client, keys, spec.ref, "another-uid") is None
            # Nothing under vms/ carries it.
            kvs, _rev = await client.range_prefix(keys.vm_prefix(spec.ref))
            assert all(data.user_data not in kv.value for kv in kvs)
            deletion = await store.request_delete(spec.ref)
            assert deletion.removed
            assert await client.get(keys.bootstrap(spec.ref)) is None

    run(main())


def test_bootstrap_data_goes_with_the_unbind_that_removes_its_vm(etcd_endpoint: str, root: str) -> None:
    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client:
            await make_project(client, keys)
            store = VmStore(client, keys)
            spec, data = _with_bootstrap(keys, "vm-1")
            await store.create(spec, also=[bootstrap.put_op(keys, spec.ref, data)])
            await bind_all(client, keys, [spec], "h1")
            await store.request_delete(spec.ref)
            assert await client.get(keys.bootstrap(spec.ref)) is not None  # the agent has not destroyed it yet
            await unbind(client, keys, spec.ref, "h1", requeue=False)  # as its agent, once it destroyed it
            assert await client.get(keys.bootstrap(spec.ref)) is None
            assert await client.get(keys.vm_spec(spec.ref)) is None

    run(main())


def test_a_stale_etag_is_an_etag_mismatch_lost_compares_are_not(etcd_endpoint: str, root: str) -> None:
    """Both are Conflicts; only a stale etag is an EtagMismatch (the API's ETAG_MISMATCH,
    else CONFLICT), also when an etag was given and matched."""
    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client:
            await make_project(client, keys)
            vms = VmStore(client, keys)
            spec = make_spec("cas")
            record, _ = await vms.create(spec)
            relabel = lambda s: replace(s, labels={"a": "b"})  # noqa: E731
            with pytest.raises(EtagMismatch):
                await vms.update_spec(spec.ref, relabel, etag=f"{record.spec_revision + 1:x}")
            # The etag matches; a compare of the caller's fails every round.
            fenced = keys.vm_spec(spec.ref)  # present: ``absent`` never holds
            with pytest.raises(Conflict) as lost:
                await vms.update_spec(spec.ref, relabel, etag=record.etag, guard=[ops.absent(fenced)])
            assert not isinstance(lost.value, EtagMismatch)
            assert (await vms.get(spec.ref)).spec == spec  # nothing written either time

    run(main())
