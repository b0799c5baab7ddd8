"""The CLI's output layer, waiting logic and error messages, without a server:
tables with headers and aligned columns, each -o format parseable, a VM followed
through watch events, violations in the user's words."""

from __future__ import annotations

import io
import json
import re

import grpc
import pytest
import yaml
from google.protobuf.timestamp_pb2 import Timestamp

from controlplane.api.errors import ApiError, invalid_argument
from controlplane.etcd.client import EtcdError
from controlplane.gen.quanta.v1 import common_pb2, host_pb2, vm_pb2
from quanta.cli import views
from quanta.cli.completion import command_tree, script
from quanta.cli.errors import describe, etcd_message, flag_for, in_words, unreachable_message
from quanta.cli.output import Printer, plural, short_name
from quanta.cli.waiting import follow_vm, status_line

ANSI = re.compile(r"\x1b\[")


def _vm(vm_id: str, state: int = vm_pb2.Vm.RUNNING, host: str = "esx-1", **kwargs) -> vm_pb2.Vm:
    return vm_pb2.Vm(name=f"tenants/t/projects/p/vms/{vm_id}", flavor="small", image="ubuntu", state=state,
                     host=host, **kwargs)


def _print(output: str, call) -> str:
    out, err = io.StringIO(), io.StringIO()
    call(Printer(output, out=out, err=err))
    return out.getvalue()


def test_a_table_has_a_header_and_columns_aligned_whatever_the_widths() -> None:
    long_host = "esx-" + "x" * 70 + ".example.com"
    vms = [_vm("web-1", host=long_host), _vm("a-much-longer-name-than-the-header", vm_pb2.Vm.PENDING, host="",
                                             conditions=[common_pb2.Condition(type="Scheduled", status="False",
                                                                              reason="NoHostFits",
                                                                              message="0/3 hosts fit")])]
    text = _print("table", lambda p: p.many(vms, views.VM))
    lines = text.splitlines()
    assert lines[0].split() == ["NAME", "STATE", "FLAVOR", "IMAGE", "HOST", "IP", "AGE", "REASON"]
    # Every column starts at the same offset on every line.
    for header in ("STATE", "FLAVOR", "HOST", "REASON"):
        offset = lines[0].index(header)
        assert all(line[offset - 1] == " " and line[offset] != " " for line in lines[1:]), (header, lines)
    assert lines[1].split()[4] == long_host and lines[2].split()[-1] == "NoHostFits"
    assert not ANSI.search(text) and all(line == line.rstrip() for line in lines)


def test_wide_adds_columns() -> None:
    header = _print("wide", lambda p: p.many([_vm("web-1", uid="u-1")], views.VM)).splitlines()[0].split()
    assert header[-5:] == ["MESSAGE", "UID", "NICS", "DISKS", "LABELS"]


def test_json_is_one_array_with_the_apis_field_names() -> None:
    hosts = [host_pb2.Host(name="hosts/h1", vm_count=3, state=host_pb2.Host.READY),
             host_pb2.Host(name="hosts/h2", register_time=Timestamp(seconds=1))]
    loaded = json.loads(_print("json", lambda p: p.many(hosts, views.HOST)))
    assert loaded[0] == {"name": "hosts/h1", "vm_count": 3, "state": "READY"}
    assert loaded[1] == {"name": "hosts/h2", "register_time": "1970-01-01T00:00:01Z"}
    assert json.loads(_print("json", lambda p: p.many([], views.HOST))) == []
    assert json.loads(_print("json", lambda p: p.one(hosts[0], views.HOST)))["vm_count"] == 3


def test_yaml_and_name() -> None:
    vms = [_vm("web-1"), _vm("web-2")]
    docs = yaml.safe_load(_print("yaml", lambda p: p.many(vms, views.VM)))
    assert [d["name"] for d in docs] == [vm.name for vm in vms] and docs[0]["state"] == "RUNNING"
    assert yaml.safe_load(_print("yaml", lambda p: p.one(vms[0], views.VM)))["host"] == "esx-1"
    assert _print("name", lambda p: p.many(vms, views.VM)) == "vms/web-1\nvms/web-2\n"
    assert short_name("hosts/esx-1") == "hosts/esx-1"
    assert short_name("tenants/acme/projects/web/quota") == "tenants/acme/projects/web/quota"


