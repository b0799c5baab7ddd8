"""Many VMs in one call, client side, without a real system: the YAML file of
``quanta vm create-many`` (defaults, count, files relative to it, precise errors
that never quote bootstrap data), the CreateVms the SDK builds (each VM exactly as
create_vm builds it, a request_id for every VM and for the call), how an answer is
read (INDEPENDENT refusals are outcomes, ALL_OR_NOTHING ones raise), the channel's
retry resending the same ids, and the waits for a set (placed, FAILED, a member
gone) in both clients against an in-process server; the views and the CLI verb
against that server."""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import json
import threading
from collections.abc import Iterator

import grpc
import pytest
import yaml

import quanta
import quanta.aio
from controlplane.api import errors as api
from controlplane.gen.quanta.v1 import common_pb2, vm_pb2, vm_pb2_grpc
from quanta import calls, errors
from quanta.cli import manifest, views
from quanta.cli.output import Printer
from quanta.outcomes import CreatedVms
from quanta.waits import VmSetWait, describe_set

SECRET = "#cloud-config\nruncmd: [echo marker-9c2e]\n"
PARENT = "tenants/t/projects/p"
BUILT = calls.Calls("t", "p", 10.0)


def files(tree: dict[str, bytes]):
    def read(path: str) -> bytes:
        try:
            return tree[path]
        except KeyError:
            raise FileNotFoundError(2, "No such file or directory", path) from None
    return read


# --- the YAML file ----------------------------------------------------------------------

CLUSTER = """
defaults:
  flavor: small
  image: ubuntu
  labels: {cluster: demo, tier: base}
  user_data_file: common.yaml
vms:
  - name: cp
    count: 3
    labels: {role: control-plane, tier: gold}
    anti-affinity-group: demo-cp      # the flag's spelling works too
    anti_affinity_scope: zone
  - name: worker-1
    flavor: medium
    user_data: |
      #cloud-config
      inline: true
  - name: db-1
    stopped: true
    ignition_file: /abs/db.ign
    ssh_key_files: [keys.pub]
    metadata: {instance-id: db, role: db}
    hostname: database
    request_id: r-db
"""
TREE = {"/here/common.yaml": SECRET.encode(), "/abs/db.ign": b'{"ignition": {}}',
        "/here/keys.pub": b"# mine\nssh-ed25519 AAA a@b\n\nssh-rsa BBB c@d\n"}


def test_a_file_expands_counts_merges_defaults_and_reads_files_relative_to_itself() -> None:
    m = manifest.parse(CLUSTER, "/here", files(TREE))
    assert m.names == ["cp-1", "cp-2", "cp-3", "worker-1", "db-1"]
    cp = m.vms[0]
    assert cp == {"vm_id": "cp-1", "flavor": "small", "image": "ubuntu", "anti_affinity_group": "demo-cp",
                  "anti_affinity_scope": "ZONE", "labels": {"cluster": "demo", "tier": "gold", "role": "control-plane"},
                  "user_data": SECRET.encode()}
    assert m.vms[3]["flavor"] == "medium" and m.vms[3]["user_data"] == b"#cloud-config\ninline: true\n"
    db = m.vms[4]
    assert db["ignition"] == b'{"ignition": {}}' and "user_data" not in db  # the VM's data replaces the defaults'
    assert db["ssh_keys"] == ["ssh-ed25519 AAA a@b", "ssh-rsa BBB c@d"] and db["power_on"] is False
    assert db["metadata"] == {"instance-id": "db", "role": "db"} and db["hostname"] == "database"
    assert db["request_id"] == "r-db" and m.stopped == {"db-1"}
    assert SECRET not in repr(m)
    # Every VM is what create_vms takes.
    request = BUILT.create_vms(m.vms).request
    assert [r.vm_id for r in request.requests] == m.names
    assert request.requests[4].vm.power == vm_pb2.Vm.POWERED_OFF
    assert request.requests[4].vm.bootstrap.format == vm_pb2.Bootstrap.IGNITION


def test_a_bare_list_is_the_vms() -> None:
    m = manifest.parse("- {name: a, flavor: small, image: ubuntu}\n", "/", files({}))
    assert m.vms == [{"vm_id": "a", "flavor": "small", "image": "ubuntu"}]


