"""Persistent disks in etcd, as the frontends (DiskService, and VmService's attach,
detach and create) and the agents (destroying a deleted disk's data, letting go of a
detached one) read and write them.

A disk is ``disks/{t}/{p}/{d}/record`` (:class:`~controlplane.disks.Disk`) and, while
a VM has it, ``disks/{t}/{p}/{d}/attachment`` beside it; every read takes both at one
revision (one range over the disk's prefix), and the state shown is derived from both
(:func:`controlplane.disks.disk_state`).

- Create charges the project's quota (``data_disks`` + 1, ``data_disk_gib`` + size)
  through the quota ledger, in the transaction that stores the record; delete marks the
  record DELETING and releases that charge in one transaction (:func:`deletion`, the one
  place for it: DeleteDisk and DeleteVm's ``delete_disks``). An agent that reaches the
  disk's class destroys the data, then removes the record (``AgentDiskStore``,
  controlplane/store/agentdisks.py: every agent-side read and write of disks).
- The agents' work index (``disk-work/``): a DELETING disk and a detaching attachment
  each have a key there, put in the txn that marks it and deleted in the txn that
  ends it (:func:`deletion`, :func:`removal_ops`, :func:`detaching_ops`,
  :func:`detach_done_ops`), so that an agent lists and watches only the work, not
  every tenant's disks.
- A disk is attached to at most one VM: the transaction that adds it to a VM's spec
  (create, AttachDisk) creates the attachment with a compare that it is absent and a
  compare of the record's mod_revision as read (:func:`attach_ops`, the one place for it),
  so a concurrent attach elsewhere, a deletion or a detach in between all fail it.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from controlplane.disks import Attachment, Disk, DiskName, DiskState, disk_state
from controlplane.etcd import EtcdClient, KeyValue, ops, prefix_end
from controlplane.etcd.ops import RequestOp
from controlplane.gen.quanta.store.v1 import records_pb2 as rec
from controlplane.models import DiskRef, VmRef, now_ns
from controlplane.store.errors import (
    AlreadyExists,
    Conflict,
    EtagMismatch,
    NotFound,
    RequestMismatch,
    RequestReplayed,
    StoreError,
)
from controlplane.store.keys import Keys
from controlplane.store.ledger import Charge, GuardFailed, ProjectDeleting, QuotaExceeded, UsageLedger
from controlplane.store.retention import RetentionLeases
from controlplane.tenancy import Usage

log = logging.getLogger(__name__)

_MAX_CAS_ATTEMPTS = 8
_FINGERPRINT_VERSION = b"disk-create-v1\0"


# --- outcomes ---------------------------------------------------------------------------


class DiskInUse(StoreError):
    """The disk is attached to another VM, or detaching (its host has not let go yet)."""

    def __init__(self, disk: str, vm: str, detaching: bool):
        why = f"is detaching from {vm}" if detaching else f"is attached to {vm}"
        super().__init__(f"disk {disk} {why}; a disk is attached to at most one VM")
        self.disk, self.vm, self.detaching = disk, vm, detaching


class DiskDeleting(StoreError):
    def __init__(self, disk: str):
        super().__init__(f"disk {disk} is being deleted")
        self.disk = disk


class DiskAttached(StoreError):
    """A deletion of a disk that a VM still has (attached or detaching)."""

    def __init__(self, disk: str, vm: str):
        super().__init__(f"disk {disk} is attached to {vm} (or detaching from it); detach it first")
        self.disk, self.vm = disk, vm


class DiskMissing(NotFound):
    """A disk named by a VM's create or AttachDisk does not exist."""


class DiskChanged(Conflict):
    """A disk changed between the read a change was decided on and its transaction
    (e.g. its labels): decide again on a fresh read."""


# --- reads ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DiskView:
    """A disk as read: its record and attachment at one revision, with their
    mod_revisions (0: no attachment)."""

    disk: Disk
    revision: int
    attachment: Attachment | None = None
    attachment_revision: int = 0
    create_revision: int = 0

    @property
    def state(self) -> DiskState:
        return disk_state(self.disk, self.attachment)

    @property
    def vm(self) -> str:
        """The VM that has it (ATTACHED or DETACHING), else ""."""
        return self.attachment.vm if self.attachment is not None else ""

    @property
    def etag(self) -> str:
        return f"{self.revision:x}"

    @property
    def resource_version(self) -> int:
        return max(self.revision, self.attachment_revision)