def test_watch_prints_one_json_object_per_line() -> None:
    events = [("ADDED", _vm("web-1", vm_pb2.Vm.PENDING)), ("MODIFIED", _vm("web-1"))]
    lines = _print("json", lambda p: p.events(events, views.VM)).splitlines()
    assert [json.loads(line)["type"] for line in lines] == ["ADDED", "MODIFIED"]
    assert json.loads(lines[1])["object"]["state"] == "RUNNING"
    table = _print("table", lambda p: p.events(events, views.VM)).splitlines()
    assert table[0].split()[:3] == ["EVENT", "NAME", "STATE"] and table[2].split()[:3] == ["MODIFIED", "web-1",
                                                                                         "RUNNING"]


def test_the_detail_view_shows_conditions_and_audit() -> None:
    vm = _vm("web-1", vm_pb2.Vm.PENDING, host="", conditions=[common_pb2.Condition(
        type="Scheduled", status="False", reason="NoHostFits", message="0/11 hosts fit: 10 NodeSelectorMismatch")])
    text = _print("table", lambda p: p.detail(vm, views.VM, [views.audit_section(None)]))
    assert "State:" in text and "PENDING" in text and "Power:" in text
    conditions = text.splitlines()[text.splitlines().index("Conditions:") + 1:]
    assert conditions[0].split() == ["TYPE", "STATUS", "REASON", "MESSAGE", "SINCE"]
    assert conditions[1].split()[:3] == ["Scheduled", "False", "NoHostFits"]
    assert "(not readable with this token)" in text
    # -o json of a get is the message alone.
    assert json.loads(_print("json", lambda p: p.detail(vm, views.VM)))["conditions"][0]["reason"] == "NoHostFits"


def test_host_detail_keeps_the_resource_table() -> None:
    host = host_pb2.Host(name="hosts/h1", capacity=common_pb2.Resources(vcpus=2, memory_mib=4096, disk_gib=50),
                         allocatable=common_pb2.Resources(vcpus=4, memory_mib=4096, disk_gib=50),
                         overcommit=host_pb2.Overcommit(vcpus=2, memory=1, disk=1))
    rows = {line.split()[0]: line.split()[1:] for line in
            _print("table", lambda p: p.detail(host, views.HOST)).splitlines() if line.strip()}
    assert rows["capacity"] == ["2", "4096", "50"] and rows["overcommit"][0] == "2"
    assert rows["allocatable"][0] == "4"


def test_plural_and_age() -> None:
    assert (plural(1, "VM"), plural(0, "VM"), plural(2, "VM")) == ("1 VM", "0 VMs", "2 VMs")
    assert views.age(Timestamp(seconds=1000), now_s=1045) == "45s"
    assert views.age(Timestamp(seconds=1000), now_s=1000 + 90) == "1m"
    assert views.age(Timestamp(seconds=1000), now_s=1000 + 3 * 3600) == "3h"
    assert views.age(Timestamp(seconds=1000), now_s=1000 + 5 * 86400) == "5d"
    assert views.age(Timestamp()) == "-"


def _event(kind: int, vm: vm_pb2.Vm | None = None) -> vm_pb2.VmEvent:
    return vm_pb2.VmEvent(type=kind, vm=vm) if vm is not None else vm_pb2.VmEvent(type=kind)


