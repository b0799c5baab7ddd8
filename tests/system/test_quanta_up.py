"""`quanta up` as a newcomer runs it: it starts everything, the CLI finds it
without flags, a killed component comes back, and Ctrl-C stops every child."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import urllib.request

from tests.conftest import wait_until

QUANTA = os.path.join(os.path.dirname(sys.executable), "quanta")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _scrape(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        return response.read().decode()


def _value(text: str, metric: str) -> float:
    for line in text.splitlines():
        if line.startswith(metric + " "):
            return float(line.split()[1])
    raise AssertionError(f"{metric} not found")


def test_quanta_up_runs_the_system_and_stops_every_child(tmp_path):
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state")}
    up = subprocess.Popen([QUANTA, "up", "--hosts", "3", "--data-dir", str(tmp_path / "data")], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(up.stdout), daemon=True)
    reader.start()
    state_file = tmp_path / "state" / "quanta" / "local.json"
    try:
        wait_until(lambda: any("Quanta is up" in line for line in output) or up.poll() is not None,
                   timeout=90, message="quanta up to report it is up",
                   seen=lambda: f"its output: {''.join(output[-20:])!r}")
        assert up.poll() is None, "".join(output)
        state = json.loads(state_file.read_text())
        assert set(state["pids"]) == {"etcd", "frontend-0", "frontend-1", "scheduler-0", "agent-0"}

        def cli(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run([QUANTA, *args], env=env, capture_output=True, text=True, timeout=60)

        created = cli("vm", "create", "--name", "web-1", "--flavor", "small", "--image", "ubuntu", "--wait")
        assert created.returncode == 0, created.stderr
        assert "PENDING" in created.stdout and "RUNNING" in created.stdout
        assert len(cli("host", "list").stdout.splitlines()) == 1 + 3  # a header, then the hosts

        # Declared metrics (a labelled one has samples only once used: with SO_REUSEPORT
        # one frontend may not have served a call yet).
        expected = {
            "frontend": ("quanta_api_requests_total", "quanta_vm_creations_accepted_total",
                         "quanta_api_request_duration_seconds", "quanta_etcd_request_duration_seconds"),
            "scheduler": ("quanta_scheduler_binds_total", "quanta_scheduler_queue_depth",
                          "quanta_scheduler_placement_duration_seconds"),
            "agent": ("quanta_vm_creations_running_total", "quanta_agent_driver_call_duration_seconds",
                      "quanta_agent_inflight_operations"),
        }
        scraped = {name: _scrape(address) for name, address in state["metrics"].items()}
        assert set(scraped) == {"frontend-0", "frontend-1", "scheduler-0", "agent-0"}
        for name, text in scraped.items():
            for metric in expected[name.split("-")[0]]:
                assert f"\n# TYPE {metric} " in text, f"{name} does not export {metric}"
        assert _value(scraped["scheduler-0"], "quanta_scheduler_binds_total") >= 1
        assert _value(scraped["agent-0"], "quanta_vm_creations_running_total") >= 1

        old_agent = state["pids"]["agent-0"]
        os.kill(old_agent, signal.SIGKILL)
        wait_until(lambda: json.loads(state_file.read_text())["pids"]["agent-0"] != old_agent, timeout=30,
                   message=f"agent-0 (pid {old_agent}) restarted",
                   seen=lambda: f"pids {json.loads(state_file.read_text())['pids']}; output: {''.join(output[-10:])!r}")
        assert "agent-0 exited" in "".join(output)

        pids = json.loads(state_file.read_text())["pids"]
        up.send_signal(signal.SIGINT)
        assert up.wait(60) == 0
        reader.join(10)
        assert "stopped." in "".join(output)
        assert [name for name, pid in pids.items() if _alive(pid)] == []
        assert not state_file.exists()
    finally:
        if up.poll() is None:  # the test failed midway: stop everything anyway
            up.send_signal(signal.SIGINT)
            try:
                up.wait(30)
            except subprocess.TimeoutExpired:
                up.kill()
                up.wait()
                if state_file.exists():
                    for pid in json.loads(state_file.read_text())["pids"].values():
                        if _alive(pid):
                            os.kill(pid, signal.SIGKILL)