def _view(kvs: Iterable[KeyValue]) -> DiskView | None:
    """The view of one disk from the kvs under its prefix (None: no record)."""
    record = attachment = None
    for kv in kvs:
        if kv.key.endswith(b"/record"):
            record = kv
        elif kv.key.endswith(b"/attachment"):
            attachment = kv
    if record is None:
        return None
    return DiskView(Disk.from_bytes(record.value), record.mod_revision,
                    Attachment.from_bytes(attachment.value) if attachment is not None else None,
                    attachment.mod_revision if attachment is not None else 0, record.create_revision)


def _grouped(keys: Keys, kvs: Iterable[KeyValue]) -> list[tuple[tuple[str, str, str], list[KeyValue]]]:
    """kvs of a range over disks, grouped per disk in key order."""
    groups: list[tuple[tuple[str, str, str], list[KeyValue]]] = []
    for kv in kvs:
        tenant, project, disk_id, _part = keys.parse_disk_key(kv.key)
        name = (tenant, project, disk_id)
        if groups and groups[-1][0] == name:
            groups[-1][1].append(kv)
        else:
            groups.append((name, [kv]))
    return groups


@dataclass(frozen=True, slots=True)
class DiskChange:
    """One change of a disk in a watch stream: the disk after it (for a removal: as
    last seen), at ``revision``; ``created``: the record was created at this revision."""

    deleted: bool
    view: DiskView
    revision: int

    @property
    def created(self) -> bool:
        return not self.deleted and self.view.create_revision == self.revision


# --- the rules, pure --------------------------------------------------------------------


def detaching_ops(keys: Keys, tenant: str, project: str, disk_id: str, attachment: Attachment) -> list:
    """The writes that mark a disk's attachment detaching (DetachDisk of a VM on a
    host): the attachment rewritten with ``detaching`` and, in the same txn, its copy
    under the agents' work index (``Keys.disk_work_detaching``): both then carry that
    txn's revision, and every txn that deletes the attachment deletes the copy
    (:func:`detach_done_ops`). The one place for it. Pure."""
    marked = replace(attachment, detaching=True).to_bytes()
    return [ops.put(keys.disk_attachment(tenant, project, disk_id), marked),
            ops.put(keys.disk_work_detaching(tenant, project, disk_id), marked)]


def detach_done_ops(keys: Keys, tenant: str, project: str, disk_id: str,
                    attachment_revision: int) -> tuple[list, list]:
    """What deleting a detaching attachment compares (the attachment and its work key
    as marked: both at ``attachment_revision``, the revision of :func:`detaching_ops`'
    txn) and writes (both deleted): its host let go of the disk, or an agent clears
    it once its VM is gone. The one place for it (the agents' AgentDiskStore). Pure."""
    key = keys.disk_attachment(tenant, project, disk_id)
    work = keys.disk_work_detaching(tenant, project, disk_id)
    return ([ops.mod_revision_is(key, attachment_revision), ops.mod_revision_is(work, attachment_revision)],
            [ops.delete(key), ops.delete(work)])


def deleting_work(keys: Keys, disk: Disk) -> RequestOp:
    """The put of a DELETING disk's key in the agents' work index
    (``Keys.disk_work_deleting``, under its class; the value names its uid), written in
    the txn that marks it (:func:`deletion`) and deleted in the one that removes its
    record (:func:`removal_ops`). Pure."""
    return ops.put(keys.disk_work_deleting(disk.datastore_class, disk.tenant, disk.project, disk.disk_id),
                   disk.attached_as().to_proto().SerializeToString())


def removal_ops(keys: Keys, tenant: str, project: str, disk_id: str, datastore_class: str,
                record_revision: int) -> tuple[list, list]:
    """What removing a DELETING disk's record once its data is destroyed compares (the
    record as read, no attachment) and writes (the record and its work key deleted):
    the one place for it (the agents' AgentDiskStore). Pure."""
    key = keys.disk(tenant, project, disk_id)
    return ([ops.mod_revision_is(key, record_revision), ops.absent(keys.disk_attachment(tenant, project, disk_id))],
            [ops.delete(key), ops.delete(keys.disk_work_deleting(datastore_class, tenant, project, disk_id))])


