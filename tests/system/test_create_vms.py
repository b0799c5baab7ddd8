"""CreateVms, GetVmSet and validate_only through the real processes (LocalSystem,
zero latency): per-VM outcomes in INDEPENDENT mode, the quota exact under bulk calls
from two frontends, an ALL_OR_NOTHING set admitted whole (PENDING while it cannot be
placed) or refused whole, and validate_only writing nothing."""

from __future__ import annotations

import concurrent.futures
import re
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf import duration_pb2

from controlplane.api.errors import ApiError
from controlplane.gen.quanta.v1 import vm_pb2, vm_pb2_grpc
from quanta.client import Client
from quanta.local import LocalSystem
from tests.conftest import wait_until

TENANT = "bulk"
INDEPENDENT, ALL_OR_NOTHING = vm_pb2.CreateVmsRequest.INDEPENDENT, vm_pb2.CreateVmsRequest.ALL_OR_NOTHING
NOWHERE = {"rack": "no-such-rack"}  # no host has it: members stay PENDING


@pytest.fixture(scope="module")
def system():
    with LocalSystem(hosts=2, frontends=2, latency="zero", metrics=True) as local:
        with local.client(ensure_project=False) as admin:
            admin.create_tenant(TENANT)
        yield local


@pytest.fixture
def admin(system) -> Iterator[Client]:
    with system.client(ensure_project=False) as c:
        yield c


def project(admin: Client, vms: int | None = None) -> str:
    """A fresh project of TENANT (with a limit of ``vms`` VMs); its name."""
    name = f"p-{uuid.uuid4().hex[:8]}"
    admin.create_project(name, tenant=TENANT, quota={"vms": vms} if vms is not None else None)
    return f"tenants/{TENANT}/projects/{name}"


def create(vm_id: str = "", *, flavor: str = "small", node_selector: dict | None = None,
           request_id: str = "") -> vm_pb2.CreateVmRequest:
    return vm_pb2.CreateVmRequest(vm_id=vm_id, request_id=request_id, vm=vm_pb2.Vm(
        flavor=flavor, image="ubuntu", node_selector=node_selector or {}))


def create_vms(c: Client, parent: str, requests: list[vm_pb2.CreateVmRequest], **fields) -> vm_pb2.CreateVmsResponse:
    return c._call(c._vms.CreateVms, vm_pb2.CreateVmsRequest(parent=parent, requests=requests, **fields), timeout=60)


def error(call) -> ApiError:
    with pytest.raises(ApiError) as info:
        call()
    return info.value


def vm_ids(c: Client, parent: str) -> set[str]:
    listed = c._call(c._vms.ListVms, vm_pb2.ListVmsRequest(parent=parent, page_size=1000))
    assert not listed.next_page_token
    return {vm.name.rsplit("/", 1)[1] for vm in listed.vms}


def usage_vms(c: Client, parent: str) -> int:
    return c.get_quota(f"{parent}/quota").usage.vms


def audited(c: Client) -> set[tuple[str, str, str]]:
    return {(r.method, r.resource, r.code) for r in c.list_audit(tenant=TENANT)}


# --- INDEPENDENT ----------------------------------------------------------------------


