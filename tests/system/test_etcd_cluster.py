"""A three-member etcd under steady creates: its leader crashes and comes back, a
follower crashes and comes back, then two members stop for a few seconds (no
quorum). Every component is given all three endpoints and fails over; none
exits; writes without quorum are refused with UNAVAILABLE; the system resumes by
itself; every acknowledged VM ends RUNNING, made and bound exactly once, and the
hosts' allocations match the bindings. What a client saw in each phase is printed
(``pytest -s``) and recorded in docs/etcd-cluster.md."""

from __future__ import annotations

import asyncio
import collections
import signal
import threading
import time
import urllib.request
from dataclasses import dataclass, field

import grpc
import pytest

from agents.drivers.sim import read_journal
from controlplane.api.errors import ApiError
from controlplane.etcd import EtcdClient
from controlplane.etcd.server import EtcdCluster
from controlplane.gen.quanta.v1 import vm_pb2, vm_pb2_grpc
from controlplane.models import Binding, HostAllocation
from controlplane.store.keys import Keys
from quanta.local import LocalSystem
from tests.conftest import seen_in, wait_until

QUORUM_LOSS_S = 3.0  # how long two of the three members stay stopped
ACKS_PER_PHASE = 15  # creates acknowledged after a fault before the next one


@dataclass
class Load:
    """Creates one VM after another (new name each, ~10/s) and records each outcome."""

    system: LocalSystem
    acked: list[vm_pb2.Vm] = field(default_factory=list)
    #: (start, seconds, code name or "OK") of every create.
    calls: list[tuple[float, float, str]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with self.system.client(project="cluster", timeout=5, ensure_project=False) as client:
            i = 0
            while not self.stop.is_set():
                started = time.monotonic()
                try:
                    vm = client.create_vm(f"vm-{i:05d}", flavor="small", image="ubuntu")
                except ApiError as err:
                    self.calls.append((started, time.monotonic() - started, err.code.name))
                else:
                    self.calls.append((started, time.monotonic() - started, "OK"))
                    self.acked.append(vm)
                i += 1
                self.stop.wait(max(0.0, 0.1 - (time.monotonic() - started)))

    def wait_acks(self, more: int, what: str, timeout: float = 90) -> float:
        """Wait until ``more`` creates beyond now are acknowledged; returns when the first was."""
        since, target = time.monotonic(), len(self.acked) + more
        wait_until(lambda: len(self.acked) >= target, timeout=timeout, interval=0.05,
                   message=f"{more} creates acknowledged {what} (want {target})",
                   seen=lambda: f"{len(self.acked)} acknowledged; last outcomes {[c[2] for c in self.calls[-5:]]}")
        return next(start + took for start, took, code in self.calls if code == "OK" and start + took >= since)

    def summary(self, phase: str, since: float, until: float) -> str:
        calls = [c for c in self.calls if since <= c[0] < until]
        codes = collections.Counter(code for _, _, code in calls)
        slowest = max((took for _, took, _ in calls), default=0.0)
        return f"{phase}: {len(calls)} creates, outcomes {dict(codes)}, slowest {slowest:.2f}s"


def _scrape(port: int, metric: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(metric + " "):
                return float(line.split()[1])
    raise AssertionError(f"{metric} not exported on :{port}")


def _check_exactly_once(system: LocalSystem, client, acked: list[vm_pb2.Vm]) -> None:
    """Every acknowledged VM exists once and RUNNING (so does any create whose answer was
    lost), each made once on its host, bound once, and allocations match bindings."""
    states: collections.Counter = collections.Counter()

    def all_running() -> dict[str, vm_pb2.Vm] | None:
        vms = {vm.uid: vm for vm in client.list_vms()}
        states.clear()
        states.update(vm_pb2.Vm.State.Name(vm.state) for vm in vms.values())
        return vms if set(states) == {"RUNNING"} else None

    vms = wait_until(all_running, timeout=120, interval=0.5, message="every VM RUNNING",
                     seen=seen_in(system, client))
    assert {vm.uid for vm in acked} <= set(vms), "an acknowledged create was lost"
    assert len({vm.name for vm in vms.values()}) == len(vms)
    creates = collections.Counter(r["vm_uid"] for r in read_journal(system.sim_state_dir()) if r["op"] == "create")
    assert set(creates) == set(vms)
    assert max(creates.values()) == 1, "a VM was created twice"

    async def bindings_and_allocations():
        keys = Keys(system.root)
        async with EtcdClient(system.etcd_endpoint) as etcd:
            bound, _ = await etcd.range_prefix(keys.bindings_prefix())
            hosts, _ = await etcd.range_prefix(keys.hosts_prefix())
        return ([Binding.from_bytes(kv.value) for kv in bound],
                {keys.parse_host_key(kv.key)[0]: HostAllocation.from_bytes(kv.value)
                 for kv in hosts if kv.key.endswith(b"/alloc")})

    bindings, allocations = asyncio.run(bindings_and_allocations())
    assert sorted(b.spec.uid for b in bindings) == sorted(vms), "each VM bound exactly once"
    per_host = collections.Counter(b.host for b in bindings)
    assert {h: a.vm_count for h, a in allocations.items() if a.vm_count} == dict(per_host)
    assert sum(a.resources.vcpus for a in allocations.values()) == len(vms)  # small = 1 vCPU


@pytest.fixture
def system(tmp_path):
    with LocalSystem(etcd_members=3, hosts=6, latency="create=0.2,power_on=0.05", frontends=1, lease_ttl=10,
                     data_dir=str(tmp_path)) as local:
        yield local


def test_three_member_etcd_rides_out_member_crashes_and_a_quorum_loss(system):
    etcd = system.etcd
    assert isinstance(etcd, EtcdCluster) and len(system.etcd_endpoint.split(",")) == 3
    system.client(project="cluster").close()
    load = Load(system)
    loader = threading.Thread(target=load.run, name="load")
    loader.start()
    report = []
    try:
        load.wait_acks(ACKS_PER_PHASE, "before any fault")

        # 1. The leader crashes: an election; the others carry on.
        leader = etcd.leader()
        began = time.monotonic()
        etcd.members[leader].kill(signal.SIGKILL)
        elected = etcd.leader()
        elected_after = time.monotonic() - began
        first = load.wait_acks(ACKS_PER_PHASE, "with the old leader down")
        etcd.restart(leader)
        report.append(load.summary("leader killed", began, time.monotonic())
                      + f"; new leader after {elected_after:.2f}s (member {elected}), "
                      f"first create acknowledged {first - began:.2f}s after the kill")

        # 2. A follower crashes and comes back.
        follower = next(i for i in range(3) if i != etcd.leader())
        began = time.monotonic()
        etcd.members[follower].kill(signal.SIGKILL)
        first = load.wait_acks(ACKS_PER_PHASE, "with a follower down")
        etcd.restart(follower)
        report.append(load.summary("follower killed", began, time.monotonic())
                      + f"; first create acknowledged {first - began:.2f}s after the kill")

        # 3. Two members stop: no quorum, writes refused; then both come back.
        leader = etcd.leader()
        down = [leader, (leader + 1) % 3]
        began = time.monotonic()
        for i in down:
            etcd.members[i].stop()
        # What the frontend answers, seen without the SDK's retries (which would retry
        # UNAVAILABLE until the caller's deadline and then say DEADLINE_EXCEEDED).
        with grpc.insecure_channel(system.endpoint, options=[("grpc.enable_retries", 0)]) as channel, \
                pytest.raises(grpc.RpcError) as refused:
            vm_pb2_grpc.VmServiceStub(channel).CreateVm(
                vm_pb2.CreateVmRequest(parent="tenants/default/projects/cluster", vm_id="no-quorum",
                                       vm=vm_pb2.Vm(flavor="small", image="ubuntu")),
                metadata=(("authorization", f"Bearer {system.admin_token}"),), timeout=2)
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE, refused.value
        time.sleep(max(0.0, QUORUM_LOSS_S - (time.monotonic() - began)))  # the outage itself
        restarting = time.monotonic()
        etcd.restart(*down)
        back = time.monotonic()
        first = load.wait_acks(ACKS_PER_PHASE, "after quorum returned")
        report.append(load.summary("quorum lost", began, back)
                      + f"; quorum back {back - began:.2f}s after the stop ({back - restarting:.2f}s to restart), "
                      f"first create acknowledged {first - back:.2f}s after that")
    finally:
        load.stop.set()
        loader.join(30)
    print("\n" + "\n".join(report))

    assert all(p.alive for p in system.processes.values()), \
        f"a component exited: {[p.name for p in system.processes.values() if not p.alive]}"
    with system.client(project="cluster", ensure_project=False) as client:
        _check_exactly_once(system, client, load.acked)
    # Every process said that etcd was unreachable, in its log and its metrics.
    unreachable = {}
    for name, process in system.processes.items():
        assert "etcd unreachable" in process.log_path.read_text(), f"{name} did not log the outage"
        assert "etcd reachable again" in process.log_path.read_text(), f"{name} did not log the recovery"
        unreachable[name] = _scrape(system.metrics_ports[name], "quanta_etcd_unreachable_seconds_total")
        assert unreachable[name] > 0, name
        assert _scrape(system.metrics_ports[name], "quanta_etcd_reachable") == 1, name
    print("unreachable in all (quanta_etcd_unreachable_seconds_total): "
          + ", ".join(f"{name} {seconds:.1f}s" for name, seconds in unreachable.items()))
