"""SIGTERM to an agent mid-creation is a clean stop: it starts no new work, lets the
host operations in flight finish (within ``--shutdown-grace``), writes their
statuses and exits 0; the restarted agent makes the rest, every VM exactly once."""

from __future__ import annotations

import json
import signal
import uuid

import pytest

from agents.drivers.sim import read_journal
from quanta.local import LocalSystem
from tests.conftest import describe_vms, seen_in, wait_until
from tests.system.test_crash_recovery import VMS, _check_exactly_once, _create_all, _states


def _agent_log(system: LocalSystem, message: str) -> list[dict]:
    """The agent's JSON log records whose message starts with ``message``, oldest first."""
    records = []
    for line in (system.log_dir / "agent-0.log").read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and str(record.get("msg", "")).startswith(message):
            records.append(record)
    return records


def _journal_uids(system: LocalSystem, op: str) -> set[str]:
    return {r["vm_uid"] for r in read_journal(system.data_dir / "sim") if r["op"] == op}


@pytest.fixture
def system(etcd_server):
    # 2 hosts x 8 creations at a time x 0.4 s (realistic create + power on): ~3 s for all VMs.
    root = f"/shutdown-{uuid.uuid4().hex[:8]}"
    with LocalSystem(etcd_endpoint=etcd_server.endpoint, root=root, hosts=2, latency="realistic",
                     frontends=1, lease_ttl=3, metrics=False) as local:
        yield local


def test_sigterm_finishes_in_flight_creations_and_writes_their_statuses(system):
    with system.client(project="shutdown") as client:
        vms = _create_all(client)
        wait_until(lambda: _states(client)["RUNNING"] >= 5, timeout=60, message="some VMs RUNNING",
                   seen=seen_in(system, client))
        agent = system.processes["agent-0"]
        agent.kill(signal.SIGTERM)  # returns once the process has exited
        assert agent.process.returncode == 0
        (stopping,) = _agent_log(system, "stopping: no new work")
        assert stopping["inflight"] > 0, "the agent should be stopped mid-creation"
        (stopped,) = _agent_log(system, "agent stopped")
        assert stopped["msg"] == "agent stopped cleanly" and stopped["abandoned"] == 0
        # Nothing was cut half-way: every VM the host made was also powered on...
        made, powered = _journal_uids(system, "create"), _journal_uids(system, "power_on")
        assert made == powered
        assert 0 < len(made) < VMS
        # ...and the stopped agent wrote each of them as RUNNING (nothing else runs them now).
        def running() -> set[str]:
            return {vm.uid for vm in client.list_vms() if vm.state == vm.RUNNING}

        def difference() -> str:
            now = running()
            return (f"{describe_vms(client.list_vms())}; made but not RUNNING: {len(made - now)}, "
                    f"RUNNING but not made: {len(now - made)}")

        wait_until(lambda: running() == made, timeout=10, seen=difference,
                   message=f"RUNNING statuses of exactly the {len(made)} VMs made")
        agent.start()
        _check_exactly_once(system, client, vms)


def test_operations_longer_than_the_grace_are_left_to_the_next_agent(etcd_server, tmp_path):
    root = f"/shutdown-{uuid.uuid4().hex[:8]}"
    agent_args = ["--hosts", "1", "--host-prefix", "sim", "--latency", "create=3",
                  "--state-dir", str(tmp_path / "sim"), "--shutdown-grace", "0.5"]
    with LocalSystem(etcd_endpoint=etcd_server.endpoint, root=root, hosts=1, frontends=1, lease_ttl=3,
                     metrics=False, data_dir=str(tmp_path), agents=[agent_args]) as system, \
            system.client(project="shutdown") as client:
        made = {client.create_vm(f"vm-{i}", flavor="small", image="ubuntu").uid for i in range(4)}
        wait_until(lambda: _states(client)["CREATING"] == 4, timeout=30, message="4 creations in flight",
                   seen=seen_in(system, client))
        agent = system.processes["agent-0"]
        agent.kill(signal.SIGTERM)
        assert agent.process.returncode == 0
        (stopped,) = _agent_log(system, "agent stopped")
        assert stopped["msg"] == "agent stopped after its grace period" and stopped["abandoned"] == 4
        assert _journal_uids(system, "create") == set(), "an abandoned sim create leaves nothing"
        agent.start()
        wait_until(lambda: _states(client) == {"RUNNING": 4}, timeout=60, message="all 4 RUNNING",
                   seen=seen_in(system, client))
        creates = [r["vm_uid"] for r in read_journal(tmp_path / "sim") if r["op"] == "create"]
        assert sorted(creates) == sorted(made)
