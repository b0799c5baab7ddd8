"""What a host agent reads and writes of persistent disks (controlplane/store/keys.py:
``disks/{t}/{p}/{disk}/record`` and ``.../attachment``): the attachments marked detaching, whose key it
deletes once its host let go of the disk (:meth:`AgentDiskStore.detach_done`), and
the disks marked DELETING, whose record it deletes once its driver destroyed the
data (:meth:`AgentDiskStore.remove_deleted`). A detaching attachment whose VM no
longer exists (removed before its agent reconciled the detach, or without its
agent) is deleted by any agent (:meth:`AgentDiskStore.clear_orphaned`). Every
deletion compares what was read (mod_revision), so agents racing for one of them
are safe: one wins, the others find nothing left to do.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from controlplane.etcd import EtcdClient, KeyValue, ops, prefix_end
from controlplane.gen.quanta.store.v1 import records_pb2 as rec
from controlplane.models import DEFAULT_DATASTORE_CLASS, VmRef, VmSpec
from controlplane.store.disks import detach_done_ops, removal_ops
from controlplane.store.keys import Keys


@dataclass(frozen=True, slots=True)
class AttachmentState:
    """An attachment as read: of disk ``disk_id`` in (tenant, project) to the VM named
    ``vm`` (its full name; empty when not recorded) of uid ``vm_uid``."""

    tenant: str
    project: str
    disk_id: str
    vm_uid: str
    detaching: bool
    mod_revision: int
    vm: str = ""


@dataclass(frozen=True, slots=True)
class DiskState:
    """A disk record as read (only what an agent needs)."""

    tenant: str
    project: str
    disk_id: str
    uid: str
    datastore_class: str
    deleting: bool
    mod_revision: int


@dataclass(frozen=True, slots=True)
class Change:
    """One watched key: ``value`` None when it was deleted (then only the ids are set)."""

    tenant: str
    project: str
    disk_id: str
    value: AttachmentState | DiskState | None


class AgentDiskStore:
    def __init__(self, client: EtcdClient, keys: Keys):
        self._etcd = client
        self._keys = keys

    # --- attachments -------------------------------------------------------------------

    def _attachment(self, kv: KeyValue) -> AttachmentState:
        t, p, d, _part = self._keys.parse_disk_key(kv.key)
        m = rec.DiskAttachment.FromString(kv.value)
        return AttachmentState(t, p, d, m.vm_uid, m.detaching, kv.mod_revision, m.vm)

    def _disk(self, kv: KeyValue) -> DiskState:
        t, p, d, _part = self._keys.parse_disk_key(kv.key)
        m = rec.DiskRecord.FromString(kv.value)
        return DiskState(t, p, d, m.uid, m.datastore_class or DEFAULT_DATASTORE_CLASS, bool(m.delete_time_ns),
                         kv.mod_revision)

    async def _list(self, part: str) -> tuple[list[KeyValue], int]:
        prefix = self._keys.disks_prefix()
        kvs, revision = await self._etcd.range_all(prefix, prefix_end(prefix))
        return [kv for kv in kvs if kv.key.endswith(b"/" + part.encode())], revision

    async def _watch(self, part: str, start_revision: int, decode) -> AsyncIterator[list[Change]]:
        prefix = self._keys.disks_prefix()
        suffix = b"/" + part.encode()
        async for batch in self._etcd.watch(prefix, prefix_end(prefix), start_revision=start_revision):
            changes = []
            for e in batch.events:
                if e.kv.key.endswith(suffix):
                    t, p, d, _part = self._keys.parse_disk_key(e.kv.key)
                    changes.append(Change(t, p, d, None if e.is_delete else decode(e.kv)))
            if changes:
                yield changes

    async def list_attachments(self) -> tuple[list[AttachmentState], int]:
        """Every attachment, at one revision (watch from revision + 1)."""
        kvs, revision = await self._list("attachment")
        return [self._attachment(kv) for kv in kvs], revision

    async def watch_attachments(self, start_revision: int) -> AsyncIterator[list[Change]]:
        """Attachment changes from ``start_revision``. Raises Compacted (re-list then)."""
        async for changes in self._watch("attachment", start_revision, self._attachment):
            yield changes

    async def detach_done(self, attachment: AttachmentState) -> bool:
        """The VM's host let go of the disk: delete its attachment key, if it is still
        as read (``attachment``: detaching, of that VM; compared by mod_revision).
        Returns whether it was deleted. Idempotent (a second call finds it changed)."""
        if not attachment.detaching:
            raise ValueError("only an attachment marked detaching is done by its host")
        response = await self._etcd.txn(*detach_done_ops(self._keys, attachment.tenant, attachment.project,
                                                          attachment.disk_id, attachment.mod_revision))
        return response.succeeded

    async def clear_orphaned(self, attachment: AttachmentState) -> bool:
        """Delete a detaching attachment whose VM no longer exists: one txn comparing
        the attachment as read (mod_revision) and the VM's spec key absent; when the
        name is held by another incarnation (another uid) since, a second txn compares
        that incarnation's create_revision instead. Returns whether it was deleted
        (False: the VM is still there, the attachment changed, or it names no VM).
        Idempotent: agents racing for it, one wins."""
        if not attachment.detaching:
            raise ValueError("only an attachment marked detaching is cleared")
        ref = VmRef.from_name(attachment.vm)
        if ref is None or (ref.tenant, ref.project) != (attachment.tenant, attachment.project):
            return False
        key = self._keys.disk_attachment(attachment.tenant, attachment.project, attachment.disk_id)
        spec_key = self._keys.vm_spec(ref)
        held = ops.mod_revision_is(key, attachment.mod_revision)
        response = await self._etcd.txn([held, ops.absent(spec_key)], [ops.delete(key)], [ops.get(spec_key)])
        if response.succeeded:
            return True
        found = response.kvs(0)
        if not found or not attachment.vm_uid or VmSpec.from_bytes(found[0].value).uid == attachment.vm_uid:
            return False  # the attachment changed (the spec went meanwhile: seen again), or its VM is there
        response = await self._etcd.txn([held, ops.create_revision_is(spec_key, found[0].create_revision)],
                                        [ops.delete(key)])
        return response.succeeded

    # --- disks -------------------------------------------------------------------------

    async def list_disks(self) -> tuple[list[DiskState], int]:
        """Every disk record, at one revision (watch from revision + 1)."""
        kvs, revision = await self._list("record")
        return [self._disk(kv) for kv in kvs], revision

    async def watch_disks(self, start_revision: int) -> AsyncIterator[list[Change]]:
        """Disk record changes from ``start_revision``. Raises Compacted (re-list then)."""
        async for changes in self._watch("record", start_revision, self._disk):
            yield changes

    async def attached(self, disk: DiskState) -> bool:
        """Whether the disk has an attachment now (one get)."""
        key = self._keys.disk_attachment(disk.tenant, disk.project, disk.disk_id)
        return await self._etcd.get(key) is not None

    async def remove_deleted(self, disk: DiskState) -> bool:
        """Its data destroyed: delete the DELETING disk's record, comparing that it is
        as read and has no attachment. Returns whether it was deleted (False: another
        agent did, or it changed). Idempotent."""
        if not disk.deleting:
            raise ValueError("only a disk marked DELETING is removed")
        response = await self._etcd.txn(*removal_ops(self._keys, disk.tenant, disk.project, disk.disk_id,
                                                      disk.mod_revision))
        return response.succeeded
