"""Drain and host failure with the real processes: VMs leave a drained or dead
host by restart policy (ALWAYS: RUNNING elsewhere, made exactly once there;
NEVER: deleted), the old host destroys what it ran, and nothing is bound twice.
DrainHost answers at once; the scheduler that owns shard 0 empties the host,
and a new owner finishes what a dead one left."""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import subprocess
import sys
import uuid

import grpc
import pytest

from agents.drivers.sim import read_journal
from controlplane.api.errors import ApiError
from controlplane.etcd import EtcdClient
from controlplane.gen.quanta.v1 import host_pb2, vm_pb2
from controlplane.models import Binding, HostAllocation
from controlplane.store.keys import Keys
from controlplane.store.shards import ShardDirectory
from quanta.client import Client
from quanta.local import LocalSystem
from tests.conftest import describe_hosts, describe_processes, seen_in, wait_until

ALWAYS_VMS = 24
NEVER_VMS = 6
#: Sim latency of the drain tests: destroying a VM takes a second, so a drained
#: host surely still holds its VMs when DrainHost answers.
SLOW_DESTROY = "destroy=1"
QUANTA = os.path.join(os.path.dirname(sys.executable), "quanta")


def _create(client: Client) -> tuple[list[vm_pb2.Vm], list[vm_pb2.Vm]]:
    always = [client.create_vm(f"keep-{i:02d}", flavor="small", image="ubuntu") for i in range(ALWAYS_VMS)]
    never = [client.create_vm(f"once-{i:02d}", flavor="small", image="ubuntu", restart_policy="NEVER")
             for i in range(NEVER_VMS)]
    return always, never


def _vms(client: Client) -> dict[str, vm_pb2.Vm]:
    return {vm.uid: vm for vm in client.list_vms()}


def _all_running(client: Client, count: int) -> dict[str, vm_pb2.Vm] | None:
    vms = _vms(client)
    return vms if len(vms) == count and all(vm.state == vm_pb2.Vm.RUNNING for vm in vms.values()) else None


def _seen(system: LocalSystem, client: Client):
    """What a wait saw: the VMs' states by count (the stragglers, if few), the hosts'
    states and any process that exited."""
    vms = seen_in(system, client)
    return lambda: f"{vms()}; hosts: {describe_hosts(client.list_hosts())}"


def _journal(system: LocalSystem, agents: int = 1) -> list[dict]:
    return [r for i in range(agents) for r in read_journal(system.sim_state_dir(i))]


def _ops(records: list[dict], op: str) -> collections.Counter:
    """(host, uid) -> how many times ``op`` happened."""
    return collections.Counter((r["host"], r["vm_uid"]) for r in records if r["op"] == op)


def _bindings(system: LocalSystem) -> tuple[list[Binding], dict[str, HostAllocation]]:
    async def read():
        keys = Keys(system.root)
        async with EtcdClient(system.etcd_endpoint) as etcd:
            bound, _ = await etcd.range_prefix(keys.bindings_prefix())
            hosts, _ = await etcd.range_prefix(keys.hosts_prefix())
        allocations = {keys.parse_host_key(kv.key)[0]: HostAllocation.from_bytes(kv.value)
                       for kv in hosts if kv.key.endswith(b"/alloc")}
        return [Binding.from_bytes(kv.value) for kv in bound], allocations

    return asyncio.run(read())


