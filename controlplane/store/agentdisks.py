"""What a host agent reads and writes of persistent disks: every agent-side read and
write of them is here. An agent never lists or watches ``disks/`` (every tenant's
records and attachments): only the work index of controlplane/store/keys.py, whose
keys the txns that mark and end the work put and delete (controlplane/store/disks.py,
the one place for those rules):

- ``disk-work/detaching/{t}/{p}/{d}``: an attachment marked detaching (a copy of it,
  put in the txn that marked it: both carry that txn's revision). Its VM's host's
  agent deletes both once the host let go of the disk (:meth:`AgentDiskStore.detach_done`);
  any agent deletes both when the VM no longer exists (removed before its agent
  reconciled the detach, or without its agent: :meth:`AgentDiskStore.clear_orphaned`).
- ``disk-work/deleting/{class}/{t}/{p}/{d}``: a disk marked DELETING. An agent lists and
  watches the classes its hosts reach; before acting it reads the disk itself (record
  and attachment, :meth:`AgentDiskStore.deleting_now`), has it destroyed, then deletes
  its record and work key (:meth:`AgentDiskStore.remove_deleted`).

Every deletion compares what was read (mod_revision), so agents racing for one of them
are safe: one wins, the others find nothing left to do. A work key with nothing behind
it (no writer leaves one: only a store edited by hand or by an older version could
hold it) is dropped by the agent that finds it, compared: the work key as listed, what
is behind it as found.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from controlplane.disks import Disk
from controlplane.etcd import EtcdClient, KeyValue, ops, prefix_end
from controlplane.gen.quanta.store.v1 import records_pb2 as rec
from controlplane.models import DEFAULT_DATASTORE_CLASS, VmRef, VmSpec
from controlplane.store.disks import detach_done_ops, removal_ops
from controlplane.store.keys import Keys

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class AttachmentState:
    """An attachment marked detaching, as its work key holds it: of disk ``disk_id`` in
    (tenant, project) to the VM named ``vm`` (its full name; empty when not recorded) of
    uid ``vm_uid``; ``mod_revision``: the work key's, which is the attachment's (one txn
    wrote both)."""

    tenant: str
    project: str
    disk_id: str
    vm_uid: str
    detaching: bool
    mod_revision: int
    vm: str = ""


@dataclass(frozen=True, slots=True)
class DiskState:
    """A disk marked DELETING, as its work key holds it (only what an agent needs);
    ``mod_revision``: the work key's."""

    tenant: str
    project: str
    disk_id: str
    uid: str
    datastore_class: str
    mod_revision: int


@dataclass(frozen=True, slots=True)
class Change:
    """One watched work key: ``value`` None when it was deleted (then only the ids are set)."""

    tenant: str
    project: str
    disk_id: str
    value: AttachmentState | DiskState | None


class Next(enum.Enum):
    """What to do next with a DELETING disk (:meth:`AgentDiskStore.deleting_now`)."""

    DESTROY = "destroy"  # no VM has it: destroy its data, then remove_deleted
    WAIT = "wait"  # a VM still has it (attached or detaching): again once it lets go
    NOTHING = "nothing"  # its work ended or changed (another agent), or the key was stale (dropped)


@dataclass(frozen=True, slots=True)
class Deleting:
    next: Next
    record_revision: int = 0  # the record's mod_revision as read (remove_deleted compares it)


