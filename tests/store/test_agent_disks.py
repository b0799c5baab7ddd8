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
from controlplane.disks import Attachment, Disk, DiskName, DiskState
from controlplane.etcd import EtcdClient, ops, prefix_end
from controlplane.gen.quanta.store.v1 import records_pb2 as rec
from controlplane.models import DiskRef, HostRegistration, Nic, VmState, datastore_label, now_ns
from controlplane.store.agentdisks import AgentDiskStore, AttachmentState
from controlplane.store.disks import DiskStore, deleting_work, detaching_ops
from controlplane.store.keys import Keys
from controlplane.store.networks import Network, NetworkStore
from controlplane.store.vms import VmStore
from tests.conftest import async_wait_until, running
from tests.store.test_agent_power import HOST, PROJECT, TENANT, World, make_spec, run
from tests.store.test_agent_power import _project as _project  # noqa: F401 - autouse fixture

LABELS = {datastore_label("standard"): "true"}
NETWORKS = frozenset({"VM Network", "cp"})


@contextlib.asynccontextmanager
async def world(etcd_endpoint: str, root: str, state_dir: str,
                client_class: type[EtcdClient] = EtcdClient) -> AsyncIterator[World]:
    hv = SimHypervisor(state_dir)
    host = hv.add_host(HOST, HostCapacity(64, 256 * 1024, 10_000, LABELS, NETWORKS))
    keys = Keys(root)
    try:
        async with client_class(etcd_endpoint) as client:
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
    """The attachment as AttachDisk writes it, or marked detaching as DetachDisk does
    (with its work key: disks.detaching_ops)."""
    attachment = Attachment(spec.ref.name, spec.uid, False, now_ns())
    key = w.keys.disk_attachment(TENANT, PROJECT, disk.disk_id)
    writes = (detaching_ops(w.keys, TENANT, PROJECT, disk.disk_id, attachment) if detaching
              else [ops.put(key, attachment.to_bytes())])
    await w.client.txn([], writes)


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

            def deleting(disk_id: str, uid: str) -> list:
                """A DELETING record and its work key, as disks.deletion writes them."""
                disk = Disk(TENANT, PROJECT, disk_id, uid, 1, "standard", delete_time_ns=now_ns())
                return [ops.put(w.keys.disk(TENANT, PROJECT, disk_id), disk.to_bytes()),
                        deleting_work(w.keys, disk)]

            await w.client.txn([], [
                *deleting("free", "uid-free"), *deleting("held", "uid-held"),
                *detaching_ops(w.keys, TENANT, PROJECT, "held", Attachment("", "vm-y")),
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
            (marked,), _ = await AgentDiskStore(w.client, w.keys).list_detaching()
            assert await AgentDiskStore(w.client, w.keys).detach_done(marked)  # as vm-y's agent would
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
            detaching = detaching_ops(w.keys, TENANT, PROJECT, "d1", Attachment(spec.ref.name, spec.uid))
            # DetachDisk (as vm_service.detach_disk writes it) and DeleteVm as the agent sees
            # them when its queue merged both: one change, so it goes straight to destroy.
            await w.vms.update_spec(spec.ref, lambda s: replace(s, disks=()).marked_deleted(now_ns()),
                                    also=detaching)
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
                *detaching_ops(w.keys, TENANT, PROJECT, "kept", Attachment(alive.ref.name, alive.uid)),
                *detaching_ops(w.keys, TENANT, PROJECT, "orphan", Attachment(ghost.ref.name, ghost.uid)),
            ])

            async def cleared():
                return await w.client.get(gone_key) is None

            await async_wait_until(cleared, timeout=60.0, message="the orphaned attachment deleted",
                                   seen=lambda: w.client.get(gone_key))
            assert await w.client.get(kept_key) is not None
            # Its work key went with it (one txn); the kept one's stays.
            assert await w.client.get(w.keys.disk_work_detaching(TENANT, PROJECT, "orphan")) is None
            assert await w.client.get(w.keys.disk_work_detaching(TENANT, PROJECT, "kept")) is not None

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
                await client.txn([], detaching_ops(keys, TENANT, PROJECT, "x", Attachment(vm.ref.name, vm_uid)))
                (state,) = [a for a in (await store.list_detaching())[0] if a.disk_id == "x"]
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


