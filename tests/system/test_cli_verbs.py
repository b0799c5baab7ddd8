"""``quanta vm start|stop|restart|resize|update`` and ``create --user-data`` as a
user runs them against a real local system (sim hosts whose guests boot, report an
address and bootstrap): each --wait ends in the state it names and prints the
address; refusals end with the code and reason and change nothing; the bootstrap
data is shown by its summary only, in every format."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest
import yaml

from quanta.local import LocalSystem

QUANTA = os.path.join(os.path.dirname(sys.executable), "quanta")
PROJECT = ("--tenant", "default", "--project", "verbs")
SECRET = b"#cloud-config\nruncmd: [echo secret-7b1d9e]\n"


@pytest.fixture(scope="module")
def system():
    with LocalSystem(hosts=2, frontends=1, latency="zero", metrics=False) as local:
        local.client(project="verbs").close()  # makes the project
        yield local


def quanta(system: LocalSystem, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    env = {**os.environ, "QUANTA_ENDPOINT": system.endpoint, "QUANTA_TOKEN": system.admin_token}
    env.pop("QUANTA_CONTEXT", None)
    return subprocess.run([QUANTA, "vm", *args, *PROJECT], env=env, capture_output=True, text=True, timeout=timeout)


def ok(system: LocalSystem, *args: str) -> str:
    done = quanta(system, *args)
    assert done.returncode == 0, f"quanta vm {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def table(text: str) -> dict[str, str]:
    """The last one-row table printed (after any progress lines): header → cell."""
    lines = text.strip().splitlines()
    header = next(i for i in range(len(lines) - 1, -1, -1) if lines[i].startswith("NAME "))
    return dict(zip(lines[header].split(), lines[header + 1].split(), strict=False))


def get(system: LocalSystem, name: str) -> dict:
    return json.loads(ok(system, "get", name, "-o", "json"))


def test_create_with_user_data_waits_for_the_address_and_shows_only_the_summary(system, tmp_path) -> None:
    user_data = tmp_path / "user-data.yaml"
    user_data.write_bytes(SECRET)
    out = ok(system, "create", "node-1", "--flavor", "small", "--image", "ubuntu", "--user-data", str(user_data),
             "--metadata", "role=worker", "--hostname", "node-1", "--wait", "--timeout", "60")
    row = table(out)
    assert row["STATE"] == "RUNNING" and row["IP"].count(".") == 3, out
    vm = get(system, "node-1")
    assert vm["addresses"][0]["ip"] == row["IP"] and vm["power"] == "POWERED_ON"
    summary = vm["bootstrap"]
    assert summary["size_bytes"] == str(len(SECRET)) and summary["sha256"] == hashlib.sha256(SECRET).hexdigest()
    assert "user_data" not in summary and "metadata" not in summary
    for args in (("get", "node-1"), ("get", "node-1", "-o", "yaml"), ("list", "-o", "wide"), ("list", "-o", "json")):
        assert b"secret-7b1d9e" not in ok(system, *args).encode(), args
    assert "Bootstrap data (never shown: its summary only):" in ok(system, "get", "node-1")


def test_stop_start_restart_resize_and_update(system) -> None:
    ok(system, "create", "web-1", "--flavor", "small", "--image", "ubuntu", "--wait", "--timeout", "60")
    stopped = table(ok(system, "stop", "web-1", "--hard", "--wait", "--timeout", "60"))
    assert (stopped["STATE"], stopped["IP"], stopped["REASON"]) == ("STOPPED", "-", "StoppedByRequest")
    vm = get(system, "web-1")
    assert vm["power"] == "POWERED_OFF" and vm["host"], "a stopped VM keeps its host"
    assert ok(system, "stop", "web-1", "-o", "json")  # idempotent
    started = table(ok(system, "start", "web-1", "--wait", "--timeout", "60"))
    assert started["STATE"] == "RUNNING" and started["IP"] != "-" and started["HOST"] == vm["host"]
    restarted = table(ok(system, "restart", "web-1", "--grace", "10s", "--wait", "--timeout", "60"))
    assert restarted["STATE"] == "RUNNING" and restarted["IP"] != "-"
    resized = table(ok(system, "resize", "web-1", "medium", "--wait", "--timeout", "60"))
    assert resized["FLAVOR"] == "medium" and resized["STATE"] == "RUNNING"
    assert get(system, "web-1")["resources"]["vcpus"] == 2
    assert yaml.safe_load(ok(system, "get", "web-1", "-o", "yaml"))["reconciling"] is False  # said, not omitted
    ok(system, "update", "web-1", "--label", "tier=gold", "--label", "team=a")
    ok(system, "update", "web-1", "--label", "tier=silver", "--remove-label", "team")
    assert get(system, "web-1")["labels"] == {"tier": "silver"}
    docs = yaml.safe_load(ok(system, "list", "-o", "yaml"))
    assert next(d for d in docs if d["name"].endswith("/web-1"))["labels"] == {"tier": "silver"}


def test_refusals_say_code_and_reason_and_change_nothing(system) -> None:
    ok(system, "create", "db-1", "--flavor", "small", "--image", "ubuntu", "--wait", "--timeout", "60")
    before = get(system, "db-1")
    stale = quanta(system, "update", "db-1", "--label", "x=y", "--etag", "stale")
    assert stale.returncode == 1 and stale.stderr.startswith("error: ABORTED: ETAG_MISMATCH"), stale.stderr
    unknown = quanta(system, "resize", "db-1", "huge")
    assert unknown.returncode == 1 and "INVALID_ARGUMENT" in unknown.stderr, unknown.stderr
    assert "  FLAVOR: unknown flavor 'huge'" in unknown.stderr and "--flavor" not in unknown.stderr  # positional
    assert "Traceback" not in stale.stderr + unknown.stderr
    after = get(system, "db-1")
    assert after.get("labels", {}) == before.get("labels", {}) and after["flavor"] == "small"
    # Several VMs: the one that fails is named, the others are stopped, the exit code says it.
    several = quanta(system, "stop", "db-1", "missing-1", "--hard")
    assert several.returncode == 1 and "error: vms/missing-1: NOT_FOUND" in several.stderr, several.stderr
    assert get(system, "db-1")["power"] == "POWERED_OFF"
    pending = quanta(system, "create", "stuck-1", "--flavor", "small", "--image", "ubuntu",
                     "--node-selector", "zone=nowhere")
    assert pending.returncode == 0
    refused = quanta(system, "stop", "stuck-1")
    assert refused.returncode == 1 and refused.stderr.startswith("error: FAILED_PRECONDITION: VM_PENDING"), refused
    assert get(system, "stuck-1").get("power", "POWERED_ON") == "POWERED_ON"
    both = quanta(system, "create", "x-1", "--flavor", "small", "--image", "ubuntu", "--user-data", "a",
                  "--ignition", "b")
    assert both.returncode == 2 and "not allowed with argument" in both.stderr


def test_delete_takes_several_names_and_waits_for_all(system) -> None:
    for name in ("del-1", "del-2"):
        ok(system, "create", name, "--flavor", "small", "--image", "ubuntu")
    done = quanta(system, "delete", "del-1", "missing-2", "vms/del-2", "--wait", "--timeout", "60")
    # The missing one is named and makes the exit code 1; the others are deleted and followed until gone.
    assert done.returncode == 1 and "error: vms/missing-2: NOT_FOUND" in done.stderr, done.stdout + done.stderr
    assert done.stdout.splitlines()[-2:] == ["vms/del-1 deleted", "vms/del-2 deleted"], done.stdout
    names = [vm["name"].rsplit("/", 1)[-1] for vm in json.loads(ok(system, "list", "-o", "json"))]
    assert "del-1" not in names and "del-2" not in names
    both = quanta(system, "delete", "del-1", "del-2", "--etag", "e")
    assert both.returncode == 2 and "one NAME" in both.stderr
