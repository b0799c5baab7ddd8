"""The two SDK clients against an in-process server on loopback: the same methods,
the channel's retry policy (UNAVAILABLE retried on reads and on creates that carry
a request_id, resent unchanged; other creates not retried), typed exceptions; and
the waits' decisions, which both clients share."""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import threading
from collections.abc import Iterator

import grpc
import pytest

import quanta
import quanta.aio
from controlplane.api import errors as api
from controlplane.gen.quanta.v1 import (
    auth_pb2,
    catalog_pb2,
    common_pb2,
    host_pb2,
    tenancy_pb2,
    tenancy_pb2_grpc,
    vm_pb2,
    vm_pb2_grpc,
)
from quanta import calls, errors
from quanta import methods as sdk_methods
from quanta.waits import DrainWait, VmWait


class Vms(vm_pb2_grpc.VmServiceServicer):
    """Fails the first ``failures`` CreateVm attempts with the frontend's UNAVAILABLE."""

    def __init__(self) -> None:
        self.failures = 0
        self.attempts: list[tuple[str, str | None]] = []  # (request_id, grpc-previous-rpc-attempts)
        self.lock = threading.Lock()

    def CreateVm(self, request, context):  # noqa: N802 - gRPC's method name
        with self.lock:
            previous = dict(context.invocation_metadata()).get("grpc-previous-rpc-attempts")
            self.attempts.append((request.request_id, previous))
            fail = self.failures > 0
            self.failures -= 1
        if fail:
            context.abort_with_status(api.unavailable("etcd is down", retry_delay_s=0.01).to_status())
        return vm_pb2.Vm(name=f"{request.parent}/vms/{request.vm_id}", state=vm_pb2.Vm.PENDING)

    def GetVm(self, request, context):  # noqa: N802
        context.abort_with_status(api.not_found("vm", request.name).to_status())


class Tenants(tenancy_pb2_grpc.TenantServiceServicer):
    def __init__(self) -> None:
        self.attempts = 0

    def CreateTenant(self, request, context):  # noqa: N802
        self.attempts += 1
        context.abort_with_status(api.unavailable("etcd is down", retry_delay_s=0.01).to_status())


@pytest.fixture
def server() -> Iterator[tuple[str, Vms, Tenants]]:
    vms, tenants = Vms(), Tenants()
    srv = grpc.server(concurrent.futures.ThreadPoolExecutor(4))
    vm_pb2_grpc.add_VmServiceServicer_to_server(vms, srv)
    tenancy_pb2_grpc.add_TenantServiceServicer_to_server(tenants, srv)
    port = srv.add_insecure_port("127.0.0.1:0")
    srv.start()
    try:
        yield f"127.0.0.1:{port}", vms, tenants
    finally:
        srv.stop(None)


def public_methods(cls: type) -> dict[str, object]:
    return {name: getattr(cls, name) for name in dir(cls) if not name.startswith("_") and callable(getattr(cls, name))}


def test_both_clients_have_the_same_methods_with_the_same_parameters() -> None:
    sync, aio = public_methods(quanta.Client), public_methods(quanta.aio.Client)
    assert set(sync) == set(aio)
    for name, method in sync.items():
        assert list(inspect.signature(method).parameters) == list(inspect.signature(aio[name]).parameters), name
    # Calls answered by one message are coroutines in asyncio; lists of all items too.
    for name in ("create_vm", "get_vm", "delete_vm", "wait_for_vm", "drain_host", "list_tenants", "close"):
        assert inspect.iscoroutinefunction(aio[name]), name
    # The table written once (quanta.methods) is installed on both: plain functions, no marker left.
    table = [name for name in vars(sdk_methods.Methods) if not name.startswith("_")]
    assert len(table) > 50 and all(inspect.isfunction(sync[name]) and inspect.isfunction(aio[name]) for name in table)