class ReadsRecorded(EtcdClient):
    """An etcd client that records every key range it reads or watches ((key,
    range_end); range_end empty: that key alone)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.reads: list[tuple[bytes, bytes]] = []

    async def range(self, key, range_end=b"", **kwargs):
        self.reads.append((key, range_end))
        return await super().range(key, range_end, **kwargs)

    async def txn(self, compare, success, failure=(), **kwargs):
        for op in (*success, *failure):
            if op.WhichOneof("request") == "request_range":
                self.reads.append((op.request_range.key, op.request_range.range_end))
        return await super().txn(compare, success, failure, **kwargs)

    async def watch(self, key, range_end=b"", **kwargs):
        self.reads.append((key, range_end))
        async for batch in super().watch(key, range_end, **kwargs):
            yield batch


def overlaps(read: tuple[bytes, bytes], prefix: bytes) -> bool:
    start, end = read[0], read[1] or read[0] + b"\0"
    return start < prefix_end(prefix) and end > prefix


def test_an_agent_reads_only_disk_work_never_the_disks_of_others(etcd_endpoint, root, tmp_path):
    """1,000 disks of other tenants (AVAILABLE and ATTACHED) beside this test's: the
    agent's DiskKeeper lists and watches only the work index (one detaching
    attachment, one DELETING disk), reads nothing under another tenant's disks/, and
    the detach and the deletion still complete; a DELETING disk held by a VM being
    deleted is destroyed once this agent removed the VM."""
    async def body():
        d1, d2 = DiskRef("d1", "disk-uid-d1", 1), DiskRef("d2", "disk-uid-d2", 1)
        async with world(etcd_endpoint, root, str(tmp_path), ReadsRecorded) as w:
            client = w.client
            assert isinstance(client, ReadsRecorded)
            others = []
            for i in range(1000):
                tenant = f"other-{i % 10}"
                disk = Disk(tenant, "p", f"d-{i}", f"uid-{i}", 1, "standard")
                others.append(ops.put(w.keys.disk(tenant, "p", disk.disk_id), disk.to_bytes()))
                if i % 2:  # ATTACHED
                    others.append(ops.put(w.keys.disk_attachment(tenant, "p", disk.disk_id),
                                          Attachment(f"tenants/{tenant}/projects/p/vms/v-{i}", f"vm-{i}").to_bytes()))
            await client.txn_chunked(others)
            disks, agents = DiskStore(client, w.keys), AgentDiskStore(client, w.keys)
            revisions = {d.disk_id: await put_disk(w, d) for d in (d1, d2)}
            spec = await w.create(make_spec("db", disks=(d1, d2)), disk_revisions=revisions)
            await w.until(spec, lambda s: s.state == VmState.RUNNING, "running")
            # DetachDisk of d1 (as VmService writes it): the agent lets go and ends it.
            await w.vms.update_spec(spec.ref, lambda s: replace(s, disks=(d2,)), also=detaching_ops(
                w.keys, TENANT, PROJECT, "d1", Attachment(spec.ref.name, spec.uid)))
            async def available(disk_id: str):
                view = await disks.get(DiskName(TENANT, PROJECT, disk_id))
                return view if view.state is DiskState.AVAILABLE else None

            await async_wait_until(lambda: available("d1"), timeout=60.0, message="d1 detached by the agent",
                                   seen=lambda: disks.get(DiskName(TENANT, PROJECT, "d1")))
            # DeleteVm(delete_disks): d2 DELETING while its VM has it, then the VM deleted.
            await disks.delete(DiskName(TENANT, PROJECT, "d2"), attached_ok=True)
            (deleting,), _ = await agents.list_deleting("standard")
            assert (deleting.tenant, deleting.disk_id, deleting.uid) == (TENANT, "d2", "disk-uid-d2")
            await w.vms.request_delete(spec.ref)
            datastore = w.host._hv.datastore

            async def destroyed():
                gone = await client.get(w.keys.disk(TENANT, PROJECT, "d2")) is None
                return gone and datastore.get("disk-uid-d2") is None

            await async_wait_until(destroyed, timeout=60.0, message="d2 destroyed once its VM was removed",
                                   seen=lambda: (client.get(w.keys.disk(TENANT, PROJECT, "d2")),
                                                 datastore.get("disk-uid-d2")))
            assert datastore.get("disk-uid-d1") is not None  # detached, kept
            # Nothing of the work is left, and the agent never read another tenant's disks.
            assert (await agents.list_detaching())[0] == [] and (await agents.list_deleting("standard"))[0] == []
            theirs = w.keys.disks_prefix()[:-1] + b"/other-"
            read_theirs = [r for r in client.reads if overlaps(r, theirs)]
            assert client.reads and not read_theirs, read_theirs[:5]

    run(body())