@pytest.mark.parametrize(("text", "error"), [
    ("vms: [{name: a, flavour: small, image: u}]", r"vms\[0\] \(a\): unknown field\(s\) flavour"),
    ("vms: [{name: a, image: u}]", r"vms\[0\] \(a\): flavor: required"),
    ("vms: [{flavor: s, image: u}]", r"vms\[0\]: name: required"),
    ("vms: []", "non-empty list"),
    ("vm: []", "unknown top-level key"),
    ("defaults: {name: x}\nvms: [{name: a, flavor: s, image: u}]", "defaults: name"),
    ("vms: [{name: a, flavor: s, image: u}, {name: a, flavor: s, image: u}]", r"vms\[1\] \(a\): name 'a' is also"),
    ("vms: [{name: w, count: 2, flavor: s, image: u}, {name: w-2, flavor: s, image: u}]", "also"),
    ("vms: [{name: w, count: 0, flavor: s, image: u}]", "count: expected a whole number"),
    ("vms: [{name: w, count: 2, hostname: h, flavor: s, image: u}]", "not with count"),
    ("vms: [{name: a, flavor: s, image: u, labels: [x]}]", "labels: expected a mapping"),
    ("vms: [{name: a, flavor: s, image: u, stopped: yes please}]", "stopped: expected true or false"),
    ("vms: [{name: a, flavor: s, image: u, user_data: x, user_data_file: f}]", "not both"),
    ("vms: [{name: a, flavor: s, image: u, user_data: x, ignition: y}]", "not both"),
    ("vms: [{name: a, flavor: s, image: u, user_data_file: missing.yaml}]",
     r"user_data_file: cannot read /here/missing.yaml: No such file"),
    ("vms: [{name: a, flavor: s, image: u}", "not YAML"),
    ("vms: [{name: w, count: 1001, flavor: s, image: u}]", "count"),
    ("vms: [{name: w, count: 600, flavor: s, image: u}, {name: v, count: 600, flavor: s, image: u}]",
     "at most 1000"),
])
def test_a_bad_file_says_where(text: str, error: str) -> None:
    with pytest.raises(manifest.ManifestError, match=error):
        manifest.parse(text, "/here", files(TREE))


def test_errors_never_quote_bootstrap_data() -> None:
    with pytest.raises(manifest.ManifestError) as caught:
        manifest.parse(f"vms: [{{name: a, flavor: s, image: u, user_data: {json.dumps(SECRET)}, ignition: x}}]",
                       "/", files({}))
    assert "marker-9c2e" not in str(caught.value)


def test_the_example_file_is_3_anti_affine_control_planes_and_20_workers() -> None:
    m = manifest.load("examples/cluster.yaml")
    cps = [vm for vm in m.vms if vm["labels"]["role"] == "control-plane"]
    assert len(m.vms) == 23 and len(cps) == 3
    assert all(vm["anti_affinity_scope"] == "ZONE" and vm["anti_affinity_group"] == "many-cp" for vm in cps)
    assert all(vm["user_data"].startswith(b"#cloud-config") for vm in m.vms)


def test_the_files_the_readme_names_are_shipped_and_load() -> None:
    more = manifest.load("examples/more.yaml")
    assert [vm["vm_id"] for vm in more.vms] == ["app-1", "app-2"] and more.vms[1]["flavor"] == "huge"
    four = manifest.load("examples/four-zones.yaml")
    assert len(four.vms) == 4 and {vm["anti_affinity_scope"] for vm in four.vms} == {"ZONE"}
    with open("examples/cloud-init.yaml", "rb") as f:
        assert f.read().startswith(b"#cloud-config\n")
    with open("examples/ssh-key.pub") as f:
        assert f.read().startswith("ssh-ed25519 ")
    with open("README.md") as f:
        readme = f.read()
    for path in ("examples/more.yaml", "examples/four-zones.yaml", "examples/cloud-init.yaml",
                 "examples/ssh-key.pub", "examples/cluster/control-plane.yaml"):
        assert path in readme, path


# --- the request ------------------------------------------------------------------------