def test_follow_vm_reports_its_states_and_its_end() -> None:
    name = _vm("web-1").name
    other = _vm("other")
    events = [_event(common_pb2.ADDED, other), _event(common_pb2.ADDED, _vm("web-1", vm_pb2.Vm.PENDING)),
              _event(common_pb2.BOOKMARK), _event(common_pb2.MODIFIED, _vm("web-1", vm_pb2.Vm.RUNNING)),
              _event(common_pb2.BOOKMARK), _event(common_pb2.DELETED, _vm("web-1")),
              _event(common_pb2.ADDED, _vm("web-1"))]
    states = [None if vm is None else vm.state for vm in follow_vm(events, name)]
    assert states == [vm_pb2.Vm.PENDING, vm_pb2.Vm.RUNNING, None]
    # Not in the initial listing: gone already.
    assert list(follow_vm([_event(common_pb2.ADDED, other), _event(common_pb2.BOOKMARK)], name)) == [None]


def test_status_line_says_the_state_and_its_reason() -> None:
    vm = _vm("web-1", vm_pb2.Vm.PENDING, conditions=[common_pb2.Condition(reason="NoHostFits", message="0/3 fit")])
    assert status_line(vm.name, vm) == "vms/web-1: PENDING (NoHostFits: 0/3 fit)"
    assert status_line(vm.name, _vm("web-1")) == "vms/web-1: RUNNING"


def test_progress_lines_when_not_on_a_terminal() -> None:
    out, err = io.StringIO(), io.StringIO()
    with Printer("table", out=out, err=err).progress(total=3) as progress:
        for text in ("a", "a", "b"):
            progress.update(text, completed=1, total=3)
    assert out.getvalue() == "a\nb\n" and err.getvalue() == ""
    out = io.StringIO()
    with Printer("json", out=out, err=err).progress() as progress:
        progress.update("a")
    assert out.getvalue() == "" and err.getvalue() == "a\n"  # stdout stays one document


def test_violations_name_the_flag_and_say_the_rule_in_words() -> None:
    err = invalid_argument([("vm_id", 'VM id "Bad_Name" must match ^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$'),
                            ("vm.labels[\"x y\"]", "bad key")])
    text = describe(err, "127.0.0.1:7000")
    assert text.splitlines()[0] == "error: INVALID_ARGUMENT: FIELD_INVALID: invalid request"
    assert text.splitlines()[1].startswith('  --name: VM id "Bad_Name" is not valid: use 1 to 63 lowercase letters')
    assert text.splitlines()[2] == "  --label: bad key"
    assert "^[a-z]" not in text
    assert flag_for("vm.flavor") == "--flavor" and flag_for("something.else") == "something.else"
    assert in_words("no pattern here") == "no pattern here"


def test_an_unreachable_endpoint_is_named_with_a_hint() -> None:
    refused = ApiError(grpc.StatusCode.UNAVAILABLE, "UNAVAILABLE", "failed to connect to all addresses; last "
                       "error: UNKNOWN: ipv4:127.0.0.1:7000: Failed to connect to remote host: Connection refused")
    text = describe(refused, "127.0.0.1:7000")
    assert text.startswith("error: cannot reach the Quanta API at 127.0.0.1:7000: connection refused")
    assert "quanta up" in text and text.count("UNAVAILABLE") == 0
    assert "quanta context use" in unreachable_message("h:1", "lab") and "'lab'" in unreachable_message("h:1", "lab")
    # A frontend that answers UNAVAILABLE with a reason is not "unreachable".
    answered = ApiError(grpc.StatusCode.UNAVAILABLE, "STORE_UNAVAILABLE", "etcd is down")
    assert describe(answered, "h:1") == "error: UNAVAILABLE: STORE_UNAVAILABLE: etcd is down"
    assert describe(ApiError(grpc.StatusCode.NOT_FOUND, "NOT_FOUND", "x"), "h:1") == "error: NOT_FOUND: x"


def _actions(parser, path=()):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _actions(child, (*path, name))
        elif not isinstance(action, argparse._HelpAction):
            yield path, action


def test_every_option_has_help() -> None:
    missing = [(" ".join(path), action.dest) for path, action in _actions(command_tree())
               if not action.help and path[:1] not in (("frontend",), ("agent",))]
    assert missing == []


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_scripts_know_the_commands_and_their_options(shell: str) -> None:
    text = script(shell)
    assert "quanta" in text and "--node-selector" in text and "drain" in text


