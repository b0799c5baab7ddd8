"""The whole system as real processes on the session's etcd: the lifecycle a
user sees through the CLI and SDK, bad input, idempotent retries."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import uuid

import grpc
import pytest

from controlplane.api.errors import ApiError
from controlplane.etcd import EtcdClient
from controlplane.gen.quanta.v1 import common_pb2, vm_pb2
from quanta.client import Client
from quanta.local import LocalSystem
from tests.conftest import Tally, buf_binary, describe_vms, seen_in, wait_until

State = vm_pb2.Vm.State


@pytest.fixture(scope="module")
def system(etcd_server):
    root = f"/sys-{uuid.uuid4().hex[:8]}"
    with LocalSystem(etcd_endpoint=etcd_server.endpoint, root=root, hosts=4, latency="realistic",
                     metrics=False) as local:
        yield local


@pytest.fixture
def client(system):
    project = f"p-{uuid.uuid4().hex[:8]}"  # a project per test: tests see only their own VMs
    with system.client(project=project) as c:
        yield c


def quanta(system: LocalSystem, project: str, *args: str) -> subprocess.CompletedProcess:
    """Run the installed ``quanta`` command, as a user would."""
    executable = os.path.join(os.path.dirname(sys.executable), "quanta")
    return subprocess.run(
        [executable, *args[:1], "--endpoint", system.endpoint, "--project", project, *args[1:]],
        capture_output=True, text=True, timeout=60, env={**os.environ, "QUANTA_TOKEN": system.admin_token},
    )


class EventRecorder:
    """Collects VmEvents of a project from a WatchVms stream in a thread."""

    def __init__(self, client: Client):
        self.events: list[vm_pb2.VmEvent] = []
        self._stream = client._vms.WatchVms(vm_pb2.WatchVmsRequest(parent=client.parent))
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for event in self._stream:
                self.events.append(event)
        except grpc.RpcError:
            pass

    def states(self, name: str) -> list[int]:
        return [e.vm.state for e in self.events if e.vm.name == name and e.type != common_pb2.DELETED]

    def deleted(self, name: str) -> bool:
        return any(e.type == common_pb2.DELETED and e.vm.name == name for e in self.events)

    def seen(self) -> str:
        """What the stream brought so far, for a timeout message."""
        return "events " + str(Tally(common_pb2.EventType.Name(e.type) + (
            f" {e.vm.name.rsplit('/', 1)[-1]} {vm_pb2.Vm.State.Name(e.vm.state)}" if e.vm.name else "")
            for e in list(self.events)))

    def close(self) -> None:
        self._stream.cancel()
        self._thread.join(10)


def test_lifecycle_through_cli_and_watch(system, client):
    recorder = EventRecorder(client)
    wait_until(lambda: any(e.type == common_pb2.BOOKMARK for e in recorder.events),
               message="the watch's first bookmark", seen=recorder.seen)
    try:
        created = quanta(system, client.project, "vm", "create", "--name", "web-1", "--flavor", "small",
                         "--image", "ubuntu")
        assert created.returncode == 0, created.stderr
        assert "web-1" in created.stdout and "PENDING" in created.stdout
        name = client.vm_name("web-1")
        wait_until(lambda: State.RUNNING in recorder.states(name), timeout=30, message="web-1 RUNNING in the watch",
                   seen=lambda: f"{recorder.seen()}; listed: {describe_vms(client.list_vms())}")
        assert recorder.states(name) == [State.PENDING, State.SCHEDULED, State.CREATING, State.RUNNING]

        got = quanta(system, client.project, "vm", "get", "web-1")
        assert got.returncode == 0 and "RUNNING" in got.stdout
        listed = quanta(system, client.project, "vm", "list")
        assert [line.split()[0] for line in listed.stdout.splitlines()] == ["NAME", "web-1"]
        vm = client.get_vm("web-1")
        host = client.get_host(vm.host)
        assert host.vm_count >= 1 and host.allocated.vcpus >= 1

        deleted = quanta(system, client.project, "vm", "delete", "web-1")
        assert deleted.returncode == 0 and "DELETING" in deleted.stdout, deleted.stdout + deleted.stderr
        wait_until(lambda: recorder.deleted(name), timeout=30, message="web-1 DELETED in the watch",
                   seen=lambda: f"{recorder.seen()}; listed: {describe_vms(client.list_vms())}")
        assert recorder.states(name)[-1] == State.DELETING
        with pytest.raises(ApiError) as missing:
            client.get_vm("web-1")
        assert missing.value.code == grpc.StatusCode.NOT_FOUND
        after = client.get_host(vm.host)
        assert (after.vm_count, after.allocated.vcpus) == (host.vm_count - 1, host.allocated.vcpus - 1)
    finally:
        recorder.close()


def test_delete_of_a_pending_vm_is_immediate(system, client, etcd_server):
    # Stop the scheduler so the VM stays pending.
    system.processes["scheduler-0"].stop()
    try:
        vm = client.create_vm("early", flavor="small", image="ubuntu")
        assert vm.state == State.PENDING
        gone = client.delete_vm("early")
        assert gone.state == State.DELETING
        with pytest.raises(ApiError) as missing:
            client.get_vm("early")
        assert missing.value.code == grpc.StatusCode.NOT_FOUND
    finally:
        system.processes["scheduler-0"].start()


def _error(call) -> ApiError:
    with pytest.raises(ApiError) as caught:
        call()
    return caught.value


def test_bad_input_gets_precise_status_and_writes_nothing(system, client):
    stub = client._vms

    def create(**fields):
        vm = vm_pb2.Vm(flavor=fields.pop("flavor", "small"), image=fields.pop("image", "ubuntu"),
                       labels=fields.pop("labels", {}))
        request = vm_pb2.CreateVmRequest(parent=client.parent, vm=vm, **fields)
        return lambda: client._call(stub.CreateVm, request)

    bad_id = _error(create(vm_id="Web_1"))
    assert bad_id.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in bad_id.field_violations] == ["vm_id"]

    for call, request in ((stub.GetVm, vm_pb2.GetVmRequest(name="")),
                          (stub.DeleteVm, vm_pb2.DeleteVmRequest(name=""))):
        empty = _error(lambda call=call, request=request: client._call(call, request))
        assert empty.code == grpc.StatusCode.INVALID_ARGUMENT
        assert [f for f, _ in empty.field_violations] == ["name"]

    unknown = _error(create(vm_id="a", flavor="huge"))
    assert unknown.code == grpc.StatusCode.INVALID_ARGUMENT
    assert unknown.field_violations[0][0] == "vm.flavor" and "huge" in unknown.field_violations[0][1]

    bad_image = _error(create(vm_id="a", image=""))
    assert bad_image.field_violations == [("vm.image", "required")]

    labels = {f"k{i}": "v" * 60 for i in range(60)}
    assert sum(len(k) + len(v) for k, v in labels.items()) < 16 * 1024  # fits: only the message limit counts
    oversized = _error(create(vm_id="a", labels={"big": "x"}, request_id="r" * 2_000_000))
    assert oversized.code == grpc.StatusCode.RESOURCE_EXHAUSTED

    bad_parent = _error(lambda: client._call(stub.CreateVm, vm_pb2.CreateVmRequest(
        parent="tenants/Default/projects/x", vm_id="a", vm=vm_pb2.Vm(flavor="small", image="ubuntu"))))
    assert bad_parent.code == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_parent.field_violations[0][0] == "parent"

    token = _error(lambda: client._call(stub.ListVms, vm_pb2.ListVmsRequest(
        parent=client.parent, page_token="not-a-token")))
    assert token.code == grpc.StatusCode.INVALID_ARGUMENT and token.reason == "INVALID_PAGE_TOKEN"

    size = _error(lambda: client._call(stub.ListVms, vm_pb2.ListVmsRequest(parent=client.parent, page_size=-1)))
    assert size.code == grpc.StatusCode.INVALID_ARGUMENT

    missing = _error(lambda: client.get_vm("nope"))
    assert missing.code == grpc.StatusCode.NOT_FOUND and missing.reason == "VM_NOT_FOUND"

    assert list(client.list_vms()) == []


def test_retried_create_with_same_request_id_gives_one_vm(system, client):
    first = client.create_vm("db-1", flavor="medium", image="debian", request_id="req-42")
    again = client.create_vm("db-1", flavor="medium", image="debian", request_id="req-42")
    assert again.uid == first.uid
    # The same request_id with other parameters (here another VM id) is not a retry: refused.
    reused = _error(lambda: client.create_vm("db-2", flavor="medium", image="debian", request_id="req-42"))
    assert (reused.code, reused.reason) == (grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED")
    assert reused.metadata["created"] == first.name

    conflict = _error(lambda: client.create_vm("db-1", flavor="medium", image="debian", request_id="req-43"))
    assert conflict.code == grpc.StatusCode.ALREADY_EXISTS

    # Even after the VM is gone, a late retry of its create makes no second VM.
    client.delete_vm("db-1")
    wait_until(lambda: "db-1" not in [vm.name.rsplit("/", 1)[1] for vm in client.list_vms()], timeout=30,
               message="db-1 removed", seen=seen_in(system, client))
    late = _error(lambda: client.create_vm("db-1", flavor="medium", image="debian", request_id="req-42"))
    assert late.code == grpc.StatusCode.ALREADY_EXISTS and late.reason == "REQUEST_ID_ALREADY_USED"
    client.create_vm("db-1", flavor="medium", image="debian", request_id="req-45")  # a new request may

    # Concurrent identical retries, on separate connections (possibly separate frontends).
    results: list[vm_pb2.Vm] = []

    def retry():
        with system.client(project=client.project) as c:
            results.append(c.create_vm("db-3", flavor="small", image="debian", request_id="req-44"))

    threads = [threading.Thread(target=retry) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 8 and len({vm.uid for vm in results}) == 1
    assert sorted(vm.name.rsplit("/", 1)[1] for vm in client.list_vms()) == ["db-1", "db-3"]
    assert client.get_vm("db-1").uid != first.uid


def test_create_without_an_id_gets_one_and_stays_idempotent(system, client):
    request = vm_pb2.CreateVmRequest(parent=client.parent, request_id="no-id-1",
                                     vm=vm_pb2.Vm(flavor="small", image="ubuntu"))
    first = client._call(client._vms.CreateVm, request)
    vm_id = first.name.rsplit("/", 1)[1]
    assert vm_id.startswith("vm-") and len(vm_id) == 19
    again = client._call(client._vms.CreateVm, request)
    assert (again.name, again.uid) == (first.name, first.uid)
    assert [vm.name for vm in client.list_vms()] == [first.name]


def test_list_pages_and_label_selector(system, client):
    for i in range(7):
        client.create_vm(f"vm-{i}", flavor="small", image="photon", labels={"tier": "web" if i % 2 else "db"})
    stub = client._vms
    first = client._call(stub.ListVms, vm_pb2.ListVmsRequest(parent=client.parent, page_size=3))
    assert len(first.vms) == 3 and first.next_page_token
    names = [vm.name for vm in client.list_vms(page_size=3)]
    assert len(names) == 7 and len(set(names)) == 7
    web = sorted(vm.name.rsplit("/", 1)[1] for vm in client.list_vms(label_selector="tier=web"))
    assert web == ["vm-1", "vm-3", "vm-5"]
    # A token is bound to its request: another selector may not reuse it.
    reuse = _error(lambda: client._call(stub.ListVms, vm_pb2.ListVmsRequest(
        parent=client.parent, page_size=3, page_token=first.next_page_token, label_selector="tier=db")))
    assert reuse.reason == "INVALID_PAGE_TOKEN"


def test_health_and_reflection_are_served(system):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(system.endpoint) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="quanta.v1.VmService"), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        responses = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
        services = {s.name for r in responses for s in r.list_services_response.service}
        assert {"quanta.v1.VmService", "quanta.v1.HostService"} <= services


def test_reflection_v1_lists_and_describes_the_services(system):
    """grpc.reflection.v1 beside v1alpha: a client that speaks only v1 (buf curl with
    ``--reflect-protocol grpc-v1``, a real third-party client) lists every method."""
    from grpc_reflection.v1alpha import reflection_pb2  # v1's messages, field for field

    with grpc.insecure_channel(system.endpoint) as channel:
        info = channel.stream_stream("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                                     request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                                     response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
        listed, described = info(iter([reflection_pb2.ServerReflectionRequest(list_services=""),
                                       reflection_pb2.ServerReflectionRequest(
                                           file_containing_symbol="grpc.reflection.v1.ServerReflection")]),
                                 timeout=5)
    services = {s.name for s in listed.list_services_response.service}
    assert {"quanta.v1.VmService", "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection"} <= services
    assert described.file_descriptor_response.file_descriptor_proto, described

    result = subprocess.run([buf_binary(), "curl", "--protocol", "grpc", "--http2-prior-knowledge",
                             "--reflect-protocol", "grpc-v1", "--list-methods", f"http://{system.endpoint}"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    methods = set(result.stdout.split())
    assert {"quanta.v1.VmService/CreateVm", "quanta.v1.HostService/DrainHost",
            "grpc.reflection.v1.ServerReflection/ServerReflectionInfo"} <= methods


def test_watch_from_a_compacted_version_is_out_of_range(system, client):
    first = client.create_vm("w-1", flavor="small", image="ubuntu")

    async def compact_now() -> None:
        async with EtcdClient(system.etcd_endpoint) as etcd:
            revision = await etcd.put(f"{system.root}/compaction-marker".encode(), b"")
            await etcd.compact(revision)

    client.create_vm("w-2", flavor="small", image="ubuntu")
    asyncio.run(compact_now())
    expired = _error(lambda: list(client.watch_vms(resource_version=first.resource_version, timeout=10)))
    assert expired.code == grpc.StatusCode.OUT_OF_RANGE and expired.reason == "RESOURCE_VERSION_EXPIRED"
    # The way out: list again and watch from the list's resource_version.
    response = client._call(client._vms.ListVms, vm_pb2.ListVmsRequest(parent=client.parent))
    events = client.watch_vms(resource_version=response.resource_version, timeout=30)
    client.create_vm("w-3", flavor="small", image="ubuntu")
    for event in events:
        if event.type == common_pb2.ADDED:
            assert event.vm.name == client.vm_name("w-3")
            break


def test_watch_from_zero_sends_current_state_then_bookmark(system, client):
    client.create_vm("s-1", flavor="small", image="ubuntu")
    events = client.watch_vms(timeout=30)
    first = next(events)
    assert first.type == common_pb2.ADDED and first.vm.name == client.vm_name("s-1")
    second = next(events)
    assert second.type == common_pb2.BOOKMARK and second.resource_version >= first.resource_version


def _messages_until(messages, batched: bool, name: str) -> list[list[tuple]]:
    """(type, VM, state, version) of the events of each message of a raw watch stream
    before the first event of VM ``name``; bookmarks left out (they come when a stream
    is idle), and so are messages left empty."""
    seen: list[list[tuple]] = []
    try:
        for message in messages:
            events = []
            for event in message.events if batched else (message,):
                if event.vm.name.endswith("/" + name):
                    return [*seen, events] if events else seen
                if event.type != common_pb2.BOOKMARK:
                    events.append((event.type, event.vm.name, event.vm.state, event.resource_version))
            if events:
                seen.append(events)
    except grpc.RpcError as err:
        raise AssertionError(f"the stream ended ({err.code().name}) before {name}; seen {seen}") from None
    raise AssertionError(f"the stream ended before {name}; seen {seen}")


def test_watch_batches_carry_watch_vms_events_in_the_same_order(system, client):
    listed = client._call(client._vms.ListVms, vm_pb2.ListVmsRequest(parent=client.parent)).resource_version
    client.create_vms([{"vm_id": f"b-{i}", "flavor": "small", "image": "ubuntu"} for i in range(4)]
                      ).raise_for_refusals()
    client.create_vm("b-4", flavor="small", image="ubuntu")
    # An all-or-nothing set: bound in one txn, so its members' SCHEDULED events are of one revision.
    client.create_vms([{"vm_id": f"s-{i}", "flavor": "small", "image": "ubuntu"} for i in range(3)],
                      all_or_nothing=True)
    client.wait_for_vms([*(f"b-{i}" for i in range(5)), *(f"s-{i}" for i in range(3))], timeout=60)
    client.delete_vm("b-0")
    client.create_vm("b-end", flavor="small", image="ubuntu")  # after every event compared
    one_by_one = _messages_until(client._vms.WatchVms(vm_pb2.WatchVmsRequest(
        parent=client.parent, resource_version=listed), timeout=30), False, "b-end")
    batches = _messages_until(client._vms.WatchVmBatches(vm_pb2.WatchVmBatchesRequest(
        parent=client.parent, resource_version=listed), timeout=30), True, "b-end")
    events = [event for message in batches for event in message]
    assert events == [event for message in one_by_one for event in message]
    states = {(name.rsplit("/", 1)[-1], State.Name(state)) for _, name, state, _ in events}
    assert {(f"b-{i}", "RUNNING") for i in range(5)} | {("b-0", "DELETING")} <= states, states
    bound = [message for message in batches
             if {(client.vm_name(f"s-{i}"), State.SCHEDULED) for i in range(3)} <= {e[1:3] for e in message}]
    assert bound, f"no message holds the set's three SCHEDULED events: {batches}"


def test_watch_batches_from_zero_send_a_page_and_its_bookmark_in_one_message(system, client):
    made = client.create_vms([{"vm_id": f"z-{i}", "flavor": "small", "image": "ubuntu"} for i in range(3)])
    assert made.ok, made.refused
    first = next(iter(client._vms.WatchVmBatches(vm_pb2.WatchVmBatchesRequest(parent=client.parent),
                                                timeout=30)))
    assert [common_pb2.EventType.Name(e.type) for e in first.events] == ["ADDED"] * 3 + ["BOOKMARK"], first
    assert sorted(e.vm.name for e in first.events[:3]) == sorted(vm.name for vm in made.vms)
    assert first.events[3].resource_version >= max(e.resource_version for e in first.events[:3])


def test_killing_a_frontend_loses_nothing_it_acknowledged(system, client):
    acknowledged = [client.create_vm(f"k-{i}", flavor="small", image="ubuntu").uid for i in range(10)]
    victim = system.processes["frontend-0"]
    victim.kill()
    try:
        # The channel reconnects to the surviving frontend on the same address;
        # the SDK retries UNAVAILABLE with the same request_id.
        for i in range(10, 20):
            acknowledged.append(client.create_vm(f"k-{i}", flavor="small", image="ubuntu").uid)
        wait_until(lambda: sorted(vm.uid for vm in client.list_vms() if vm.state == State.RUNNING)
                   == sorted(acknowledged), timeout=60, message=f"all {len(acknowledged)} acknowledged VMs RUNNING",
                   seen=seen_in(system, client))
    finally:
        victim.start()


def test_cli_options_go_before_or_after_the_verb(system, client):
    client.create_vm("opt-1", flavor="small", image="ubuntu", labels={"env": "prod"})
    after = quanta(system, client.project, "vm", "get", "opt-1", "-o", "json")
    assert after.returncode == 0, after.stderr
    assert '"env": "prod"' in after.stdout
    listed = quanta(system, client.project, "vm", "list", "--selector", "env=prod")
    assert [line.split()[0] for line in listed.stdout.splitlines()] == ["NAME", "opt-1"]
    bad = quanta(system, client.project, "vm", "create", "--name", "Bad_Name", "--flavor", "huge",
                 "--image", "ubuntu")
    assert bad.returncode == 1
    assert "INVALID_ARGUMENT" in bad.stderr and "--flavor: unknown flavor 'huge'" in bad.stderr


def test_cli_lists_in_json_are_one_array(system, client):
    empty = quanta(system, client.project, "vm", "list", "--selector", "env=nowhere", "-o", "json")
    assert empty.returncode == 0, empty.stderr
    assert json.loads(empty.stdout) == []
    for i in range(3):
        client.create_vm(f"arr-{i}", flavor="small", image="ubuntu", labels={"env": "array"})
    listed = quanta(system, client.project, "vm", "list", "--selector", "env=array", "-o", "json")
    assert [vm["name"].rsplit("/", 1)[1] for vm in json.loads(listed.stdout)] == ["arr-0", "arr-1", "arr-2"]
