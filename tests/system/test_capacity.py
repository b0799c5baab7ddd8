"""A VM that fits nowhere waits with a condition that says why, and is placed
as soon as capacity appears; hosts are never over-committed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

from controlplane.gen.quanta.v1 import vm_pb2
from quanta.local import LocalSystem
from tests.conftest import describe_vms, seen_in, wait_until

State = vm_pb2.Vm.State
QUANTA = os.path.join(os.path.dirname(sys.executable), "quanta")


def test_waits_for_capacity_then_places(etcd_server):
    """Two of four VMs fit; when one is deleted, the room it frees goes to the VM that
    has waited longest, and the other keeps waiting (a freed slot admits one VM)."""
    root = f"/cap-{uuid.uuid4().hex[:8]}"
    with LocalSystem(etcd_endpoint=etcd_server.endpoint, root=root, hosts=1, host_vcpus=2, latency="zero",
                     frontends=1, metrics=False) as system, system.client() as client:
        for name in ("a", "b", "c", "d"):
            client.create_vm(name, flavor="small", image="ubuntu")
        def settled():
            vms = list(client.list_vms())
            running = sorted(vm.name.rsplit("/", 1)[1] for vm in vms if vm.state == State.RUNNING)
            waiting = [vm for vm in vms if vm.state == State.PENDING and vm.conditions]
            return (running, waiting) if len(running) == 2 and len(waiting) == 2 else None

        running, waiting = wait_until(settled, message="two VMs RUNNING and two waiting with a reason",
                                      seen=seen_in(system, client))
        condition = waiting[0].conditions[0]
        assert condition.reason == "NoHostFits" and condition.status == "False"
        assert "0/1 hosts fit" in condition.message and "InsufficientVcpus" in condition.message
        host = client.get_host("sim-00000")
        assert (host.allocated.vcpus, host.vm_count) == (2, 2)
        first, second = "c", "d"  # created (so queued, so turned away) in that order
        assert sorted(vm.name.rsplit("/", 1)[1] for vm in waiting) == [first, second]

        client.delete_vm(running[0])
        wait_until(lambda: client.get_vm(first).state == State.RUNNING, timeout=30,
                   message=f"the longest-waiting VM ({first}) placed once capacity was freed",
                   seen=seen_in(system, client))
        assert client.get_vm(second).state == State.PENDING
        host = client.get_host("sim-00000")
        assert (host.allocated.vcpus, host.vm_count) == (2, 2)


def test_churn_on_one_host_keeps_the_allocation_exact(etcd_server):
    """Creates and deletes race on one host: binds (scheduler) and removals (agent)
    both compare-and-swap the host's allocation, so lost races must retry and the
    allocation must end equal to what is bound."""
    root = f"/churn-{uuid.uuid4().hex[:8]}"
    with LocalSystem(etcd_endpoint=etcd_server.endpoint, root=root, hosts=1, latency="zero", frontends=1,
                     metrics=False) as system, system.client() as client:
        kept: list[str] = []
        for i in range(120):
            name = f"c-{i:03d}"
            client.create_vm(name, flavor="small", image="ubuntu")
            if i % 3:
                kept.append(name)
            if i >= 2 and (i - 2) % 3 == 0:  # delete an earlier VM while later ones are being placed
                client.delete_vm(f"c-{i - 2:03d}")
        def running() -> list[str]:
            return sorted(vm.name.rsplit("/", 1)[1] for vm in client.list_vms() if vm.state == State.RUNNING)

        def difference() -> str:
            now = running()
            return (f"{describe_vms(client.list_vms(), few=0)}; kept but not RUNNING: {sorted(set(kept) - set(now))}, "
                    f"RUNNING but deleted: {sorted(set(now) - set(kept))}")

        wait_until(lambda: running() == kept, timeout=60,
                   message=f"exactly the {len(kept)} kept VMs RUNNING, the others gone", seen=difference)
        wait_until(lambda: len(list(client.list_vms())) == len(kept), message=f"deleted VMs gone ({len(kept)} left)",
                   seen=seen_in(system, client))
        host = client.get_host("sim-00000")
        assert (host.vm_count, host.allocated.vcpus, host.allocated.memory_mib) == (len(kept), len(kept),
                                                                                   1024 * len(kept))


def test_overcommit_is_applied_once_and_host_get_shows_it(etcd_server):
    """An agent started with --vcpu-overcommit 2 on hosts of 2 raw vCPUs: placement
    books 4 (not 2, not 8), and `quanta host get` shows the raw capacity, the ratio
    and the allocatable capacity that results."""
    root = f"/overcommit-{uuid.uuid4().hex[:8]}"
    agent = ["--hosts", "1", "--host-vcpus", "2", "--latency", "zero", "--vcpu-overcommit", "2"]
    with LocalSystem(etcd_endpoint=etcd_server.endpoint, root=root, hosts=1, frontends=1, metrics=False,
                     agents=[agent]) as system, system.client() as client:
        for i in range(6):
            client.create_vm(f"vm-{i}", flavor="small", image="ubuntu")

        def settled():
            vms = list(client.list_vms())
            running = [vm for vm in vms if vm.state == State.RUNNING]
            waiting = [vm for vm in vms if vm.state == State.PENDING and vm.conditions]
            return (running, waiting) if len(running) + len(waiting) == 6 else None

        running, waiting = wait_until(settled, message="every VM RUNNING or waiting with a reason",
                                      seen=seen_in(system, client))
        assert (len(running), len(waiting)) == (4, 2)
        assert "InsufficientVcpus" in waiting[0].conditions[0].message

        env = {**os.environ, "QUANTA_ENDPOINT": system.endpoint, "QUANTA_TOKEN": system.admin_token}
        shown = subprocess.run([QUANTA, "host", "get", "sim-00000"], env=env, capture_output=True, text=True,
                               timeout=60)
        assert shown.returncode == 0, shown.stderr
        table = {line.split()[0]: line.split()[1:] for line in shown.stdout.splitlines() if line.strip()}
        assert table["capacity"][0] == "2" and table["overcommit"][0] == "2"
        assert table["allocatable"][0] == "4" and table["allocated"][0] == "4"
        as_json = subprocess.run([QUANTA, "host", "get", "sim-00000", "-o", "json"], env=env, capture_output=True,
                                 text=True, timeout=60)
        host = json.loads(as_json.stdout)
        assert (host["capacity"]["vcpus"], host["overcommit"]["vcpus"], host["allocatable"]["vcpus"]) == (2, 2.0, 4)