SPEC = dict(flavor="small", image="ubuntu", labels={"a": "1"}, node_selector={"gpu": "true"},
            anti_affinity_group="g", anti_affinity_scope="ZONE", affinity_group="h", affinity_scope="ZONE",
            restart_policy="NEVER", user_data=SECRET, metadata={"local-hostname": "x", "k": "v"},
            ssh_keys=["ssh-ed25519 AAA"], hostname="web", power_on=False, power_policy="KEEP_RUNNING")


def test_each_vm_of_create_vms_is_built_as_create_vm_builds_it() -> None:
    single = BUILT.create_vm("web-1", request_id="r-1", **SPEC).request
    many = BUILT.create_vms([{"vm_id": "web-1", "request_id": "r-1", **SPEC},
                             {"flavor": "small", "image": "u"}]).request
    assert many.parent == PARENT and many.mode == vm_pb2.CreateVmsRequest.INDEPENDENT
    assert many.request_id == "" and many.set_id == "" and not many.validate_only and not many.HasField("deadline")
    assert many.requests[0].vm == single.vm and many.requests[0].vm_id == "web-1"
    assert many.requests[0].request_id == "r-1" and many.requests[0].parent == ""  # the call's parent
    assert many.requests[1].vm_id == "" and many.requests[1].request_id  # the server names it; still an id


def test_independent_vms_carry_request_ids_of_their_own() -> None:
    first = BUILT.create_vms([{"vm_id": f"w-{i}", "flavor": "s", "image": "u"} for i in range(50)]).request
    second = BUILT.create_vms([{"vm_id": "w-0", "flavor": "s", "image": "u"}]).request
    ids = [r.request_id for r in first.requests]
    assert all(ids) and len(set(ids)) == 50 and second.requests[0].request_id not in ids
    assert "CreateVms" in calls.RETRIED[calls.VMS] and "GetVmSet" in calls.RETRIED[calls.VMS]
    for kwargs in ({"set_id": "s"}, {"deadline": 60}, {"request_id": "r"}):
        with pytest.raises(ValueError, match="all_or_nothing set's"):
            BUILT.create_vms([{"vm_id": "a", "flavor": "s", "image": "u"}], **kwargs)


def test_all_or_nothing_sends_the_mode_set_id_deadline_and_the_sets_request_id_only() -> None:
    call = BUILT.create_vms([{"vm_id": "cp-1", "flavor": "s", "image": "u"},
                             {"vm_id": "cp-2", "flavor": "s", "image": "u"}],
                            all_or_nothing=True, set_id="cp", deadline=90.5, validate_only=True)
    r = call.request
    assert r.mode == vm_pb2.CreateVmsRequest.ALL_OR_NOTHING and r.set_id == "cp" and r.validate_only
    assert (r.deadline.seconds, r.deadline.nanos) == (90, 500_000_000)
    assert r.request_id and [m.request_id for m in r.requests] == ["", ""]  # the set's covers its members
    again = BUILT.create_vms([{"vm_id": "cp-1", "flavor": "s", "image": "u"}], all_or_nothing=True).request
    assert again.request_id and again.request_id != r.request_id and again.set_id == ""
    assert BUILT.create_vms([{"vm_id": "a", "flavor": "s", "image": "u"}], all_or_nothing=True,
                            request_id="set-r").request.request_id == "set-r"
    with pytest.raises(ValueError, match=r"vms\[0\] \(a\): request_id: the set's request_id covers"):
        BUILT.create_vms([{"vm_id": "a", "flavor": "s", "image": "u", "request_id": "x"}], all_or_nothing=True)
    assert call.timeout is None  # a small call: the client's timeout
    big = BUILT.create_vms([{"vm_id": f"w-{i}", "flavor": "s", "image": "u"} for i in range(calls.BIG_BATCH + 1)])
    assert big.timeout == calls.LONG_TIMEOUT_S


def test_bad_vms_are_refused_before_anything_is_sent_naming_the_vm() -> None:
    with pytest.raises(TypeError, match=r"vms\[1\] \(b\): unknown field\(s\) flavour"):
        BUILT.create_vms([{"vm_id": "a", "flavor": "s", "image": "u"}, {"vm_id": "b", "flavour": "s", "image": "u"}])
    with pytest.raises(TypeError, match=r"vms\[0\] \(a\): .*image"):
        BUILT.create_vms([{"vm_id": "a", "flavor": "s"}])
    with pytest.raises(ValueError, match=r"vms\[0\] \(a\): give user_data .* or ignition, not both"):
        BUILT.create_vms([{"vm_id": "a", "flavor": "s", "image": "u", "user_data": "x", "ignition": "y"}])
    with pytest.raises(ValueError, match="at least one"):
        BUILT.create_vms([])


