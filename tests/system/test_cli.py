"""The ``quanta`` command as a user runs it against a real system: headers, every
-o format, a stuck ``--wait`` that ends cleanly with the reason, no traceback for
an unreachable endpoint or a closed pipe, and — through a real terminal (a pty) —
a live progress line and colours that are absent when the output is piped."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time

import pytest
import yaml

from quanta.local import LocalSystem
from tests.conftest import wait_until

QUANTA = os.path.join(os.path.dirname(sys.executable), "quanta")
ANSI = re.compile(r"\x1b\[")
PROJECT = ("--tenant", "default", "--project", "cli")


@pytest.fixture(scope="module")
def system():
    with LocalSystem(hosts=2, frontends=1, latency="zero", metrics=False) as local:
        with local.client(project="cli") as client:  # makes the project
            client.create_vm("web-1", flavor="small", image="ubuntu")
            client.wait_for_vm("web-1", "RUNNING", timeout=60)
        yield local


def _env(system: LocalSystem) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR")}
    return {**env, "QUANTA_ENDPOINT": system.endpoint, "QUANTA_TOKEN": system.admin_token}


def quanta(system: LocalSystem, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([QUANTA, *args], env=_env(system), capture_output=True, text=True, timeout=timeout)


def in_terminal(system: LocalSystem, *args: str, timeout: float = 60) -> tuple[int, str]:
    """Run ``quanta ARGS`` with stdout and stderr on a pty, as in a terminal; its exit
    code and everything it wrote."""
    main, child = os.openpty()
    env = {**_env(system), "TERM": "xterm-256color", "COLUMNS": "160"}
    process = subprocess.Popen([QUANTA, *args], env=env, stdin=subprocess.DEVNULL, stdout=child, stderr=child,
                               start_new_session=True)
    os.close(child)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([main], [], [], 0.5)
            if not ready:
                if process.poll() is not None:
                    break
                continue
            try:
                data = os.read(main, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        code = process.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if process.poll() is None:
            process.kill()
        os.close(main)
    return code, b"".join(chunks).decode(errors="replace")


def test_listings_have_headers(system: LocalSystem) -> None:
    vm_header = ["NAME", "STATE", "FLAVOR", "IMAGE", "HOST", "IP", "AGE", "REASON"]
    for args, header in ((("vm", "list", *PROJECT), vm_header),
                         (("host", "list"), ["NAME", "STATE", "VMS", "VCPUS", "MEMORY_MIB"]),
                         (("tenant", "list"), ["NAME", "DISPLAY", "NAME", "AGE"]),
                         (("flavor", "list"), ["NAME", "VCPUS", "MEMORY_MIB", "DISK_GIB", "VISIBILITY"]),
                         (("image", "list"), ["NAME", "OS", "SIZE_GIB", "SOURCE"]),
                         (("audit", "list", "--all"), ["TIME", "SUBJECT", "METHOD", "RESOURCE", "CODE"])):
        done = quanta(system, *args)
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        assert lines[0].split() == header and len(lines) >= 2, done.stdout
        assert not ANSI.search(done.stdout)  # piped: no colour
    rows = quanta(system, "vm", "list", *PROJECT).stdout.splitlines()
    assert rows[1].split()[:2] == ["web-1", "RUNNING"]


def test_every_output_format_parses(system: LocalSystem) -> None:
    listed = json.loads(quanta(system, "vm", "list", *PROJECT, "-o", "json").stdout)
    assert [vm["name"] for vm in listed] == ["tenants/default/projects/cli/vms/web-1"]
    assert listed[0]["state"] == "RUNNING" and "create_time" in listed[0]  # the proto's field names
    docs = yaml.safe_load(quanta(system, "vm", "list", *PROJECT, "-o", "yaml").stdout)
    assert [d["name"] for d in docs] == [vm["name"] for vm in listed]
    assert quanta(system, "vm", "list", *PROJECT, "-o", "name").stdout == "vms/web-1\n"
    one = yaml.safe_load(quanta(system, "vm", "get", "vms/web-1", *PROJECT, "-o", "yaml").stdout)
    assert one["name"] == listed[0]["name"] and one["host"]
    hosts = json.loads(quanta(system, "host", "list", "-o", "json").stdout)
    assert {h["name"] for h in hosts} == {"hosts/sim-00000", "hosts/sim-00001"} and "vm_count" in str(hosts)
    wide = quanta(system, "vm", "list", *PROJECT, "-o", "wide").stdout.splitlines()
    assert wide[0].split()[-5:] == ["MESSAGE", "UID", "NICS", "DISKS", "LABELS"]


def test_get_shows_the_detail_with_its_audit_records(system: LocalSystem) -> None:
    shown = quanta(system, "vm", "get", "web-1", *PROJECT)
    assert shown.returncode == 0, shown.stderr
    fields = dict(line.split(":", 1) for line in shown.stdout.splitlines() if ":" in line and not line[0].isspace())
    assert fields["State"].strip() == "RUNNING" and fields["Power"].strip() == "on"
    assert fields["Host"].strip().startswith("sim-")
    audit = shown.stdout.split("Recent audit records:\n", 1)[1].splitlines()
    assert audit[0].split() == ["TIME", "SUBJECT", "METHOD", "CODE"] and audit[1].split()[2:] == ["CreateVm", "OK"]


def test_create_takes_the_name_positionally_and_errors_name_the_flag(system: LocalSystem) -> None:
    made = quanta(system, "vm", "create", "pos-1", *PROJECT, "--flavor", "small", "--image", "ubuntu", "-o", "name")
    assert made.returncode == 0 and made.stdout == "vms/pos-1\n", made.stderr
    bad = quanta(system, "vm", "create", "Bad_Name", *PROJECT, "--flavor", "small", "--image", "ubuntu")
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert '--name: VM id "Bad_Name" is not valid: use 1 to 63 lowercase letters' in bad.stderr, bad.stderr
    assert "vm_id" not in bad.stderr and "[a-z]" not in bad.stderr


def test_a_stuck_wait_ends_with_the_reason(system: LocalSystem) -> None:
    started = time.monotonic()
    stuck = quanta(system, "vm", "create", "stuck-1", *PROJECT, "--flavor", "small", "--image", "ubuntu",
                   "--node-selector", "zone=nowhere", "--wait", "--timeout", "4")
    assert stuck.returncode == 1, stuck
    assert "Traceback" not in stuck.stderr
    assert stuck.stderr.strip() == ("error: vms/stuck-1 is still PENDING after 4 s: NoHostFits: 0/2 hosts fit: "
                                    "2 NodeSelectorMismatch; the creation goes on"), stuck.stderr
    assert time.monotonic() - started < 30
    # The progress, piped: one plain line per change, ending with the reason.
    assert stuck.stdout.splitlines()[-1] == "vms/stuck-1: PENDING (NoHostFits: 0/2 hosts fit: 2 NodeSelectorMismatch)"
    gone = quanta(system, "vm", "delete", "stuck-1", *PROJECT, "--wait", "--timeout", "60")
    assert gone.returncode == 0 and gone.stdout.splitlines()[-1] == "vms/stuck-1 deleted", gone


def test_nothing_listening_names_the_endpoint_and_suggests_quanta_up(system: LocalSystem) -> None:
    done = quanta(system, "vm", "list", "--endpoint", "127.0.0.1:1")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("error: cannot reach the Quanta API at 127.0.0.1:1"), done.stderr
    assert "quanta up" in done.stderr and "UNAVAILABLE" not in done.stderr


def test_a_closed_pipe_ends_quietly(system: LocalSystem, tmp_path) -> None:
    """``quanta vm watch | head -1``: head exits after a line; the next event the
    watch writes meets a closed pipe, and the command ends without a word."""
    errors = tmp_path / "stderr"
    pipeline = subprocess.Popen(f"{QUANTA} vm watch {' '.join(PROJECT)} -o json 2>{errors} | head -1", shell=True,
                                env=_env(system), stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        first = pipeline.stdout.readline()
        assert json.loads(first)["type"] == "ADDED"
        with system.client(project="cli", ensure_project=False) as client:
            for i in range(3):  # events the watch will try to write
                client.create_vm(f"pipe-{i}", flavor="small", image="ubuntu")
        assert pipeline.wait(timeout=60) == 0
    finally:
        if pipeline.poll() is None:
            os.killpg(pipeline.pid, signal.SIGKILL)
    wait_until(lambda: errors.exists(), timeout=5, message="the watch's stderr file",
               seen=lambda: f"no {errors}; pipeline exit code {pipeline.poll()}")
    assert errors.read_text() == "", errors.read_text()


def test_in_a_terminal_progress_and_colour_show_and_not_when_piped(system: LocalSystem) -> None:
    code, text = in_terminal(system, "vm", "create", "tty-1", *PROJECT, "--flavor", "small", "--image", "ubuntu",
                             "--node-selector", "zone=nowhere", "--wait", "--timeout", "3")
    assert code == 1, text
    assert "Traceback" not in text
    # The live line, rewritten in place (erase-line controls), with the state and its reason; then the error.
    assert text.count("\x1b[2K") >= 2, text
    assert "vms/tty-1: PENDING (NoHostFits" in text
    assert "error: vms/tty-1 is still PENDING after 3 s: NoHostFits" in text
    code, listing = in_terminal(system, "vm", "list", *PROJECT)
    assert code == 0 and ANSI.search(listing), listing  # a bold header, coloured states
    assert re.search(r"NAME.*STATE", re.sub(r"\x1b\[[0-9;]*m", "", listing)), listing
    piped = quanta(system, "vm", "create", "tty-2", *PROJECT, "--flavor", "small", "--image", "ubuntu",
                   "--node-selector", "zone=nowhere", "--wait", "--timeout", "1")
    assert not ANSI.search(piped.stdout + piped.stderr) and "\r" not in piped.stdout + piped.stderr


def test_version_and_completion_scripts() -> None:
    version = subprocess.run([QUANTA, "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and re.fullmatch(r"quanta \d+\.\d+\.\d+\S*\n", version.stdout), version
    for shell in ("bash", "zsh", "fish"):
        done = subprocess.run([QUANTA, "completion", shell], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and "--node-selector" in done.stdout, done.stderr
    bash = subprocess.run(["bash", "-n"], input=subprocess.run([QUANTA, "completion", "bash"], capture_output=True,
                                                              text=True, timeout=60).stdout,
                          capture_output=True, text=True, timeout=60)
    assert bash.returncode == 0, bash.stderr  # a script bash can parse