def _check_moved_exactly_once(system: LocalSystem, client: Client, agents: int, old_hosts: set[str],
                              moved: set[str], deleted: set[str], survivors: int) -> dict[str, vm_pb2.Vm]:
    """Every VM that was on ``old_hosts`` with policy ALWAYS (``moved``) RUNNING on
    another host, made there exactly once; the NEVER ones (``deleted``) gone; each
    VM bound once and each host's allocation equal to its bindings."""
    vms = wait_until(lambda: _all_running(client, survivors), timeout=90, interval=0.2,
                     message=f"{survivors} VMs RUNNING after the move", seen=_seen(system, client))
    assert moved <= set(vms) and not deleted & set(vms)
    creates = _ops(_journal(system, agents), "create")
    assert max(creates.values()) == 1, "a VM was made twice on one host"
    for uid in moved:
        new_host = vms[uid].host
        assert new_host not in old_hosts
        assert [h for h, u in creates if u == uid and h not in old_hosts] == [new_host], \
            "a moved VM was made on more than its one new host"
    bindings, allocations = _bindings(system)
    assert sorted(b.spec.uid for b in bindings) == sorted(vms), "each VM bound exactly once"
    per_host = collections.Counter(b.host for b in bindings)
    assert {h: a.vm_count for h, a in allocations.items() if a.vm_count} == dict(per_host)
    assert not per_host.keys() & old_hosts
    return vms


def _shard_owner(system: LocalSystem, shard: int) -> str | None:
    """The process that owns ``shard``, as etcd says."""

    async def read() -> str | None:
        async with EtcdClient(system.etcd_endpoint) as client:
            table = await ShardDirectory(client, Keys(system.root)).snapshot()
        holder = table.owners.get(shard)
        return holder.owner if holder else None

    return asyncio.run(read())


def _victim(vms: dict[str, vm_pb2.Vm], always: list[vm_pb2.Vm],
            never: list[vm_pb2.Vm]) -> tuple[str, set[str], set[str], set[str]]:
    """The host running the most VMs: (host, its VMs, its ALWAYS ones, its NEVER ones)."""
    victim = collections.Counter(vm.host for vm in vms.values()).most_common(1)[0][0]
    on_victim = {uid for uid, vm in vms.items() if vm.host == victim}
    return victim, on_victim, on_victim & {vm.uid for vm in always}, on_victim & {vm.uid for vm in never}


@pytest.fixture
def system(etcd_server, tmp_path):
    with LocalSystem(etcd_endpoint=etcd_server.endpoint, root=f"/drain-{uuid.uuid4().hex[:8]}", hosts=3,
                     latency=SLOW_DESTROY, frontends=1, lease_ttl=3, metrics=False, data_dir=str(tmp_path)) as local:
        yield local


