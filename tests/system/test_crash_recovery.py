"""Killing the agent or the scheduler (SIGKILL) mid-creation still ends with
every VM RUNNING, made exactly once on its host, bound exactly once."""

from __future__ import annotations

import asyncio
import collections
import signal
import time
import uuid

import grpc
import pytest

from agents.drivers.sim import read_journal
from controlplane.api.errors import ApiError
from controlplane.etcd import EtcdClient
from controlplane.gen.quanta.v1 import vm_pb2
from controlplane.models import Binding, HostAllocation
from controlplane.store.keys import Keys
from quanta.client import Client
from quanta.local import LocalSystem
from tests.conftest import describe_processes, seen_in, vm_states, wait_until

VMS = 120


@pytest.fixture
def system(etcd_server):
    root = f"/crash-{uuid.uuid4().hex[:8]}"
    # Slow creations (48 at a time, ~1.1 s each): the kills below land with work in flight
    # even when this machine stalls the test for a second.
    with LocalSystem(etcd_endpoint=etcd_server.endpoint, root=root, hosts=6, latency="create=1,power_on=0.1",
                     frontends=1, lease_ttl=3, metrics=False) as local:
        yield local


def _states(client: Client) -> collections.Counter:
    return vm_states(client.list_vms())


def _seen(system: LocalSystem, client: Client, note: str = ""):
    """What a wait saw: the VMs' states by count (and the stragglers, if few), the
    sim hosts' creations so far, any component that died (and ``note``)."""
    vms = seen_in(system, client)
    return lambda: f"{vms()}; {_sim_creations(system)} made on the sim hosts{note}"


def _create_all(client: Client) -> list[vm_pb2.Vm]:
    return [client.create_vm(f"vm-{i:03d}", flavor="small", image="ubuntu") for i in range(VMS)]


def _sim_creations(system: LocalSystem) -> int:
    """VMs the simulated hosts have made so far (their journal needs no etcd)."""
    return sum(r["op"] == "create" for r in read_journal(system.data_dir / "sim"))


def _check_exactly_once(system: LocalSystem, client: Client, vms: list[vm_pb2.Vm], note: str = "") -> None:
    """Every VM RUNNING, made once on its host, bound once; ``note`` is added to the
    timeout message (what the test did that may explain a stall)."""
    wait_until(lambda: _states(client) == {"RUNNING": VMS}, timeout=120, interval=0.2,
               message=f"all {VMS} VMs RUNNING", seen=_seen(system, client, note))
    uids = {vm.uid for vm in vms}
    creates = collections.Counter(r["vm_uid"] for r in read_journal(system.data_dir / "sim") if r["op"] == "create")
    assert set(creates) == uids
    assert max(creates.values()) == 1, "a VM was created twice"

    async def bindings_and_allocations():
        keys = Keys(system.root)
        async with EtcdClient(system.etcd_endpoint) as etcd:
            bound, _ = await etcd.range_prefix(keys.bindings_prefix())
            hosts, _ = await etcd.range_prefix(keys.hosts_prefix())
        bindings = [Binding.from_bytes(kv.value) for kv in bound]
        allocations = {keys.parse_host_key(kv.key)[0]: HostAllocation.from_bytes(kv.value)
                       for kv in hosts if kv.key.endswith(b"/alloc")}
        return bindings, allocations

    bindings, allocations = asyncio.run(bindings_and_allocations())
    assert sorted(b.spec.uid for b in bindings) == sorted(uids), "each VM bound exactly once"
    per_host = collections.Counter(b.host for b in bindings)
    assert {h: a.vm_count for h, a in allocations.items() if a.vm_count} == dict(per_host)
    assert sum(a.resources.vcpus for a in allocations.values()) == VMS  # small = 1 vCPU


