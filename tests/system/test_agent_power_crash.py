"""The agent as a real process: killed (SIGKILL) in the middle of a soft stop, the
restarted agent finishes it (hard, at the deadline counted from the request);
killed between the power-off and the power-on of a restart and of a resize that
needs a power cycle, the restarted agent powers the VMs on (the restart applied
once, the new size kept); and bootstrap data delivered and cleared is in no line
of the agent's log, nor in the simulated hypervisor's journal. Desired state is
written with the store, as the frontends do."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from dataclasses import replace

from agents.drivers.sim import read_journal
from controlplane.etcd import EtcdClient
from controlplane.models import (
    BootstrapFormat,
    BootstrapState,
    Power,
    PowerOffMode,
    Resources,
    VmRef,
    VmSpec,
    VmState,
    VmStatus,
    now_ns,
)
from controlplane.store import bootstrap
from controlplane.store.bootstrap import BootstrapData
from controlplane.store.keys import Keys, shard_of
from controlplane.store.vms import VmStore
from quanta.local import LocalSystem
from tests.conftest import describe_processes, make_projects, wait_until

TENANT, PROJECT = "acme", "power"
SECRET = b"#cloud-config\nchpasswd: {list: 'root:" + uuid.uuid4().hex.encode() + b"'}\n"
GRACE_S = 5


def _spec(vm_id: str) -> VmSpec:
    uid = uuid.uuid4().hex
    return VmSpec(VmRef(TENANT, PROJECT, vm_id), uid, "small", "ubuntu", Resources(1, 1024, 10),
                  create_time_ns=now_ns(), shard=shard_of(uid, 1))


def _store(system: LocalSystem, call):
    async def main():
        async with EtcdClient(system.etcd_endpoint) as client:
            return await call(VmStore(client, Keys(system.root)), client)
    return asyncio.run(main())


def _status(system: LocalSystem, spec: VmSpec) -> VmStatus:
    return _store(system, lambda vms, _: vms.get(spec.ref)).status


def _reasons(status: VmStatus) -> dict[str, str]:
    return {c.type: c.reason for c in status.conditions}


def test_a_killed_agent_finishes_a_soft_stop_and_never_logs_bootstrap_data(etcd_server, tmp_path) -> None:
    root = f"/power-{uuid.uuid4().hex[:8]}"
    state_dir = tmp_path / "sim"
    # The guests take a minute to shut down: only the deadline stops them.
    agent_args = ["--hosts", "1", "--host-prefix", "sim", "--latency", "shutdown=60", "--state-dir", str(state_dir)]
    make_projects(etcd_server.endpoint, root, TENANT, PROJECT)
    with LocalSystem(etcd_endpoint=etcd_server.endpoint, root=root, hosts=1, frontends=1, lease_ttl=3,
                     metrics=False, data_dir=str(tmp_path), agents=[agent_args]) as system:
        seen = lambda: describe_processes(system)  # noqa: E731
        secret, plain = _spec("secret"), _spec("plain")
        data = BootstrapData(secret.uid, BootstrapFormat.CLOUD_INIT, SECRET, b'{"instance-id":"secret"}')
        secret = replace(secret, bootstrap=data.summary())

        async def create(vms: VmStore, client: EtcdClient) -> None:
            await vms.create(secret, also=[bootstrap.put_op(Keys(root), secret.ref, data)])
            await vms.create(plain)

        _store(system, create)
        for spec in (secret, plain):
            wait_until(lambda s=spec: _reasons(_status(system, s)).get("AddressAssigned") == "AddressReported",
                       timeout=60, message=f"{spec.ref.vm_id} RUNNING with an address", seen=seen)
        status = wait_until(lambda: (s := _status(system, secret)).bootstrap == BootstrapState.CLEARED and s,
                            timeout=30, message="bootstrap data cleared", seen=seen)
        assert _reasons(status)["Bootstrapped"] == "BootstrapCleared"
        assert _store(system, lambda _, client: client.get(Keys(root).bootstrap(secret.ref))) is None

        # A soft stop; the agent dies while the guest is (slowly) shutting down.
        asked = now_ns()
        _store(system, lambda vms, _: vms.update_spec(plain.ref, lambda s: replace(
            s, power=Power.OFF, power_off_mode=PowerOffMode.SOFT, power_off_grace_s=GRACE_S, power_time_ns=asked)))

        def ops() -> list[tuple[str, str | None]]:
            return [(r["op"], r.get("by")) for r in read_journal(state_dir) if r["vm_uid"] == plain.uid]

        wait_until(lambda: ("shutdown_guest", None) in ops(), timeout=30, message="the guest asked to shut down",
                   seen=ops)
        agent = system.processes["agent-0"]
        agent.kill(signal.SIGKILL)
        assert ops()[-1] == ("shutdown_guest", None), "the stop should be unfinished when the agent dies"
        assert _status(system, plain).state == VmState.RUNNING
        agent.start()
        status = wait_until(lambda: (s := _status(system, plain)).state == VmState.STOPPED and s, timeout=60,
                            message="STOPPED by the restarted agent", seen=lambda: f"{ops()}; {seen()}")
        assert _reasons(status)["Stopped"] == "StoppedByRequest" and status.power_time_ns == asked
        assert ops()[-1] == ("power_off", None), "powered off hard at the deadline"
        assert (now_ns() - asked) / 1e9 >= GRACE_S - 0.5
        assert ops().count(("power_off", None)) == 1
        assert time.time_ns() - asked < 60e9, "not by the guest's own (minute-long) shutdown"

        # The bootstrap data is in no log line of the agent, nor in the hypervisor's journal.
        log_text = (system.log_dir / "agent-0.log").read_bytes()
        assert b"bootstrap data cleared" in log_text
        assert SECRET not in log_text and SECRET.split(b"'")[1] not in log_text
        journal = (state_dir / "journal.jsonl").read_bytes()
        assert SECRET.split(b"'")[1] not in journal


def _cycle(status: VmStatus) -> tuple[str, str] | None:
    return next(((c.status, c.reason) for c in status.conditions if c.type == "PowerCycle"), None)


def test_a_killed_agent_finishes_a_restart_and_a_resize_between_power_off_and_on(etcd_server, tmp_path) -> None:
    root = f"/cycle-{uuid.uuid4().hex[:8]}"
    state_dir = tmp_path / "sim"
    agent_args = ["--hosts", "1", "--host-prefix", "sim", "--state-dir", str(state_dir)]
    make_projects(etcd_server.endpoint, root, TENANT, PROJECT)
    with LocalSystem(etcd_endpoint=etcd_server.endpoint, root=root, hosts=1, frontends=1, lease_ttl=3,
                     metrics=False, data_dir=str(tmp_path), agents=[agent_args]) as system:
        seen = lambda: describe_processes(system)  # noqa: E731
        big, again = replace(_spec("big"), resources=Resources(2, 2048, 10)), _spec("again")

        async def create(vms: VmStore, client: EtcdClient) -> None:
            for spec in (big, again):
                await vms.create(spec)

        _store(system, create)
        for spec in (big, again):
            wait_until(lambda s=spec: _reasons(_status(system, s)).get("AddressAssigned") == "AddressReported",
                       timeout=60, message=f"{spec.ref.vm_id} RUNNING with an address", seen=seen)

        def ops(spec: VmSpec) -> list[tuple]:
            """What was done to the VM (not what its guest did, but shut down)."""
            return [(r["op"], r.get("by") or r.get("vcpus")) for r in read_journal(state_dir)
                    if r["vm_uid"] == spec.uid and r["op"] != "booted"]

        # The next agent takes half a minute to power a VM on: it dies before it has.
        agent = system.processes["agent-0"]
        agent.kill(signal.SIGKILL)
        argv = list(agent.argv)
        agent.argv = [*argv, "--latency", "power_on=30"]
        agent.start()
        before = {spec.uid: len(ops(spec)) for spec in (big, again)}
        # A shrink (the sim, as ESXi, cannot hot-remove: a power cycle) and a hard restart.
        _store(system, lambda vms, _: vms.update_spec(big.ref, lambda s: replace(s, resources=Resources(1, 1024, 10))))
        _store(system, lambda vms, _: vms.update_spec(again.ref, lambda s: replace(
            s, restarts=1, power_time_ns=now_ns(), power_off_mode=PowerOffMode.HARD)))

        def news() -> str:
            return f"big: {ops(big)[before[big.uid]:]}; again: {ops(again)[before[again.uid]:]}; {seen()}"

        wait_until(lambda: ops(big)[before[big.uid]:] == [("shutdown_guest", None), ("power_off", "guest"),
                                                          ("reconfigure", 1)],
                   timeout=60, message="the VM to shrink off and resized", seen=news)
        status = wait_until(lambda: (s := _status(system, again)).state == VmState.STOPPED and s, timeout=30,
                            message="the restart's power-off on record", seen=lambda: f"{_status(system, again)}")
        assert ops(again)[before[again.uid]:] == [("power_off", None)]
        assert _cycle(status) == ("True", "Restart") and status.restarts == 1
        assert _cycle(_status(system, big)) == ("True", "Resize")
        agent.kill(signal.SIGKILL)
        assert [op for op, _ in ops(big) + ops(again)].count("power_on") == 2, "powered on before the kill"

        agent.argv = argv
        agent.start()
        for spec in (big, again):
            status = wait_until(lambda s=spec: (st := _status(system, s)).state == VmState.RUNNING
                                and _cycle(st) is None and st, timeout=60,
                                message=f"{spec.ref.vm_id} RUNNING again, its power cycle finished", seen=news)
            assert "Stopped" not in _reasons(status), "not reported stopped outside Quanta"
            wait_until(lambda s=spec: _reasons(_status(system, s)).get("AddressAssigned") == "AddressReported",
                       timeout=30, message=f"{spec.ref.vm_id} with an address again", seen=news)
        assert ops(big)[before[big.uid]:] == [("shutdown_guest", None), ("power_off", "guest"), ("reconfigure", 1),
                                             ("power_on", None)], "resized once, powered on once"
        assert ops(again)[before[again.uid]:] == [("power_off", None), ("power_on", None)], "restarted once"
        assert _status(system, again).restarts == 1
