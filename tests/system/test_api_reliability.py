"""API reliability through the real processes: undecodable requests, the one rule
every watch follows, request_ids reused with other parameters, and forced project
deletion racing a member that keeps creating."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator

import grpc
import pytest

from controlplane.api.errors import ApiError
from controlplane.gen.quanta.v1 import (
    auth_pb2,
    catalog_pb2,
    common_pb2,
    disk_pb2,
    host_pb2,
    network_pb2,
    tenancy_pb2,
    vm_pb2,
)
from quanta.client import Client
from quanta.local import LocalSystem
from tests.conftest import describe_vms, wait_until

SERVICE_MODULES = (vm_pb2, disk_pb2, network_pb2, host_pb2, tenancy_pb2, catalog_pb2, auth_pb2)
INVALID_UTF8_NAME = bytes.fromhex("0a04fffec328")  # GetVmRequest.name = b"\xff\xfe\xc3("


@pytest.fixture(scope="module")
def system(etcd_server):
    root = f"/rel-{uuid.uuid4().hex[:8]}"
    with LocalSystem(etcd_endpoint=etcd_server.endpoint, root=root, hosts=2, frontends=1, latency="zero",
                     metrics=False, bookmark_interval_s=1.0) as local:
        yield local


@pytest.fixture
def admin(system) -> Iterator[Client]:
    with system.client(ensure_project=False) as c:
        yield c


def _fresh(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _error(call) -> ApiError:
    with pytest.raises(ApiError) as info:
        call()
    return info.value


# --- undecodable requests ---------------------------------------------------------------


def _api_methods() -> list[tuple[str, bool]]:
    """(full method path, server streaming) of every public API method."""
    return [(f"/{service.full_name}/{method.name}", method.server_streaming)
            for module in SERVICE_MODULES for service in module.DESCRIPTOR.services_by_name.values()
            for method in service.methods]


def _raw(system: LocalSystem, method: str, streaming: bool, data: bytes, token: str | None) -> ApiError:
    """Send ``data`` as the request bytes, as they are (identity serializers)."""
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    with grpc.insecure_channel(system.endpoint) as channel:
        try:
            if streaming:
                for _event in channel.unary_stream(method)(data, metadata=metadata, timeout=10):
                    pass
            else:
                channel.unary_unary(method)(data, metadata=metadata, timeout=10)
        except grpc.RpcError as err:
            return ApiError.from_rpc_error(err)
    raise AssertionError(f"{method} accepted {data!r}")


def test_undecodable_requests_are_unauthenticated_or_invalid_on_every_method(system) -> None:
    methods = _api_methods()
    # The 40 the issue counted, ListOrphans, AdoptOrphan, DestroyOrphan, issue 12's
    # UpdateVm, StartVm, StopVm, RestartVm, issue 15's CreateVms, GetVmSet, PlanVms, and
    # issue 14's AttachDisk, DetachDisk, DiskService's 6 and NetworkService's 6, and
    # WatchVmBatches.
    assert len(methods) == 65
    assert {f"/quanta.v1.NetworkService/{m}" for m in ("CreateNetwork", "GetNetwork", "ListNetworks", "UpdateNetwork",
                                                        "DeleteNetwork", "WatchNetworks")} <= {m for m, _ in methods}
    assert {f"/quanta.v1.VmService/{m}" for m in ("UpdateVm", "StartVm", "StopVm", "RestartVm", "CreateVms",
                                                   "GetVmSet", "PlanVms", "AttachDisk", "DetachDisk",
                                                   "WatchVmBatches")} <= {
        m for m, _streaming in methods}
    assert {f"/quanta.v1.DiskService/{m}Disk" for m in ("Create", "Get", "Update", "Delete")} <= {
        m for m, _streaming in methods}
    answers: dict[str, tuple[str, str]] = {}
    for method, streaming in methods:
        anonymous = _raw(system, method, streaming, b"\xff", None)
        known = _raw(system, method, streaming, b"\xff", system.admin_token)
        answers[method] = (f"{anonymous.code.name}/{anonymous.reason}", f"{known.code.name}/{known.reason}")
        for err in (anonymous, known):
            assert "<class" not in err.message and "Error parsing" not in err.message, (method, err.message)
    wrong = {m: a for m, a in answers.items()
             if a != ("UNAUTHENTICATED/TOKEN_MISSING", "INVALID_ARGUMENT/REQUEST_MALFORMED")}
    assert not wrong, wrong


def test_a_string_that_is_not_utf8_is_invalid_argument(system) -> None:
    err = _raw(system, "/quanta.v1.VmService/GetVm", False, INVALID_UTF8_NAME, system.admin_token)
    assert (err.code, err.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_MALFORMED")
    assert err.metadata == {"message": "quanta.v1.GetVmRequest"}
    anonymous = _raw(system, "/quanta.v1.VmService/GetVm", False, INVALID_UTF8_NAME, None)
    assert anonymous.code == grpc.StatusCode.UNAUTHENTICATED


# --- watches ----------------------------------------------------------------------------


def test_every_watch_refuses_a_version_beyond_the_store(system, admin) -> None:
    admin.create_tenant(tenant := _fresh("fw"))
    admin.create_project("p", tenant=tenant)
    with system.client(tenant=tenant, project="p", ensure_project=False) as c:
        listed = c._call(c._vms.ListVms, vm_pb2.ListVmsRequest(parent=c.parent)).resource_version
        beyond = listed + 1_000_000
        watches = {
            "WatchVms": lambda: next(iter(c._vms.WatchVms(vm_pb2.WatchVmsRequest(
                parent=c.parent, resource_version=beyond), timeout=10))),
            "WatchVmBatches": lambda: next(iter(c._vms.WatchVmBatches(vm_pb2.WatchVmBatchesRequest(
                parent=c.parent, resource_version=beyond), timeout=10))),
            "watch_vms (SDK)": lambda: next(c.watch_vms(resource_version=beyond, timeout=10)),
            "WatchHosts": lambda: next(iter(c._hosts.WatchHosts(host_pb2.WatchHostsRequest(
                resource_version=beyond), timeout=10))),
            "WatchAuditRecords": lambda: next(c.watch_audit(tenant=tenant, resource_version=beyond, timeout=10)),
        }
        for name, watch in watches.items():
            try:
                watch()
            except grpc.RpcError as err:
                refused = ApiError.from_rpc_error(err)
            except ApiError as err:
                refused = err
            else:
                raise AssertionError(f"{name} from {beyond} (store at about {listed}) was accepted")
            assert (refused.code, refused.reason) == (grpc.StatusCode.OUT_OF_RANGE, "RESOURCE_VERSION_TOO_NEW"), \
                (name, refused)


def test_an_audit_watch_resumed_from_its_last_version_sees_every_record_once(system, admin) -> None:
    admin.create_tenant(tenant := _fresh("au"))
    admin.create_project("p", tenant=tenant)
    parent = f"tenants/{tenant}"
    listed = admin._call(admin._audit.ListAuditRecords, auth_pb2.ListAuditRecordsRequest(parent=parent))
    before = {r.name for r in listed.records}
    version = listed.resource_version
    seen: list[str] = []
    with system.client(tenant=tenant, project="p", ensure_project=False) as c:
        for round_ in range(4):
            for i in range(3):  # one at a time: each record in its own revision
                c.create_vm(f"r{round_}-{i}", flavor="small", image="ubuntu")
            events = c.watch_audit(tenant=tenant, resource_version=version, timeout=30)
            first = next(events)
            assert (first.type, first.resource_version) == (common_pb2.BOOKMARK, version)
            added: list[str] = []
            for event in events:
                if event.type == common_pb2.BOOKMARK:
                    # Quiet now: the bookmark says every record up to the last one was sent.
                    assert len(added) == 3 and event.resource_version == version, (added, event, version)
                    break
                assert event.type == common_pb2.ADDED and event.resource_version > version, (event, version)
                added.append(event.record.name)
                version = event.resource_version
            else:
                raise AssertionError(f"round {round_}: no bookmark after {added}")
            events.close()
            seen.extend(added)
    listed = admin._call(admin._audit.ListAuditRecords, auth_pb2.ListAuditRecordsRequest(parent=parent))
    made = [r.name for r in listed.records if r.name not in before]
    assert sorted(seen) == sorted(made) and len(made) == 12


# --- request ids ------------------------------------------------------------------------


def _quanta(system: LocalSystem, *args: str) -> subprocess.CompletedProcess:
    """The installed ``quanta`` command, as a user runs it."""
    executable = os.path.join(os.path.dirname(sys.executable), "quanta")
    return subprocess.run([executable, *args[:1], "--endpoint", system.endpoint, *args[1:]], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "QUANTA_TOKEN": system.admin_token})


def test_a_request_id_reused_with_other_parameters_is_refused(system, admin) -> None:
    admin.create_tenant(tenant := _fresh("rq"))
    admin.create_project("p", tenant=tenant)
    with system.client(tenant=tenant, project="p", ensure_project=False) as c:
        first = c.create_vm("a", flavor="small", image="ubuntu", labels={"k": "v"}, request_id="req-1")
        assert c.create_vm("a", flavor="small", image="ubuntu", labels={"k": "v"}, request_id="req-1").uid == first.uid
        for vm_id, flavor, labels in (("b", "small", {"k": "v"}), ("a", "medium", {"k": "v"}), ("a", "small", {})):
            err = _error(lambda: c.create_vm(vm_id, flavor=flavor, image="ubuntu", labels=labels,  # noqa: B023
                                             request_id="req-1"))
            assert (err.code, err.reason) == (grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED")
            assert err.metadata == {"request_id": "req-1", "created": first.name}
        assert [vm.name for vm in c.list_vms()] == [first.name]
    # The CLI shows the refusal in one line, not a traceback.
    done = _quanta(system, "vm", "--tenant", tenant, "--project", "p", "create", "--name", "a", "--flavor", "large",
                   "--image", "ubuntu", "--request-id", "req-1")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("error: ALREADY_EXISTS: REQUEST_ID_REUSED: request_id 'req-1' was used"), done.stderr
    # CreateVms: a set's request_id is the set's; reused for another set or a single
    # create, it is refused the same way.
    with system.client(tenant=tenant, project="p", ensure_project=False) as c:
        parent = f"tenants/{tenant}/projects/p"
        member = vm_pb2.CreateVmRequest(vm_id="m-0", vm=vm_pb2.Vm(flavor="small", image="ubuntu"))
        made = c._call(c._vms.CreateVms, vm_pb2.CreateVmsRequest(
            parent=parent, requests=[member], mode=vm_pb2.CreateVmsRequest.ALL_OR_NOTHING, request_id="req-set"))
        for other in (
            lambda: c._call(c._vms.CreateVms, vm_pb2.CreateVmsRequest(
                parent=parent, requests=[member], mode=vm_pb2.CreateVmsRequest.ALL_OR_NOTHING, set_id="another",
                request_id="req-set")),
            lambda: c.create_vm("m-1", flavor="small", image="ubuntu", request_id="req-set"),
        ):
            err = _error(other)
            assert (err.code, err.reason) == (grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED")
            assert err.metadata == {"request_id": "req-set", "created": made.set.name}


# --- forced project deletion ------------------------------------------------------------


def test_a_forced_project_deletion_wins_over_members_that_keep_creating(system, admin) -> None:
    admin.create_tenant(tenant := _fresh("pd"))
    admin.create_project("p", tenant=tenant)
    member = admin.create_token("member@pd", [("project-member", tenant, "p")]).bearer_token
    with Client(system.endpoint, token=member, tenant=tenant, project="p") as c:
        for i in range(10):
            c.create_vm(f"before-{i}", flavor="small", image="ubuntu")
    stop = threading.Event()
    ended: list[ApiError] = []
    created: list[str] = []

    def keep_creating(worker: int) -> None:
        with Client(system.endpoint, token=member, tenant=tenant, project="p") as c:
            for i in itertools.count():
                try:
                    created.append(c.create_vm(f"w{worker}-{i}", flavor="small", image="ubuntu").name)
                except ApiError as err:
                    ended.append(err)
                    return
                if stop.is_set():
                    return

    creators = [threading.Thread(target=keep_creating, args=(w,)) for w in range(3)]
    for t in creators:
        t.start()
    try:
        wait_until(lambda: len(created) >= 10, timeout=30, message="the creators to get going",
                   seen=lambda: f"{len(created)} created")
        deleted = admin.delete_project("p", tenant=tenant, force=True)
    except BaseException:
        stop.set()  # else they stop at their first refusal
        raise
    finally:
        for t in creators:
            t.join(30)
    assert deleted.HasField("delete_time")
    assert len(ended) == 3, f"every creator was refused: {ended}"
    assert {(e.code, e.reason) for e in ended} <= {(grpc.StatusCode.FAILED_PRECONDITION, "PROJECT_DELETING"),
                                                   (grpc.StatusCode.NOT_FOUND, "PROJECT_NOT_FOUND")}, ended
    assert _error(lambda: admin.get_project("p", tenant=tenant)).code == grpc.StatusCode.NOT_FOUND
    with system.client(tenant=tenant, project="p", ensure_project=False) as c:
        wait_until(lambda: not list(c.list_vms()), timeout=60, message="the forced deletion's VMs to go",
                   seen=lambda: describe_vms(c.list_vms(), want=None))