def test_independent_creates_each_vm_on_its_own(admin: Client) -> None:
    """A mix of valid, invalid, taken and over-quota creates: each its own outcome,
    with CreateVm's code, reason and message; exactly the accepted VMs exist, each
    audited as created by CreateVms."""
    parent = project(admin, vms=4)
    admin._call(admin._vms.CreateVm, vm_pb2.CreateVmRequest(parent=parent, vm_id="taken", vm=create().vm))
    requests = [create("ok-1"), create("bad", flavor="no-such-flavor"), create("ok-2"), create("taken"),
                create("ok-3"), create("ok-4")]
    response = create_vms(admin, parent, requests)
    results = response.results
    assert len(results) == 6 and not response.HasField("set")
    # The invalid one says what CreateVm says, word for word.
    alone = error(lambda: admin._call(admin._vms.CreateVm, vm_pb2.CreateVmRequest(
        parent=parent, vm_id="bad", vm=requests[1].vm)))
    assert (results[1].code, results[1].reason, results[1].message) == \
        (grpc.StatusCode.INVALID_ARGUMENT.value[0], alone.reason, alone.message)
    assert "vm.flavor" in results[1].message
    assert (results[3].code, results[3].reason) == (grpc.StatusCode.ALREADY_EXISTS.value[0], "VM_ALREADY_EXISTS")
    # Three of the four valid ones fit the quota (one VM exists already): which, the
    # group commit's arrival order decides.
    fresh = [results[i] for i in (0, 2, 4, 5)]
    outcomes = Counter((r.code, r.reason) for r in fresh)
    assert outcomes == {(0, ""): 3, (grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], "QUOTA_EXCEEDED"): 1}
    made = {r.vm.name.rsplit("/", 1)[1] for r in fresh if r.code == 0}
    assert all(r.vm.state == vm_pb2.Vm.PENDING and r.vm.uid for r in fresh if r.code == 0)
    assert not any(r.HasField("vm") for r in results if r.code)
    assert vm_ids(admin, parent) == made | {"taken"}
    assert usage_vms(admin, parent) == 4
    expected = {("CreateVms", f"{parent}/vms/{vm_id}", "OK") for vm_id in made}
    wait_until(lambda: expected <= audited(admin), timeout=30, message="an audit record per VM created",
               seen=lambda: sorted(expected - audited(admin)))


def test_independent_retries_by_request_id_and_refuses_bad_calls(admin: Client) -> None:
    parent = project(admin)
    first = create_vms(admin, parent, [create(request_id="rq-a"), create(request_id="rq-b")])
    again = create_vms(admin, parent, [create(request_id="rq-a"), create(request_id="rq-b")])
    assert [r.vm.uid for r in again.results] == [r.vm.uid for r in first.results]
    assert len(vm_ids(admin, parent)) == 2
    reused = create_vms(admin, parent, [create(request_id="rq-a", flavor="large")]).results[0]
    assert (reused.code, reused.reason) == (grpc.StatusCode.ALREADY_EXISTS.value[0], "REQUEST_ID_REUSED")
    # Malformed calls are refused whole, nothing written.
    for bad, field in (
        (vm_pb2.CreateVmsRequest(parent=parent), "requests"),
        (vm_pb2.CreateVmsRequest(parent=parent, requests=[create()] * 1001), "requests"),
        (vm_pb2.CreateVmsRequest(parent=parent, requests=[vm_pb2.CreateVmRequest(
            parent=f"tenants/{TENANT}/projects/other", vm=create().vm)]), "requests[0].parent"),
        (vm_pb2.CreateVmsRequest(parent=parent, requests=[create()], set_id="s"), "set_id"),
        (vm_pb2.CreateVmsRequest(parent=parent, requests=[create()], mode=7), "mode"),
    ):
        err = error(lambda bad=bad: admin._call(admin._vms.CreateVms, bad))
        assert err.code is grpc.StatusCode.INVALID_ARGUMENT, bad
        assert field in [f for f, _ in err.field_violations], err.field_violations
    assert len(vm_ids(admin, parent)) == 2


def _frontend_calls(system: LocalSystem, method: str) -> dict[str, float]:
    counts = {}
    for name, port in system.metrics_ports.items():
        if name.startswith("frontend"):
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
            counts[name] = sum(float(v) for v in re.findall(
                rf'^quanta_api_requests_total\{{[^}}]*method="{method}"[^}}]*\}} (\S+)$', text, re.MULTILINE))
    return counts


