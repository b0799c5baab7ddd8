"""Backup and restore that destroy nothing: snapshot the store, make more VMs,
restore the snapshot, restart everything. The VMs made after the snapshot are
reported as orphans (API, metric), none destroyed; adopting them brings them back
under their project, and one an operator destroys is destroyed by its agent."""

from __future__ import annotations

import shutil
import subprocess
import sys
import urllib.request

from agents.drivers.sim import read_journal
from controlplane.gen.quanta.v1 import vm_pb2
from quanta.local import LocalSystem
from tests.conftest import describe_processes, seen_in, wait_until

BEFORE = 10
AFTER = 50


def _quanta(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "quanta", *args], capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, f"quanta {' '.join(args)}: {result.stderr}"
    return result.stdout


def _running(client, names: set[str]) -> bool:
    return {vm.name for vm in client.list_vms() if vm.state == vm_pb2.Vm.RUNNING} >= names


def _destroyed(system: LocalSystem) -> list[str]:
    return [r["vm_uid"] for r in read_journal(system.sim_state_dir()) if r["op"] == "destroy"]


def _orphan_gauge(system: LocalSystem) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{system.metrics_ports['agent-0']}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("quanta_agent_orphan_vms "):
                return float(line.split()[1])
    return -1.0


def test_restore_from_an_older_backup_destroys_nothing_made_since(tmp_path) -> None:
    # Sized for 2 cores: 4 hosts, zero latency, one frontend.
    with LocalSystem(hosts=4, frontends=1, latency="zero", lease_ttl=5) as system:
        client = system.client()
        before = [client.create_vm(f"before-{i:02d}", flavor="small", image="ubuntu") for i in range(BEFORE)]
        wait_until(lambda: _running(client, {vm.name for vm in before}), timeout=60,
                   message=f"the first {BEFORE} VMs RUNNING", seen=seen_in(system, client))
        backup = tmp_path / "quanta.db"
        printed = _quanta("backup", "create", str(backup), "--etcd", system.etcd_endpoint)
        assert (tmp_path / "quanta.db.sha256").read_text().split()[0] in printed

        after = [client.create_vm(f"after-{i:02d}", flavor="small", image="ubuntu") for i in range(AFTER)]
        wait_until(lambda: _running(client, {vm.name for vm in after}), timeout=90,
                   message=f"the {AFTER} later VMs RUNNING", seen=seen_in(system, client))
        client.close()

        # The documented procedure: stop everything, restore into a new data dir, start etcd, then the rest.
        system.stop()
        member = system.data_dir / "etcd" / "member"
        shutil.move(member, system.data_dir / "etcd" / "member.old")
        _quanta("backup", "restore", str(backup), "--data-dir", str(member), "--name", "quanta",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{system.etcd.peer_port}")
        system.restart()

        client = system.client()
        after_uids = {vm.uid for vm in after}
        orphans = wait_until(lambda: (o := list(client.list_orphans())) and len(o) >= AFTER and o, timeout=60,
                             message=f"the {AFTER} VMs made after the backup reported as orphans",
                             seen=lambda: f"{len(list(client.list_orphans()))} orphans; {describe_processes(system)}")
        assert {o.uid for o in orphans} == after_uids
        assert {o.vm for o in orphans} == {vm.name for vm in after}
        assert all(o.adoptable and o.powered_on for o in orphans)
        assert _orphan_gauge(system) == AFTER
        # The store knows only what the backup held; the hosts destroyed nothing.
        wait_until(lambda: _running(client, {vm.name for vm in before}), timeout=60,
                   message="the VMs of the backup RUNNING again", seen=seen_in(system, client))
        assert {vm.name for vm in client.list_vms()} == {vm.name for vm in before}
        assert _destroyed(system) == []

        # Adopt all but one: back under their project, on the host they run on.
        doomed, *kept = sorted(orphans, key=lambda o: o.uid)
        for orphan in kept:
            vm = client.adopt_orphan(orphan.host, orphan.uid)
            assert (vm.name, vm.uid, vm.host) == (orphan.vm, orphan.uid, orphan.host.removeprefix("hosts/"))
        wait_until(lambda: _running(client, {o.vm for o in kept}), timeout=60,
                   message="the adopted VMs RUNNING under their project", seen=seen_in(system, client))
        # Destroy the last one: its agent destroys it, by the tombstone the operator wrote.
        client.destroy_orphan(doomed.host, doomed.uid)
        wait_until(lambda: _destroyed(system) == [doomed.uid], timeout=30,
                   message="the condemned orphan destroyed by its agent",
                   seen=lambda: f"destroyed: {_destroyed(system)}; {describe_processes(system)}")
        wait_until(lambda: not list(client.list_orphans()) and _orphan_gauge(system) == 0, timeout=30,
                   message="no orphans left",
                   seen=lambda: f"{len(list(client.list_orphans()))} orphans, gauge {_orphan_gauge(system)}")
        assert len(list(client.list_vms())) == BEFORE + AFTER - 1
        usage = client.get_quota(f"tenants/{client.tenant}/projects/{client.project}/quota").usage
        assert usage.vms == BEFORE + AFTER - 1
        client.close()
