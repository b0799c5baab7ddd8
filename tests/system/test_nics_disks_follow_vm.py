"""A VM with a static NIC and a persistent disk, drained off its host, is made again
on another host (possibly of the other sim agent process) with the same static
address and the same disk (same uid, found in the sim datastore every sim agent of
the system shares), and the drained host let go of the disk first."""

from __future__ import annotations

import json
import uuid

import pytest

from agents.drivers.sim import read_journal
from controlplane.gen.quanta.v1 import disk_pb2, disk_pb2_grpc, network_pb2, network_pb2_grpc, vm_pb2
from quanta.local import LocalSystem
from tests.conftest import wait_until

pytestmark = pytest.mark.system

STATIC_IP = "10.77.0.10"


def test_a_drained_vm_keeps_its_static_address_and_its_disk(etcd_server):
    root = f"/follow-{uuid.uuid4().hex[:8]}"
    with LocalSystem(etcd_endpoint=etcd_server.endpoint, root=root, hosts=4, sim_agents=2, latency="zero",
                     frontends=1, lease_ttl=5) as system, system.client(project="follow") as client:
        parent = f"tenants/{client.tenant}/projects/{client.project}"
        networks = network_pb2_grpc.NetworkServiceStub(client._channel)
        disks = disk_pb2_grpc.DiskServiceStub(client._channel)
        networks.CreateNetwork(network_pb2.CreateNetworkRequest(
            parent=parent, network_id="cp", request_id=uuid.uuid4().hex,
            network=network_pb2.Network(backing="cp", subnet=network_pb2.Subnet(
                cidr="10.77.0.0/24", gateway="10.77.0.1", dns_servers=["10.77.0.2"]))))
        disk = disks.CreateDisk(disk_pb2.CreateDiskRequest(parent=parent, disk_id="etcd-data",
                                                           request_id=uuid.uuid4().hex,
                                                           disk=disk_pb2.Disk(size_gib=5)))
        vm = client._vms.CreateVm(vm_pb2.CreateVmRequest(
            parent=parent, vm_id="cp-0", request_id=uuid.uuid4().hex,
            vm=vm_pb2.Vm(flavor="small", image="ubuntu", disks=["etcd-data"], nics=[vm_pb2.NetworkInterface(
                network="cp", address_mode=vm_pb2.NetworkInterface.STATIC, ip=STATIC_IP)])))
        running = client.wait_for_vm("cp-0", timeout=60)
        first_host = running.host.removeprefix("hosts/")
        assert STATIC_IP in [a.ip for a in running.addresses]
        assert _disk_file(system, disk.uid)["vm_uid"] == vm.uid

        client.drain_host(first_host, wait=True, timeout_s=120)

        def moved():
            now = client.get_vm("cp-0")
            return now if now.state == vm_pb2.Vm.RUNNING and now.host.removeprefix("hosts/") != first_host \
                and STATIC_IP in [a.ip for a in now.addresses] else None

        again = wait_until(moved, timeout=60, message="cp-0 running on another host with its address",
                           seen=lambda: client.get_vm("cp-0"))
        second_host = again.host.removeprefix("hosts/")
        assert again.uid == vm.uid
        assert [d.split("/")[-1] for d in again.disks] == ["etcd-data"]
        on_disk = _disk_file(system, disk.uid)
        assert (on_disk["vm_uid"], on_disk["host"], on_disk["size_gib"]) == (vm.uid, second_host, 5)
        # The drained host let go of the disk (and kept it) before the new one took it.
        steps = [(r["op"], r["host"]) for agent in range(2) for r in read_journal(system.sim_state_dir(agent))
                 if r.get("disk_uid") == disk.uid]
        assert ("detach_disk", first_host) in steps and ("attach_disk", second_host) in steps
        assert not [op for op, _ in steps if op == "delete_disk"]


def _disk_file(system: LocalSystem, uid: str) -> dict:
    with open(system.sim_datastore_dir / f"{uid}.json", encoding="utf-8") as f:
        return json.load(f)