def test_bulk_creates_from_two_frontends_hold_the_quota_exactly(system: LocalSystem, admin: Client) -> None:
    """200 VMs in 20 CreateVms calls at once on 20 connections (spread over both
    frontends) against a limit of 137: exactly 137 made, 63 refused QUOTA_EXCEEDED."""
    limit = 137
    parent = project(admin, vms=limit)
    before = _frontend_calls(system, "CreateVms")
    clients = [Client(system.endpoint, token=system.admin_token, own_connection=True) for _ in range(20)]
    try:
        def call(i: int) -> list[tuple[int, str]]:
            response = create_vms(clients[i], parent, [create(f"v-{i:02d}-{j}") for j in range(10)])
            return [(r.code, r.reason) for r in response.results]

        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            outcomes = Counter(o for results in pool.map(call, range(20)) for o in results)
    finally:
        for client in clients:
            client.close()
    assert outcomes == {(0, ""): limit, (grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], "QUOTA_EXCEEDED"): 200 - limit}
    assert len(vm_ids(admin, parent)) == limit
    assert usage_vms(admin, parent) == limit
    after = _frontend_calls(system, "CreateVms")
    served = [name for name in after if after[name] > before.get(name, 0)]
    assert len(served) == 2, f"the calls reached only {served}"


def test_a_round_robin_channel_over_the_frontends_own_addresses_spreads_calls(system: LocalSystem,
                                                                              admin: Client) -> None:
    """Each frontend also serves on an address of its own (``--also-listen``); one
    channel sending round robin over those spreads its calls over the frontends (a
    shared port spreads only connections: one channel's calls all reach one)."""
    parent = project(admin)
    before = _frontend_calls(system, "ListVms")
    channel = grpc.insecure_channel(system.balanced_target, options=[("grpc.lb_policy_name", "round_robin")])
    try:
        stub = vm_pb2_grpc.VmServiceStub(channel)
        metadata = (("authorization", f"Bearer {system.admin_token}"),)

        def both_ready() -> bool:  # round_robin sends only to connected frontends
            for _ in range(4):
                stub.ListVms(vm_pb2.ListVmsRequest(parent=parent), metadata=metadata, timeout=30)
            after = _frontend_calls(system, "ListVms")
            return all(after[name] > before.get(name, 0) for name in after)

        wait_until(both_ready, timeout=60, message="both frontends served a ListVms of the channel",
                   seen=lambda: _frontend_calls(system, "ListVms"))
        start = _frontend_calls(system, "ListVms")
        for _ in range(40):
            stub.ListVms(vm_pb2.ListVmsRequest(parent=parent), metadata=metadata, timeout=30)
        end = _frontend_calls(system, "ListVms")
    finally:
        channel.close()
    served = {name: end[name] - start.get(name, 0) for name in end}
    assert len(served) == 2 and sum(served.values()) == 40, served
    assert min(served.values()) >= 15, f"40 calls spread unevenly: {served}"


# --- ALL_OR_NOTHING and GetVmSet ------------------------------------------------------


