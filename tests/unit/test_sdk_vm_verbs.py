"""The SDK's VM verbs of issue 12 without a real system: the requests the builders
make (power modes, grace, field masks, bootstrap data and metadata), that a
restart's request_id is generated per call and resent by the channel's retries,
that no repr of a call shows bootstrap data, and the waits for an address (one VM
and several through one watch) in both clients against an in-process server."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Iterator

import grpc
import pytest

import quanta
import quanta.aio
from controlplane.api import errors as api
from controlplane.gen.quanta.v1 import common_pb2, vm_pb2, vm_pb2_grpc
from quanta import calls, errors
from quanta.waits import VmsWait, VmWait

SECRET = "#cloud-config\nruncmd: [echo marker-5f1c]\n"
NAME = "tenants/t/projects/p/vms/"


def vm(vm_id: str, state: int = vm_pb2.Vm.RUNNING, ips: tuple[str, ...] = (), **kwargs) -> vm_pb2.Vm:
    return vm_pb2.Vm(name=NAME + vm_id, state=state, addresses=[vm_pb2.Address(ip=ip) for ip in ips], **kwargs)


def event(v: vm_pb2.Vm, kind: int = common_pb2.MODIFIED) -> vm_pb2.VmEvent:
    return vm_pb2.VmEvent(type=kind, vm=v)


WAITING = common_pb2.Condition(type="AddressAssigned", status="False", reason="WaitingForAddress",
                               message="the guest has reported no address yet")


class Vms(vm_pb2_grpc.VmServiceServicer):
    """RestartVm fails its first ``failures`` attempts with UNAVAILABLE; WatchVms
    plays ``events`` then ends."""

    def __init__(self) -> None:
        self.failures = 0
        self.restarts: list[str] = []
        self.events: list[vm_pb2.VmEvent] = []
        self.lock = threading.Lock()

    def RestartVm(self, request, context):  # noqa: N802 - gRPC's method name
        with self.lock:
            self.restarts.append(request.request_id)
            fail = self.failures > 0
            self.failures -= 1
        if fail:
            context.abort_with_status(api.unavailable("etcd is down", retry_delay_s=0.01).to_status())
        return vm_pb2.Vm(name=request.name, state=vm_pb2.Vm.RUNNING)

    def WatchVms(self, request, context):  # noqa: N802
        yield from self.events


@pytest.fixture
def server() -> Iterator[tuple[str, Vms]]:
    vms = Vms()
    srv = grpc.server(concurrent.futures.ThreadPoolExecutor(4))
    vm_pb2_grpc.add_VmServiceServicer_to_server(vms, srv)
    port = srv.add_insecure_port("127.0.0.1:0")
    srv.start()
    try:
        yield f"127.0.0.1:{port}", vms
    finally:
        srv.stop(None)


BUILT = calls.Calls("t", "p", 10.0)


# --- what the builders send -----------------------------------------------------------


@pytest.mark.parametrize(("mode", "grace", "want_mode", "want_grace"), [
    ("soft", None, vm_pb2.SOFT, None),
    ("SOFT", 30, vm_pb2.SOFT, (30, 0)),
    ("hard", 1.5, vm_pb2.HARD, (1, 500_000_000)),
])
def test_stop_and_restart_send_mode_and_grace(mode: str, grace: float | None, want_mode: int,
                                              want_grace: tuple[int, int] | None) -> None:
    for call in (BUILT.stop_vm("web-1", mode=mode, grace=grace, etag="e1"),
                 BUILT.restart_vm("web-1", mode=mode, grace=grace, etag="e1")):
        request = call.request
        assert request.name == NAME + "web-1" and request.mode == want_mode and request.etag == "e1"
        if want_grace is None:
            assert not request.HasField("grace")  # the server's default
        else:
            assert (request.grace.seconds, request.grace.nanos) == want_grace
    assert BUILT.start_vm("web-1", etag="e2").request == vm_pb2.StartVmRequest(name=NAME + "web-1", etag="e2")


def test_an_unknown_mode_is_refused_before_anything_is_sent() -> None:
    with pytest.raises(ValueError, match="soft or hard"):
        BUILT.stop_vm("web-1", mode="gentle")


def test_each_restart_carries_its_own_request_id_unless_given() -> None:
    first, second = BUILT.restart_vm("web-1"), BUILT.restart_vm("web-1")
    assert first.request.request_id and first.request.request_id != second.request.request_id
    assert BUILT.restart_vm("web-1", request_id="r-1").request.request_id == "r-1"


@pytest.mark.parametrize(("kwargs", "paths"), [
    ({"labels": {"a": "1"}}, ["labels"]),
    ({"labels": {}}, ["labels"]),  # {} removes every label; None leaves them
    ({"flavor": "large"}, ["flavor"]),
    ({"labels": {"a": "1"}, "flavor": "large", "etag": "e"}, ["labels", "flavor"]),
])
def test_update_masks_what_is_given(kwargs: dict, paths: list[str]) -> None:
    request = BUILT.update_vm("web-1", **kwargs).request
    assert list(request.update_mask.paths) == paths
    assert request.vm.name == NAME + "web-1" and dict(request.vm.labels) == kwargs.get("labels", {})
    assert request.vm.flavor == kwargs.get("flavor", "") and request.vm.etag == kwargs.get("etag", "")


def test_update_of_nothing_is_refused_and_resize_is_an_update_of_the_flavor() -> None:
    with pytest.raises(ValueError, match="labels, flavor"):
        BUILT.update_vm("web-1")
    resize = BUILT.resize_vm("web-1", "large", etag="e").request
    assert list(resize.update_mask.paths) == ["flavor"] and resize.vm.flavor == "large" and resize.vm.etag == "e"


def test_a_create_without_bootstrap_data_sends_none() -> None:
    request = BUILT.create_vm("web-1", flavor="small", image="ubuntu").request
    assert not request.vm.HasField("bootstrap")
    assert request.vm.power == vm_pb2.Vm.POWERED_ON and request.vm.power_policy == vm_pb2.Vm.KEEP_STOPPED
    stopped = BUILT.create_vm("web-1", flavor="small", image="ubuntu", power_on=False,
                              power_policy="KEEP_RUNNING").request.vm
    assert stopped.power == vm_pb2.Vm.POWERED_OFF and stopped.power_policy == vm_pb2.Vm.KEEP_RUNNING


def test_a_create_carries_user_data_or_ignition_and_metadata() -> None:
    call = BUILT.create_vm("web-1", flavor="small", image="ubuntu", user_data=SECRET,
                           metadata={"instance-id": "i-1", "local-hostname": "from-metadata", "role": "worker"},
                           ssh_keys=["ssh-ed25519 AAAA k1"], hostname="node-1")
    bootstrap = call.request.vm.bootstrap
    assert bootstrap.user_data == SECRET.encode() and bootstrap.format == vm_pb2.Bootstrap.CLOUD_INIT
    assert bootstrap.metadata == vm_pb2.BootstrapMetadata(
        instance_id="i-1", hostname="node-1", ssh_authorized_keys=["ssh-ed25519 AAAA k1"], values={"role": "worker"})
    ignition = BUILT.create_vm(flavor="small", image="fcos", ignition=b'{"ignition":{}}').request.vm.bootstrap
    assert ignition.format == vm_pb2.Bootstrap.IGNITION and ignition.user_data == b'{"ignition":{}}'
    keys_only = BUILT.create_vm(flavor="small", image="ubuntu", ssh_keys=["k"]).request.vm.bootstrap
    assert keys_only.user_data == b"" and list(keys_only.metadata.ssh_authorized_keys) == ["k"]
    with pytest.raises(ValueError, match="not both"):
        BUILT.create_vm(flavor="small", image="ubuntu", user_data="a", ignition="b")


def test_no_repr_of_a_call_shows_its_bootstrap_data() -> None:
    call = BUILT.create_vm("web-1", flavor="small", image="ubuntu", user_data=SECRET)
    assert "marker-5f1c" not in repr(call) and "CreateVm" in repr(call)


# --- retries --------------------------------------------------------------------------


def test_a_restart_is_retried_by_the_channel_with_the_same_request_id(server) -> None:
    endpoint, vms = server
    vms.failures = 2
    with quanta.Client(endpoint, token="t", tenant="t", project="p") as client:
        client.restart_vm("web-1", mode="hard")
        assert len(vms.restarts) == 3 and len(set(vms.restarts)) == 1
        client.restart_vm("web-1")  # a second restart is a new request
    assert len(vms.restarts) == 4 and vms.restarts[3] != vms.restarts[0]


# --- waiting for an address -----------------------------------------------------------


def test_a_wait_for_an_address_ends_only_when_running_with_one() -> None:
    wait = VmWait(NAME + "a", "RUNNING", address=True)
    assert wait.seen(event(vm("a", conditions=[WAITING]))) is None
    assert wait.seen(event(vm("a", vm_pb2.Vm.STOPPED, ips=("10.0.0.2",)))) is None
    timeout = wait.timed_out(5)
    assert str(timeout) == f"{NAME}a not RUNNING with an address within 5s; it is STOPPED"
    wait.seen(event(vm("a", conditions=[WAITING])))
    assert str(wait.timed_out(5)) == (f"{NAME}a not RUNNING with an address within 5s; it is RUNNING, no address "
                                      "yet (WaitingForAddress: the guest has reported no address yet)")
    done = wait.seen(event(vm("a", ips=("10.0.0.2",))))
    assert done is not None and done.addresses[0].ip == "10.0.0.2"
    # Without address=True, RUNNING is enough.
    assert VmWait(NAME + "a", "RUNNING").seen(event(vm("a"))) is not None


def test_several_vms_are_awaited_through_one_watch_in_the_order_named() -> None:
    wait = VmsWait([NAME + "b", NAME + "a"], "RUNNING", address=True)
    assert wait.seen(event(vm("a", ips=("10.0.0.1",)))) is None
    assert wait.seen(vm_pb2.VmEvent(type=common_pb2.BOOKMARK)) is None
    assert wait.seen(event(vm("c", ips=("10.0.0.9",)))) is None
    assert wait.seen(event(vm("a", vm_pb2.Vm.STOPPED))) is None  # a was done, is no longer
    assert wait.seen(event(vm("b", ips=("10.0.0.2",)))) is None
    timeout = wait.timed_out(3)
    assert str(timeout) == f"{NAME}a not RUNNING with an address within 3s; {NAME}a is STOPPED"
    done = wait.seen(event(vm("a", ips=("10.0.0.1",))))
    assert done is not None and [v.name for v in done] == [NAME + "b", NAME + "a"]
    never = VmsWait([NAME + "x", NAME + "y"], "RUNNING")
    assert str(never.timed_out(2)) == f"{NAME}x and 1 more not RUNNING within 2s; {NAME}x is not seen"


def test_both_clients_wait_for_addresses_by_watching(server) -> None:
    endpoint, vms = server
    vms.events = [event(vm("a", vm_pb2.Vm.CREATING), common_pb2.ADDED), event(vm("b", conditions=[WAITING])),
                  vm_pb2.VmEvent(type=common_pb2.BOOKMARK), event(vm("a", conditions=[WAITING])),
                  event(vm("a", ips=("10.0.0.1",))), event(vm("b", ips=("10.0.0.2",)))]
    with quanta.Client(endpoint, token="t", tenant="t", project="p") as client:
        assert client.wait_for_vm("a", address=True, timeout=10).addresses[0].ip == "10.0.0.1"
        assert [v.addresses[0].ip for v in client.wait_for_vms(["b", "a"], address=True, timeout=10)] == [
            "10.0.0.2", "10.0.0.1"]
        with pytest.raises(errors.WaitTimeout) as caught:  # the stream ends without it: a timeout
            client.wait_for_vm("c", "STOPPED", timeout=2)
        assert caught.value.last is None

    async def run() -> list[vm_pb2.Vm]:
        async with quanta.aio.Client(endpoint, token="t", tenant="t", project="p") as client:
            one = await client.wait_for_vm("b", address=True, timeout=10)
            return [one, *await client.wait_for_vms(["a", "b"], address=True, timeout=10)]

    assert [v.addresses[0].ip for v in asyncio.run(run())] == ["10.0.0.2", "10.0.0.1", "10.0.0.2"]