def test_an_unreachable_etcd_is_named_with_a_hint() -> None:
    err = EtcdError("etcd range: UNAVAILABLE: failed to connect to all addresses; last error: UNKNOWN: "
                    "ipv4:127.0.0.1:1: Failed to connect to remote host: Connection refused",
                    grpc.StatusCode.UNAVAILABLE)
    assert etcd_message(err, "http://127.0.0.1:1").splitlines() == [
        "cannot reach etcd at http://127.0.0.1:1: connection refused",
        "  start a local system with `quanta up`, or name its etcd with --etcd."]


def test_the_sdks_unreachable_error_is_said_once() -> None:
    from quanta import errors

    refused = errors.Unreachable(grpc.StatusCode.UNAVAILABLE, "UNAVAILABLE", errors.unreachable_message(
        "127.0.0.1:7000", "lab", "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:7000: "
        "Failed to connect to remote host: Connection refused"), endpoint="127.0.0.1:7000", context="lab")
    text = describe(refused, "127.0.0.1:7000", "lab")
    assert text.startswith("error: cannot reach the Quanta API at 127.0.0.1:7000 (context 'lab'): connection refused")
    assert text.count("cannot reach") == 1 and text.count("quanta up") == 1


def test_networks_show_scope_backing_and_addresses_used() -> None:
    from controlplane.gen.quanta.v1 import network_pb2

    project = network_pb2.Network(name="tenants/t/projects/p/networks/cp", backing="pg-cp", addresses_used=3,
                                  addresses_total=62, subnet=network_pb2.Subnet(cidr="10.1.0.0/26"))
    shared = network_pb2.Network(name="tenants/t/networks/workers", backing="pg-workers")
    lines = _print("table", lambda p: p.many([project, shared], views.NETWORK)).splitlines()
    assert lines[0].split() == ["NAME", "SCOPE", "BACKING", "SUBNET", "USED", "AGE"]
    assert lines[1].split()[:5] == ["cp", "project", "pg-cp", "10.1.0.0/26", "3/62"]
    assert lines[2].split()[:5] == ["workers", "shared", "pg-workers", "-", "-"]


def test_disks_show_state_size_class_and_vm() -> None:
    from controlplane.gen.quanta.v1 import disk_pb2

    disks = [disk_pb2.Disk(name="tenants/t/projects/p/disks/etcd-1", size_gib=20, state=disk_pb2.Disk.ATTACHED,
                           vm="tenants/t/projects/p/vms/cp-1"),
             disk_pb2.Disk(name="tenants/t/projects/p/disks/spare", size_gib=5, datastore_class="ssd")]
    lines = _print("table", lambda p: p.many(disks, views.DISK)).splitlines()
    assert lines[1].split()[:5] == ["etcd-1", "ATTACHED", "20", "standard", "cp-1"]
    assert lines[2].split()[:5] == ["spare", "AVAILABLE", "5", "ssd", "-"]


def test_a_vm_shows_its_nics_and_disks() -> None:
    vm = _vm("cp-1", disks=["tenants/t/projects/p/disks/etcd-1"], nics=[
        vm_pb2.NetworkInterface(network="tenants/t/projects/p/networks/cp", ip="10.1.0.5", prefix_length=26,
                                address_mode=vm_pb2.NetworkInterface.STATIC_POOL, gateway="10.1.0.1", backing="pg",
                                mac_address="00:50:56:01:02:03"),
        vm_pb2.NetworkInterface(network="tenants/t/networks/workers", address_mode=vm_pb2.NetworkInterface.DHCP)])
    text = _print("table", lambda p: p.detail(vm, views.VM))
    assert "10.1.0.5/26" in text and "STATIC_POOL" in text and "shared:workers" in text and "etcd-1" in text
    assert "00:50:56:01:02:03" in text  # the MAC Quanta chose (a DHCP reservation names it)
    wide = _print("wide", lambda p: p.many([vm], views.VM))
    assert "cp:10.1.0.5, shared:workers:dhcp" in wide