def test_drain_moves_every_vm_off_by_restart_policy(system):
    with system.client(project="drain") as client:
        # Placement fields are validated and echoed by the API.
        with pytest.raises(ApiError) as bad:
            client.create_vm("bad", flavor="small", image="ubuntu", node_selector={"-x": "y"},
                             anti_affinity_group="Not_An_Id")
        assert bad.value.code is grpc.StatusCode.INVALID_ARGUMENT
        assert {f.split("[")[0] for f, _ in bad.value.field_violations} == {"vm.node_selector",
                                                                          "vm.anti_affinity_group"}
        always, never = _create(client)
        echoed = client.get_vm(never[0].name)
        assert echoed.restart_policy == vm_pb2.Vm.NEVER and always[0].restart_policy == vm_pb2.Vm.ALWAYS
        picky = client.create_vm("picky", flavor="small", image="ubuntu", node_selector={"disk": "ssd"},
                                 anti_affinity_group="web")
        assert dict(picky.node_selector) == {"disk": "ssd"} and picky.anti_affinity_group == "web"
        client.delete_vm("picky")  # no sim host has disk=ssd: it would stay PENDING
        vms = wait_until(lambda: _all_running(client, ALWAYS_VMS + NEVER_VMS), timeout=60,
                         message=f"all {ALWAYS_VMS + NEVER_VMS} VMs RUNNING", seen=_seen(system, client))
        per_host = collections.Counter(vm.host for vm in vms.values())
        victim, on_victim, moved, deleted = _victim(vms, always, never)
        assert moved, "no ALWAYS VM on the drained host"

        # Only system admins may take hosts out of placement.
        member = client.create_token("member", [("project-member", client.tenant, client.project)]).bearer_token
        with Client(system.endpoint, token=member, project="drain") as outsider:
            for call in (lambda: outsider.set_maintenance(victim), lambda: outsider.drain_host(victim)):
                with pytest.raises(ApiError) as denied:
                    call()
                assert denied.value.code is grpc.StatusCode.PERMISSION_DENIED
        assert not client.get_host(victim).maintenance
        with pytest.raises(ApiError) as missing:
            client.drain_host("no-such-host")
        assert missing.value.code is grpc.StatusCode.NOT_FOUND

        # The answer does not wait for the host: it still holds every VM (destroying one takes 1 s).
        host = client.drain_host(victim)
        assert (host.state, host.maintenance, host.vm_count) == (host_pb2.Host.DRAINING, True, len(on_victim))
        progress: list[int] = []
        host = client.wait_for_host_drained(victim, timeout_s=60, on_progress=lambda h: progress.append(h.vm_count))
        assert host.vm_count == 0 and host.maintenance and host.state == host_pb2.Host.DRAINED
        assert progress[0] > 0 and progress[-1] == 0 and progress == sorted(progress, reverse=True), progress
        again = client.drain_host(victim)  # idempotent: nothing left to do
        assert (again.state, again.vm_count) == (host_pb2.Host.DRAINED, 0)

        survivors = ALWAYS_VMS + NEVER_VMS - len(deleted)
        after = _check_moved_exactly_once(system, client, 1, {victim}, moved, deleted, survivors)
        # The drained host destroyed each VM it ran (moved or deleted), once.
        def destroyed_on_victim() -> str:
            done = {u for h, u in _ops(_journal(system), "destroy") if h == victim}
            return f"{len(done & on_victim)} of its {len(on_victim)} VMs destroyed, {len(done - on_victim)} others"

        destroys = wait_until(lambda: (d := _ops(_journal(system), "destroy")) and
                              {u for h, u in d if h == victim} == on_victim and d,
                              timeout=30, message=f"the drained host {victim} to destroy its VMs",
                              seen=destroyed_on_victim)
        assert all(n == 1 for (h, _u), n in destroys.items() if h == victim)
        assert {after[uid].host for uid in moved} <= set(per_host) - {victim}
        # Never on two hosts at once: each moved VM was destroyed on the drained host
        # before it was made on its new one (one agent, one journal, in order).
        order = [(r["op"], r["host"], r["vm_uid"]) for r in _journal(system)]
        for uid in moved:
            gone = order.index(("destroy", victim, uid))
            made = order.index(("create", after[uid].host, uid))
            assert gone < made, f"{uid} was made on {after[uid].host} before the drained host destroyed it"

        # In maintenance, nothing new lands there; out of it, it takes VMs again.
        extra = [client.create_vm(f"new-{i}", flavor="small", image="ubuntu") for i in range(6)]
        placed = wait_until(lambda: all(v.host for v in (client.get_vm(e.name) for e in extra))
                            and [client.get_vm(e.name).host for e in extra], timeout=30,
                            message=f"{len(extra)} new VMs bound", seen=_seen(system, client))
        assert victim not in placed
        back = client.set_maintenance(victim, False)  # ends the drain too
        assert not back.maintenance and back.state == host_pb2.Host.READY