def test_an_all_or_nothing_set_is_admitted_whole_and_pending_while_it_cannot_be_placed(admin: Client) -> None:
    parent = project(admin, vms=5)
    requests = [create(f"cp-{i}", node_selector=NOWHERE) for i in range(3)]
    response = create_vms(admin, parent, requests, mode=ALL_OR_NOTHING, set_id="control-plane",
                          request_id="set-rq-1", deadline=duration_pb2.Duration(seconds=3600))
    vm_set = response.set
    name = f"{parent}/vmSets/control-plane"
    assert (vm_set.name, vm_set.state) == (name, vm_pb2.VmSet.PENDING)
    assert list(vm_set.vms) == [f"{parent}/vms/cp-{i}" for i in range(3)]
    assert vm_set.deadline_time.seconds - vm_set.create_time.seconds == 3600
    assert [(r.code, r.vm.name, r.vm.vm_set) for r in response.results] == \
        [(0, f"{parent}/vms/cp-{i}", name) for i in range(3)]
    assert vm_ids(admin, parent) == {"cp-0", "cp-1", "cp-2"} and usage_vms(admin, parent) == 3
    # The set's scheduler shard finds it does not fit, and says why on the set.
    got = wait_until(
        lambda: "fit no host" in (g := admin._call(admin._vms.GetVmSet, vm_pb2.GetVmSetRequest(name=name)))
        .conditions[0].message and g, timeout=30, message="the set's shortfall written by its scheduler shard",
        seen=lambda: admin._call(admin._vms.GetVmSet, vm_pb2.GetVmSetRequest(name=name)).conditions)
    assert (got.uid, got.state, list(got.vms)) == (vm_set.uid, vm_pb2.VmSet.PENDING, list(vm_set.vms))
    assert [(c.type, c.status, c.reason) for c in got.conditions] == [("Placed", "False", "SetDoesNotFit")]
    assert "fit no host" in got.conditions[0].message, got.conditions[0].message
    assert got.resource_version > vm_set.resource_version > 0
    assert admin._call(admin._vms.GetVm, vm_pb2.GetVmRequest(name=f"{parent}/vms/cp-1")).vm_set == name
    # A retry returns the same set; another set under that request_id is refused.
    again = create_vms(admin, parent, requests, mode=ALL_OR_NOTHING, set_id="control-plane",
                       request_id="set-rq-1", deadline=duration_pb2.Duration(seconds=3600))
    assert again.set.uid == vm_set.uid and [r.vm.uid for r in again.results] == [r.vm.uid for r in response.results]
    reused = error(lambda: create_vms(admin, parent, [create("other")], mode=ALL_OR_NOTHING,
                                      request_id="set-rq-1"))
    assert (reused.code, reused.reason) == (grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED")
    # One audit record, the set's.
    wait_until(lambda: ("CreateVms", name, "OK") in audited(admin), timeout=30, message="the set's audit record",
               seen=lambda: sorted(r for r in audited(admin) if r[0] == "CreateVms"))
    assert not any(r[0] == "CreateVms" and "/vms/cp-" in r[1] for r in audited(admin))
    # Unknown sets, and sets of a project the caller cannot see, are NOT_FOUND alike.
    missing = error(lambda: admin._call(admin._vms.GetVmSet, vm_pb2.GetVmSetRequest(name=f"{parent}/vmSets/nope")))
    assert (missing.code, missing.reason) == (grpc.StatusCode.NOT_FOUND, "VM_SET_NOT_FOUND")


def test_an_all_or_nothing_set_is_refused_whole(admin: Client) -> None:
    parent = project(admin, vms=3)
    admin._call(admin._vms.CreateVm, vm_pb2.CreateVmRequest(parent=parent, vm_id="held", vm=create().vm))
    # Invalid members: INVALID_ARGUMENT for the call, each field named by its request.
    err = error(lambda: create_vms(admin, parent, [create("a"), create("b", flavor="nope"), create("a"),
                                                   create("c", request_id="own")], mode=ALL_OR_NOTHING))
    assert err.code is grpc.StatusCode.INVALID_ARGUMENT
    assert {f for f, _ in err.field_violations} == {"requests[1].vm.flavor", "requests[2].vm_id",
                                                    "requests[3].request_id"}
    # Over quota (1 held + 3 > 3): the whole set refused.
    over = error(lambda: create_vms(admin, parent, [create(f"q-{i}") for i in range(3)], mode=ALL_OR_NOTHING))
    assert (over.code, over.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "QUOTA_EXCEEDED")
    # A member's name taken: ALREADY_EXISTS naming it.
    taken = error(lambda: create_vms(admin, parent, [create("n-0"), create("held")], mode=ALL_OR_NOTHING))
    assert (taken.code, taken.reason, taken.metadata["name"]) == \
        (grpc.StatusCode.ALREADY_EXISTS, "VM_ALREADY_EXISTS", f"{parent}/vms/held")
    # A deadline beyond 24 h.
    late = error(lambda: create_vms(admin, parent, [create("d-0")], mode=ALL_OR_NOTHING,
                                    deadline=duration_pb2.Duration(seconds=24 * 3600 + 1)))
    assert [f for f, _ in late.field_violations] == ["deadline"]
    assert vm_ids(admin, parent) == {"held"} and usage_vms(admin, parent) == 1


# --- validate_only --------------------------------------------------------------------


def test_validate_only_writes_nothing(admin: Client) -> None:
    parent = project(admin, vms=2)
    vm = admin._call(admin._vms.CreateVm, vm_pb2.CreateVmRequest(parent=parent, vm_id="vo-1", vm=create().vm,
                                                                 validate_only=True))
    assert (vm.name, vm.state, vm.uid, vm.etag, vm.flavor) == (f"{parent}/vms/vo-1", vm_pb2.Vm.PENDING, "", "",
                                                               "small")
    each = create_vms(admin, parent, [create("vo-2"), create("vo-3"), create("vo-4"), create("vo-x", flavor="x")],
                      validate_only=True)
    assert [(r.code, r.reason) for r in each.results] == [
        (0, ""), (0, ""), (grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], "QUOTA_EXCEEDED"),
        (grpc.StatusCode.INVALID_ARGUMENT.value[0], "FIELD_INVALID")]
    whole = create_vms(admin, parent, [create("vo-5"), create("vo-6")], mode=ALL_OR_NOTHING, set_id="vo-set",
                       validate_only=True)
    assert (whole.set.name, whole.set.state, whole.set.uid) == (f"{parent}/vmSets/vo-set", vm_pb2.VmSet.PENDING, "")
    assert [r.vm.vm_set for r in whole.results] == [f"{parent}/vmSets/vo-set"] * 2
    # Each VM says where it would be placed now (nowhere: no host has its selector).
    hosts = {"sim-00000", "sim-00001"}
    assert vm.host in hosts and {r.vm.host for r in each.results[:2]} <= hosts
    assert {r.vm.host for r in whole.results} <= hosts
    nowhere = admin._call(admin._vms.CreateVm, vm_pb2.CreateVmRequest(
        parent=parent, vm_id="vo-n", vm=create(node_selector=NOWHERE).vm, validate_only=True))
    assert nowhere.host == "" and nowhere.state == vm_pb2.Vm.PENDING
    over = error(lambda: create_vms(admin, parent, [create(f"vo-{i}") for i in range(7, 10)], mode=ALL_OR_NOTHING,
                                    validate_only=True))
    assert (over.code, over.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "QUOTA_EXCEEDED")
    # Nothing stored, nothing charged, nothing audited.
    assert vm_ids(admin, parent) == set() and usage_vms(admin, parent) == 0
    gone = error(lambda: admin._call(admin._vms.GetVmSet, vm_pb2.GetVmSetRequest(name=f"{parent}/vmSets/vo-set")))
    assert gone.code is grpc.StatusCode.NOT_FOUND
    admin._call(admin._vms.CreateVm, vm_pb2.CreateVmRequest(parent=parent, vm_id="vo-real", vm=create().vm))
    wait_until(lambda: ("CreateVm", f"{parent}/vms/vo-real", "OK") in audited(admin), timeout=30,
               message="the real create's audit record", seen=lambda: sorted(audited(admin)))
    assert not [r for r in audited(admin) if r[1].startswith(parent) and r[0] in ("CreateVm", "CreateVms")
                and "vo-real" not in r[1]], "validate_only left an audit record"
    # The same checks a real create makes: a taken name.
    taken = error(lambda: admin._call(admin._vms.CreateVm, vm_pb2.CreateVmRequest(
        parent=parent, vm_id="vo-real", vm=create().vm, validate_only=True)))
    assert (taken.code, taken.reason) == (grpc.StatusCode.ALREADY_EXISTS, "VM_ALREADY_EXISTS")