def test_no_repr_of_the_call_shows_bootstrap_data() -> None:
    call = BUILT.create_vms([{"vm_id": "a", "user_data": SECRET, "flavor": "s", "image": "u"}])
    assert "marker-9c2e" not in repr(call) and "marker-9c2e" in str(call.request)


def test_set_names() -> None:
    assert BUILT.get_vm_set("cp").request.name == f"{PARENT}/vmSets/cp"
    assert BUILT.get_vm_set("vmSets/cp").request.name == f"{PARENT}/vmSets/cp"
    assert BUILT.get_vm_set("tenants/x/projects/y/vmSets/z").request.name == "tenants/x/projects/y/vmSets/z"


# --- the answer -------------------------------------------------------------------------

def vm(vm_id: str, state: int = vm_pb2.Vm.PENDING, host: str = "", ips: tuple[str, ...] = (),
       **kwargs) -> vm_pb2.Vm:
    return vm_pb2.Vm(name=f"{PARENT}/vms/{vm_id}", state=state, host=host, flavor="small", image="ubuntu",
                     addresses=[vm_pb2.Address(ip=ip) for ip in ips], **kwargs)


QUOTA = dict(code=grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], reason="QUOTA_EXCEEDED",
             message="project quota vms: 2 used + 1 > 2")
ANSWER = vm_pb2.CreateVmsResponse(results=[vm_pb2.CreateVmsResult(vm=vm("a")), vm_pb2.CreateVmsResult(**QUOTA)])


def test_an_independent_refusal_is_an_outcome_not_an_exception() -> None:
    created = CreatedVms.of(ANSWER, [f"{PARENT}/vms/a", f"{PARENT}/vms/b"])
    assert not created.ok and len(created) == 2 and created.names == [f"{PARENT}/vms/a"]
    refused = created.refused[0]
    assert refused.name == f"{PARENT}/vms/b" and refused.vm is None
    assert refused.code is grpc.StatusCode.RESOURCE_EXHAUSTED and refused.reason == "QUOTA_EXCEEDED"
    err = refused.error()
    assert isinstance(err, errors.QuotaExceeded) and "b: project quota" in err.message
    assert err.metadata["vm"] == f"{PARENT}/vms/b"
    with pytest.raises(errors.QuotaExceeded):
        created.raise_for_refusals()


def test_an_all_or_nothing_refusal_raises_its_typed_error() -> None:
    with pytest.raises(errors.QuotaExceeded, match="quota"):
        CreatedVms.of(ANSWER, ["a", "b"], raise_refusal=True)
    placed = vm_pb2.CreateVmsResponse(results=[vm_pb2.CreateVmsResult(vm=vm("a"))],
                                      set=vm_pb2.VmSet(name=f"{PARENT}/vmSets/s"))
    created = CreatedVms.of(placed, ["a"], raise_refusal=True)
    assert created.ok and created.set is not None and created.set.name.endswith("/vmSets/s")


# --- the waits for a set ----------------------------------------------------------------

SET = f"{PARENT}/vmSets/cp"
NAMES = [f"{PARENT}/vms/cp-{i}" for i in (1, 2, 3)]
DOES_NOT_FIT = common_pb2.Condition(type="Placed", status="False", reason="SetDoesNotFit",
                                    message="3 members, room for 2: ZONE anti-affinity needs 3 zones, 2 have room")
EXPIRED = common_pb2.Condition(type="Placed", status="False", reason="DeadlineExceeded",
                               message="not placed within 10m")


def vm_set(state: int = vm_pb2.VmSet.PENDING, *conditions: common_pb2.Condition) -> vm_pb2.VmSet:
    return vm_pb2.VmSet(name=SET, vms=NAMES, state=state, conditions=list(conditions))


def ev(v: vm_pb2.Vm, kind: int = common_pb2.MODIFIED) -> vm_pb2.VmEvent:
    return vm_pb2.VmEvent(type=kind, vm=v)


