"""examples/cluster.py's pure parts: each node's own cloud-init and markers, the
leak search (raw and base64 at every alignment, both alphabets), the inventory."""

from __future__ import annotations

import base64
import configparser
import importlib.util
import json
import pathlib
import sys

import pytest

from controlplane.gen.quanta.v1 import vm_pb2

EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "examples" / "cluster.py"
_spec = importlib.util.spec_from_file_location("cluster_example", EXAMPLE)
assert _spec is not None and _spec.loader is not None
cluster = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("cluster_example", cluster)  # dataclasses look their module up
_spec.loader.exec_module(cluster)


def test_each_node_has_its_own_user_data_and_markers() -> None:
    nodes = cluster.plan("k8s", "r1", 3, 5)
    assert [n.name for n in nodes][:4] == ["k8s-cp-1", "k8s-cp-2", "k8s-cp-3", "k8s-worker-1"]
    assert [n.role for n in nodes].count("control-plane") == 3 and len(nodes) == 8
    assert len({n.user_data for n in nodes}) == 8 and len({m for n in nodes for m in n.markers}) == 16
    for n in nodes:
        assert n.user_data.startswith(b"#cloud-config\n") and n.markers[0].encode() in n.user_data
        assert n.markers[1].encode() not in n.user_data  # the metadata's marker goes in the metadata
    assert cluster.marker("r1", "k8s-cp-1") == nodes[0].markers[0]


@pytest.mark.parametrize("prefix", [b"", b"x", b"xy", b"guestinfo.userdata=", b"\x00\xff\xfe"])
def test_a_marker_is_found_raw_and_in_base64_wherever_it_sits(prefix: bytes) -> None:
    secret = "secret-user-data-r1-k8s-cp-1"
    data = prefix + b"#cloud-config\ncontent: " + secret.encode() + b"\nmore: stuff\n"
    for blob in (data, base64.b64encode(data), base64.urlsafe_b64encode(data),
                 b'{"userdata": "' + base64.b64encode(data) + b'"}'):
        assert cluster.leaks(blob, [secret, "secret-other"]) == [secret], blob
    assert cluster.leaks(base64.b64encode(b"#cloud-config\nnothing here\n"), [secret]) == []


def test_the_inventory_in_ini_and_json() -> None:
    def vm(name: str, ip: str, host: str) -> vm_pb2.Vm:
        return vm_pb2.Vm(name=f"tenants/t/projects/p/vms/{name}", host=host, addresses=[vm_pb2.Address(ip=ip)])

    vms = [vm("k8s-cp-1", "10.0.0.1", "h1"), vm("k8s-worker-1", "10.0.0.2", "h2")]
    roles = {vms[0].name: "control-plane", vms[1].name: "worker"}
    ini = configparser.ConfigParser(allow_no_value=True, delimiters=(" ",))
    ini.read_string(cluster.inventory_ini(vms, roles))
    assert dict(ini["control_plane"]) == {"k8s-cp-1": "ansible_host=10.0.0.1"}
    assert dict(ini["workers"]) == {"k8s-worker-1": "ansible_host=10.0.0.2"}
    nodes = json.loads(cluster.inventory_json(vms, roles, {"h1": "zone-a"}))["nodes"]
    assert nodes[0] == {"name": "k8s-cp-1", "role": "control-plane", "ip": "10.0.0.1", "addresses": ["10.0.0.1"],
                        "host": "h1", "zone": "zone-a"}
    assert nodes[1]["zone"] == ""


def test_the_set_progress_says_counts_and_why_a_member_waits(capsys) -> None:
    from controlplane.gen.quanta.v1 import common_pb2
    from quanta.waits import VmSetWait

    names = [f"tenants/t/projects/p/vms/k8s-cp-{i}" for i in (1, 2, 3)]
    wait = VmSetWait(vm_pb2.VmSet(name="tenants/t/projects/p/vmSets/k8s-cp-r1", vms=names), "RUNNING", address=True)
    assert cluster.progress_line("cp", wait) == "cp: 0/3 placed, 0/3 running"
    short = "1 of 3 members fit no host: k8s-cp-3: 0/2 hosts fit: 2 ZoneAntiAffinity"
    for name in names:
        wait.seen(vm_pb2.VmEvent(type=common_pb2.ADDED, vm=vm_pb2.Vm(name=name, state=vm_pb2.Vm.PENDING, conditions=[
            common_pb2.Condition(type="Scheduled", status="False", reason="SetDoesNotFit", message=short)])))
    assert cluster.progress_line("cp", wait) == (
        f"cp: 0/3 placed, 0/3 running; k8s-cp-1: PENDING (SetDoesNotFit: {short})")
    progress = cluster.Progress("cp")
    capsys.readouterr()
    progress(wait)
    progress(wait)  # nothing new: not printed again
    assert capsys.readouterr().out.splitlines() == [cluster.progress_line("cp", wait)]


def test_the_example_file_and_the_example_program_use_distinct_groups_and_names() -> None:
    """`quanta vm create-many -f examples/cluster.yaml` and `examples/cluster.py` (default
    prefix) run one after the other on three zones: neither may take the other's group."""
    import yaml

    doc = yaml.safe_load((EXAMPLE.parent / "cluster.yaml").read_text())
    groups = {vm.get("anti_affinity_group") for vm in doc["vms"]} - {None}
    names = {f"{vm['name']}-{i}" for vm in doc["vms"] for i in range(1, vm.get("count", 1) + 1)}
    import argparse

    args = argparse.Namespace(prefix="demo", flavor="small", image="ubuntu", cp_network="cp",
                              workers_network="workers")
    nodes = cluster.plan("demo", "r1", 3, 5)
    assert groups and not groups & {cluster.vm_args(n, args)["anti_affinity_group"] for n in nodes}
    assert not names & {n.name for n in nodes}


def test_control_planes_get_a_pool_address_and_their_etcd_disk_workers_dhcp() -> None:
    import argparse

    args = argparse.Namespace(prefix="demo", flavor="small", image="ubuntu", cp_network="cp",
                              workers_network="workers")
    cp, worker = cluster.plan("demo", "r1", 1, 1)
    assert cluster.vm_args(cp, args)["nics"] == ["net=cp,ip=pool"]
    assert cluster.vm_args(cp, args)["disks"] == ["demo-cp-1-etcd"]
    assert cluster.vm_args(worker, args)["nics"] == ["net=workers"] and "disks" not in cluster.vm_args(worker, args)
