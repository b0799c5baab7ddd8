"""Disks on VMs through VmService and DiskService in process, against a real etcd (two
services with their own etcd clients and quota ledgers stand for two frontends):
AttachDisk raced from two frontends gives the disk to exactly one VM; detach, then
attach elsewhere; a placed VM's host must reach the disk's datastore class; Vm.disks
at create (CreateVm, CreateVms both modes, validate_only); DeleteVm's delete_disks."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import grpc
import pytest

from controlplane.api.access import audit_scope
from controlplane.api.disk_service import DiskService
from controlplane.api.errors import ApiError
from controlplane.api.vm_service import VmService
from controlplane.auth.principal import Grant, Principal, Role, current
from controlplane.etcd import EtcdClient, ops
from controlplane.gen.quanta.v1 import disk_pb2, vm_pb2
from controlplane.models import HostAllocation, HostRegistration, Resources, VmRef, datastore_label
from controlplane.store.agentdisks import AgentDiskStore
from controlplane.store.catalog import Catalog, seed_defaults
from controlplane.store.claims import release_ops
from controlplane.store.disks import DiskStore
from controlplane.store.keys import Keys
from controlplane.store.ledger import UsageLedger
from controlplane.store.scheduling import HostBind, SchedulingStore
from controlplane.store.tenancy import TenancyStore
from controlplane.store.vms import VmStore
from controlplane.tenancy import Usage
from tests.conftest import make_projects

TENANT, PROJECT = "acme", "web"
PARENT = f"tenants/{TENANT}/projects/{PROJECT}"
SHARDS = 2


def run(coro: Coroutine[Any, Any, Any], timeout: float = 60.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout=timeout))


@pytest.fixture(autouse=True)
def _projects(etcd_endpoint: str, root: str) -> None:
    make_projects(etcd_endpoint, root, TENANT, PROJECT)


class Frontend:
    """A VmService and a DiskService over their own etcd client and quota ledger."""

    def __init__(self, client: EtcdClient, keys: Keys, catalog: Catalog, stripe: int):
        ledger = UsageLedger(client, keys, stripe=stripe)
        self.vms_store = VmStore(client, keys, ledger=ledger)
        self.disks_store = DiskStore(client, keys, self.vms_store.requests, ledger)
        self.vms = VmService(self.vms_store, catalog, shards=SHARDS, disks=self.disks_store)
        self.disks = DiskService(self.disks_store)

    async def vm(self, vm_id: str, *disks: str, **kw) -> vm_pb2.Vm:
        return await self.vms.CreateVm(vm_pb2.CreateVmRequest(
            parent=PARENT, vm_id=vm_id, vm=vm_pb2.Vm(flavor="small", image="ubuntu", disks=list(disks)), **kw), None)

    async def disk(self, disk_id: str, size_gib: int = 10) -> disk_pb2.Disk:
        return await self.disks.CreateDisk(disk_pb2.CreateDiskRequest(
            parent=PARENT, disk_id=disk_id, disk=disk_pb2.Disk(size_gib=size_gib)), None)

    async def get_disk(self, disk_id: str) -> disk_pb2.Disk:
        return await self.disks.GetDisk(disk_pb2.GetDiskRequest(name=f"{PARENT}/disks/{disk_id}"), None)

    async def attach(self, vm_id: str, disk: str) -> vm_pb2.Vm:
        return await self.vms.AttachDisk(vm_pb2.AttachDiskRequest(name=f"{PARENT}/vms/{vm_id}", disk=disk), None)

    async def detach(self, vm_id: str, disk: str) -> vm_pb2.Vm:
        return await self.vms.DetachDisk(vm_pb2.DetachDiskRequest(name=f"{PARENT}/vms/{vm_id}", disk=disk), None)


@contextlib.asynccontextmanager
async def frontends(etcd_endpoint: str, root: str, n: int = 2) -> AsyncIterator[list[Frontend]]:
    keys = Keys(root)
    current.set(Principal("admin", (Grant(Role.SYSTEM_ADMIN),)))
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(EtcdClient(etcd_endpoint)) for _ in range(n)]
        await seed_defaults(clients[0], keys)
        catalog = Catalog(clients[0], keys)
        await catalog.start()
        stack.push_async_callback(catalog.stop)
        yield [Frontend(c, keys, catalog, i) for i, c in enumerate(clients)]


async def refused(call: Coroutine) -> ApiError:
    with pytest.raises(ApiError) as info:
        await call
    return info.value


async def bind(client: EtcdClient, keys: Keys, vm_id: str, host: str, *, classes: tuple[str, ...]) -> None:
    """Register ``host`` (labelled for ``classes``) and bind the pending VM onto it."""
    labels = {datastore_label(c): "true" for c in classes}
    await client.put(keys.host_reg(host), HostRegistration(host, "sim", Resources(64, 65536, 1000), labels).to_bytes())
    store = VmStore(client, keys)
    record = await store.get(VmRef(TENANT, PROJECT, vm_id))
    sched = SchedulingStore(client, keys)
    queued = next(q for q in (await sched.list_queue(record.spec.shard))[0] if q.spec.ref == record.ref)
    result = await sched.bind(None, [HostBind(host, 0, HostAllocation(), [queued])])
    assert result.committed == [True]


def test_a_disk_attached_twice_at_once_goes_to_exactly_one_vm(etcd_endpoint: str, root: str) -> None:
    async def main() -> None:
        async with frontends(etcd_endpoint, root) as (one, two):
            await one.disk("shared")
            await asyncio.gather(one.vm("vm-a"), two.vm("vm-b"))
            for round_ in range(4):
                outcomes = await asyncio.gather(one.attach("vm-a", "shared"), two.attach("vm-b", "shared"),
                                                return_exceptions=True)
                won = [o for o in outcomes if isinstance(o, vm_pb2.Vm)]
                lost = [o for o in outcomes if isinstance(o, ApiError)]
                assert len(won) == 1 and len(lost) == 1, (round_, outcomes)
                assert (lost[0].code, lost[0].reason) == (grpc.StatusCode.FAILED_PRECONDITION, "DISK_IN_USE")
                assert list(won[0].disks) == [f"{PARENT}/disks/shared"]
                disk = await two.get_disk("shared")
                assert disk.state == disk_pb2.Disk.ATTACHED and disk.vm == won[0].name
                # The loser's spec is untouched.
                loser = "vm-b" if won[0].name.endswith("vm-a") else "vm-a"
                other = await one.vms_store.get(VmRef(TENANT, PROJECT, loser))
                assert other.spec.disks == ()
                # Pending VMs let go at once: AVAILABLE for the next round.
                await one.detach(won[0].name.rsplit("/", 1)[1], "shared")
                assert (await one.get_disk("shared")).state == disk_pb2.Disk.AVAILABLE

    run(main())


def test_detach_then_attach_elsewhere_and_the_refusals(etcd_endpoint: str, root: str) -> None:
    async def main() -> None:
        async with frontends(etcd_endpoint, root, 1) as (fe,):
            await fe.disk("d1")
            await fe.vm("vm-a")
            await fe.vm("vm-b")
            attached = await fe.attach("vm-a", f"{PARENT}/disks/d1")  # a full name works too
            again = await fe.attach("vm-a", "d1")  # idempotent: nothing written
            assert again.etag == attached.etag and list(again.disks) == [f"{PARENT}/disks/d1"]
            err = await refused(fe.disks.DeleteDisk(disk_pb2.DeleteDiskRequest(name=f"{PARENT}/disks/d1"), None))
            assert (err.code, err.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "DISK_ATTACHED")
            err = await refused(fe.detach("vm-b", "d1"))
            assert (err.code, err.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "DISK_NOT_ATTACHED")
            err = await refused(fe.attach("vm-b", "nope"))
            assert (err.code, err.reason) == (grpc.StatusCode.NOT_FOUND, "DISK_NOT_FOUND")
            err = await refused(fe.attach("vm-b", "tenants/acme/projects/other/disks/d1"))
            assert err.code == grpc.StatusCode.INVALID_ARGUMENT

            detached = await fe.detach("vm-a", "d1")
            assert list(detached.disks) == []
            moved = await fe.attach("vm-b", "d1")
            assert list(moved.disks) == [f"{PARENT}/disks/d1"]
            assert (await fe.get_disk("d1")).vm == f"{PARENT}/vms/vm-b"

            await fe.detach("vm-b", "d1")
            await fe.disks.DeleteDisk(disk_pb2.DeleteDiskRequest(name=f"{PARENT}/disks/d1"), None)
            err = await refused(fe.attach("vm-a", "d1"))
            assert (err.code, err.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "DISK_DELETING")

    run(main())


def test_a_placed_vm_takes_disks_its_host_reaches_and_lets_go_through_its_agent(etcd_endpoint: str,
                                                                               root: str) -> None:
    async def main() -> None:
        keys = Keys(root)
        async with frontends(etcd_endpoint, root, 1) as (fe,):
            client = fe.vms_store.client
            await fe.disk("fast")
            await fe.disks.CreateDisk(disk_pb2.CreateDiskRequest(
                parent=PARENT, disk_id="cold", disk=disk_pb2.Disk(size_gib=5, datastore_class="archive")), None)
            await fe.vm("vm-a")
            await fe.vm("vm-b")
            await bind(client, keys, "vm-a", "h1", classes=("standard",))
            err = await refused(fe.attach("vm-a", "cold"))
            assert (err.code, err.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "DATASTORE_UNREACHABLE")
            vm = await fe.attach("vm-a", "fast")
            assert list(vm.disks) == [f"{PARENT}/disks/fast"]
            # The binding (the agent's copy of the spec) has it too.
            record = await fe.vms_store.get(VmRef(TENANT, PROJECT, "vm-a"))
            binding = await client.get(keys.binding("h1", record.ref))
            assert binding is not None and b"fast" in binding.value

            await fe.detach("vm-a", "fast")
            disk = await fe.get_disk("fast")
            assert disk.state == disk_pb2.Disk.DETACHING and disk.vm == f"{PARENT}/vms/vm-a"
            err = await refused(fe.attach("vm-b", "fast"))
            assert (err.code, err.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "DISK_IN_USE")
            again = await fe.detach("vm-a", "fast")  # a retry while detaching: no error
            assert list(again.disks) == []
            # Its host's agent: the work index names it (put with the mark), detach_done ends it.
            (marked,), _ = await AgentDiskStore(client, keys).list_detaching()
            assert (marked.disk_id, marked.vm_uid) == ("fast", record.spec.uid)
            assert await AgentDiskStore(client, keys).detach_done(marked)
            assert (await fe.get_disk("fast")).state == disk_pb2.Disk.AVAILABLE
            assert list((await fe.attach("vm-b", "fast")).disks) == [f"{PARENT}/disks/fast"]

    run(main())


def test_vm_disks_at_create(etcd_endpoint: str, root: str) -> None:
    async def main() -> None:
        async with frontends(etcd_endpoint, root) as (one, two):
            for disk_id in ("d1", "d2", "d3", "d4", "d5"):
                await one.disk(disk_id)
            vm = await one.vm("vm-a", "d1", f"{PARENT}/disks/d2", request_id="r-a")
            assert list(vm.disks) == [f"{PARENT}/disks/d1", f"{PARENT}/disks/d2"]
            retry = await two.vm("vm-a", "d1", f"{PARENT}/disks/d2", request_id="r-a")
            assert retry.uid == vm.uid
            assert (await one.get_disk("d2")).vm == vm.name
            err = await refused(two.vm("vm-b", "d3", "d1"))
            assert (err.code, err.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "DISK_IN_USE")
            assert (await one.get_disk("d3")).state == disk_pb2.Disk.AVAILABLE  # nothing taken
            err = await refused(one.vm("vm-b", "d3", "d3"))
            assert err.code == grpc.StatusCode.INVALID_ARGUMENT

            await one.disks.DeleteDisk(disk_pb2.DeleteDiskRequest(name=f"{PARENT}/disks/d5"), None)
            err = await refused(one.vm("vm-c", "d5", validate_only=True))
            assert (err.code, err.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "DISK_DELETING")
            would = await one.vm("vm-c", "d3", validate_only=True)
            assert list(would.disks) == [f"{PARENT}/disks/d3"]
            assert (await one.get_disk("d3")).state == disk_pb2.Disk.AVAILABLE

            # INDEPENDENT: two creates naming one disk, one of them takes it.
            def req(vm_id: str, *disks: str) -> vm_pb2.CreateVmRequest:
                return vm_pb2.CreateVmRequest(vm_id=vm_id, vm=vm_pb2.Vm(flavor="small", image="ubuntu",
                                                                        disks=list(disks)))
            answer = await one.vms.CreateVms(vm_pb2.CreateVmsRequest(
                parent=PARENT, requests=[req("i-1", "d3"), req("i-2", "d3")]), None)
            codes = sorted(r.code for r in answer.results)
            assert codes == [0, grpc.StatusCode.FAILED_PRECONDITION.value[0]], answer
            # ALL_OR_NOTHING: a disk named twice is refused; a disk in use refuses the set.
            err = await refused(one.vms.CreateVms(vm_pb2.CreateVmsRequest(
                parent=PARENT, mode=vm_pb2.CreateVmsRequest.ALL_OR_NOTHING,
                requests=[req("s-1", "d4"), req("s-2", "d4")]), None))
            assert err.code == grpc.StatusCode.INVALID_ARGUMENT
            err = await refused(one.vms.CreateVms(vm_pb2.CreateVmsRequest(
                parent=PARENT, mode=vm_pb2.CreateVmsRequest.ALL_OR_NOTHING,
                requests=[req("s-1", "d4"), req("s-2", "d3")]), None))
            assert (err.code, err.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "DISK_IN_USE")
            assert (await one.get_disk("d4")).state == disk_pb2.Disk.AVAILABLE
            made = await one.vms.CreateVms(vm_pb2.CreateVmsRequest(
                parent=PARENT, mode=vm_pb2.CreateVmsRequest.ALL_OR_NOTHING,
                requests=[req("s-1", "d4"), req("s-2")]), None)
            assert [list(r.vm.disks) for r in made.results] == [[f"{PARENT}/disks/d4"], []]
            assert (await one.get_disk("d4")).vm == f"{PARENT}/vms/s-1"

    run(main())


def test_delete_vm_with_its_disks(etcd_endpoint: str, root: str) -> None:
    async def main() -> None:
        keys = Keys(root)
        async with frontends(etcd_endpoint, root, 1) as (fe,):
            client = fe.vms_store.client
            await fe.disk("keep", 7)
            await fe.disk("drop-1", 20)
            await fe.disk("drop-2", 30)
            await fe.vm("vm-a", "drop-1", "drop-2")
            await fe.vm("vm-b", "keep")
            await bind(client, keys, "vm-a", "h1", classes=("standard",))
            before = await TenancyStore(client, keys).usage(TENANT, PROJECT)
            assert (before.data_disks, before.data_disk_gib) == (3, 57)
            vm = await fe.vms.DeleteVm(vm_pb2.DeleteVmRequest(name=f"{PARENT}/vms/vm-a", delete_disks=True), None)
            assert vm.state == vm_pb2.Vm.DELETING
            for disk_id in ("drop-1", "drop-2"):
                disk = await fe.get_disk(disk_id)
                # DELETING; still attached until the VM is removed.
                assert disk.state == disk_pb2.Disk.DELETING and disk.vm == vm.name
            after = await TenancyStore(client, keys).usage(TENANT, PROJECT)
            assert after == before - Usage(1, 1, 1024, 10, 2, 50)
            assert (await fe.get_disk("keep")).state == disk_pb2.Disk.ATTACHED  # another VM's
            # A second delete_disks changes nothing more.
            await fe.vms.DeleteVm(vm_pb2.DeleteVmRequest(name=f"{PARENT}/vms/vm-a", delete_disks=True), None)
            assert await TenancyStore(client, keys).usage(TENANT, PROJECT) == after

    run(main())


def test_delete_disks_of_a_vm_being_deleted_skips_a_disk_another_vm_took(etcd_endpoint: str, root: str) -> None:
    """DeleteVm(delete_disks) on a VM being deleted already reads it (the disk in its
    spec); before the disk is read, the VM is finally removed (its attachment released
    as claims.release_ops does) and another VM takes the disk: the disk, now another
    VM's, is left alone (ATTACHED, its quota held)."""
    async def main() -> None:
        keys = Keys(root)
        async with frontends(etcd_endpoint, root, 1) as (fe,):
            client = fe.vms_store.client
            await fe.disk("taken", 6)
            await fe.vm("vm-old", "taken")
            await bind(client, keys, "vm-old", "h1", classes=("standard",))  # no agent: stays DELETING
            await fe.vms.DeleteVm(vm_pb2.DeleteVmRequest(name=f"{PARENT}/vms/vm-old"), None)
            old = await fe.vms_store.get(VmRef(TENANT, PROJECT, "vm-old"))
            assert old.spec.deleting
            real_get_many = fe.disks_store.get_many
            raced: list[bool] = []

            async def get_many(names):
                if not raced:  # between the VM's read and its disks' read
                    raced.append(True)
                    ref = old.spec.ref
                    await client.txn([], [ops.delete(keys.vm_spec(ref)), ops.delete(keys.vm_status(ref)),
                                          *release_ops(keys, old.spec)])
                    await fe.vm("vm-new", "taken")
                return await real_get_many(names)

            fe.disks_store.get_many = get_many  # type: ignore[method-assign]
            before = await TenancyStore(client, keys).usage(TENANT, PROJECT)
            await fe.vms.DeleteVm(vm_pb2.DeleteVmRequest(name=f"{PARENT}/vms/vm-old", delete_disks=True), None)
            assert raced
            disk = await fe.get_disk("taken")
            assert disk.state == disk_pb2.Disk.ATTACHED and disk.vm == f"{PARENT}/vms/vm-new"
            after = await TenancyStore(client, keys).usage(TENANT, PROJECT)
            assert (after.data_disks, after.data_disk_gib) == (before.data_disks, before.data_disk_gib)

    run(main())


