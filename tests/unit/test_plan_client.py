"""Plans, client side, without a real system: the PlanVms the SDK builds (each VM as
create_vms builds a set's member, a hold as a Duration), CreateVms bound to a plan
(ALL_OR_NOTHING only), how an answer is read (hosts as Vm.host names them, unlimited
quota as None, the hold's end), the retry rule (a plan is retried on UNAVAILABLE:
without a hold like a read, with one resending the same request_id, so the server
answers a retry with the first attempt's hold) in both clients against an in-process
server, the views, and ``vm create-many --plan``, ``--hold`` and ``--from-plan``
against that server."""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime
import io
import json
import threading
from collections.abc import Iterator

import grpc
import pytest
import yaml
from google.protobuf.timestamp_pb2 import Timestamp

import quanta
import quanta.aio
from controlplane.api import errors as api
from controlplane.gen.quanta.v1 import tenancy_pb2, vm_pb2, vm_pb2_grpc
from quanta import calls, errors
from quanta.cli import views
from quanta.cli.output import Printer
from quanta.outcomes import UNLIMITED, PlannedVms

PARENT = "tenants/t/projects/p"
BUILT = calls.Calls("t", "p", 10.0)
SECRET = "#cloud-config\nruncmd: [echo marker-71d0]\n"
CP = [{"vm_id": f"cp-{i}", "flavor": "small", "image": "ubuntu", "anti_affinity_group": "cp",
       "anti_affinity_scope": "ZONE"} for i in (1, 2, 3)]
EXPIRE = 1_900_000_060


# --- what is sent ---------------------------------------------------------------------------

def test_a_plan_sends_each_vm_as_a_sets_member_and_the_hold() -> None:
    call = BUILT.plan_vms([*CP, {"vm_id": "w-1", "flavor": "small", "image": "ubuntu", "user_data": SECRET}],
                          hold=60)
    r = call.request
    member = BUILT.create_vms([*CP], all_or_nothing=True).request.requests[0]
    assert call.method == "PlanVms" and r.parent == PARENT and len(r.requests) == 4
    assert r.requests[0] == member  # built as create_vms builds a set's member: no request_id, no parent
    assert [m.request_id for m in r.requests] == ["", "", "", ""] and r.requests[3].vm.bootstrap.user_data
    assert (r.hold.seconds, r.hold.nanos) == (60, 0)
    assert len(r.request_id) == 32 and BUILT.plan_vms(CP, hold=60).request.request_id != r.request_id  # per call
    assert BUILT.plan_vms(CP, hold=60, request_id="mine").request.request_id == "mine"
    for unheld in (BUILT.plan_vms(CP), BUILT.plan_vms(CP, hold=0, request_id="mine")):
        assert not unheld.request.HasField("hold") and not unheld.request.request_id  # ignored without a hold
    assert "marker-71d0" not in repr(call)


def test_a_plan_is_retried_with_or_without_a_hold_by_the_channel() -> None:
    # Without a hold it writes nothing; with one, its request_id makes it idempotent.
    assert "PlanVms" in calls.RETRIED[calls.VMS]
    assert BUILT.plan_vms(CP, hold=30).request.request_id


def test_bad_plans_are_refused_before_anything_is_sent() -> None:
    with pytest.raises(ValueError, match=r"vms\[1\]: give a vm_id"):
        BUILT.plan_vms([CP[0], {"flavor": "small", "image": "u"}])
    with pytest.raises(ValueError, match=r"vms\[0\] \(a\): request_id: the set's request_id covers"):
        BUILT.plan_vms([{"vm_id": "a", "flavor": "s", "image": "u", "request_id": "x"}])
    with pytest.raises(TypeError, match=r"vms\[0\] \(a\): unknown field\(s\) flavour"):
        BUILT.plan_vms([{"vm_id": "a", "flavour": "s", "image": "u"}])
    with pytest.raises(ValueError, match="hold must be 0 or more"):
        BUILT.plan_vms(CP, hold=-1)
    with pytest.raises(ValueError, match="plan_vms: give at least one VM"):
        BUILT.plan_vms([])


def test_create_vms_with_a_plan_is_all_or_nothing_only() -> None:
    for plan in ("plan-1", "plans/plan-1", f"{PARENT}/plans/plan-1"):
        r = BUILT.create_vms(CP, all_or_nothing=True, plan=plan).request
        assert r.plan == f"{PARENT}/plans/plan-1" and r.mode == vm_pb2.CreateVmsRequest.ALL_OR_NOTHING
    assert BUILT.create_vms(CP, all_or_nothing=True).request.plan == ""
    with pytest.raises(ValueError, match="plan are an all_or_nothing set's"):
        BUILT.create_vms(CP, plan="plan-1")