def test_the_retry_policy_names_real_methods_and_only_idempotent_ones() -> None:
    for service, methods in calls.RETRIED.items():
        descriptor = vm_pb2.DESCRIPTOR.pool.FindServiceByName(service)
        for method in methods:
            assert method in descriptor.methods_by_name, f"{service}/{method}"
            # UpdateVm's values are absolute (and etag-guarded when asked): see calls.RETRIED.
            assert not method.startswith(("Update", "Revoke", "Adopt")) or method == "UpdateVm", method
    assert {"StartVm", "StopVm", "RestartVm", "UpdateVm"} <= set(calls.RETRIED[calls.VMS])
    retried_creates = [m for ms in calls.RETRIED.values() for m in ms if m.startswith("Create")]
    # The creates with request_ids the server honours (CreateVms: every VM's and the set's; see calls.RETRIED).
    assert sorted(retried_creates) == ["CreateDisk", "CreateNetwork", "CreateVm", "CreateVms"]


def test_a_create_is_retried_by_the_channel_with_the_same_request_id(server) -> None:
    endpoint, vms, _ = server
    vms.failures = 2
    with quanta.Client(endpoint, token="t", tenant="t", project="p") as client:
        vm = client.create_vm("web-1", flavor="small", image="ubuntu")
    assert vm.name == "tenants/t/projects/p/vms/web-1"
    ids = {request_id for request_id, _ in vms.attempts}
    assert len(vms.attempts) == 3 and len(ids) == 1 and ids != {""}
    # gRPC's retry machinery numbers its attempts: these are the channel's retries, not the SDK's.
    assert [previous for _, previous in vms.attempts] == [None, "1", "2"]


def test_a_create_fails_once_the_attempts_are_used_up(server) -> None:
    endpoint, vms, _ = server
    vms.failures = 10
    with quanta.Client(endpoint, token="t") as client, pytest.raises(errors.Unavailable) as caught:
        client.create_vm("web-1", flavor="small", image="ubuntu")
    assert type(caught.value) is errors.Unavailable and caught.value.message == "etcd is down"
    assert len(vms.attempts) == calls.RETRY_POLICY["maxAttempts"]


def test_a_create_without_an_honoured_request_id_is_not_retried(server) -> None:
    endpoint, _, tenants = server
    with quanta.Client(endpoint, token="t") as client, pytest.raises(errors.Unavailable):
        client.create_tenant("acme")
    assert tenants.attempts == 1


def test_the_async_client_retries_and_raises_the_same(server) -> None:
    endpoint, vms, _ = server
    vms.failures = 1

    async def run() -> tuple[vm_pb2.Vm, errors.QuantaError]:
        async with quanta.aio.Client(endpoint, token="t", tenant="t", project="p", context=None) as client:
            vm = await client.create_vm("web-2", flavor="small", image="ubuntu")
            try:
                await client.get_vm("nope")
            except errors.QuantaError as err:
                return vm, err
        raise AssertionError("get_vm of a missing VM returned")

    vm, err = asyncio.run(run())
    assert vm.name.endswith("/vms/web-2") and len(vms.attempts) == 2
    assert type(err) is errors.NotFound and err.reason == "VM_NOT_FOUND" and err.endpoint == endpoint


def test_nothing_listening_is_unreachable_from_both_clients() -> None:
    with quanta.Client("127.0.0.1:1", token="t", timeout=5) as client, pytest.raises(errors.Unreachable) as sync:
        client.get_vm("x")

    async def run() -> None:
        async with quanta.aio.Client("127.0.0.1:1", token="t", timeout=5) as client:
            await client.list_tenants()

    with pytest.raises(errors.Unreachable) as aio:
        asyncio.run(run())
    for caught in (sync, aio):
        assert "127.0.0.1:1" in str(caught.value) and "quanta up" in str(caught.value)


# --- the waits' decisions -------------------------------------------------------------


def vm_event(name: str, state: int, kind: int = common_pb2.MODIFIED) -> vm_pb2.VmEvent:
    return vm_pb2.VmEvent(type=kind, vm=vm_pb2.Vm(name=name, state=state))


def test_a_vm_wait_ends_on_its_vm_in_its_state_only() -> None:
    wait = VmWait("p/vms/a", "RUNNING")
    assert wait.seen(vm_event("p/vms/b", vm_pb2.Vm.RUNNING)) is None
    assert wait.seen(vm_event("p/vms/a", vm_pb2.Vm.CREATING)) is None
    assert wait.seen(vm_event("p/vms/a", vm_pb2.Vm.RUNNING, common_pb2.DELETED)) is None
    assert wait.seen(vm_pb2.VmEvent(type=common_pb2.BOOKMARK)) is None
    done = wait.seen(vm_event("p/vms/a", vm_pb2.Vm.RUNNING))
    assert done is not None and done.state == vm_pb2.Vm.RUNNING
    with pytest.raises(ValueError):
        VmWait("p/vms/a", "RUNING")