def test_drain_finishes_when_the_owner_of_shard_0_dies(etcd_server, tmp_path):
    """The drain is recorded while scheduler process A owns shard 0 (so A's host
    controller must empty the host), but A is frozen and then SIGKILLed before it
    moves anything: B takes shard 0 over and finishes the drain from what etcd
    holds. Every ALWAYS VM ends RUNNING elsewhere, made exactly once there."""
    with LocalSystem(etcd_endpoint=etcd_server.endpoint, root=f"/drain-takeover-{uuid.uuid4().hex[:8]}", hosts=3,
                     schedulers=2, shards=2, latency=SLOW_DESTROY, frontends=1, lease_ttl=3, metrics=False,
                     data_dir=str(tmp_path)) as system, system.client(project="takeover") as client:
        always, never = _create(client)
        vms = wait_until(lambda: _all_running(client, ALWAYS_VMS + NEVER_VMS), timeout=60,
                         message="all VMs RUNNING", seen=seen_in(system, client))
        victim, on_victim, moved, deleted = _victim(vms, always, never)
        assert moved, "no ALWAYS VM on the drained host"
        owners = wait_until(lambda: (o := {s: _shard_owner(system, s) for s in (0, 1)})
                            and set(o.values()) == {"scheduler-0", "scheduler-1"} and o,
                            timeout=30, message="one shard per scheduler process",
                            seen=lambda: f"owners {[_shard_owner(system, s) for s in (0, 1)]}; "
                                         f"{describe_processes(system)}")
        owner = system.processes[owners[0]]
        owner.process.send_signal(signal.SIGSTOP)  # alive to etcd until its lease runs out
        try:
            host = client.drain_host(victim)
            assert (host.state, host.vm_count) == (host_pb2.Host.DRAINING, len(on_victim))
            untouched = not any(b.evicting or b.deleting for b in _bindings(system)[0] if b.host == victim)
            still_owner = _shard_owner(system, 0)
        finally:
            owner.kill(signal.SIGKILL)  # a stopped process dies of SIGKILL too
        assert still_owner == owners[0], "shard 0 changed hands before the kill; the test proves nothing"
        assert untouched, "VMs were moved while the owner of shard 0 was frozen"

        survivor = ({"scheduler-0", "scheduler-1"} - {owners[0]}).pop()
        host = client.wait_for_host_drained(victim, timeout_s=60)
        assert (host.state, host.vm_count) == (host_pb2.Host.DRAINED, 0)
        assert _shard_owner(system, 0) == survivor
        _check_moved_exactly_once(system, client, 1, {victim}, moved, deleted,
                                  ALWAYS_VMS + NEVER_VMS - len(deleted))


def _count_vms(count: int) -> str:
    return f"{count} VM" if count == 1 else f"{count} VMs"