BOOKMARK = vm_pb2.VmEvent(type=common_pb2.BOOKMARK)


def test_a_set_wait_counts_placed_and_running_and_ends_when_all_run() -> None:
    progress: list[tuple[int, int]] = []
    wait = VmSetWait(vm_set(), "RUNNING", address=True, on_progress=lambda w: progress.append((w.placed, len(w.done))))
    wait.start()
    for i in (1, 2, 3):
        assert wait.seen(ev(vm(f"cp-{i}"), common_pb2.ADDED)) is None
    assert wait.seen(BOOKMARK) is None and not wait.gone
    for i in (1, 2, 3):
        assert wait.seen(ev(vm(f"cp-{i}", vm_pb2.Vm.SCHEDULED, host=f"h{i}"))) is None
    assert wait.placed == 3
    assert wait.seen(ev(vm("cp-1", vm_pb2.Vm.RUNNING, "h1", ("10.0.0.1",)))) is None
    assert wait.seen(ev(vm("cp-2", vm_pb2.Vm.RUNNING, "h2"))) is None  # no address yet
    assert wait.seen(ev(vm("other", vm_pb2.Vm.RUNNING, "h9", ("10.0.0.9",)))) is None
    assert wait.seen(ev(vm("cp-2", vm_pb2.Vm.RUNNING, "h2", ("10.0.0.2",)))) is None
    done = wait.seen(ev(vm("cp-3", vm_pb2.Vm.RUNNING, "h3", ("10.0.0.3",))))
    assert done is not None and [v.name for v in done] == NAMES
    assert progress[0] == (0, 0) and progress[-1] == (3, 3) and (3, 1) in progress


def test_a_failed_set_or_a_member_gone_ends_the_wait() -> None:
    with pytest.raises(errors.VmSetFailed, match="FAILED.*DeadlineExceeded: not placed within 10m") as caught:
        VmSetWait(vm_set(vm_pb2.VmSet.FAILED, EXPIRED), "RUNNING").start()
    assert caught.value.reason == "VM_SET_FAILED" and caught.value.set.state == vm_pb2.VmSet.FAILED

    wait = VmSetWait(vm_set(vm_pb2.VmSet.PENDING, DOES_NOT_FIT), "RUNNING")
    wait.seen(ev(vm("cp-1"), common_pb2.ADDED))
    wait.seen(ev(vm("cp-2"), common_pb2.ADDED))
    wait.seen(BOOKMARK)  # cp-3 was not listed: gone already
    assert wait.gone == {NAMES[2]}
    err = wait.failed(vm_set(vm_pb2.VmSet.PENDING, DOES_NOT_FIT))
    assert err.reason == "VM_SET_MEMBER_DELETED" and "cp-3 deleted" in err.message and "SetDoesNotFit" in err.message
    wait.seen(ev(vm("cp-1"), common_pb2.DELETED))
    assert wait.gone == {NAMES[0], NAMES[2]}
    assert wait.failed(vm_set(vm_pb2.VmSet.FAILED, EXPIRED)).reason == "VM_SET_FAILED"
    timeout = wait.timed_out(5, vm_set(vm_pb2.VmSet.PENDING, DOES_NOT_FIT))
    assert isinstance(timeout, errors.WaitTimeout) and "PENDING (SetDoesNotFit: 3 members" in timeout.message


def test_describe_set() -> None:
    assert describe_set(vm_set(vm_pb2.VmSet.PLACED, common_pb2.Condition(type="Placed", status="True"))) == "PLACED"
    assert describe_set(vm_set(vm_pb2.VmSet.PENDING, DOES_NOT_FIT)).startswith("PENDING (SetDoesNotFit: 3 members")


# --- both clients against an in-process server ---------------------------------------------