def attach_ops(keys: Keys, vm: VmRef, vm_uid: str, disks: Sequence[DiskRef], revisions: Mapping[str, int], *,
               at_ns: int = 0) -> tuple[list, list]:
    """What taking ``disks`` (of ``vm``'s project) for ``vm`` compares and writes, in the
    transaction that adds them to its spec: per disk, that its attachment is absent and
    its record is unchanged since it was read (``revisions``: disk id → mod_revision;
    a DELETING or relabelled disk then fails it), and the put of its attachment. The one
    place for it: every create path (``vms.create_ops``) and AttachDisk. Raises
    ValueError when a disk has no revision. Pure."""
    compares: list = []
    writes: list = []
    at = at_ns or now_ns()
    for ref in disks:
        if ref.disk_id not in revisions:
            raise ValueError(f"disk {ref.disk_id} is attached without the revision it was read at")
        attachment = keys.disk_attachment(vm.tenant, vm.project, ref.disk_id)
        compares += [ops.absent(attachment),
                     ops.mod_revision_is(keys.disk(vm.tenant, vm.project, ref.disk_id), revisions[ref.disk_id])]
        writes.append(ops.put(attachment, Attachment(vm.name, vm_uid, False, at).to_bytes()))
    return compares, writes


def attach_exclusive(keys: Keys, vm: VmRef, disks: Sequence[DiskRef]) -> tuple[bytes, ...]:
    """The names a change taking ``disks`` holds in a group commit (``Charge.exclusive``):
    two creates taking one disk never share a transaction (etcd refuses a txn that
    writes one key twice); the second then fails its compares alone."""
    return tuple(keys.disk_prefix(vm.tenant, vm.project, ref.disk_id) for ref in disks)


def deletion(keys: Keys, view: DiskView, *, at_ns: int = 0, attached_ok: bool = False) -> Charge:
    """What marking a disk DELETING compares, writes and releases: its record unchanged
    since ``view`` was read, rewritten with ``delete_time_ns`` (the first write), its
    key in the agents' work index put (:func:`deleting_work`), and the quota it holds
    (``Usage.of_disk``) released, in one transaction. Its attachment must be absent;
    with ``attached_ok`` (DeleteVm's ``delete_disks``: its VM still has it until removed)
    it must be the one ``view`` read (its mod_revision): an attach writes the attachment,
    not the record, so a disk whose VM was removed since and another VM took fails it.
    The one place for it. Pure."""
    disk = view.disk
    key = keys.disk(disk.tenant, disk.project, disk.disk_id)
    at = at_ns or now_ns()
    attachment = keys.disk_attachment(disk.tenant, disk.project, disk.disk_id)
    compares = [ops.mod_revision_is(key, view.revision),
                ops.mod_revision_is(attachment, view.attachment_revision) if attached_ok else ops.absent(attachment)]
    prefix = keys.disk_prefix(disk.tenant, disk.project, disk.disk_id)
    return Charge(-Usage.of_disk(disk.size_gib), compares,
                  [ops.put(key, disk.with_(delete_time_ns=at, update_time_ns=at).to_bytes()),
                   deleting_work(keys, disk)],
                  [ops.get(prefix, prefix_end(prefix))], exclusive=(prefix,))


def attach_refusal(view: DiskView | None, name: str, vm: VmRef, vm_uid: str = "") -> StoreError | None:
    """Why a disk read as ``view`` may not be taken by ``vm`` (NotFound, DiskDeleting,
    DiskInUse), or None. A disk this VM (``vm_uid``, or by name when empty) has already
    is no refusal. Pure: the one rule AttachDisk and every create share."""
    if view is None:
        return DiskMissing(name)
    if view.disk.deleting:
        return DiskDeleting(name)
    a = view.attachment
    if a is not None and not (a.vm == vm.name and (not vm_uid or a.vm_uid == vm_uid) and not a.detaching):
        return DiskInUse(name, a.vm, a.detaching)
    return None