class Unavailable(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code


# --- the answer -------------------------------------------------------------------------------

def placement(vm_id: str, host: str = "", **kwargs) -> vm_pb2.VmPlacement:
    return vm_pb2.VmPlacement(vm=f"{PARENT}/vms/{vm_id}", host=f"hosts/{host}" if host else "", **kwargs)


FITS = vm_pb2.PlanVmsResponse(
    placements=[placement("cp-1", "sim-00000"), placement("cp-2", "sim-00001"), placement("cp-3", "sim-00002")],
    fits=True, quota_headroom=tenancy_pb2.ResourceUsage(vms=7, vcpus=UNLIMITED, memory_mib=UNLIMITED,
                                                        disk_gib=UNLIMITED))
HELD = vm_pb2.PlanVmsResponse()
HELD.CopyFrom(FITS)
HELD.plan = f"{PARENT}/plans/plan-0a1b"
HELD.expire_time.CopyFrom(Timestamp(seconds=EXPIRE, nanos=471_000_000))
NO_ROOM = vm_pb2.PlanVmsResponse(
    placements=[placement("cp-1", "sim-00000"), placement("cp-2", "sim-00001"),
                placement("cp-3", filtered={"ZoneAntiAffinity": 2}, message="0/2 hosts fit: 2 ZoneAntiAffinity")],
    fits=False, quota_headroom=tenancy_pb2.ResourceUsage(vms=-1, vcpus=5, memory_mib=UNLIMITED,
                                                         disk_gib=UNLIMITED))


def test_an_answer_is_read_with_host_ids_and_unlimited_as_none() -> None:
    planned = PlannedVms.of(FITS)
    assert planned.fits and not planned.held and planned.plan == "" and planned.expire_time is None
    assert planned.hosts == {f"{PARENT}/vms/cp-{i}": f"sim-0000{i - 1}" for i in (1, 2, 3)}  # as Vm.host
    assert dict(planned.quota_headroom) == {"vms": 7, "vcpus": None, "memory_mib": None, "disk_gib": None}
    assert planned.quota_short == {} and planned.unplaced == [] and len(planned) == 3
    held = PlannedVms.of(HELD)
    assert held.held and held.plan == f"{PARENT}/plans/plan-0a1b"
    assert held.expire_time == datetime.datetime.fromtimestamp(EXPIRE + 0.471, datetime.UTC)
    short = PlannedVms.of(NO_ROOM)
    assert not short.fits and [p.name.rsplit("/", 1)[-1] for p in short.unplaced] == ["cp-3"]
    assert dict(short.unplaced[0].filtered) == {"ZoneAntiAffinity": 2} and not short.unplaced[0].placed
    assert short.quota_short == {"vms": 1}


# --- the views ----------------------------------------------------------------------------------

def printed(output: str, call) -> str:
    out, err = io.StringIO(), io.StringIO()
    call(Printer(output, out=out, err=err))
    return out.getvalue()


def test_a_plan_is_shown_as_a_table_with_why_not_and_a_summary() -> None:
    short = PlannedVms.of(NO_ROOM)
    table = printed("table", lambda p: p.many(short.placements, views.PLACEMENT)).splitlines()
    assert table[0].split() == ["NAME", "HOST", "WHY", "NOT"]
    assert table[1].split() == ["cp-1", "sim-00000", "-"]
    assert table[3].split()[:2] == ["cp-3", "-"] and "0/2 hosts fit: 2 ZoneAntiAffinity" in table[3]
    wide = printed("wide", lambda p: p.many(short.placements, views.PLACEMENT)).splitlines()
    assert wide[0].split()[-1] == "FILTERED" and wide[3].endswith("2 ZoneAntiAffinity")
    assert views.plan_summary(short) == [
        "fits: no (1 VM of 3 fits no host; cp-3: 0/2 hosts fit: 2 ZoneAntiAffinity; quota short by 1 vms)",
        "quota headroom after the set: vms -1 (short by 1), vcpus 5, memory_mib unlimited, disk_gib unlimited"]
    assert views.plan_summary(PlannedVms.of(HELD), now_s=EXPIRE - 45) == [
        "fits: yes (3 VMs on 3 hosts)",
        "quota headroom after the set: vms 7, vcpus unlimited, memory_mib unlimited, disk_gib unlimited",
        "plans/plan-0a1b: held until 2030-03-17T17:47:40Z (in 45s)"]
    raced = vm_pb2.PlanVmsResponse()
    raced.CopyFrom(FITS)
    raced.fits = False
    for p in raced.placements:
        p.message = "the planned hosts changed 3 times while holding their room; plan again"
    assert views.why_not(PlannedVms.of(raced)) == p.message
    doc = yaml.safe_load(printed("yaml", lambda p: p.one(HELD, views.PLACEMENT)))
    assert doc["plan"] == f"{PARENT}/plans/plan-0a1b" and doc["placements"][0]["host"] == "hosts/sim-00000"
    assert doc["quota_headroom"]["vcpus"] == str(UNLIMITED)  # the API's document, int64 as a string


# --- both clients and the CLI against an in-process server --------------------------------------

class Vms(vm_pb2_grpc.VmServiceServicer):
    """PlanVms: fails UNAVAILABLE ``failures`` times, then answers NO_ROOM when a VM
    id starts with "bad", HELD with a hold, FITS otherwise. CreateVms: records."""

    def __init__(self) -> None:
        self.failures = 0
        self.plans: list[vm_pb2.PlanVmsRequest] = []
        self.creates: list[vm_pb2.CreateVmsRequest] = []
        self.lock = threading.Lock()

    def PlanVms(self, request, context):  # noqa: N802 - gRPC's method name
        with self.lock:
            self.plans.append(request)
            fail = self.failures > 0
            self.failures -= 1
        if fail:
            context.abort_with_status(api.unavailable("etcd is down", retry_delay_s=0.01).to_status())
        if any(r.vm_id.startswith("bad") for r in request.requests):
            return NO_ROOM
        return HELD if request.hold.seconds else FITS

    def CreateVms(self, request, context):  # noqa: N802
        with self.lock:
            self.creates.append(request)
        if request.plan.endswith("/gone"):
            context.abort_with_status(api.failed_precondition(
                f"the hold of plan {request.plan} ended (or never was); plan again", "PLAN_EXPIRED").to_status())
        vms = [vm_pb2.Vm(name=f"{request.parent}/vms/{r.vm_id}", state=vm_pb2.Vm.PENDING) for r in request.requests]
        return vm_pb2.CreateVmsResponse(
            results=[vm_pb2.CreateVmsResult(vm=v) for v in vms],
            set=vm_pb2.VmSet(name=f"{request.parent}/vmSets/s", vms=[v.name for v in vms], state=vm_pb2.VmSet.PENDING))


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


def test_both_clients_retry_a_plan_and_a_held_one_with_the_same_request_id(server) -> None:
    endpoint, vms = server
    vms.failures = 2
    with quanta.Client(endpoint, token="t", tenant="t", project="p") as client:
        planned = client.plan_vms(CP)
        assert planned.fits and len(vms.plans) == 3 and all(r == vms.plans[0] for r in vms.plans)
        vms.failures, vms.plans = 2, []
        held = client.plan_vms(CP, hold=60)
        assert held.plan == f"{PARENT}/plans/plan-0a1b" and len(vms.plans) == 3
        assert vms.plans[0].request_id and all(r == vms.plans[0] for r in vms.plans)  # the same request_id resent
        vms.failures, vms.plans = 10, []
        with pytest.raises(errors.Unavailable):
            client.plan_vms(CP)
        assert len(vms.plans) == calls.RETRY_ATTEMPTS

    async def run() -> tuple[PlannedVms, int, PlannedVms]:
        async with quanta.aio.Client(endpoint, token="t", tenant="t", project="p") as client:
            vms.failures, vms.plans = 2, []
            first = await client.plan_vms(CP)
            attempts = len(vms.plans)
            vms.failures, vms.plans = 2, []
            held = await client.plan_vms(CP, hold=60)
            assert len(vms.plans) == 3 and vms.plans[0].request_id and all(r == vms.plans[0] for r in vms.plans)
            return first, attempts, held

    first, attempts, held = asyncio.run(run())
    assert first.fits and attempts == 3 and held.plan == f"{PARENT}/plans/plan-0a1b"


def cli(endpoint: str, *args: str) -> list[str]:
    return ["vm", "create-many", *args, "--endpoint", endpoint, "--token", "t", "--tenant", "t", "--project", "p"]


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    from quanta.cli import main

    code = 0
    try:
        main(argv)
    except SystemExit as exited:
        code = int(exited.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_plan_hold_and_create_from_the_plan(server, tmp_path, capsys) -> None:
    endpoint, vms = server
    (tmp_path / "ud.yaml").write_text(SECRET)
    path = tmp_path / "c.yaml"
    path.write_text("defaults: {flavor: small, image: ubuntu, user_data_file: ud.yaml}\n"
                    "vms: [{name: cp, count: 3, anti_affinity_group: cp, anti_affinity_scope: ZONE}]\n")
    code, out, err = run_cli(cli(endpoint, "-f", str(path), "--plan"), capsys)
    assert code == 0, err
    assert out.splitlines()[1].split() == ["cp-1", "sim-00000", "-"] and "fits: yes (3 VMs on 3 hosts)" in out
    assert not vms.plans[-1].HasField("hold") and not vms.creates  # nothing created
    assert "marker-71d0" not in out + err and vms.plans[-1].requests[0].vm.bootstrap.user_data

    code, out, err = run_cli(cli(endpoint, "-f", str(path), "--plan", "--hold", "1m"), capsys)
    assert code == 0 and vms.plans[-1].hold.seconds == 60
    assert "plans/plan-0a1b: held until 2030-03-17T17:47:40Z" in out and "--from-plan plan-0a1b" in err
    code, out, _ = run_cli(cli(endpoint, "-f", str(path), "--plan", "--hold", "60s", "-o", "name"), capsys)
    assert (code, out) == (0, "plans/plan-0a1b\n")
    code, out, _ = run_cli(cli(endpoint, "-f", str(path), "--plan", "-o", "json"), capsys)
    assert code == 0 and json.loads(out)["fits"] is True

    code, out, err = run_cli(cli(endpoint, "-f", str(path), "--from-plan", "plan-0a1b"), capsys)
    sent = vms.creates[-1]
    assert code == 0, err
    assert sent.mode == vm_pb2.CreateVmsRequest.ALL_OR_NOTHING and sent.plan == f"{PARENT}/plans/plan-0a1b"
    assert [r.vm_id for r in sent.requests] == ["cp-1", "cp-2", "cp-3"] and sent.request_id
    code, out, err = run_cli(cli(endpoint, "-f", str(path), "--all-or-nothing", "--from-plan", "gone"), capsys)
    assert code == 1 and "FAILED_PRECONDITION: PLAN_EXPIRED" in err and "plan again" in err


def test_a_plan_that_does_not_fit_shows_why_and_exits_1(server, tmp_path, capsys) -> None:
    endpoint, vms = server
    path = tmp_path / "c.yaml"
    path.write_text("vms: [{name: bad, count: 3, flavor: small, image: ubuntu}]\n")
    for extra in ((), ("--hold", "60s")):
        code, out, err = run_cli(cli(endpoint, "-f", str(path), "--plan", *extra), capsys)
        assert code == 1
        assert "0/2 hosts fit: 2 ZoneAntiAffinity" in out and "fits: no" in out
        assert "error: the set does not fit: 1 VM of 3 fits no host; cp-3: 0/2 hosts fit" in err
        assert "quota short by 1 vms" in err and (("nothing was held" in err) == bool(extra))
    code, out, err = run_cli(cli(endpoint, "-f", str(path), "--plan", "-o", "yaml"), capsys)
    doc = yaml.safe_load(out)  # the API's document: fits, false, is left out as every default value is
    assert code == 1 and "fits" not in doc and doc["placements"][2]["filtered"] == {"ZoneAntiAffinity": 2}


@pytest.mark.parametrize(("flags", "says"), [
    (["--hold", "60s"], "--hold holds the room a --plan finds"),
    (["--plan", "--wait"], "--plan creates nothing: leave out --wait"),
    (["--plan", "--validate-only", "--set-id", "s"], "leave out --validate-only, --set-id"),
    (["--plan", "--from-plan", "p"], "leave out --from-plan"),
    (["--plan", "--hold", "soon"], "expected a duration"),
])
def test_plan_flags_that_do_not_go_together(flags: list[str], says: str, tmp_path, capsys) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("vms: [{name: a, flavor: s, image: u}]\n")
    code, _out, err = run_cli(["vm", "create-many", "-f", str(path), *flags], capsys)
    assert code == 2 and says in err


def test_a_plans_members_take_no_request_id(server, tmp_path, capsys) -> None:
    endpoint, vms = server
    path = tmp_path / "r.yaml"
    path.write_text("vms: [{name: a, flavor: s, image: u, request_id: r-a}]\n")
    code, _out, err = run_cli(cli(endpoint, "-f", str(path), "--plan"), capsys)
    assert code == 2 and "a set's members take none; a plan's neither" in err and not vms.plans
