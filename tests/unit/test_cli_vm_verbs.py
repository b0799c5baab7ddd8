"""``quanta vm start|stop|restart|resize|update`` and the new ``create`` flags,
without a server: argument parsing (durations, K=V, refused combinations), the
views of power, addresses and bootstrap data, the --wait goals, one watch
following several VMs, and errors in the user's words."""

from __future__ import annotations

import argparse
import io
import json
from collections.abc import Iterable, Iterator

import grpc
import pytest
import yaml

from controlplane.api.errors import ApiError, invalid_argument
from controlplane.gen.quanta.v1 import common_pb2, vm_pb2
from quanta.cli import resources, views
from quanta.cli.completion import script
from quanta.cli.errors import CliError, WaitTimeout, describe
from quanta.cli.output import Printer
from quanta.cli.waiting import as_desired, follow_vms, running, stopped, wait_for_vms

NAME = "tenants/t/projects/p/vms/"
WAITING = common_pb2.Condition(type="AddressAssigned", status="False", reason="WaitingForAddress",
                               message="no address yet")
SHA = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"


def vm(vm_id: str, state: int = vm_pb2.Vm.RUNNING, ips: tuple[str, ...] = (), **kwargs) -> vm_pb2.Vm:
    return vm_pb2.Vm(name=NAME + vm_id, flavor="small", image="ubuntu", state=state, host="sim-00001",
                     addresses=[vm_pb2.Address(ip=ip, family=vm_pb2.Address.IPV4, mac="00:50:56:00:00:01",
                                               network="VM Network") for ip in ips], **kwargs)


def event(v: vm_pb2.Vm, kind: int = common_pb2.MODIFIED) -> vm_pb2.VmEvent:
    return vm_pb2.VmEvent(type=kind, vm=v)


BOOKMARK = vm_pb2.VmEvent(type=common_pb2.BOOKMARK)


def printed(output: str, call) -> str:
    out, err = io.StringIO(), io.StringIO()
    call(Printer(output, out=out, err=err))
    return out.getvalue()


# --- parsing --------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [
    ("30", 30.0), ("2.5", 2.5), ("30s", 30.0), ("2m", 120.0), ("1m30s", 90.0), ("500ms", 0.5), ("1h", 3600.0),
])
def test_durations(text: str, seconds: float) -> None:
    assert resources.duration(text) == seconds


@pytest.mark.parametrize("text", ["", "s", "30x", "1m 30s", "-", "m30"])
def test_bad_durations_are_argument_errors(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="duration"):
        resources.duration(text)


def test_key_value_and_merged_labels() -> None:
    assert resources.key_value("a=b=c") == ("a", "b=c") and resources.key_value("a=") == ("a", "")
    for bad in ("a", "=b"):
        with pytest.raises(argparse.ArgumentTypeError, match="KEY=VALUE"):
            resources.key_value(bad)
    assert resources.merged_labels({"a": "1", "b": "2"}, [("c", "3"), ("a", "9")], ["b", "missing"]) == {
        "a": "9", "c": "3"}


def parse(argv: list[str]) -> argparse.Namespace:
    parser = resources.fill_parser("vm", argparse.ArgumentParser(prog="quanta vm",
                                                                 parents=[resources.common_options(False)]))
    return parser.parse_args(argv)


def test_the_new_verbs_parse() -> None:
    args = parse(["stop", "a", "vms/b", "--hard", "--grace", "1m", "--wait", "--timeout", "5"])
    assert (args.names, args.hard, args.grace, args.wait, args.timeout) == (["a", "vms/b"], True, 60.0, True, 5.0)
    args = parse(["delete", "a", "vms/b", "--wait"])
    assert (args.names, args.wait, args.etag) == (["a", "vms/b"], True, "")
    args = parse(["restart", "a"])
    assert (args.hard, args.grace, args.etag) == (False, None, "")
    args = parse(["resize", "a", "large", "--wait"])
    assert (args.name, args.flavor, args.wait) == ("a", "large", True)
    args = parse(["update", "a", "--label", "k=v", "--remove-label", "old", "--flavor", "medium"])
    assert (args.label, args.remove_label, args.flavor) == ([("k", "v")], ["old"], "medium")
    args = parse(["create", "a", "--flavor", "small", "--image", "ubuntu", "--user-data", "ud.yaml",
                  "--metadata", "role=worker", "--metadata", "local-hostname=n1", "--ssh-key", "id.pub",
                  "--hostname", "n1", "--stopped", "--power-policy", "KEEP_RUNNING"])
    assert args.metadata == [("role", "worker"), ("local-hostname", "n1")] and args.stopped
    assert (args.user_data, args.ignition, args.ssh_key, args.power_policy) == (
        "ud.yaml", None, ["id.pub"], "KEEP_RUNNING")