def fingerprint(disk: Disk) -> bytes:
    """What makes a CreateDisk with the same request_id the same request."""
    chosen = {"disk_id": disk.disk_id, "size_gib": disk.size_gib, "class": disk.datastore_class,
              "labels": dict(disk.labels), "description": disk.description}
    encoded = json.dumps(chosen, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return hashlib.sha256(_FINGERPRINT_VERSION + encoded).digest()


# --- the store --------------------------------------------------------------------------


class DiskStore:
    """Disks of every project. Shares the frontend's quota ledger and request retention
    with its VmStore."""

    def __init__(self, client: EtcdClient, keys: Keys, requests: RetentionLeases | None = None,
                 ledger: UsageLedger | None = None):
        self._etcd = client
        self._keys = keys
        self._requests = requests or RetentionLeases(client)
        self._ledger = ledger or UsageLedger(client, keys)

    @property
    def keys(self) -> Keys:
        return self._keys

    def _range(self, name: DiskName, revision: int = 0):
        prefix = self._keys.disk_prefix(name.tenant, name.project, name.disk_id)
        return ops.get(prefix, prefix_end(prefix), revision=revision)

    # --- create ------------------------------------------------------------------------

    async def create(self, disk: Disk, *, also: Sequence = ()) -> tuple[DiskView, bool]:
        """Store a new AVAILABLE disk and charge its project's quota, in one transaction,
        with the puts ``also`` (its audit record). Idempotent by ``disk.request_id``: a
        retry returns the disk the first attempt made (``created`` False, nothing
        written), RequestMismatch when the first asked for something else,
        RequestReplayed when its disk is gone. Raises AlreadyExists (the id is taken),
        NotFound (no such project), QuotaExceeded, ProjectDeleting."""
        k = self._keys
        key = k.disk(disk.tenant, disk.project, disk.disk_id)
        prefix = k.disk_prefix(disk.tenant, disk.project, disk.disk_id)
        charge = Charge(Usage.of_disk(disk.size_gib), [ops.absent(key)], [ops.put(key, disk.to_bytes()), *also],
                        [self._range(disk.ref)], exclusive=(prefix,))
        request_key = b""
        if disk.request_id:
            request_key = k.request(disk.tenant, disk.project, disk.request_id)
            charge.compares.append(ops.absent(request_key))
            charge.writes.append(ops.put(request_key, rec.RequestRecord(
                vm_key=disk.name, uid=disk.uid, fingerprint=fingerprint(disk)).SerializeToString(),
                lease=await self._requests.current()))
            charge.reads.append(ops.get(request_key))
            charge.exclusive += (request_key,)
        try:
            revision = await self._ledger.apply(disk.tenant, disk.project, charge)
        except GuardFailed as failed:
            existing, request_kvs = _view(failed.kvs[0]), (failed.kvs[1] if disk.request_id else [])
        except (QuotaExceeded, ProjectDeleting):
            if not disk.request_id:
                raise
            result = await self._etcd.txn([], [self._range(disk.ref), ops.get(request_key)])
            existing, request_kvs = _view(result.kvs(0)), result.kvs(1)
            if not request_kvs:
                raise
        else:
            log.info("disk created", extra={"tenant": disk.tenant, "project": disk.project, "disk": disk.disk_id,
                                            "size_gib": disk.size_gib, "revision": revision})
            return DiskView(disk, revision, create_revision=revision), True
        if request_kvs:
            made = rec.RequestRecord.FromString(request_kvs[0].value)
            if made.fingerprint and made.fingerprint != fingerprint(disk):
                raise RequestMismatch(disk.request_id, made.vm_key)
            if existing is not None and existing.disk.uid == made.uid:
                return existing, False
            raise RequestReplayed(disk.request_id, made.vm_key)
        if existing is not None:
            raise AlreadyExists(disk.name)
        raise Conflict(f"create of {disk.name} raced; retry")

    # --- read --------------------------------------------------------------------------

    async def get(self, name: DiskName, *, revision: int = 0) -> DiskView:
        """The disk and its attachment at one revision; raises NotFound."""
        prefix = self._keys.disk_prefix(name.tenant, name.project, name.disk_id)
        view = _view((await self._etcd.range(prefix, prefix_end(prefix), revision=revision)).kvs)
        if view is None:
            raise NotFound(name.name)
        return view

    async def get_many(self, names: Sequence[DiskName]) -> builtins.list[DiskView | None]:
        """Per name, the disk now (None: no such disk), all at one revision per
        ``max_txn_ops`` names."""
        responses = await self._etcd.txn_chunked([self._range(name) for name in names])
        return [_view(KeyValue.from_pb(kv) for kv in response.response_range.kvs) for response in responses]

    async def current_revision(self) -> int:
        result = await self._etcd.range(self._keys.disks_prefix() + b"\0", count_only=True)
        return result.revision

    async def list(self, tenant: str, project: str, *, page_size: int, after: str = "", revision: int = 0,
                   selector: Callable[[Disk], bool] | None = None,
                   ) -> tuple[builtins.list[DiskView], str | None, int]:
        """One page of a project's disks in id order after the id ``after``, read at
        ``revision`` (0: now). Returns (views, the id the next page starts after or None,
        revision). A page may hold fewer than ``page_size`` when ``selector`` filters
        some out. Raises Compacted when ``revision`` is gone."""
        k = self._keys
        prefix = k.disks_prefix(tenant, project)
        start = prefix_end(k.disk_prefix(tenant, project, after)) if after else prefix
        result = await self._etcd.range(start, prefix_end(prefix), limit=2 * page_size + 1, revision=revision)
        groups = _grouped(k, result.kvs)
        # A disk's attachment sorts before its record: a page cut between them is cut short.
        if result.more and groups and not groups[-1][1][-1].key.endswith(b"/record"):
            groups.pop()
        more = result.more or len(groups) > page_size
        views: builtins.list[DiskView] = []
        last = ""
        for (_t, _p, disk_id), kvs in groups[:page_size]:
            last = disk_id
            view = _view(kvs)
            if view is not None and (selector is None or selector(view.disk)):
                views.append(view)
        return views, (last if more and last else None), result.revision

    # --- change ------------------------------------------------------------------------

    async def update(self, name: DiskName, change: Callable[[Disk], Disk], *, etag: str = "",
                     also: Sequence = ()) -> tuple[DiskView, bool]:
        """Apply ``change`` (pure; labels and description only) to the record by
        compare-and-swap, with the puts ``also``; returns (view, changed). Raises
        NotFound, EtagMismatch (``etag`` is not the record's), Conflict."""
        for _attempt in range(_MAX_CAS_ATTEMPTS):
            view = await self.get(name)
            if etag and etag != view.etag:
                raise EtagMismatch(f"etag {etag} does not match {view.etag}")
            disk = change(view.disk)
            if disk == view.disk:
                return view, False
            if (disk.uid, disk.size_gib, disk.datastore_class, disk.delete_time_ns) != (
                    view.disk.uid, view.disk.size_gib, view.disk.datastore_class, view.disk.delete_time_ns):
                raise ValueError("an update changes a disk's labels and description only")
            key = self._keys.disk(name.tenant, name.project, name.disk_id)
            disk = disk.with_(update_time_ns=now_ns())
            result = await self._etcd.txn([ops.mod_revision_is(key, view.revision)],
                                          [ops.put(key, disk.to_bytes()), *also])
            if result.succeeded:
                return DiskView(disk, result.revision, view.attachment, view.attachment_revision,
                                view.create_revision), True
        raise Conflict(f"{name.name} kept changing; retry")

    async def delete(self, name: DiskName, *, etag: str = "", also: Sequence = (),
                     attached_ok: bool = False) -> tuple[DiskView, bool]:
        """Mark a disk DELETING and release its quota, in one transaction with the puts
        ``also`` (:func:`deletion`). Idempotent: a disk DELETING already is returned,
        nothing written (``changed`` False). Raises NotFound, DiskAttached (a VM has it:
        attached or detaching; unless ``attached_ok``: its VM is being deleted with its
        disks), EtagMismatch, Conflict."""
        for _attempt in range(_MAX_CAS_ATTEMPTS):
            view = await self.get(name)
            if view.disk.deleting:
                return view, False
            if etag and etag != view.etag:
                raise EtagMismatch(f"etag {etag} does not match {view.etag}")
            if view.attachment is not None and not attached_ok:
                raise DiskAttached(name.name, view.attachment.vm)
            charge = deletion(self._keys, view, attached_ok=attached_ok)
            charge.writes.extend(also)
            try:
                revision = await self._ledger.apply(name.tenant, name.project, charge)
            except GuardFailed:
                continue
            disk = Disk.from_bytes(charge.writes[0].request_put.value)
            log.info("disk deleting", extra={"tenant": name.tenant, "project": name.project, "disk": name.disk_id})
            return DiskView(disk, revision, None, 0, view.create_revision), True
        raise Conflict(f"{name.name} kept changing; retry")

    async def delete_attached(self, views: Sequence[DiskView], *, also: Sequence = ()) -> int:
        """Mark the disks ``views`` (as read; a VM still has them: DeleteVm's
        ``delete_disks`` on a VM being deleted already) DELETING and release their quota
        in ONE transaction with the puts ``also`` (its audit record): :func:`deletion`
        of each, ``attached_ok``: each record and attachment as read, so pass only views
        whose attachment names the VM being deleted (its uid). Returns its revision; 0
        when a disk or its attachment changed since it was read (nothing written: read
        them again)."""
        if not views:
            raise ValueError("no disk to mark")
        charges = [deletion(self._keys, view, attached_ok=True) for view in views]
        first = views[0].disk
        charge = Charge(sum((c.delta for c in charges), Usage()), [x for c in charges for x in c.compares],
                        [*(w for c in charges for w in c.writes), *also], [r for c in charges for r in c.reads],
                        exclusive=tuple(n for c in charges for n in c.exclusive))
        try:
            revision = await self._ledger.apply(first.tenant, first.project, charge)
        except GuardFailed:
            return 0
        log.info("disks deleting", extra={"tenant": first.tenant, "project": first.project,
                                          "disks": ",".join(v.disk.disk_id for v in views)})
        return revision

    # --- watch -------------------------------------------------------------------------

    async def watch(self, tenant: str, project: str, *, start_revision: int,
                    seed: Iterable[DiskView] = ()) -> AsyncIterator[builtins.list[DiskChange]]:
        """Changes of a project's disks (record or attachment) from ``start_revision``
        (inclusive), batched; an empty batch is progress. ``seed``: the disks as of
        ``start_revision - 1`` if the caller listed them. Raises Compacted."""
        async for changes in self._watch(self._keys.disks_prefix(tenant, project), start_revision, seed):
            yield changes

    async def _watch(self, prefix: bytes, start_revision: int,
                     seed: Iterable[DiskView]) -> AsyncIterator[builtins.list[DiskChange]]:
        k = self._keys
        known: dict[tuple[str, str, str], DiskView] = {
            (v.disk.tenant, v.disk.project, v.disk.disk_id): v for v in seed}
        async for batch in self._etcd.watch(prefix, prefix_end(prefix), start_revision=start_revision,
                                            prev_kv=True):
            if not batch.events:
                yield []
                continue
            grouped: dict[tuple[tuple[str, str, str], int], list] = {}
            for event in batch.events:
                t, p, d, _part = k.parse_disk_key(event.kv.key)
                grouped.setdefault(((t, p, d), event.kv.mod_revision), []).append(event)
            # A disk not seen yet, neither created nor removed here (its other key is not in
            # the batch): read it as it was at the change's revision.
            missing = [gk for gk, events in grouped.items()
                       if gk[0] not in known and not any(
                           e.kv.key.endswith(b"/record") and (e.is_delete or e.kv.create_revision == gk[1])
                           for e in events)]
            fetched: dict = {}
            if missing:
                responses = await self._etcd.txn_chunked([
                    self._range(DiskName(*name), revision) for name, revision in missing])
                for gk, response in zip(missing, responses, strict=True):
                    fetched[gk] = _view(KeyValue.from_pb(kv) for kv in response.response_range.kvs)
            changes: builtins.list[DiskChange] = []
            for (name, revision), events in grouped.items():
                before = known.get(name)
                if (name, revision) in fetched:
                    view = fetched[(name, revision)]
                    if view is None:
                        continue
                    known[name] = view
                    changes.append(DiskChange(False, view, revision))
                    continue
                removed = False
                view = before
                for event in events:
                    if event.kv.key.endswith(b"/record"):
                        if event.is_delete:
                            removed = True
                            if view is None and event.prev_kv is not None:
                                view = DiskView(Disk.from_bytes(event.prev_kv.value), event.prev_kv.mod_revision)
                        else:
                            disk = Disk.from_bytes(event.kv.value)
                            view = DiskView(disk, revision, view.attachment if view else None,
                                            view.attachment_revision if view else 0, event.kv.create_revision)
                    elif view is not None:
                        view = DiskView(view.disk, view.revision,
                                        None if event.is_delete else Attachment.from_bytes(event.kv.value),
                                        0 if event.is_delete else revision, view.create_revision)
                if view is None:
                    continue
                if removed:
                    known.pop(name, None)
                    changes.append(DiskChange(True, view, revision))
                else:
                    known[name] = view
                    changes.append(DiskChange(False, view, revision))
            if len(known) > 200_000:
                known.clear()  # a disk not known is read again when it next changes
            yield changes