class RecordedDraft:
    """Stands in for the audit interceptor's draft: one record put, and whether the
    call said it was committed with its mutation."""

    def __init__(self, key: bytes):
        self.key, self.done = key, False

    async def writes(self, resource: str = "") -> list:
        return [ops.put(self.key, b"record")]

    def committed(self) -> None:
        self.done = True

    def dry_run(self) -> None:
        raise AssertionError("not a dry run")


def test_delete_disks_of_a_vm_being_deleted_is_audited_in_its_txn(etcd_endpoint: str, root: str) -> None:
    """DeleteVm(delete_disks) on a VM deleted already (without its disks) marks them
    DELETING in one txn with its audit record, as the first DeleteVm is audited."""
    async def main() -> None:
        keys = Keys(root)
        async with frontends(etcd_endpoint, root, 1) as (fe,):
            client = fe.vms_store.client
            await fe.disk("late-1", 3)
            await fe.disk("late-2", 4)
            await fe.vm("vm-late", "late-1", "late-2")
            await bind(client, keys, "vm-late", "h1", classes=("standard",))  # no agent: stays DELETING
            vm = await fe.vms.DeleteVm(vm_pb2.DeleteVmRequest(name=f"{PARENT}/vms/vm-late"), None)
            assert vm.state == vm_pb2.Vm.DELETING
            before = await TenancyStore(client, keys).usage(TENANT, PROJECT)
            draft = RecordedDraft(keys.audit(TENANT, 1, "late"))
            token = audit_scope.set({"draft": draft})
            try:
                await fe.vms.DeleteVm(vm_pb2.DeleteVmRequest(name=f"{PARENT}/vms/vm-late", delete_disks=True), None)
            finally:
                audit_scope.reset(token)
            assert draft.done  # filed with the mutation, not after it
            record = await client.get(draft.key)
            assert record is not None
            for disk_id in ("late-1", "late-2"):
                assert (await fe.get_disk(disk_id)).state == disk_pb2.Disk.DELETING
                marked = await client.get(keys.disk(TENANT, PROJECT, disk_id))
                assert marked is not None and marked.mod_revision == record.mod_revision  # one txn
            after = await TenancyStore(client, keys).usage(TENANT, PROJECT)
            assert after == before - Usage(data_disks=2, data_disk_gib=7)

    run(main())