@pytest.mark.parametrize("argv", [
    ["create", "a", "--flavor", "s", "--image", "u", "--user-data", "x", "--ignition", "y"],
    ["create", "a", "--flavor", "s", "--image", "u", "--metadata", "novalue"],
    ["stop", "a", "--grace", "soon"],
    ["stop"],
    ["start", "a", "b", "--etag", "e"],
    ["delete", "a", "b", "--etag", "e"],
    ["delete"],
    ["update", "a"],
    ["update", "a", "--label", "k=v", "--remove-label", "k"],
    ["resize", "a"],
])
def test_refused_combinations_are_usage_errors(argv: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as caught:
        resources.main("vm", argv)  # refused before any client is made
    assert caught.value.code == 2 and "error:" in capsys.readouterr().err


def test_files_are_read_and_an_unreadable_one_is_named_not_shown(tmp_path) -> None:
    keys = tmp_path / "keys.pub"
    keys.write_text("# mine\nssh-ed25519 AAAA one\n\n  ssh-rsa BBBB two  \n")
    assert resources.ssh_keys([str(keys)]) == ["ssh-ed25519 AAAA one", "ssh-rsa BBBB two"]
    with pytest.raises(CliError) as caught:
        resources.read_input(str(tmp_path / "nope.yaml"), "--user-data")
    assert caught.value.exit_code == 2 and str(caught.value).startswith("--user-data: cannot read ")


def test_bootstrap_violations_name_the_flags() -> None:
    err = invalid_argument([("vm.bootstrap.user_data", "is 70000 bytes; at most 65536"),
                            ('vm.bootstrap.metadata.values["bad key"]', "bad key"), ("grace", "at most 1h")])
    assert describe(err, "127.0.0.1:1").splitlines()[1:] == [
        "  --user-data/--ignition: is 70000 bytes; at most 65536", "  --metadata: bad key", "  --grace: at most 1h"]


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_knows_the_new_verbs_and_flags(shell: str) -> None:
    text = script(shell)
    for word in ("restart", "resize", "--grace", "--user-data", "--ignition", "--remove-label", "--stopped"):
        assert word in text, word


# --- views ----------------------------------------------------------------------------


def test_the_list_shows_the_first_ip_and_wide_every_address() -> None:
    vms = [vm("a", ips=("10.0.0.5", "fd00::5")), vm("b", vm_pb2.Vm.STOPPED, power=vm_pb2.Vm.POWERED_OFF)]
    lines = printed("table", lambda p: p.many(vms, views.VM)).splitlines()
    assert lines[0].split()[5] == "IP" and lines[1].split()[5] == "10.0.0.5" and lines[2].split()[5] == "-"
    wide = printed("wide", lambda p: p.many(vms, views.VM)).splitlines()
    header = wide[0].split()
    assert "IP" not in header and header[5] == "ADDRESSES" and wide[1].split()[5] == "10.0.0.5,fd00::5"
    assert wide[2].split()[header.index("POWER")] == "off"


@pytest.mark.parametrize(("state", "power", "shown"), [
    (vm_pb2.Vm.RUNNING, vm_pb2.Vm.POWER_UNSPECIFIED, "on"),
    (vm_pb2.Vm.STOPPED, vm_pb2.Vm.POWERED_OFF, "off"),
    (vm_pb2.Vm.RUNNING, vm_pb2.Vm.POWERED_OFF, "off (desired; the VM is RUNNING)"),
    (vm_pb2.Vm.STOPPED, vm_pb2.Vm.POWERED_ON, "on (desired; the VM is STOPPED)"),
    (vm_pb2.Vm.PENDING, vm_pb2.Vm.POWERED_OFF, "off"),
])
def test_power_is_the_desired_one_and_says_when_the_vm_differs(state: int, power: int, shown: str) -> None:
    assert views.power(vm("a", state, power=power)) == shown


def test_get_shows_addresses_bootstrap_summary_and_conditions() -> None:
    subject = vm("a", ips=("10.0.0.5",), power=vm_pb2.Vm.POWERED_ON, power_policy=vm_pb2.Vm.KEEP_RUNNING,
                 bootstrap=vm_pb2.Bootstrap(format=vm_pb2.Bootstrap.CLOUD_INIT, size_bytes=4096, sha256=SHA,
                                            state=vm_pb2.Bootstrap.CLEARED),
                 conditions=[common_pb2.Condition(type="Bootstrapped", status="True", reason="BootstrapCleared")])
    text = printed("table", lambda p: p.detail(subject, views.VM))
    lines = [line.strip() for line in text.splitlines()]
    assert "Power:           on" in lines and "Power policy:    KEEP_RUNNING" in lines
    addresses = lines.index("Addresses:")
    assert lines[addresses + 1].split() == ["IP", "FAMILY", "MAC", "NETWORK"]
    assert lines[addresses + 2].split() == ["10.0.0.5", "IPv4", "00:50:56:00:00:01", "VM", "Network"]
    assert "Bootstrap data (never shown: its summary only):" in lines
    for field in ("Format:   CLOUD_INIT", "Size:     4.0 KiB (4096 B)", f"SHA-256:  {SHA}", "State:    CLEARED"):
        assert field in lines, field
    assert any(line.split()[:3] == ["Bootstrapped", "True", "BootstrapCleared"] for line in lines)
    document = json.loads(printed("json", lambda p: p.detail(subject, views.VM)))
    assert document["bootstrap"] == {"format": "CLOUD_INIT", "size_bytes": "4096", "sha256": SHA, "state": "CLEARED"}
    assert document["addresses"] == [{"ip": "10.0.0.5", "mac": "00:50:56:00:00:01", "network": "VM Network",
                                      "family": "IPV4"}]
    waiting = printed("table", lambda p: p.detail(vm("b", conditions=[WAITING]), views.VM))
    assert "none yet (waiting for the guest to report one)" in waiting and "Bootstrap data" not in waiting
    assert views.bootstrap_summary(subject) == "CLOUD_INIT, 4.0 KiB (4096 B), CLEARED"
    assert views.bootstrap_summary(vm("c")) == "-" and views.size(10) == "10 B"


# --- waiting --------------------------------------------------------------------------


def test_the_wait_goals() -> None:
    assert running(vm("a")) and running(vm("a", ips=("10.0.0.1",)))
    assert not running(vm("a", conditions=[WAITING])) and not running(vm("a", vm_pb2.Vm.STOPPED))
    assert stopped(vm("a", vm_pb2.Vm.STOPPED)) and not stopped(vm("a"))
    # In its desired state only once the agent made the latest desired state true.
    assert as_desired(vm("a")) and not as_desired(vm("a", reconciling=True))
    assert not as_desired(vm("a", conditions=[WAITING]))
    assert not as_desired(vm("a", power=vm_pb2.Vm.POWERED_OFF))  # still RUNNING
    assert as_desired(vm("a", vm_pb2.Vm.STOPPED, power=vm_pb2.Vm.POWERED_OFF))
    assert not as_desired(vm("a", vm_pb2.Vm.STOPPED, power=vm_pb2.Vm.POWERED_OFF, reconciling=True))


def test_follow_vms_reports_each_of_several_and_those_gone() -> None:
    events = [event(vm("a", vm_pb2.Vm.RUNNING), common_pb2.ADDED), event(vm("x"), common_pb2.ADDED), BOOKMARK,
              event(vm("a", vm_pb2.Vm.STOPPED)), event(vm("a"), common_pb2.DELETED)]
    seen = [(name.rsplit("/", 1)[-1], None if v is None else v.state)
            for name, v in follow_vms(events, [NAME + "a", NAME + "b"])]
    assert seen == [("a", vm_pb2.Vm.RUNNING), ("b", None), ("a", vm_pb2.Vm.STOPPED), ("a", None)]


class Watching:
    """A client whose watch plays ``events`` (then ends, as a watch at its deadline)."""

    def __init__(self, events: Iterable[vm_pb2.VmEvent]) -> None:
        self.events = list(events)
        self.watches = 0

    def watch_vms(self, *, timeout: float) -> Iterator[vm_pb2.VmEvent]:
        self.watches += 1
        return iter(self.events)


def test_one_watch_follows_several_vms_to_their_goal() -> None:
    client = Watching([event(vm("a"), common_pb2.ADDED), event(vm("b"), common_pb2.ADDED), BOOKMARK,
                       event(vm("a", vm_pb2.Vm.STOPPED)), event(vm("b", vm_pb2.Vm.ERROR))])
    out = io.StringIO()
    with Printer("table", out=out, err=io.StringIO()).progress(total=2) as progress:
        final = wait_for_vms(client, [vm("a"), vm("b")], stopped, goal="the stop",  # type: ignore[arg-type]
                             timeout_s=30, progress=progress)
    assert {n.rsplit("/", 1)[-1]: v.state for n, v in final.items() if v is not None} == {
        "a": vm_pb2.Vm.STOPPED, "b": vm_pb2.Vm.ERROR}  # ERROR ends the wait too (the caller reports it)
    assert client.watches == 1 and out.getvalue().splitlines()[-1] == "2/2 done; vms/b: ERROR"


def test_a_wait_for_several_that_times_out_names_one_and_counts_the_rest() -> None:
    client = Watching([event(vm("a", conditions=[WAITING]), common_pb2.ADDED), event(vm("b"), common_pb2.ADDED),
                       event(vm("c"), common_pb2.ADDED), BOOKMARK])
    with Printer("table", out=io.StringIO(), err=io.StringIO()).progress() as progress, \
            pytest.raises(WaitTimeout) as caught:
        wait_for_vms(client, [vm("a"), vm("b"), vm("c")], stopped, goal="the stop",  # type: ignore[arg-type]
                     timeout_s=0.2, progress=progress)
    assert str(caught.value) == ("vms/a (and 2 other VMs) is still RUNNING after 0.2 s: "
                                 "WaitingForAddress: no address yet; the stop goes on")


def test_one_vm_of_several_failing_is_said_and_the_others_go_on(capsys) -> None:
    class Client:
        endpoint, context = "127.0.0.1:1", None

        def __init__(self) -> None:
            self.called: list[str] = []

        def stop(self, name: str) -> vm_pb2.Vm:
            self.called.append(name)
            if name == "b":
                raise ApiError(grpc.StatusCode.FAILED_PRECONDITION, "VM_PENDING", "vm b is not placed yet")
            return vm(name, vm_pb2.Vm.RUNNING)

    client = Client()
    vms, failures = resources._each(client, ["a", "b", "c"], client.stop)  # type: ignore[arg-type]
    assert [v.name for v in vms] == [NAME + "a", NAME + "c"] and failures == ["b"] and client.called == ["a", "b", "c"]
    assert capsys.readouterr().err == "error: vms/b: FAILED_PRECONDITION: VM_PENDING: vm b is not placed yet\n"
    with pytest.raises(ApiError):  # one VM: its error ends the command as any other
        resources._each(client, ["b"], client.stop)  # type: ignore[arg-type]


@pytest.mark.parametrize(("state", "conditions", "reason"), [
    (vm_pb2.Vm.RUNNING, [("AddressAssigned", "True", "AddressReported"), ("Bootstrapped", "True", "BootstrapCleared")],
     "-"),
    (vm_pb2.Vm.RUNNING, [("AddressAssigned", "False", "WaitingForAddress")], "WaitingForAddress"),
    (vm_pb2.Vm.RUNNING, [("AddressAssigned", "True", "AddressReported"), ("Bootstrapped", "False", "WaitingForGuest")],
     "WaitingForGuest"),
    (vm_pb2.Vm.STOPPED, [("Stopped", "True", "StoppedOutsideQuanta")], "StoppedOutsideQuanta"),
    (vm_pb2.Vm.PENDING, [("Scheduled", "False", "NoHostFits")], "NoHostFits"),
])
def test_the_reason_column_explains_only_what_needs_explaining(state: int, conditions: list, reason: str) -> None:
    subject = vm("a", state, conditions=[common_pb2.Condition(type=t, status=s, reason=r) for t, s, r in conditions])
    assert printed("table", lambda p: p.one(subject, views.VM)).splitlines()[1].split()[-1] == reason
    assert views.vm_reason(subject) == ("" if reason == "-" else reason)


def test_quanta_up_zones_take_a_count_or_names() -> None:
    from quanta.cli.up import build_parser

    assert build_parser().parse_args(["--zones", "3"]).zones == ("zone-1", "zone-2", "zone-3")
    assert build_parser().parse_args(["--zones", "a, b"]).zones == ("a", "b")
    assert build_parser().parse_args([]).zones == ()
    for bad in ("0", ",", "101"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["--zones", bad])


def test_delete_takes_several_names_says_each_failure_and_follows_the_rest_until_gone(capsys) -> None:
    class Client(Watching):
        endpoint, context = "127.0.0.1:1", None

        def __init__(self) -> None:
            super().__init__([event(vm("a", vm_pb2.Vm.DELETING), common_pb2.ADDED),
                              event(vm("c", vm_pb2.Vm.DELETING), common_pb2.ADDED), BOOKMARK,
                              event(vm("a", vm_pb2.Vm.DELETING), common_pb2.DELETED),
                              event(vm("c", vm_pb2.Vm.DELETING), common_pb2.DELETED)])
            self.deleted: list[str] = []

        def delete_vm(self, name: str, *, etag: str = "", delete_disks: bool = False) -> vm_pb2.Vm:
            self.deleted.append(name)
            if name == "b":
                raise ApiError(grpc.StatusCode.NOT_FOUND, "NOT_FOUND", "vm b not found")
            return vm(name, vm_pb2.Vm.DELETING)

    client = Client()
    out = io.StringIO()
    with pytest.raises(SystemExit) as exited:
        resources._delete(parse(["delete", "a", "vms/b", "c", "--wait"]), client,  # type: ignore[arg-type]
                          Printer("table", out=out, err=io.StringIO()))
    assert exited.value.code == 1 and client.deleted == ["a", "b", "c"]
    assert capsys.readouterr().err == "error: vms/b: NOT_FOUND: vm b not found\n"
    # One watch followed both past DELETING (not a failure here) until each was gone.
    assert client.watches == 1 and out.getvalue().splitlines()[-2:] == ["vms/a deleted", "vms/c deleted"]


def test_resize_names_its_flavor_argument_in_a_violation() -> None:
    err = invalid_argument([("vm.flavor", "unknown flavor 'huge'; known: small, medium, large")])
    resize = describe(err, "127.0.0.1:1", flags=resources.cli_flags(parse(["resize", "a", "huge"])))
    update = describe(err, "127.0.0.1:1", flags=resources.cli_flags(parse(["update", "a", "--flavor", "huge"])))
    assert resize.splitlines()[1] == "  FLAVOR: unknown flavor 'huge'; known: small, medium, large"
    assert update.splitlines()[1] == "  --flavor: unknown flavor 'huge'; known: small, medium, large"


def test_json_and_yaml_show_reconciling_even_when_false() -> None:
    done = vm("a", uid="u1")
    assert json.loads(printed("json", lambda p: p.one(done, views.VM)))["reconciling"] is False
    assert yaml.safe_load(printed("yaml", lambda p: p.one(vm("a", uid="u1", reconciling=True), views.VM)))[
        "reconciling"] is True
    answer = vm_pb2.CreateVmsResponse(results=[vm_pb2.CreateVmsResult(vm=done),
                                               vm_pb2.CreateVmsResult(vm=vm_pb2.Vm(name=NAME + "x"), code=8)])
    doc = yaml.safe_load(printed("yaml", lambda p: p.one(answer, views.CREATE_RESULT)))
    assert doc["results"][0]["vm"]["reconciling"] is False
    assert doc["results"][1]["vm"] == {"name": NAME + "x"}  # a refused VM: its name only


def test_validate_only_output_is_a_dry_run() -> None:
    answer = vm_pb2.CreateVmsResponse(
        results=[vm_pb2.CreateVmsResult(vm=vm("a", vm_pb2.Vm.PENDING)),
                 vm_pb2.CreateVmsResult(vm=vm_pb2.Vm(name=NAME + "b"), code=grpc.StatusCode.INVALID_ARGUMENT.value[0],
                                        reason="INVALID_ARGUMENT", message="unknown flavor 'x'")],
        set=vm_pb2.VmSet(name="tenants/t/projects/p/vmSets/s", state=vm_pb2.VmSet.PENDING))
    lines = printed("table", lambda p: resources._show_created(p, answer, validate_only=True)).splitlines()
    assert lines[0] == "validate only: nothing was created (1 of 2 VMs would be)"
    assert lines[1].split() == ["NAME", "RESULT", "REASON", "MESSAGE"]
    assert lines[2].split() == ["a", "would", "create", "-", "-"]
    assert lines[3].split()[:3] == ["b", "INVALID_ARGUMENT", "INVALID_ARGUMENT"]
    assert "PENDING" not in "\n".join(lines) and "vmSets" not in "\n".join(lines)


def test_set_get_shows_the_deadline() -> None:
    from google.protobuf.timestamp_pb2 import Timestamp

    for state in (vm_pb2.VmSet.PENDING, vm_pb2.VmSet.FAILED):
        vm_set = vm_pb2.VmSet(name="tenants/t/projects/p/vmSets/s", state=state,
                              deadline_time=Timestamp(seconds=4_000_000_000))
        detail = printed("table", lambda p, s=vm_set: p.detail(s, views.VM_SET))
        line = next(line for line in detail.splitlines() if line.startswith("Deadline:"))
        assert "2096-10-02T07:06:40Z" in line and (("(in " in line) == (state == vm_pb2.VmSet.PENDING)), line
