"""Persistent disks through the real processes (issue 14, server side): DiskService's
methods and their errors, WatchDisks (each change once, resumable, record and
attachment changes alike), a VM created with disks, AttachDisk and DetachDisk on a
VM that waits for a host, DeleteVm with delete_disks, and the audit record of every
mutation. The VMs here stay PENDING (a node selector no host matches), so no agent
takes part: letting go of a disk on a host is the agents' side."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator

import grpc
import pytest
from google.protobuf import field_mask_pb2

from controlplane.api.errors import ApiError
from controlplane.gen.quanta.v1 import common_pb2, disk_pb2, disk_pb2_grpc, vm_pb2
from quanta.client import Client
from quanta.local import LocalSystem
from tests.conftest import wait_until

TENANT, PROJECT = "acme", "disks"
PARENT = f"tenants/{TENANT}/projects/{PROJECT}"


@pytest.fixture(scope="module")
def system(etcd_server) -> Iterator[LocalSystem]:
    root = f"/dsk-{uuid.uuid4().hex[:8]}"
    with LocalSystem(etcd_endpoint=etcd_server.endpoint, root=root, hosts=1, frontends=2, latency="zero",
                     metrics=False, bookmark_interval_s=1.0) as local:
        with local.client(ensure_project=False) as admin:
            admin.create_tenant(TENANT)
            admin.create_project(PROJECT, tenant=TENANT, quota={"data_disk_gib": 100})
        yield local


@pytest.fixture
def c(system) -> Iterator[Client]:
    with system.client(tenant=TENANT, project=PROJECT, ensure_project=False) as client:
        yield client


def _fresh(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _error(call: Callable[[], object]) -> ApiError:
    with pytest.raises(ApiError) as info:
        call()
    return info.value


def disks(c: Client, method: str, request) -> object:
    return c._call(getattr(disk_pb2_grpc.DiskServiceStub(c._channel), method), request)


def create_disk(c: Client, disk_id: str, size_gib: int = 1, **kw) -> disk_pb2.Disk:
    return disks(c, "CreateDisk", disk_pb2.CreateDiskRequest(parent=PARENT, disk_id=disk_id,
                                                             disk=disk_pb2.Disk(size_gib=size_gib), **kw))


def get_disk(c: Client, disk_id: str) -> disk_pb2.Disk:
    return disks(c, "GetDisk", disk_pb2.GetDiskRequest(name=f"{PARENT}/disks/{disk_id}"))


def pending_vm(c: Client, vm_id: str, *disk_ids: str) -> vm_pb2.Vm:
    """A VM no host takes (its node selector matches none): it stays PENDING."""
    return c._call(c._vms.CreateVm, vm_pb2.CreateVmRequest(parent=PARENT, vm_id=vm_id, vm=vm_pb2.Vm(
        flavor="small", image="ubuntu", node_selector={"nowhere": "true"}, disks=list(disk_ids))))


def test_disk_methods_and_their_refusals(c: Client) -> None:
    disk_id = _fresh("d")
    made = create_disk(c, disk_id, 3, request_id="r-" + disk_id)
    assert (made.state, made.size_gib, made.datastore_class, made.vm) == (disk_pb2.Disk.AVAILABLE, 3, "standard", "")
    again = create_disk(c, disk_id, 3, request_id="r-" + disk_id)
    assert again.uid == made.uid
    err = _error(lambda: create_disk(c, disk_id, 4, request_id="r-" + disk_id))
    assert (err.code, err.reason) == (grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED")
    err = _error(lambda: create_disk(c, disk_id, 3))
    assert (err.code, err.reason) == (grpc.StatusCode.ALREADY_EXISTS, "DISK_ALREADY_EXISTS")
    err = _error(lambda: create_disk(c, _fresh("d"), 0))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT and err.field_violations[0][0] == "disk.size_gib"
    err = _error(lambda: create_disk(c, _fresh("d"), 200))  # over data_disk_gib 100
    assert (err.code, err.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "QUOTA_EXCEEDED")
    err = _error(lambda: disks(c, "CreateDisk", disk_pb2.CreateDiskRequest(
        parent=PARENT, disk_id=_fresh("d"), disk=disk_pb2.Disk(size_gib=1, datastore_class="Not Ok"))))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT

    updated = disks(c, "UpdateDisk", disk_pb2.UpdateDiskRequest(
        disk=disk_pb2.Disk(name=made.name, labels={"role": "etcd"}, etag=made.etag),
        update_mask=field_mask_pb2.FieldMask(paths=["labels"])))
    assert dict(updated.labels) == {"role": "etcd"} and updated.etag != made.etag
    err = _error(lambda: disks(c, "UpdateDisk", disk_pb2.UpdateDiskRequest(
        disk=disk_pb2.Disk(name=made.name, description="x", etag=made.etag),
        update_mask=field_mask_pb2.FieldMask(paths=["description"]))))
    assert (err.code, err.reason) == (grpc.StatusCode.ABORTED, "ETAG_MISMATCH")
    err = _error(lambda: disks(c, "UpdateDisk", disk_pb2.UpdateDiskRequest(
        disk=disk_pb2.Disk(name=made.name, size_gib=9), update_mask=field_mask_pb2.FieldMask(paths=["size_gib"]))))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    listed = disks(c, "ListDisks", disk_pb2.ListDisksRequest(parent=PARENT, label_selector="role=etcd"))
    assert [d.name for d in listed.disks] == [made.name]

    gone = disks(c, "DeleteDisk", disk_pb2.DeleteDiskRequest(name=made.name))
    assert gone.state == disk_pb2.Disk.DELETING
    # Every mutation above that changed something is in the audit log, under the disk.
    records = [r for r in c.list_audit(tenant=TENANT) if r.resource == made.name]
    methods = [r.method.rsplit("/", 1)[-1] for r in records]
    assert {"CreateDisk", "UpdateDisk", "DeleteDisk"} <= set(methods), methods


def test_vm_disks_attach_detach_and_delete_with_disks(c: Client) -> None:
    d1, d2, d3 = _fresh("a"), _fresh("b"), _fresh("c")
    for disk_id in (d1, d2, d3):
        create_disk(c, disk_id, 2)
    vm = pending_vm(c, _fresh("vm"), d1)
    assert list(vm.disks) == [f"{PARENT}/disks/{d1}"]
    other = pending_vm(c, _fresh("vm"))
    err = _error(lambda: c._call(c._vms.AttachDisk, vm_pb2.AttachDiskRequest(name=other.name, disk=d1)))
    assert (err.code, err.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "DISK_IN_USE")
    assert err.metadata["vm"] == vm.name
    with_two = c._call(c._vms.AttachDisk, vm_pb2.AttachDiskRequest(name=vm.name, disk=d2, etag=vm.etag))
    assert list(with_two.disks) == [f"{PARENT}/disks/{d1}", f"{PARENT}/disks/{d2}"]
    assert c.get_vm(vm.name).disks == with_two.disks
    err = _error(lambda: c._call(c._vms.DetachDisk, vm_pb2.DetachDiskRequest(name=vm.name, disk=d2,
                                                                              etag=vm.etag)))
    assert (err.code, err.reason) == (grpc.StatusCode.ABORTED, "ETAG_MISMATCH")
    err = _error(lambda: disks(c, "DeleteDisk", disk_pb2.DeleteDiskRequest(name=f"{PARENT}/disks/{d1}")))
    assert (err.code, err.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "DISK_ATTACHED")
    c._call(c._vms.DetachDisk, vm_pb2.DetachDiskRequest(name=vm.name, disk=d1))
    assert get_disk(c, d1).state == disk_pb2.Disk.AVAILABLE  # a VM on no host lets go at once
    assert list(c._call(c._vms.AttachDisk, vm_pb2.AttachDiskRequest(name=other.name, disk=d1)).disks) == [
        f"{PARENT}/disks/{d1}"]

    before = c.get_quota(f"{PARENT}/quota").usage
    deleted = c._call(c._vms.DeleteVm, vm_pb2.DeleteVmRequest(name=other.name, delete_disks=True))
    assert list(deleted.disks) == [f"{PARENT}/disks/{d1}"]
    # The pending VM is removed at once and gives its attachment back in that txn
    # (claims.release_ops); the DELETING disk, attached to nothing, is then destroyed
    # by an agent that reaches its class and its record removed.
    wait_until(lambda: _gone(c, d1), timeout=30, message=f"{d1} collected", seen=lambda: _state(c, d1))
    after = c.get_quota(f"{PARENT}/quota").usage
    assert (before.data_disks - after.data_disks, before.data_disk_gib - after.data_disk_gib) == (1, 2)
    assert get_disk(c, d2).state == disk_pb2.Disk.ATTACHED and get_disk(c, d3).state == disk_pb2.Disk.AVAILABLE


def _state(c: Client, disk_id: str) -> str:
    try:
        return disk_pb2.Disk.State.Name(get_disk(c, disk_id).state)
    except ApiError as err:
        return err.reason


def _gone(c: Client, disk_id: str) -> bool:
    return _state(c, disk_id) == "DISK_NOT_FOUND"


def test_watch_sends_each_disk_change_once_and_resumes(system: LocalSystem, c: Client) -> None:
    start = disks(c, "ListDisks", disk_pb2.ListDisksRequest(parent=PARENT)).resource_version
    events: list[disk_pb2.DiskEvent] = []
    stop = threading.Event()

    def watch() -> None:
        with system.client(tenant=TENANT, project=PROJECT, ensure_project=False) as w:
            stream = disk_pb2_grpc.DiskServiceStub(w._channel).WatchDisks(
                disk_pb2.WatchDisksRequest(parent=PARENT, resource_version=start), timeout=60)
            try:
                for event in stream:
                    events.append(event)
                    if stop.is_set():
                        return
            except grpc.RpcError:
                return
            finally:
                stream.cancel()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    disk_id = _fresh("w")
    create_disk(c, disk_id)
    vm = pending_vm(c, _fresh("vm"), disk_id)
    c._call(c._vms.DetachDisk, vm_pb2.DetachDiskRequest(name=vm.name, disk=disk_id))
    disks(c, "DeleteDisk", disk_pb2.DeleteDiskRequest(name=f"{PARENT}/disks/{disk_id}"))

    def changes() -> list[tuple[str, str]]:
        return [(common_pb2.EventType.Name(e.type), disk_pb2.Disk.State.Name(e.disk.state))
                for e in events if e.type != common_pb2.BOOKMARK and e.disk.name.endswith(disk_id)]

    # The last: an agent that reaches the disk's class destroyed it (attached to nothing).
    wait_until(lambda: len(changes()) >= 5, timeout=30, message="5 changes of the disk", seen=changes)
    stop.set()
    assert changes() == [("ADDED", "AVAILABLE"), ("MODIFIED", "ATTACHED"), ("MODIFIED", "AVAILABLE"),
                         ("MODIFIED", "DELETING"), ("DELETED", "DELETING")]
    ours = [e for e in events if e.type != common_pb2.BOOKMARK and e.disk.name.endswith(disk_id)]
    assert ours[1].disk.vm == vm.name and ours[2].disk.vm == ""
    revisions = [e.resource_version for e in ours]
    assert revisions == sorted(set(revisions))
    # Resuming after the attach gets the rest, once.
    with system.client(tenant=TENANT, project=PROJECT, ensure_project=False) as w:
        stream = disk_pb2_grpc.DiskServiceStub(w._channel).WatchDisks(
            disk_pb2.WatchDisksRequest(parent=PARENT, resource_version=revisions[1]), timeout=30)
        resumed = []
        for event in stream:
            if event.type != common_pb2.BOOKMARK and event.disk.name.endswith(disk_id):
                resumed.append(event.resource_version)
            if event.type == common_pb2.BOOKMARK and event.resource_version >= revisions[-1]:
                break
        stream.cancel()
    assert resumed == revisions[2:]
    with pytest.raises(grpc.RpcError) as info:
        list(disk_pb2_grpc.DiskServiceStub(c._channel).WatchDisks(
            disk_pb2.WatchDisksRequest(parent=PARENT, resource_version=revisions[-1] + 10**9), timeout=10))
    err = c._error(info.value)
    assert (err.code, err.reason) == (grpc.StatusCode.OUT_OF_RANGE, "RESOURCE_VERSION_TOO_NEW")
