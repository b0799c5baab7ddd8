"""examples/cluster.py, an installer's path, run as a user runs it against a real
local system whose simulated hosts are in three zones: 3 control planes (zone
anti-affinity) and 5 workers, each with its own cloud-init, all with addresses, an
inventory; the example's own checks (no Get/List/Watch answer or audit record holds
bootstrap data, every VM's bootstrap CLEARED); and, from outside the API: no
bootstrap/ key left in etcd, no marker in any etcd value, any process log or the
simulated hosts' state."""

from __future__ import annotations

import asyncio
import configparser
import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import uuid

import pytest

from controlplane.etcd import EtcdClient
from controlplane.store.keys import Keys
from quanta.local import LocalSystem

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "cluster.py"
ZONES = ("zone-a", "zone-b", "zone-c")
PROJECT = "cluster"


def _example():
    spec = importlib.util.spec_from_file_location("cluster_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("cluster_example", module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


cluster = _example()


@pytest.fixture(scope="module")
def system():
    with LocalSystem(hosts=6, frontends=1, latency="zero", metrics=False, zones=ZONES) as local:
        local.client(project=PROJECT).close()  # makes the project
        yield local


def test_the_cluster_example_brings_up_its_nodes_and_leaves_no_secret(system: LocalSystem, tmp_path) -> None:
    run_id = uuid.uuid4().hex[:12]
    env = {**os.environ, "QUANTA_CONFIG": str(tmp_path / "config.yaml"), "QUANTA_ENDPOINT": system.endpoint,
           "QUANTA_TOKEN": system.admin_token, "QUANTA_TENANT": "default", "QUANTA_PROJECT": PROJECT}
    env.pop("QUANTA_CONTEXT", None)
    done = subprocess.run([sys.executable, str(EXAMPLE), "--run-id", run_id, "--prefix", "k8s", "--timeout", "120",
                           "--inventory-dir", str(tmp_path)], env=env, capture_output=True, text=True, timeout=400,
                          cwd=tmp_path)
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    assert "all checks passed" in done.stdout and "FAIL" not in done.stdout

    # The inventory: 8 nodes with distinct addresses, the control planes in 3 zones.
    nodes = json.loads((tmp_path / "inventory.json").read_text())["nodes"]
    assert sorted(n["name"] for n in nodes) == sorted(
        [f"k8s-cp-{i}" for i in (1, 2, 3)] + [f"k8s-worker-{i}" for i in (1, 2, 3, 4, 5)])
    assert len({n["ip"] for n in nodes}) == 8 and all(n["ip"] for n in nodes)
    assert sorted(n["zone"] for n in nodes if n["role"] == "control-plane") == list(ZONES)
    ini = configparser.ConfigParser(allow_no_value=True, delimiters=(" ",))
    ini.read_string((tmp_path / "inventory.ini").read_text())
    assert {k: v.split("=", 1)[1] for k, v in ini["control_plane"].items()} == {
        n["name"]: n["ip"] for n in nodes if n["role"] == "control-plane"}
    assert len(ini["workers"]) == 5 and list(ini["cluster:children"]) == ["control_plane", "workers"]

    # Outside the API: nothing left anywhere the system keeps things.
    names = [f"k8s-cp-{i}" for i in (1, 2, 3)] + [f"k8s-worker-{i}" for i in range(1, 6)]
    markers = [cluster.marker(run_id, n, where) for n in names for where in ("user-data", "metadata")]
    keys = Keys(system.root)

    async def etcd_contents() -> tuple[list[bytes], list[bytes]]:
        async with EtcdClient(system.etcd_endpoint) as etcd:
            bootstrap, _ = await etcd.range_prefix(keys.base.encode() + b"bootstrap/")
            everything, _ = await etcd.range_prefix(system.root.encode() + b"/")
        return [kv.key for kv in bootstrap], [kv.key + b"=" + kv.value for kv in everything]

    bootstrap_keys, everything = asyncio.run(etcd_contents())
    assert bootstrap_keys == []
    assert [kv.split(b"=", 1)[0] for kv in everything if cluster.leaks(kv, markers)] == []
    logs = sorted(system.log_dir.glob("*.log"))
    assert logs, "the processes' logs"
    leaked = {(path.name, i): cluster.leaks(line, markers)
              for path in logs for i, line in enumerate(path.read_bytes().splitlines(), 1)
              if cluster.leaks(line, markers)}
    assert leaked == {}
    sim_files = [p for p in system.sim_state_dir().rglob("*") if p.is_file()]
    assert [p.name for p in sim_files if cluster.leaks(p.read_bytes(), markers)] == []
    # The example's own output names no marker either (it prints the inventory only).
    assert cluster.leaks((done.stdout + done.stderr).encode(), markers) == []


def test_control_planes_that_cannot_fit_fail_with_the_shortfall_and_leave_nothing(system: LocalSystem,
                                                                                  tmp_path) -> None:
    """4 zone-anti-affine control planes, 3 zones: the run says why while it waits
    (SetDoesNotFit, ZoneAntiAffinity), fails at the set's deadline naming the
    shortfall, and never creates a worker: no VM of the run is left."""
    env = {**os.environ, "QUANTA_CONFIG": str(tmp_path / "config.yaml"), "QUANTA_ENDPOINT": system.endpoint,
           "QUANTA_TOKEN": system.admin_token, "QUANTA_TENANT": "default", "QUANTA_PROJECT": PROJECT}
    env.pop("QUANTA_CONTEXT", None)
    done = subprocess.run([sys.executable, str(EXAMPLE), "--prefix", "four", "--control-planes", "4",
                           "--deadline", "5", "--timeout", "120"], env=env, capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    said = f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    assert done.returncode == 1, said
    assert "SetDoesNotFit" in done.stdout and "ZoneAntiAffinity" in done.stdout, said  # the progress, while waiting
    assert "DeadlineExceeded" in done.stderr and "last shortfall" in done.stderr, said
    assert "ZoneAntiAffinity" in done.stderr and "creating 5 workers" not in done.stdout, said
    with system.client(project=PROJECT) as client:
        assert [vm.name for vm in client.list_vms() if "/vms/four-" in vm.name] == []
