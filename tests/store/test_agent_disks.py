"""The host agent and persistent disks, against a real etcd with the agent (and its
sim hypervisor) in this process: registration of the host's networks and datastore
classes, attach and detach as the spec changes (the detaching attachment's key
deleted once the host let go), and the collector of DELETING disks. Disk records and
the attachments AttachDisk/DetachDisk write are put here directly, as the disks
service would (its own tests are tests/store/test_store_disks.py, test_disk_attach.py)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace

from agents.drivers.protocol import HostCapacity
from agents.drivers.sim import SimHypervisor, read_journal
from agents.service import Agent, AgentConfig
from controlplane.disks import DiskName, DiskState
from controlplane.etcd import EtcdClient, ops
from controlplane.gen.quanta.store.v1 import records_pb2 as rec
from controlplane.models import DiskRef, HostRegistration, Nic, VmState, datastore_label, now_ns
from controlplane.store.agentdisks import AgentDiskStore, AttachmentState
from controlplane.store.disks import DiskStore
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



async def put_disk(w: World, disk: DiskRef) -> int:
    """A disk record, as CreateDisk writes it; returns its mod_revision."""
    record = rec.DiskRecord(tenant=TENANT, project=PROJECT, disk_id=disk.disk_id, uid=disk.uid,
                            size_gib=disk.size_gib, datastore_class="standard")
    return (await w.client.txn([], [ops.put(w.keys.disk(TENANT, PROJECT, disk.disk_id),
                                            record.SerializeToString())])).revision


def test_a_disk_detached_from_a_vm_deleted_at_once_ends_available(etcd_endpoint, root, tmp_path):
    """DetachDisk then DeleteVm in quick succession on a running VM, as the agent sees
    them when its queue merged both (one change: straight to destroy): the detaching
    attachment is not in the spec the removal releases, yet it goes (the agent's delete
    path, or its DiskKeeper once the VM's spec is gone): d1 ends AVAILABLE and another
    VM takes it."""
    async def body():
        d1 = DiskRef("d1", "disk-uid-d1", 2)
        async with world(etcd_endpoint, root, str(tmp_path)) as w:
            revision = await put_disk(w, d1)
            spec = await w.create(make_spec("db", disks=(d1,)), disk_revisions={"d1": revision})
            await w.until(spec, lambda s: s.state == VmState.RUNNING, "running")
            info = await w.host.get_vm(spec.uid)
            assert info is not None and info.disks == ("disk-uid-d1",)
            attachment_key = w.keys.disk_attachment(TENANT, PROJECT, "d1")
            detaching = rec.DiskAttachment(vm=spec.ref.name, vm_uid=spec.uid, detaching=True,
                                           attach_time_ns=now_ns()).SerializeToString()
            # DetachDisk (as vm_service.detach_disk writes it) and DeleteVm as the agent sees
            # them when its queue merged both: one change, so it goes straight to destroy.
            await w.vms.update_spec(spec.ref, lambda s: replace(s, disks=()).marked_deleted(now_ns()),
                                    also=[ops.put(attachment_key, detaching)])
            disks = DiskStore(w.client, w.keys)

            async def available():
                view = await disks.get(DiskName(TENANT, PROJECT, "d1"))
                gone = await w.client.get(w.keys.vm_spec(spec.ref)) is None
                return view if gone and view.state is DiskState.AVAILABLE else None

            view = await async_wait_until(
                available, timeout=60.0, message="the VM removed and d1 available",
                seen=lambda: (w.client.get(attachment_key), w.client.get(w.keys.vm_spec(spec.ref))))
            assert view.attachment is None
            # d1 is free: another VM takes it (its create compares the attachment absent).
            other = await w.create(make_spec("db2", disks=(d1,)), disk_revisions={"d1": view.revision})
            await w.until(other, lambda s: s.state == VmState.RUNNING, "the other VM running with d1")
            taken = await disks.get(DiskName(TENANT, PROJECT, "d1"))
            assert taken.state is DiskState.ATTACHED and taken.attachment.vm_uid == other.uid
            info = await w.host.get_vm(other.uid)
            assert info is not None and info.disks == ("disk-uid-d1",)

    run(body())


def test_a_detaching_attachment_whose_vm_is_gone_is_cleared_by_an_agent(etcd_endpoint, root, tmp_path):
    """The no-agent path (a VM removed on a dead host, by a failed set, or pending): a
    detaching attachment naming a VM whose spec is absent is deleted by the DiskKeeper
    of any agent; one whose VM still exists stays."""
    async def body():
        async with world(etcd_endpoint, root, str(tmp_path)) as w:
            alive = make_spec("alive")
            await w.vms.create(alive)  # pending: its spec is there, no agent holds it
            ghost = make_spec("ghost")  # never made (removed without its agent)
            kept_key = w.keys.disk_attachment(TENANT, PROJECT, "kept")
            gone_key = w.keys.disk_attachment(TENANT, PROJECT, "orphan")
            await w.client.txn([], [
                ops.put(kept_key, rec.DiskAttachment(vm=alive.ref.name, vm_uid=alive.uid,
                                                     detaching=True).SerializeToString()),
                ops.put(gone_key, rec.DiskAttachment(vm=ghost.ref.name, vm_uid=ghost.uid,
                                                     detaching=True).SerializeToString()),
            ])

            async def cleared():
                return await w.client.get(gone_key) is None

            await async_wait_until(cleared, timeout=60.0, message="the orphaned attachment deleted",
                                   seen=lambda: w.client.get(gone_key))
            assert await w.client.get(kept_key) is not None

    run(body())


def test_clear_orphaned_compares_the_attachment_and_the_vm(etcd_endpoint, root):
    """AgentDiskStore.clear_orphaned, the txn itself: it deletes a detaching attachment
    only while its VM's spec is absent (or held by another incarnation of the name) and
    the attachment is as read; a second call (another agent) finds nothing to do."""
    async def body():
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client:
            store = AgentDiskStore(client, keys)
            vms = VmStore(client, keys)
            vm = make_spec("holder")
            await vms.create(vm)
            key = keys.disk_attachment(TENANT, PROJECT, "x")

            async def attachment(vm_uid: str) -> AttachmentState:
                await client.txn([], [ops.put(key, rec.DiskAttachment(vm=vm.ref.name, vm_uid=vm_uid,
                                                                      detaching=True).SerializeToString())])
                (state,) = [a for a in (await store.list_attachments())[0] if a.disk_id == "x"]
                return state

            mine = await attachment(vm.uid)
            assert mine.vm == vm.ref.name
            assert not await store.clear_orphaned(mine)  # its VM is there
            stale = mine
            mine = await attachment(vm.uid)
            assert (await vms.request_delete(vm.ref)).removed  # pending: removed at once
            assert not await store.clear_orphaned(stale)  # not as read
            assert await store.clear_orphaned(mine)
            assert await client.get(key) is None
            assert not await store.clear_orphaned(mine)  # another agent: nothing left
            # The name made again (another uid): the old incarnation's attachment goes.
            again = make_spec("holder")
            await vms.create(again)
            old = await attachment(vm.uid)
            assert await store.clear_orphaned(old)
            ours = await attachment(again.uid)
            assert not await store.clear_orphaned(ours)

    run(body())