def test_cli_drain_wait_shows_progress_until_the_host_is_empty(system):
    """``quanta host drain NAME --wait`` prints how many VMs are left until none;
    one that runs out of time exits 1 with a message, not a traceback, and the
    drain goes on."""
    env = {**os.environ, "QUANTA_ENDPOINT": system.endpoint, "QUANTA_TOKEN": system.admin_token}

    def quanta(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([QUANTA, "host", "drain", *args], env=env, capture_output=True, text=True,
                              timeout=120)

    with system.client(project="cli") as client:
        vms = [client.create_vm(f"vm-{i:02d}", flavor="small", image="ubuntu") for i in range(12)]
        running = wait_until(lambda: _all_running(client, len(vms)), timeout=60, message="all VMs RUNNING",
                             seen=seen_in(system, client))
        victim, on_victim, _, _ = _victim(running, vms, [])

        done = quanta(victim, "--wait", "--timeout", "60")
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()  # progress lines, then the host: a header and its row
        counts = [int(line.split(": ", 1)[1].split()[0]) for line in lines[:-2]]
        assert all(line == f"hosts/{victim}: {_count_vms(n)} left"
                   for line, n in zip(lines, counts, strict=False)), lines
        assert counts[0] == len(on_victim) and counts[-1] == 0 and counts == sorted(counts, reverse=True), lines
        assert lines[-2].split()[:3] == ["NAME", "STATE", "VMS"], lines
        assert lines[-1].split()[:3] == [victim, "DRAINED,MAINTENANCE", "0"], lines
        running = wait_until(lambda: _all_running(client, len(vms)), timeout=60,
                             message="the drained VMs RUNNING elsewhere", seen=seen_in(system, client))
        assert victim not in {vm.host for vm in running.values()}

        # Another host; destroying takes 1 s, so 0.2 s is too short.
        second, on_second, _, _ = _victim(running, vms, [])
        short = quanta(second, "--wait", "--timeout", "0.2")
        assert short.returncode == 1, short
        assert short.stderr.strip() == (f"error: hosts/{second} still holds {_count_vms(len(on_second))} after 0.2 s "
                                        "(DRAINING,MAINTENANCE); the drain goes on"), short.stderr
        assert short.stdout.splitlines() == [f"hosts/{second}: {_count_vms(len(on_second))} left"]
        assert client.wait_for_host_drained(second, timeout_s=60).state == host_pb2.Host.DRAINED  # it went on

def test_dead_host_vms_run_elsewhere_exactly_once_and_never_twice(etcd_server, tmp_path):
    """agent-1 (hosts sim1-*) is SIGKILLed: its hosts go MISSING, are declared
    DEAD after the scheduler's grace, and their VMs run on agent-0's hosts (made
    there once). When agent-1 returns, it destroys what it ran and its hosts are
    READY again once empty."""
    with LocalSystem(etcd_endpoint=etcd_server.endpoint, root=f"/dead-{uuid.uuid4().hex[:8]}", hosts=4,
                     sim_agents=2, latency="zero", frontends=1, lease_ttl=2, metrics=False, data_dir=str(tmp_path),
                     scheduler_args=("--host-dead-after", "3")) as system, \
            system.client(project="dead") as client:
        always, never = _create(client)
        vms = wait_until(lambda: _all_running(client, ALWAYS_VMS + NEVER_VMS), timeout=60,
                         message=f"all {ALWAYS_VMS + NEVER_VMS} VMs RUNNING", seen=_seen(system, client))
        dead_hosts = {h.name.split("/", 1)[1] for h in client.list_hosts() if h.name.startswith("hosts/sim1-")}
        assert len(dead_hosts) == 2
        on_dead = {uid for uid, vm in vms.items() if vm.host in dead_hosts}
        # Two agent processes, one network: each hands out its own range, so no address twice.
        addressed = client.wait_for_vms([vm.name.rsplit("/", 1)[1] for vm in vms.values()], address=True, timeout=30)
        ips = [a.ip for vm in addressed for a in vm.addresses]
        assert len(ips) == len(set(ips)) == len(vms), ips
        assert {vm.host.startswith("sim1-") for vm in addressed} == {True, False}
        moved = on_dead & {vm.uid for vm in always}
        deleted = on_dead & {vm.uid for vm in never}
        assert moved, "no ALWAYS VM on agent-1's hosts"

        system.processes["agent-1"].kill(signal.SIGKILL)
        seen: dict[str, set[int]] = collections.defaultdict(set)

        def states() -> dict[str, int]:
            now = {h.name.split("/", 1)[1]: h.state for h in client.list_hosts()}
            for host in dead_hosts:
                seen[host].add(now[host])
            return now

        def hosts_seen() -> str:
            return f"{describe_hosts(client.list_hosts())}; {describe_processes(system)}"

        wait_until(lambda: all(states()[h] == host_pb2.Host.DEAD for h in dead_hosts), timeout=30,
                   interval=0.1, message=f"agent-1's hosts {sorted(dead_hosts)} declared dead", seen=hosts_seen)
        assert all(host_pb2.Host.MISSING in seen[h] for h in dead_hosts), "DEAD without being MISSING first"

        survivors = ALWAYS_VMS + NEVER_VMS - len(deleted)
        _check_moved_exactly_once(system, client, 2, dead_hosts, moved, deleted, survivors)
        for uid in deleted:
            with pytest.raises(ApiError) as gone:
                client.get_vm(vms[uid].name)
            assert gone.value.code is grpc.StatusCode.NOT_FOUND

        # agent-1 returns: it finds no bindings, destroys what it still runs, and
        # its hosts take VMs again once empty.
        system.processes["agent-1"].start()
        wait_until(lambda: all(states()[h] == host_pb2.Host.READY for h in dead_hosts), timeout=30,
                   message="agent-1's hosts READY again", seen=hosts_seen)
        def destroyed_back() -> set[str]:
            return {u for (h, u) in _ops(read_journal(system.sim_state_dir(1)), "destroy") if h in dead_hosts}

        destroyed = wait_until(lambda: (d := destroyed_back()) >= on_dead and d, timeout=30,
                               message=f"the returned agent to destroy its {len(on_dead)} old VMs",
                               seen=lambda: f"{len(destroyed_back() & on_dead)} of them destroyed; "
                                            f"{describe_processes(system)}")
        assert destroyed == on_dead
        creates_back = _ops(read_journal(system.sim_state_dir(1)), "create")
        assert set(creates_back) == {(vms[u].host, u) for u in on_dead}, "the returned host made a VM again"
        _check_moved_exactly_once(system, client, 2, dead_hosts, moved, deleted, survivors)


def test_only_a_host_without_heartbeat_and_vms_can_be_deleted(etcd_server, tmp_path):
    """DeleteHost refuses a live host (HOST_ALIVE) and a missing one that still holds
    VMs (HOST_NOT_EMPTY); once the scheduler declared it dead and moved its VMs off,
    it is forgotten, and only system admins may do it."""
    with LocalSystem(etcd_endpoint=etcd_server.endpoint, root=f"/forget-{uuid.uuid4().hex[:8]}", hosts=4,
                     sim_agents=2, latency="zero", frontends=1, lease_ttl=2, metrics=False, data_dir=str(tmp_path),
                     scheduler_args=("--host-dead-after", "10")) as system, \
            system.client(project="forget") as client:
        vms = [client.create_vm(f"vm-{i}", flavor="small", image="ubuntu") for i in range(8)]
        running = wait_until(lambda: _all_running(client, len(vms)), timeout=60, message=f"all {len(vms)} VMs RUNNING",
                             seen=_seen(system, client))
        gone_host = next(vm.host for vm in running.values() if vm.host.startswith("sim1-"))

        def refusal(call) -> tuple[grpc.StatusCode, str]:
            with pytest.raises(ApiError) as refused:
                call()
            return refused.value.code, refused.value.reason

        assert refusal(lambda: client.delete_host(gone_host)) == (grpc.StatusCode.FAILED_PRECONDITION, "HOST_ALIVE")
        assert refusal(lambda: client.delete_host("no-such-host"))[0] is grpc.StatusCode.NOT_FOUND
        system.processes["agent-1"].kill(signal.SIGKILL)
        wait_until(lambda: client.get_host(gone_host).state == host_pb2.Host.MISSING, timeout=30,
                   message=f"{gone_host} MISSING", seen=_seen(system, client))
        # Missing for 10 s before the scheduler declares it dead: its VMs are still bound.
        assert refusal(lambda: client.delete_host(gone_host)) == (grpc.StatusCode.FAILED_PRECONDITION,
                                                                  "HOST_NOT_EMPTY")
        wait_until(lambda: (h := client.get_host(gone_host)).state == host_pb2.Host.DEAD and h.vm_count == 0,
                   timeout=60, message=f"{gone_host} DEAD and empty", seen=_seen(system, client))
        member = client.create_token("member", [("project-member", client.tenant, client.project)]).bearer_token
        with Client(system.endpoint, token=member, project="forget") as outsider:
            assert refusal(lambda: outsider.delete_host(gone_host))[0] is grpc.StatusCode.PERMISSION_DENIED

        forgotten = client.delete_host(gone_host)
        assert forgotten.state == host_pb2.Host.DEAD and forgotten.vm_count == 0
        assert gone_host not in {h.name.split("/", 1)[1] for h in client.list_hosts()}
        assert refusal(lambda: client.get_host(gone_host))[0] is grpc.StatusCode.NOT_FOUND
        # Its VMs run elsewhere; the cluster goes on placing.
        wait_until(lambda: _all_running(client, len(vms)), timeout=60, message=f"the {len(vms)} VMs RUNNING elsewhere",
                   seen=_seen(system, client))
        assert client.create_vm("after", flavor="small", image="ubuntu").state == vm_pb2.Vm.PENDING
