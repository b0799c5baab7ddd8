"""``quanta vm create-many -f FILE`` as a user runs it against a real local system
whose simulated hosts are in three zones: INDEPENDENT with one bad VM (every other VM
made, the bad one's outcome printed, exit 1); ALL_OR_NOTHING of 3 ZONE-anti-affine
control planes and 20 workers with --wait (a progress line of placed/running, all
RUNNING with addresses, the control planes in three zones, the set PLACED and named
by every member); --validate-only writing nothing; and a set that cannot fit
(4 ZONE-anti-affine VMs, 3 zones) FAILING at its deadline, which ends the wait."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid

import pytest
import yaml

from quanta.local import LocalSystem

QUANTA = os.path.join(os.path.dirname(sys.executable), "quanta")
ZONES = ("zone-a", "zone-b", "zone-c")
ZONE_LABEL = "topology.quanta.io/zone"
SECRET = "#cloud-config\nruncmd: [echo secret-many-4e1a]\n"


@pytest.fixture(scope="module")
def system():
    with LocalSystem(hosts=6, frontends=1, latency="zero", metrics=False, zones=ZONES) as local:
        yield local


@pytest.fixture
def project(system: LocalSystem) -> str:
    """A fresh project for each test (nothing shared between them)."""
    name = f"many-{uuid.uuid4().hex[:8]}"
    system.client(project=name).close()  # makes the project
    return name


def quanta(system: LocalSystem, project: str, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    env = {**os.environ, "QUANTA_ENDPOINT": system.endpoint, "QUANTA_TOKEN": system.admin_token}
    env.pop("QUANTA_CONTEXT", None)
    return subprocess.run([QUANTA, "vm", *args, "--tenant", "default", "--project", project], env=env,
                          capture_output=True, text=True, timeout=timeout)


def write(tmp_path, text: str) -> str:
    (tmp_path / "worker.yaml").write_text(SECRET)
    path = tmp_path / "cluster.yaml"
    path.write_text(textwrap.dedent(text))
    return str(path)


def rows(text: str) -> dict[str, dict[str, str]]:
    """The outcome table printed last: NAME → header → cell (cells hold no spaces here
    but MESSAGE, which is left out)."""
    lines = text.strip().splitlines()
    header = next(i for i in range(len(lines) - 1, -1, -1) if lines[i].startswith("NAME "))
    names = lines[header].split()[:6]
    return {cells[0]: dict(zip(names, cells, strict=False))
            for cells in (line.split() for line in lines[header + 1:]) if cells}


def test_independent_with_one_bad_vm_makes_the_others_and_exits_1(system, project, tmp_path) -> None:
    path = write(tmp_path, """\
        defaults: {flavor: small, image: ubuntu, labels: {app: web}}
        vms:
          - {name: web, count: 3, user_data_file: worker.yaml}
          - {name: huge-1, flavor: no-such-flavor}
        """)
    done = quanta(system, project, "create-many", "-f", path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1 VM of 4 refused" in done.stderr
    table = rows(done.stdout)
    assert {n: r["RESULT"] for n, r in table.items()} == {
        "web-1": "OK", "web-2": "OK", "web-3": "OK", "huge-1": "INVALID_ARGUMENT"}
    assert table["web-1"]["STATE"] in ("PENDING", "SCHEDULED", "CREATING", "RUNNING")
    assert "secret-many-4e1a" not in done.stdout + done.stderr
    listed = json.loads(quanta(system, project, "list", "-o", "json").stdout)
    assert sorted(vm["name"].rsplit("/", 1)[-1] for vm in listed) == ["web-1", "web-2", "web-3"]
    assert all(vm["labels"] == {"app": "web"} and not vm.get("vm_set") for vm in listed)
    # The same outcomes as a document: one result per VM in file order, the refused one named.
    again = quanta(system, project, "create-many", "-f", path, "-o", "json")
    assert again.returncode == 1
    results = json.loads(again.stdout)["results"]
    assert [r["vm"]["name"].rsplit("/", 1)[-1] for r in results] == ["web-1", "web-2", "web-3", "huge-1"]
    assert results[3]["code"] == 3 and results[3]["reason"] and "vm" in results[3]
    # Made again by a second call with new request_ids: the ids are taken.
    assert {r.get("reason") for r in results[:3]} == {"VM_ALREADY_EXISTS"}


def test_all_or_nothing_cluster_comes_up_whole_with_a_progress_bar(system, project, tmp_path) -> None:
    path = write(tmp_path, """\
        defaults: {flavor: small, image: ubuntu, labels: {cluster: demo}}
        vms:
          - name: cp
            count: 3
            labels: {role: control-plane}
            anti_affinity_group: demo-cp
            anti_affinity_scope: ZONE
          - name: worker
            count: 20
            labels: {role: worker}
            user_data_file: worker.yaml
        """)
    done = quanta(system, project, "create-many", "-f", path, "--all-or-nothing", "--set-id", "demo", "--wait",
                  "--timeout", "150")
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert out.startswith("vmSets/demo: PENDING") or out.startswith("vmSets/demo: PLACED")
    progress = [line for line in out.splitlines() if " placed, " in line]
    assert progress and progress[-1].startswith("23/23 placed, 23/23 running")
    assert "vmSets/demo: PLACED" in out
    table = rows(out)
    assert len(table) == 23 and {r["RESULT"] for r in table.values()} == {"OK"}
    assert {r["STATE"] for r in table.values()} == {"RUNNING"} and all(r["IP"] != "-" for r in table.values())

    vm_set = json.loads(quanta(system, project, "set", "get", "demo", "-o", "json").stdout)
    assert vm_set["state"] == "PLACED" and len(vm_set["vms"]) == 23
    assert any(c["type"] == "Placed" and c["status"] == "True" for c in vm_set["conditions"])
    detail = quanta(system, project, "set", "get", "vmSets/demo").stdout
    assert "PLACED" in detail and "cp-3" in detail and "worker-20" in detail
    listed = json.loads(quanta(system, project, "list", "-o", "json").stdout)
    assert {vm["vm_set"] for vm in listed} == {vm_set["name"]}
    with system.client(project=project) as client:
        hosts = {h.name.rsplit("/", 1)[-1]: h.labels.get(ZONE_LABEL, "") for h in client.list_hosts()}
    cp_zones = sorted(hosts[vm["host"]] for vm in listed if vm["labels"]["role"] == "control-plane")
    assert cp_zones == list(ZONES)
    assert "secret-many-4e1a" not in done.stdout + done.stderr + json.dumps(listed)


def test_validate_only_checks_and_writes_nothing(system, project, tmp_path) -> None:
    path = write(tmp_path, """\
        defaults: {flavor: small, image: ubuntu}
        vms:
          - {name: cp, count: 3, anti_affinity_group: g, anti_affinity_scope: ZONE}
          - {name: w, count: 5, user_data_file: worker.yaml}
        """)
    for mode in ((), ("--all-or-nothing", "--set-id", "dry")):
        done = quanta(system, project, "create-many", "-f", path, "--validate-only", *mode, "-o", "yaml")
        assert done.returncode == 0, done.stdout + done.stderr
        answer = yaml.safe_load(done.stdout)
        assert len(answer["results"]) == 8 and all(r.get("code", 0) == 0 for r in answer["results"])
    assert json.loads(quanta(system, project, "list", "-o", "json").stdout) == []
    missing = quanta(system, project, "set", "get", "dry")
    assert missing.returncode != 0 and "NOT_FOUND" in missing.stderr
    # A bad VM is still refused: validation is a create's, minus the writing.
    bad = write(tmp_path, "vms: [{name: x, flavor: no-such-flavor, image: ubuntu}]\n")
    refused = quanta(system, project, "create-many", "-f", bad, "--validate-only")
    assert refused.returncode == 1 and "INVALID_ARGUMENT" in refused.stdout
    assert json.loads(quanta(system, project, "list", "-o", "json").stdout) == []


def test_a_set_that_cannot_fit_fails_at_its_deadline_and_ends_the_wait(system, project, tmp_path) -> None:
    path = write(tmp_path, """\
        defaults: {flavor: small, image: ubuntu}
        vms:
          - {name: cp, count: 4, anti_affinity_group: four, anti_affinity_scope: ZONE}
        """)
    done = quanta(system, project, "create-many", "-f", path, "--all-or-nothing", "--set-id", "four",
                  "--deadline", "5s", "--wait", "--timeout", "120")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "vmSets/four is FAILED (DeadlineExceeded" in done.stderr
    progress = [line for line in done.stdout.splitlines() if " placed, " in line]
    assert progress and all(line.startswith("0/4 placed") for line in progress)
    assert len(progress) == len(set(progress))  # a line only when something changed
    assert any("SetDoesNotFit" in line for line in progress)  # the members say why they wait
    vm_set = json.loads(quanta(system, project, "set", "get", "four", "-o", "json").stdout)
    assert vm_set["state"] == "FAILED"
    assert json.loads(quanta(system, project, "list", "-o", "json").stdout) == []