def test_agent_killed_mid_creation(system):
    with system.client(project="crash") as client:
        vms = _create_all(client)
        wait_until(lambda: _states(client)["RUNNING"] >= 5, timeout=60, message="some VMs RUNNING",
                   seen=_seen(system, client))
        agent = system.processes["agent-0"]
        agent.kill(signal.SIGKILL)
        assert _states(client)["RUNNING"] < VMS, "the agent should be killed mid-creation"
        agent.start()
        _check_exactly_once(system, client, vms)


def test_scheduler_killed_mid_creation(system):
    with system.client(project="crash") as client:
        scheduler = system.processes["scheduler-0"]
        scheduler.process.send_signal(signal.SIGSTOP)  # hold placement so the kill lands mid-creation
        try:
            vms = _create_all(client)
        finally:
            scheduler.process.send_signal(signal.SIGCONT)
        wait_until(lambda: sum(_states(client)[s] for s in ("SCHEDULED", "CREATING", "RUNNING")) > 0,
                   timeout=60, message="some VMs scheduled", seen=_seen(system, client))
        scheduler.kill(signal.SIGKILL)
        assert _states(client)["PENDING"] > 0 or _states(client)["RUNNING"] < VMS
        scheduler.start()  # waits out the dead process's shard lease, then takes over
        _check_exactly_once(system, client, vms)


def test_transient_driver_faults_are_retried_without_duplicates(etcd_server):
    """30% of host operations fail, half of them after taking effect: the agent
    retries with backoff and adopts what already happened."""
    root = f"/faults-{uuid.uuid4().hex[:8]}"
    with LocalSystem(etcd_endpoint=etcd_server.endpoint, root=root, hosts=4, latency="zero", frontends=1,
                     fault_rate=0.3, metrics=False) as system:
        with system.client(project="faults") as client:
            vms = _create_all(client)
            _check_exactly_once(system, client, vms)
        faults = [line for line in (system.log_dir / "agent-0.log").read_text().splitlines()
                  if "transient driver fault" in line]
        assert faults, "the fault injection did not happen"


def test_etcd_killed_and_restarted_mid_creation(tmp_path):
    """etcd itself crashes (SIGKILL) while VMs are being made and comes back with
    its data: every process rides it out (watches resume, leases survive a short
    outage), nothing acknowledged is lost, nothing is made twice."""
    with LocalSystem(hosts=2, latency="realistic", frontends=1, lease_ttl=10, metrics=False,
                     data_dir=str(tmp_path)) as system, system.client(project="crash") as client:
        agent = system.processes["agent-0"].process
        agent.send_signal(signal.SIGSTOP)  # let the VMs pile up bound, then release them all at once
        try:
            vms = _create_all(client)
            wait_until(lambda: _states(client)["SCHEDULED"] == VMS, timeout=60, message=f"all {VMS} VMs bound",
                       seen=_seen(system, client))
        finally:
            agent.send_signal(signal.SIGCONT)
        # 2 hosts x 8 creations at a time x 0.4 s: the agent is busy for ~3 s when etcd dies.
        killed = time.monotonic()
        system.etcd.process.send_signal(signal.SIGKILL)
        system.etcd.process.wait(30)
        # The agent was stopped until just now: the rest is made and reported across the outage.
        assert _sim_creations(system) < VMS, "etcd should have died mid-creation"
        with system.client(project="crash", timeout=3, ensure_project=False) as impatient, \
                pytest.raises(ApiError) as down:
            impatient.get_vm("vm-000")  # within the caller's deadline, the API says etcd is gone
        assert down.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        system.etcd.restart()
        outage = f"; etcd was down {time.monotonic() - killed:.1f}s (the lease TTL is {system.lease_ttl}s)"
        _check_exactly_once(system, client, vms, note=outage)
        assert all(p.alive for p in system.processes.values()), f"a component died with etcd: " \
            f"{describe_processes(system)}{outage}"
        # The API keeps working after the outage.
        assert client.create_vm("after", flavor="small", image="ubuntu").state == vm_pb2.Vm.PENDING
