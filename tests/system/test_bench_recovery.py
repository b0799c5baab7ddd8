"""bench/recovery.py against a running system it did not start: the scheduler and the
agent are SIGKILLed and started again as they were (command line, environment and
working directory from /proc), and the system places and runs a VM afterwards."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from controlplane.gen.quanta.v1 import vm_pb2
from quanta.local import LocalSystem
from tests.conftest import wait_until

ROOT = Path(__file__).resolve().parents[2]


def test_recovery_restarts_the_scheduler_and_an_agent_it_did_not_start(tmp_path) -> None:
    with LocalSystem(hosts=2, latency="zero", metrics=False, lease_ttl=5, zones=("zone-a",)) as system:
        scheduler, agent = system.processes["scheduler-0"], system.processes["agent-0"]
        old = {scheduler.pid, agent.pid}
        try:
            run = subprocess.run(
                [sys.executable, str(ROOT / "bench" / "recovery.py"), "--endpoint", system.endpoint,
                 "--token", system.admin_token, "--scheduler-pid", str(scheduler.pid),
                 "--agent-pid", str(agent.pid), "--zone", "zone-a", "--log-dir", str(tmp_path),
                 "--timeout", "120"],
                capture_output=True, text=True, timeout=400)
            report = json.loads(run.stdout.strip().splitlines()[-1]) if run.returncode == 0 else {}
            assert run.returncode == 0, f"recovery.py failed:\n{run.stderr[-3000:]}"
            restarted = [part["pid"] for part in report.values()]
            assert set(report) == {"scheduler_recovery", "agent_recovery"}, report
            assert not old & set(restarted), f"the same pids {old} after the restarts: {restarted}"
            assert sorted(restarted) == sorted(int(p.read_text()) for p in tmp_path.glob("*.pid"))
            for pid in restarted:
                os.kill(pid, 0)  # still running: the restarted processes outlive the script
            agent_figures = report["agent_recovery"]
            assert 0 < agent_figures["restart_to_bindings_listed_s"] <= agent_figures["restart_to_hosts_ready_s"] \
                <= agent_figures["restart_to_running_s"] <= agent_figures["kill_to_running_s"], agent_figures
            scheduler_figures = report["scheduler_recovery"]
            assert 0 < scheduler_figures["restart_to_running_s"] <= scheduler_figures["kill_to_running_s"]
            assert b"bindings listed" in (tmp_path / "agent.log").read_bytes()
            with system.client(project="recovery", ensure_project=False) as client:
                states = [vm.state for vm in client.list_vms()]
            assert states == [vm_pb2.Vm.RUNNING] * 2, f"the probe VMs: {states}"
        finally:
            # Each restarted process's pid is in LOG.pid from its start on, also when the
            # measurement failed (recovery.py leaves them running).
            for pidfile in tmp_path.glob("*.pid"):
                stop(int(pidfile.read_text()))


def stop(pid: int) -> None:
    """SIGTERM ``pid`` (not our child), SIGKILL it if it is still there after 10 s."""
    def gone() -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
        except FileNotFoundError:
            return True
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        try:
            wait_until(gone, timeout=10, message=f"pid {pid} gone after {sig.name}",
                       seen=lambda: Path(f"/proc/{pid}/stat").read_text()[:200])
            return
        except AssertionError:
            continue