def test_a_vm_wait_that_times_out_says_the_state_it_saw() -> None:
    wait = VmWait("p/vms/a", "RUNNING")
    wait.seen(vm_event("p/vms/a", vm_pb2.Vm.PENDING))
    timeout = wait.timed_out(5)
    assert isinstance(timeout, TimeoutError) and timeout.last.state == vm_pb2.Vm.PENDING
    assert str(timeout) == "p/vms/a not RUNNING within 5s; it is PENDING"


def test_a_drain_wait_reports_progress_on_changes_and_ends_when_empty() -> None:
    progress: list[int] = []
    wait = DrainWait("hosts/h1", lambda host: progress.append(host.vm_count))

    def event(count: int, kind: int = common_pb2.MODIFIED, name: str = "hosts/h1") -> host_pb2.HostEvent:
        return host_pb2.HostEvent(type=kind, host=host_pb2.Host(name=name, vm_count=count))

    assert wait.start(host_pb2.Host(name="hosts/h1", vm_count=3)) is None
    assert [wait.seen(e) for e in (event(3), event(2), event(9, name="hosts/h2"), event(1))] == [None] * 4
    assert progress == [3, 2, 1]
    assert str(wait.timed_out(10)) == "hosts/h1 still holds 1 VM after 10 s; the drain goes on"
    gone = wait.seen(event(1, common_pb2.DELETED))
    assert gone is not None and gone.vm_count == 0 and gone.name == "hosts/h1"


def test_the_request_builders_name_the_clients_project() -> None:
    built = calls.Calls("acme", "web", 10.0)
    assert built.get_vm("a").request.name == "tenants/acme/projects/web/vms/a"
    assert built.get_vm("tenants/x/projects/y/vms/z").request.name == "tenants/x/projects/y/vms/z"
    assert built.get_host("h1").request.name == built.get_host("hosts/h1").request.name == "hosts/h1"
    assert built.delete_project("p", force=True).timeout == calls.LONG_TIMEOUT_S
    page = built.list_flavors().page("tok")
    assert isinstance(page.request, catalog_pb2.ListFlavorsRequest) and page.request.page_token == "tok"
    assert built.create_token("bot", [("viewer", "acme", "")]).request.grants[0].role == auth_pb2.Grant.VIEWER
    assert isinstance(built.create_project("p").request, tenancy_pb2.CreateProjectRequest)
    first, second = built.create_vm(flavor="f", image="i"), built.create_vm(flavor="f", image="i")
    assert first.request.request_id and first.request.request_id != second.request.request_id


@pytest.mark.parametrize(("given", "mode", "ip"), [
    ("net=web", "DHCP", ""), ("net=web,ip=dhcp", "DHCP", ""), ("net=web,ip=pool", "STATIC_POOL", ""),
    (" net = web , ip = 10.0.0.5 ", "STATIC", "10.0.0.5"), ({"network": "web", "ip": "POOL"}, "STATIC_POOL", ""),
    ("network=tenants/t/networks/web", "DHCP", ""),
])
def test_a_nic_is_read_from_net_and_ip(given, mode: str, ip: str) -> None:
    nic = calls.nic_input(given)
    assert vm_pb2.NetworkInterface.AddressMode.Name(nic.address_mode) == mode and nic.ip == ip
    assert nic.network in ("web", "tenants/t/networks/web")


@pytest.mark.parametrize("given", ["web", "ip=pool", "net=web,mac=x", "", "net=web,ip"])
def test_a_nic_without_a_network_or_with_unknown_keys_is_refused(given: str) -> None:
    with pytest.raises(ValueError, match="net=NETWORK"):
        calls.nic_input(given)


def test_a_create_carries_its_nics_and_disks_in_order() -> None:
    request = calls.create_vm_request("tenants/t/projects/p", "vm-1", flavor="small", image="ubuntu",
                                      nics=["net=cp,ip=pool", "net=storage"], disks=["etcd-1", "logs"])
    assert [n.network for n in request.vm.nics] == ["cp", "storage"]
    assert list(request.vm.disks) == ["etcd-1", "logs"]
