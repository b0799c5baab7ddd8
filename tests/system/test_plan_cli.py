"""``quanta vm create-many --plan [--hold]`` and ``--from-plan`` as a user runs them
against a real local system (simulated hosts in three zones): the plan of the example
cluster puts its three ZONE-anti-affine control planes in three zones and writes
nothing; a held plan, then its create with --wait, brings the set up on exactly the
planned hosts and consumes the hold (a second create from it is PLAN_EXPIRED); a
create of other VMs from a held plan is PLAN_MISMATCH and writes nothing; and on two
zones the plan of three such VMs does not fit, says why, holds nothing and exits 1."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import uuid

import pytest

from quanta.local import LocalSystem

QUANTA = os.path.join(os.path.dirname(sys.executable), "quanta")
CLUSTER = str(pathlib.Path(__file__).resolve().parents[2] / "examples" / "cluster.yaml")
ZONES = ("zone-a", "zone-b", "zone-c")
ZONE_LABEL = "topology.quanta.io/zone"


@pytest.fixture(scope="module")
def system():
    with LocalSystem(hosts=6, frontends=1, latency="zero", metrics=False, zones=ZONES) as local:
        yield local


@pytest.fixture
def project(system: LocalSystem) -> str:
    """A fresh project for each test (nothing shared between them)."""
    name = f"plan-{uuid.uuid4().hex[:8]}"
    system.client(project=name).close()  # makes the project
    return name


def quanta(system: LocalSystem, project: str, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    env = {**os.environ, "QUANTA_ENDPOINT": system.endpoint, "QUANTA_TOKEN": system.admin_token}
    env.pop("QUANTA_CONTEXT", None)
    return subprocess.run([QUANTA, "vm", *args, "--tenant", "default", "--project", project], env=env,
                          capture_output=True, text=True, timeout=timeout)


def zones_of(system: LocalSystem) -> dict[str, str]:
    with system.client() as client:
        return {h.name.rsplit("/", 1)[-1]: h.labels.get(ZONE_LABEL, "") for h in client.list_hosts()}


def planned_hosts(out: str) -> dict[str, str]:
    """The --plan table (the lines before its summary): NAME → HOST ("-": none)."""
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "HOST", "WHY", "NOT"], out
    end = next(i for i, line in enumerate(lines) if line.startswith("fits: "))
    return {cells[0]: cells[1] for cells in (line.split() for line in lines[1:end])}


def test_the_plan_of_the_example_cluster_spreads_its_control_planes_and_writes_nothing(system, project) -> None:
    done = quanta(system, project, "create-many", "-f", CLUSTER, "--plan")
    assert done.returncode == 0, done.stdout + done.stderr
    hosts = planned_hosts(done.stdout)
    assert len(hosts) == 23 and "-" not in hosts.values()
    zones = zones_of(system)
    assert sorted(zones[hosts[f"cp-{i}"]] for i in (1, 2, 3)) == list(ZONES)
    assert "fits: yes (23 VMs on 6 hosts)" in done.stdout
    assert "quota headroom after the set: vms unlimited" in done.stdout
    # Nothing written: no VM, no set, no room taken on any host.
    assert json.loads(quanta(system, project, "list", "-o", "json").stdout) == []
    with system.client(project=project) as client:
        assert all(h.allocated.vcpus == 0 for h in client.list_hosts())
    assert "#cloud-config" not in done.stdout + done.stderr  # the user data is sent, never shown


def test_a_held_plan_then_its_create_lands_on_the_planned_hosts(system, project) -> None:
    held = quanta(system, project, "create-many", "-f", CLUSTER, "--plan", "--hold", "60s", "-o", "json")
    assert held.returncode == 0, held.stdout + held.stderr
    answer = json.loads(held.stdout)
    plan = answer["plan"].rsplit("/", 1)[-1]
    assert answer["fits"] and answer["plan"].endswith(f"/plans/{plan}") and answer["expire_time"]
    planned = {p["vm"].rsplit("/", 1)[-1]: p["host"].removeprefix("hosts/") for p in answer["placements"]}
    assert len(planned) == 23

    done = quanta(system, project, "create-many", "-f", CLUSTER, "--from-plan", plan, "--wait", "--timeout", "150")
    assert done.returncode == 0, done.stdout + done.stderr
    assert any(line.startswith("23/23 placed, 23/23 running") for line in done.stdout.splitlines())
    listed = json.loads(quanta(system, project, "list", "-o", "json").stdout)
    assert {vm["name"].rsplit("/", 1)[-1]: vm["host"] for vm in listed} == planned  # exactly where planned
    assert {vm["state"] for vm in listed} == {"RUNNING"} and len({vm["vm_set"] for vm in listed}) == 1
    # The hold was consumed: the same plan creates nothing more.
    again = quanta(system, project, "create-many", "-f", CLUSTER, "--from-plan", f"plans/{plan}")
    assert again.returncode == 1 and "PLAN_EXPIRED" in again.stderr


def test_a_held_plan_printed_as_a_table_names_it_and_holds_only_for_its_own_vms(system, project,
                                                                               tmp_path) -> None:
    held = quanta(system, project, "create-many", "-f", CLUSTER, "--plan", "--hold", "30s")
    assert held.returncode == 0, held.stdout + held.stderr
    summary = [line for line in held.stdout.splitlines() if line.startswith("plans/")]
    assert len(summary) == 1 and " held until " in summary[0]
    plan = summary[0].split(":", 1)[0].removeprefix("plans/")
    assert f"--from-plan {plan}" in held.stderr
    # Other VMs than the plan's (its control planes alone): refused, nothing written.
    path = tmp_path / "cp.yaml"
    path.write_text("defaults: {flavor: small, image: ubuntu}\n"
                    "vms: [{name: cp, count: 3, anti_affinity_group: demo-cp, anti_affinity_scope: ZONE}]\n")
    other = quanta(system, project, "create-many", "-f", str(path), "--from-plan", plan)
    assert other.returncode == 1 and "FAILED_PRECONDITION: PLAN_MISMATCH" in other.stderr
    assert json.loads(quanta(system, project, "list", "-o", "json").stdout) == []


@pytest.fixture(scope="module")
def two_zones():
    with LocalSystem(hosts=2, frontends=1, latency="zero", metrics=False, zones=ZONES[:2]) as local:
        yield local


def test_three_zone_anti_affine_vms_on_two_zones_do_not_fit(two_zones, tmp_path) -> None:
    project = f"plan-{uuid.uuid4().hex[:8]}"
    two_zones.client(project=project).close()
    path = tmp_path / "cp.yaml"
    path.write_text("defaults: {flavor: small, image: ubuntu}\n"
                    "vms: [{name: cp, count: 3, anti_affinity_group: cp, anti_affinity_scope: ZONE}]\n")
    for hold in ((), ("--hold", "60s")):
        done = quanta(two_zones, project, "create-many", "-f", str(path), "--plan", *hold)
        assert done.returncode == 1, done.stdout + done.stderr
        hosts = planned_hosts(done.stdout)
        assert sorted(hosts) == ["cp-1", "cp-2", "cp-3"] and list(hosts.values()).count("-") == 1
        assert "fits: no (1 VM of 3 fits no host" in done.stdout and "ZoneAntiAffinity" in done.stdout
        assert "error: the set does not fit: 1 VM of 3 fits no host" in done.stderr
        assert ("nothing was held" in done.stderr) == bool(hold) and "plans/" not in done.stdout
    assert json.loads(quanta(two_zones, project, "list", "-o", "json").stdout) == []