class AgentDiskStore:
    def __init__(self, client: EtcdClient, keys: Keys):
        self._etcd = client
        self._keys = keys

    async def _list(self, prefix: bytes, decode: Callable[[KeyValue], AttachmentState | DiskState]):
        kvs, revision = await self._etcd.range_all(prefix, prefix_end(prefix))
        return [decode(kv) for kv in kvs], revision

    async def _watch(self, prefix: bytes, start_revision: int,
                     decode: Callable[[KeyValue], AttachmentState | DiskState]) -> AsyncIterator[list[Change]]:
        async for batch in self._etcd.watch(prefix, prefix_end(prefix), start_revision=start_revision):
            changes = []
            for e in batch.events:
                t, p, d = self._keys.parse_disk_work_key(e.kv.key)
                changes.append(Change(t, p, d, None if e.is_delete else decode(e.kv)))
            if changes:
                yield changes

    # --- detaching attachments ---------------------------------------------------------

    def _attachment(self, kv: KeyValue) -> AttachmentState:
        t, p, d = self._keys.parse_disk_work_key(kv.key)
        m = rec.DiskAttachment.FromString(kv.value)
        return AttachmentState(t, p, d, m.vm_uid, True, kv.mod_revision, m.vm)

    async def list_detaching(self) -> tuple[list[AttachmentState], int]:
        """Every attachment marked detaching (its work key), at one revision (watch from
        revision + 1). Reads nothing else."""
        return await self._list(self._keys.disk_work_detaching_prefix(), self._attachment)

    async def watch_detaching(self, start_revision: int) -> AsyncIterator[list[Change]]:
        """Detaching work keys' changes from ``start_revision``. Raises Compacted (re-list then)."""
        async for changes in self._watch(self._keys.disk_work_detaching_prefix(), start_revision,
                                         self._attachment):
            yield changes

    async def detach_done(self, attachment: AttachmentState) -> bool:
        """The VM's host let go of the disk: delete its attachment and work key, if both
        are still as marked (``disks.detach_done_ops``). Returns whether they were
        deleted. Idempotent (a second call finds them gone). A work key whose attachment
        is not the one it copies is dropped (compared)."""
        if not attachment.detaching:
            raise ValueError("only an attachment marked detaching is done by its host")
        a = attachment
        compares, writes = detach_done_ops(self._keys, a.tenant, a.project, a.disk_id, a.mod_revision)
        response = await self._etcd.txn(compares, writes, self._detaching_reads(a))
        if response.succeeded:
            return True
        await self._drop_stale_detaching(a, response.kvs(0), response.kvs(1))
        return False

    def _detaching_reads(self, a: AttachmentState) -> list:
        return [ops.get(self._keys.disk_attachment(a.tenant, a.project, a.disk_id)),
                ops.get(self._keys.disk_work_detaching(a.tenant, a.project, a.disk_id))]

    async def _drop_stale_detaching(self, a: AttachmentState, attachment: list[KeyValue],
                                    work: list[KeyValue]) -> bool:
        """Drop ``a``'s work key when it is still as listed but its attachment is not the
        one it copies (gone, or written since); compared: the work key as listed, the
        attachment as found. Returns whether it was dropped (False: the work key
        changed or went, or the attachment is the one)."""
        if not work or work[0].mod_revision != a.mod_revision:
            return False
        if attachment and attachment[0].mod_revision == a.mod_revision:
            return False
        key = self._keys.disk_attachment(a.tenant, a.project, a.disk_id)
        work_key = self._keys.disk_work_detaching(a.tenant, a.project, a.disk_id)
        found = ops.mod_revision_is(key, attachment[0].mod_revision) if attachment else ops.absent(key)
        response = await self._etcd.txn([ops.mod_revision_is(work_key, a.mod_revision), found],
                                        [ops.delete(work_key)])
        if response.succeeded:
            log.warning("a detaching work key without its attachment dropped",
                        extra={"tenant": a.tenant, "project": a.project, "disk": a.disk_id})
        return response.succeeded

    async def clear_orphaned(self, attachment: AttachmentState) -> bool:
        """Delete a detaching attachment (and its work key) whose VM no longer exists:
        one txn comparing both as marked and the VM's spec key absent; when the name is
        held by another incarnation (another uid) since, a second txn compares that
        incarnation's create_revision instead. Returns whether it was deleted (False:
        the VM is still there, the attachment changed, or it names no VM). A stale work
        key is dropped (compared). Idempotent: agents racing for it, one wins."""
        if not attachment.detaching:
            raise ValueError("only an attachment marked detaching is cleared")
        a = attachment
        ref = VmRef.from_name(a.vm)
        if ref is None or (ref.tenant, ref.project) != (a.tenant, a.project):
            return False
        spec_key = self._keys.vm_spec(ref)
        compares, writes = detach_done_ops(self._keys, a.tenant, a.project, a.disk_id, a.mod_revision)
        response = await self._etcd.txn([*compares, ops.absent(spec_key)], writes,
                                        [ops.get(spec_key), *self._detaching_reads(a)])
        if response.succeeded:
            return True
        attachment_kvs, work_kvs = response.kvs(1), response.kvs(2)
        if not work_kvs or work_kvs[0].mod_revision != a.mod_revision:
            return False  # done meanwhile (or marked again: seen again)
        if not attachment_kvs or attachment_kvs[0].mod_revision != a.mod_revision:
            await self._drop_stale_detaching(a, attachment_kvs, work_kvs)
            return False
        found = response.kvs(0)
        if not found or not a.vm_uid or VmSpec.from_bytes(found[0].value).uid == a.vm_uid:
            return False  # its VM is there (or the spec went meanwhile: seen again)
        response = await self._etcd.txn([*compares, ops.create_revision_is(spec_key, found[0].create_revision)],
                                        writes)
        return response.succeeded

    # --- DELETING disks ----------------------------------------------------------------

    def _disk(self, kv: KeyValue) -> DiskState:
        t, p, d = self._keys.parse_disk_work_key(kv.key)
        m = rec.DiskRef.FromString(kv.value)
        return DiskState(t, p, d, m.uid, m.datastore_class or DEFAULT_DATASTORE_CLASS, kv.mod_revision)

    async def list_deleting(self, datastore_class: str) -> tuple[list[DiskState], int]:
        """Every disk of the class marked DELETING (its work key), at one revision (watch
        from revision + 1). Reads nothing else: no other class, no disk record."""
        return await self._list(self._keys.disk_work_deleting_prefix(datastore_class), self._disk)

    async def watch_deleting(self, datastore_class: str, start_revision: int) -> AsyncIterator[list[Change]]:
        """The class's DELETING work keys' changes from ``start_revision``. Raises
        Compacted (re-list then)."""
        async for changes in self._watch(self._keys.disk_work_deleting_prefix(datastore_class), start_revision,
                                         self._disk):
            yield changes

    async def deleting_now(self, disk: DiskState) -> Deleting:
        """What to do with a DELETING disk now: its record, attachment and work key read
        in one txn. DESTROY (with the record's revision) when the work key is as listed
        and the record is that disk's (its uid and class), DELETING, with no attachment;
        WAIT when a VM still has it; NOTHING when the work key changed or went, or when
        it was stale (no such record behind it: dropped here, compared)."""
        k = self._keys
        prefix = k.disk_prefix(disk.tenant, disk.project, disk.disk_id)
        work_key = k.disk_work_deleting(disk.datastore_class, disk.tenant, disk.project, disk.disk_id)
        response = await self._etcd.txn([], [ops.get(prefix, prefix_end(prefix)), ops.get(work_key)])
        work = response.kvs(1)
        if not work or work[0].mod_revision != disk.mod_revision:
            return Deleting(Next.NOTHING)
        record = attachment = None
        for kv in response.kvs(0):
            if kv.key.endswith(b"/record"):
                record = kv
            elif kv.key.endswith(b"/attachment"):
                attachment = kv
        if record is not None:
            found = Disk.from_bytes(record.value)
            if found.deleting and (found.uid, found.datastore_class) == (disk.uid, disk.datastore_class):
                return Deleting(Next.DESTROY if attachment is None else Next.WAIT, record.mod_revision)
        key = k.disk(disk.tenant, disk.project, disk.disk_id)
        behind = ops.absent(key) if record is None else ops.mod_revision_is(key, record.mod_revision)
        dropped = await self._etcd.txn([ops.mod_revision_is(work_key, disk.mod_revision), behind],
                                       [ops.delete(work_key)])
        if dropped.succeeded:
            log.warning("a deleting work key without its disk dropped",
                        extra={"tenant": disk.tenant, "project": disk.project, "disk": disk.disk_id})
        return Deleting(Next.NOTHING)

    async def remove_deleted(self, disk: DiskState, record_revision: int) -> bool:
        """Its data destroyed: delete the DELETING disk's record and its work key,
        comparing that the record is as read (``record_revision``, from
        :meth:`deleting_now`) and has no attachment (``disks.removal_ops``). Returns
        whether it was deleted (False: another agent did, or it changed). Idempotent."""
        response = await self._etcd.txn(*removal_ops(self._keys, disk.tenant, disk.project, disk.disk_id,
                                                      disk.datastore_class, record_revision))
        return response.succeeded
