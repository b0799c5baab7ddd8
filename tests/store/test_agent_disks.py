"""The host agent and persistent disks, against a real etcd with the agent (and its
sim hypervisor) in this process: registration of the host's networks and datastore
classes, attach and detach as the spec changes (the detaching attachment's key
deleted once the host let go), and the collector of DELETING disks. Disk records and
the attachments AttachDisk/DetachDisk write are put here directly, as the disks
service would (its own tests are tests/store/test_store_disks.py, test_disk_attach.py)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from agents.drivers.protocol import HostCapacity
from agents.drivers.sim import SimHypervisor, read_journal
from agents.service import Agent, AgentConfig
from controlplane.etcd import EtcdClient, ops
from controlplane.gen.quanta.store.v1 import records_pb2 as rec
from controlplane.models import DiskRef, HostRegistration, Nic, VmState, datastore_label, now_ns
from controlplane.store.keys import Keys
from controlplane.store.networks import Network, NetworkStore
from controlplane.store.vms import VmStore
from tests.conftest import async_wait_until, running
from tests.store.test_agent_power import HOST, PROJECT, TENANT, World, make_spec, run
from tests.store.test_agent_power import _project as _project  # noqa: F401 - autouse fixture

LABELS = {datastore_label("standard"): "true"}
NETWORKS = frozenset({"VM Network", "cp"})


@contextlib.asynccontextmanager
async def world(etcd_endpoint: str, root: str, state_dir: str) -> AsyncIterator[World]:
    hv = SimHypervisor(state_dir)
    host = hv.add_host(HOST, HostCapacity(64, 256 * 1024, 10_000, LABELS, NETWORKS))
    keys = Keys(root)
    try:
        async with EtcdClient(etcd_endpoint) as client:
            agent = Agent(AgentConfig(etcd=etcd_endpoint, root=root, name="test-agent", lease_ttl=5), client,
                          {HOST: host})
            async with running(agent.run()) as tasks:
                await async_wait_until(lambda: client.get(keys.host_alloc(HOST)), message="host registered",
                                       seen=lambda: [t for t in tasks if t.done()])
                yield World(client, keys, VmStore(client, keys), host, agent, state_dir)
    finally:
        hv.close()


def test_the_agent_registers_its_hosts_networks_and_datastore_labels(etcd_endpoint, root, tmp_path):
    async def body():
        async with world(etcd_endpoint, root, str(tmp_path)) as w:
            kv = await w.client.get(w.keys.host_reg(HOST))
            reg = HostRegistration.from_bytes(kv.value)
            assert reg.networks == NETWORKS
            assert reg.labels[datastore_label("standard")] == "true"

    run(body())


async def attach_record(w: World, spec, disk: DiskRef, *, detaching: bool = False) -> None:
    key = w.keys.disk_attachment(TENANT, PROJECT, disk.disk_id)
    await w.client.txn([], [ops.put(key, rec.DiskAttachment(vm=spec.ref.name, vm_uid=spec.uid, detaching=detaching,
                                                            attach_time_ns=now_ns()).SerializeToString())])


def test_disks_follow_the_spec_and_a_detach_is_done_by_the_agent(etcd_endpoint, root, tmp_path):
    async def body():
        data, logs = DiskRef("data", "disk-uid-1", 5), DiskRef("logs", "disk-uid-2", 1)
        async with world(etcd_endpoint, root, str(tmp_path)) as w:
            # The create compares its NIC's network (claims.py): made first, as NetworkService would.
            cp, _ = await NetworkStore(w.client, w.keys).create(
                Network(TENANT, PROJECT, "cp", "net-uid", "cp", create_time_ns=now_ns()))
            nic = Nic(cp.network.name, cp.network.uid, "cp")
            revisions = {}
            for disk in (data, logs):
                record = rec.DiskRecord(tenant=TENANT, project=PROJECT, disk_id=disk.disk_id, uid=disk.uid,
                                        size_gib=disk.size_gib, datastore_class="standard")
                revisions[disk.disk_id] = (await w.client.txn([], [ops.put(
                    w.keys.disk(TENANT, PROJECT, disk.disk_id), record.SerializeToString())])).revision
            # The create takes "data" (its attachment in the create's txn).
            spec = await w.create(make_spec("db", nics=(nic,), disks=(data,)),
                                  disk_revisions={"data": revisions["data"]}, networks={cp.network.name: cp})
            await w.until(spec, lambda s: s.state == VmState.RUNNING, "running")
            info = await w.host.get_vm(spec.uid)
            assert info is not None and info.disks == ("disk-uid-1",) and info.networks == ("cp",)
            # AttachDisk: the spec lists "logs" too.
            await attach_record(w, spec, logs)
            spec = await w.change(spec, disks=(data, logs))

            async def disks_are(want):
                now = await w.host.get_vm(spec.uid)
                return now if now is not None and now.disks == want else None

            await async_wait_until(lambda: disks_are(("disk-uid-1", "disk-uid-2")), message="logs attached",
                                   seen=lambda: w.host.get_vm(spec.uid))
            # DetachDisk of "data": off the spec, its attachment marked detaching.
            spec = await w.change(spec, disks=(logs,))
            await attach_record(w, spec, data, detaching=True)
            await async_wait_until(lambda: disks_are(("disk-uid-2",)), message="data detached",
                                   seen=lambda: w.host.get_vm(spec.uid))

            async def attachment_gone():
                return await w.client.get(w.keys.disk_attachment(TENANT, PROJECT, "data")) is None

            await async_wait_until(attachment_gone, message="the detaching attachment deleted by the agent",
                                   seen=lambda: w.client.get(w.keys.disk_attachment(TENANT, PROJECT, "data")))
            assert await w.client.get(w.keys.disk_attachment(TENANT, PROJECT, "logs")) is not None
            kept = w.host._hv.datastore.get("disk-uid-1")
            assert kept is not None and kept.vm_uid == ""  # kept, detached

    run(body())


def test_the_collector_destroys_deleting_disks_once_detached(etcd_endpoint, root, tmp_path):
    async def body():
        async with world(etcd_endpoint, root, str(tmp_path)) as w:
            store = w.host._hv.datastore
            store.attach("uid-free", 1, "standard", "vm-x", HOST)
            store.detach("uid-free", "vm-x", HOST)
            store.attach("uid-held", 1, "standard", "vm-y", HOST)

            def record(disk_id: str, uid: str) -> rec.DiskRecord:
                return rec.DiskRecord(tenant=TENANT, project=PROJECT, disk_id=disk_id, uid=uid, size_gib=1,
                                      datastore_class="standard", delete_time_ns=now_ns())

            held_attachment = w.keys.disk_attachment(TENANT, PROJECT, "held")
            await w.client.txn([], [
                ops.put(w.keys.disk(TENANT, PROJECT, "free"), record("free", "uid-free").SerializeToString()),
                ops.put(w.keys.disk(TENANT, PROJECT, "held"), record("held", "uid-held").SerializeToString()),
                ops.put(held_attachment, rec.DiskAttachment(vm_uid="vm-y", detaching=True).SerializeToString()),
            ])

            async def gone(disk_id: str, uid: str):
                return (await w.client.get(w.keys.disk(TENANT, PROJECT, disk_id)) is None
                        and store.get(uid) is None)

            await async_wait_until(lambda: gone("free", "uid-free"), message="the free disk destroyed",
                                   seen=lambda: (store.get("uid-free"), read_journal(w.state_dir)[-3:]))
            # The held one waits for its attachment to go (and its host to let go).
            assert store.get("uid-held") is not None
            assert await w.client.get(w.keys.disk(TENANT, PROJECT, "held")) is not None
            store.detach("uid-held", "vm-y", HOST)
            await w.client.txn([], [ops.delete(held_attachment)])
            await async_wait_until(lambda: gone("held", "uid-held"), message="the held disk destroyed once let go",
                                   seen=lambda: (store.get("uid-held"), read_journal(w.state_dir)[-3:]))
            deletes = [r for r in read_journal(w.state_dir) if r["op"] == "delete_disk"]
            assert sorted(r["disk_uid"] for r in deletes) == ["uid-free", "uid-held"]

    run(body())