class Vms(vm_pb2_grpc.VmServiceServicer):
    """CreateVms fails its first ``failures`` attempts with UNAVAILABLE and refuses VMs
    whose id starts with "bad"; GetVmSet answers ``sets``; WatchVms plays ``events``."""

    def __init__(self) -> None:
        self.failures = 0
        self.requests: list[vm_pb2.CreateVmsRequest] = []
        self.sets: list[vm_pb2.VmSet] = []
        self.events: list[vm_pb2.VmEvent] = []
        self.lock = threading.Lock()

    def CreateVms(self, request, context):  # noqa: N802 - gRPC's method name
        with self.lock:
            self.requests.append(request)
            fail = self.failures > 0
            self.failures -= 1
        if fail:
            context.abort_with_status(api.unavailable("etcd is down", retry_delay_s=0.01).to_status())
        if request.mode == vm_pb2.CreateVmsRequest.ALL_OR_NOTHING and any(
                r.vm_id.startswith("bad") for r in request.requests):
            context.abort_with_status(api.ApiError(
                grpc.StatusCode.RESOURCE_EXHAUSTED, "QUOTA_EXCEEDED", "the set needs 3 vms, 2 left",
                metadata={"dimensions": "vms"}).to_status())
        results = [vm_pb2.CreateVmsResult(**QUOTA) if r.vm_id.startswith("bad")
                   else vm_pb2.CreateVmsResult(vm=vm(r.vm_id)) for r in request.requests]
        answer = vm_pb2.CreateVmsResponse(results=results)
        if request.mode == vm_pb2.CreateVmsRequest.ALL_OR_NOTHING:
            answer.set.CopyFrom(vm_pb2.VmSet(name=f"{request.parent}/vmSets/{request.set_id}",
                                             vms=[r.vm.name for r in results], state=vm_pb2.VmSet.PENDING))
        return answer

    def GetVmSet(self, request, context):  # noqa: N802
        with self.lock:
            answer = self.sets.pop(0) if len(self.sets) > 1 else self.sets[0]
        return answer

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


WANTED = [{"vm_id": "a", "flavor": "small", "image": "ubuntu", "user_data": SECRET},
          {"vm_id": "bad-1", "flavor": "small", "image": "ubuntu"}]


def test_both_clients_create_many_retrying_with_the_same_ids(server) -> None:
    endpoint, vms = server
    vms.failures = 2
    with quanta.Client(endpoint, token="t", tenant="t", project="p") as client:
        created = client.create_vms(WANTED)
    assert [o.ok for o in created.outcomes] == [True, False] and created.refused[0].name.endswith("/bad-1")
    assert len(vms.requests) == 3 and all(r == vms.requests[0] for r in vms.requests)  # the same bytes each time
    assert all(r.request_id for r in vms.requests[0].requests)

    async def run() -> CreatedVms:
        async with quanta.aio.Client(endpoint, token="t", tenant="t", project="p") as client:
            return await client.create_vms(WANTED[:1], all_or_nothing=True, set_id="s")

    created = asyncio.run(run())
    assert created.ok and created.set is not None and created.set.name == f"{PARENT}/vmSets/s"
    with quanta.Client(endpoint, token="t", tenant="t", project="p") as client, \
            pytest.raises(errors.QuotaExceeded, match="the set needs"):
        client.create_vms(WANTED, all_or_nothing=True)


def running_events() -> list[vm_pb2.VmEvent]:
    return ([ev(vm(f"cp-{i}"), common_pb2.ADDED) for i in (1, 2, 3)] + [BOOKMARK]
            + [ev(vm(f"cp-{i}", vm_pb2.Vm.RUNNING, f"h{i}", (f"10.0.0.{i}",))) for i in (1, 2, 3)])


def test_both_clients_wait_for_a_set(server) -> None:
    endpoint, vms = server
    vms.sets = [vm_set()]
    vms.events = running_events()
    seen: list[int] = []
    with quanta.Client(endpoint, token="t", tenant="t", project="p") as client:
        done = client.wait_for_vm_set("cp", address=True, timeout=10, on_progress=lambda w: seen.append(w.placed))
    assert [v.name for v in done] == NAMES and seen[-1] == 3

    async def run() -> list[vm_pb2.Vm]:
        async with quanta.aio.Client(endpoint, token="t", tenant="t", project="p") as client:
            return await client.wait_for_vm_set("cp", timeout=10)

    assert [v.name for v in asyncio.run(run())] == NAMES


def test_a_set_that_fails_while_waited_for_raises(server) -> None:
    endpoint, vms = server
    vms.sets = [vm_set(vm_pb2.VmSet.PENDING, DOES_NOT_FIT), vm_set(vm_pb2.VmSet.FAILED, EXPIRED)]
    vms.events = ([ev(vm(f"cp-{i}"), common_pb2.ADDED) for i in (1, 2, 3)] + [BOOKMARK]
                  + [ev(vm("cp-1"), common_pb2.DELETED)])
    with quanta.Client(endpoint, token="t", tenant="t", project="p") as client, \
            pytest.raises(errors.VmSetFailed, match="DeadlineExceeded"):
        client.wait_for_vm_set("cp", timeout=10)
    vms.sets = [vm_set(vm_pb2.VmSet.PENDING, DOES_NOT_FIT), vm_set(vm_pb2.VmSet.FAILED, EXPIRED)]

    async def run() -> None:
        async with quanta.aio.Client(endpoint, token="t", tenant="t", project="p") as client:
            await client.wait_for_vm_set("cp", timeout=10)

    with pytest.raises(errors.VmSetFailed, match="DeadlineExceeded"):
        asyncio.run(run())


# --- the CLI --------------------------------------------------------------------------------

def printed(output: str, call) -> str:
    out, err = io.StringIO(), io.StringIO()
    call(Printer(output, out=out, err=err))
    return out.getvalue()


def test_outcomes_and_sets_are_shown_in_every_format() -> None:
    answer = vm_pb2.CreateVmsResponse()
    answer.CopyFrom(ANSWER)
    answer.results[1].vm.name = f"{PARENT}/vms/b"
    table = printed("table", lambda p: p.many(answer.results, views.CREATE_RESULT)).splitlines()
    assert table[0].split() == ["NAME", "RESULT", "STATE", "HOST", "IP", "REASON", "MESSAGE"]
    assert table[1].split()[:3] == ["a", "OK", "PENDING"]
    assert table[2].split()[:6] == ["b", "RESOURCE_EXHAUSTED", "-", "-", "-", "QUOTA_EXCEEDED"]
    assert "2 used + 1 > 2" in table[2]
    doc = yaml.safe_load(printed("yaml", lambda p: p.one(answer, views.CREATE_RESULT)))
    assert doc["results"][1] == {"vm": {"name": f"{PARENT}/vms/b"}, "code": 8, "reason": "QUOTA_EXCEEDED",
                                 "message": "project quota vms: 2 used + 1 > 2"}
    pending = vm_set(vm_pb2.VmSet.PENDING, DOES_NOT_FIT)
    row = printed("table", lambda p: p.one(pending, views.VM_SET)).splitlines()
    assert row[0].split() == ["NAME", "STATE", "VMS", "AGE", "DEADLINE", "REASON"]
    assert row[1].split() == ["cp", "PENDING", "3", "-", "-", "SetDoesNotFit"]
    detail = printed("table", lambda p: p.detail(pending, views.VM_SET))
    assert "Members:" in detail and "cp-3" in detail and "3 members, room for 2" in detail


def test_create_many_against_a_server_prints_outcomes_and_exits_1_on_a_refusal(server, tmp_path, capsys) -> None:
    endpoint, vms = server
    (tmp_path / "ud.yaml").write_text(SECRET)
    (tmp_path / "c.yaml").write_text("defaults: {flavor: small, image: ubuntu}\n"
                                     "vms: [{name: a, user_data_file: ud.yaml}, {name: bad-1}]\n")
    from quanta.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["vm", "create-many", "-f", str(tmp_path / "c.yaml"), "--endpoint", endpoint, "--token", "t",
              "--tenant", "t", "--project", "p"])
    out, err = capsys.readouterr()
    assert exited.value.code == 1 and "1 VM of 2 refused" in err
    assert "QUOTA_EXCEEDED" in out and "bad-1" in out and "marker-9c2e" not in out + err
    sent = vms.requests[-1]
    assert [r.vm_id for r in sent.requests] == ["a", "bad-1"] and sent.requests[0].vm.bootstrap.user_data
    with pytest.raises(SystemExit) as exited:
        main(["vm", "create-many", "-f", str(tmp_path / "nope.yaml"), "--endpoint", endpoint])
    assert exited.value.code == 2 and "cannot read" in capsys.readouterr().err
    for flags in (["--deadline", "5m"], ["--set-id", "s"], ["--request-id", "r"]):
        with pytest.raises(SystemExit) as exited:
            main(["vm", "create-many", "-f", str(tmp_path / "c.yaml"), *flags])
        assert exited.value.code == 2 and "--all-or-nothing" in capsys.readouterr().err
    (tmp_path / "r.yaml").write_text("vms: [{name: a, flavor: s, image: u, request_id: r-a}]\n")
    with pytest.raises(SystemExit) as exited:
        main(["vm", "create-many", "-f", str(tmp_path / "r.yaml"), "--all-or-nothing", "--endpoint", endpoint])
    assert exited.value.code == 2 and "a set's members take none" in capsys.readouterr().err
    (tmp_path / "e.yaml").write_text("vms: [{name: a, flavor: s, image: u, restart_policy: sometimes}]\n")
    with pytest.raises(SystemExit) as exited:
        main(["vm", "create-many", "-f", str(tmp_path / "e.yaml"), "--endpoint", endpoint])
    assert exited.value.code == 2 and "vms[0] (a)" in capsys.readouterr().err


class Lines:
    """A ProgressLine stand-in: what a --wait would print."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def update(self, text: str, *, completed: int | None = None, total: int | None = None) -> None:
        self.lines.append(text)


class Watching:
    """The two calls wait_for_members makes: one watch (``events``) and GetVmSet."""

    def __init__(self, events: list[vm_pb2.VmEvent], sets: list[vm_pb2.VmSet] = ()) -> None:
        self.events = events
        self.sets = list(sets)

    def watch_vms(self, *, timeout: float | None = None) -> Iterator[vm_pb2.VmEvent]:
        return iter(self.events)

    def get_vm_set(self, name: str) -> vm_pb2.VmSet:
        return self.sets.pop(0)


def test_the_cli_wait_counts_placed_and_running_and_prints_only_changes() -> None:
    from quanta.cli.waiting import running, wait_for_members

    lines = Lines()
    first = [vm(f"cp-{i}") for i in (1, 2, 3)]
    events = ([ev(v, common_pb2.ADDED) for v in first] + [BOOKMARK] + [ev(v) for v in first]  # nothing new
              + [ev(vm(f"cp-{i}", vm_pb2.Vm.SCHEDULED, f"h{i}")) for i in (1, 2, 3)]
              + [ev(vm(f"cp-{i}", vm_pb2.Vm.RUNNING, f"h{i}", (f"10.0.0.{i}",))) for i in (1, 2, 3)])
    final = wait_for_members(Watching(events), first, running, set_name=SET, timeout_s=5,
                             progress=lines)  # type: ignore[arg-type]
    assert [v.state for v in final.values() if v is not None] == [vm_pb2.Vm.RUNNING] * 3
    assert len(lines.lines) == len(set(lines.lines)) == 9
    assert lines.lines[0] == "0/3 placed, 0/3 running; vms/cp-1: PENDING"
    assert "3/3 placed, 0/3 running; vms/cp-3: SCHEDULED" in lines.lines
    assert lines.lines[-1] == "3/3 placed, 3/3 running; vms/cp-3: RUNNING"


def test_the_cli_wait_ends_when_the_set_failed() -> None:
    from quanta.cli.errors import CliError
    from quanta.cli.waiting import running, wait_for_members

    first = [vm(f"cp-{i}") for i in (1, 2, 3)]
    events = [ev(v, common_pb2.ADDED) for v in first] + [BOOKMARK] + [ev(first[0], common_pb2.DELETED)]
    with pytest.raises(CliError, match=r"vmSets/cp is FAILED \(DeadlineExceeded: not placed within 10m\)"):
        wait_for_members(Watching(events, [vm_set(vm_pb2.VmSet.FAILED, EXPIRED)]), first, running,
                         set_name=SET, timeout_s=5, progress=Lines())  # type: ignore[arg-type]


def test_a_members_detail_names_its_set() -> None:
    member = vm("cp-1", vm_pb2.Vm.RUNNING, "h1", vm_set=SET)
    assert "Set:" in printed("table", lambda p: p.detail(member, views.VM)) and "vm set get cp" in printed(
        "table", lambda p: p.detail(member, views.VM))
    lone = printed("table", lambda p: p.detail(vm("web-1"), views.VM))
    assert [line.split() for line in lone.splitlines() if line.startswith("Set:")] == [["Set:", "-"]]
