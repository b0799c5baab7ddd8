"""The agent's view of persistent disks: which attachments of its VMs are being
detached, and the collection of disks marked DELETING. It reads only the disk work
index (controlplane/store/agentdisks.py), never every tenant's disks: memory and
events in proportion to the work, not to the disks.

Controllers (list at R, watch from R+1, re-list every ``resync_s`` and when
compacted), no polling:

- detaching attachments (``disk-work/detaching/``) are kept by VM uid; each one that
  arrives for a VM of this agent re-enqueues that VM (``on_detaching``), whose
  reconcile detaches the disk on its host and then calls :meth:`detach_done`, which
  deletes the attachment and its work key (compared: still as marked). A detaching
  attachment whose VM no longer exists (deleted before its agent reconciled the
  detach, or removed without its agent: a dead host, a failed set, a pending VM)
  has nobody to do that: each one listed or watched, and each of a VM this agent
  has just removed (:meth:`vm_removed`), is queued for a check that deletes it in
  one txn comparing it as marked and the VM's spec absent
  (``AgentDiskStore.clear_orphaned``; any agent may, one wins). The re-list checks
  every detaching attachment again: a VM removed elsewhere after its attachment was
  seen is caught by the next re-list at the latest;
- DELETING disks (``disk-work/deleting/{class}/``, one controller per datastore class
  one of this agent's hosts reaches: its label ``datastore.quanta.io/{class}``) are
  queued; a worker reads the disk (``deleting_now``): with no VM holding it, a
  reaching host's driver destroys it (``delete_disk``: idempotent; refused while a
  VM holds it), then its record and work key go, comparing the record as read.
  Every agent reaching the class may race for it: the driver call is idempotent and
  one record deletion wins. A disk a VM still holds waits: it is queued again when a
  detaching attachment of it ends, when this agent removes the VM that held it
  (:meth:`vm_removed`), or at the next re-list (a VM removed by another process).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import TypeVar

from agents.drivers.protocol import DriverError, HostDriver
from controlplane.etcd import Compacted, EtcdError
from controlplane.etcd.outages import ride_out
from controlplane.models import DATASTORE_LABEL_PREFIX, VmSpec, datastore_label
from controlplane.store.agentdisks import AgentDiskStore, AttachmentState, Change, DiskState, Next
from controlplane.workqueue import QueueShutDown, WorkQueue

log = logging.getLogger(__name__)

DiskId = tuple[str, str, str]  # tenant, project, disk id
T = TypeVar("T", AttachmentState, DiskState)


class DiskKeeper:
    def __init__(self, store: AgentDiskStore, drivers: Mapping[str, HostDriver],
                 host_labels: Mapping[str, Mapping[str, str]],
                 on_detaching: Callable[[str], None] = lambda uid: None, *, resync_s: float = 300.0):
        self._store = store
        self._drivers = drivers
        #: Each host's labels as registered: which datastore classes it reaches.
        self._labels = host_labels
        self._on_detaching = on_detaching
        self._resync_s = resync_s
        #: Attachments marked detaching, by VM uid, then by disk.
        self._detaching: dict[str, dict[DiskId, AttachmentState]] = {}
        self._vm_of: dict[DiskId, str] = {}  # the VM uid of each attachment in _detaching
        self._deleting: dict[DiskId, DiskState] = {}  # DELETING disks this agent reaches
        self._queue: WorkQueue[DiskId] = WorkQueue(base_delay_s=0.5, max_delay_s=60.0)
        #: Detaching attachments to check for a VM that no longer exists.
        self._orphan_checks: WorkQueue[DiskId] = WorkQueue(base_delay_s=0.5, max_delay_s=60.0)

    def detaching_of(self, vm_uid: str) -> list[AttachmentState]:
        """The attachments of VM ``vm_uid`` marked detaching, as last seen."""
        return list(self._detaching.get(vm_uid, {}).values())

    async def detach_done(self, attachment: AttachmentState) -> None:
        """The host let go of the disk: its attachment and work key go (if still as marked)."""
        done = await self._store.detach_done(attachment)
        log.info("disk detached" if done else "disk attachment changed meanwhile; left as it is",
                 extra={"disk": attachment.disk_id, "vm_uid": attachment.vm_uid})
        self._forget_detaching((attachment.tenant, attachment.project, attachment.disk_id))

    def vm_removed(self, spec: VmSpec) -> None:
        """This agent removed the VM ``spec`` from etcd: its detaching attachments (as
        last seen) are checked again, and deleted now that its spec is gone; its disks
        marked DELETING (as last seen) are queued: no VM holds them now."""
        for disk in self._detaching.get(spec.uid, {}):
            self._orphan_checks.add(disk)
        for ref in spec.disks:
            disk = (spec.ref.tenant, spec.ref.project, ref.disk_id)
            if disk in self._deleting:
                self._queue.add(disk)

    def classes(self) -> list[str]:
        """The datastore classes that a host of this agent reaches, in order."""
        return sorted({label[len(DATASTORE_LABEL_PREFIX):] for labels in self._labels.values()
                       for label, value in labels.items()
                       if label.startswith(DATASTORE_LABEL_PREFIX) and value == "true"})

    def reaching_host(self, datastore_class: str) -> str | None:
        """A host of this agent that reaches the class, or None."""
        label = datastore_label(datastore_class)
        return next((host for host, labels in self._labels.items() if labels.get(label) == "true"), None)

    async def run(self) -> None:
        """Run until cancelled."""
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(ride_out(self._sync_attachments, "detaching disk attachments"))
                for datastore_class in self.classes():
                    group.create_task(ride_out(functools.partial(self._sync_deleting, datastore_class),
                                               f"deleting disks of class {datastore_class}"))
                group.create_task(self._collect())
                group.create_task(self._clear_orphans())
        finally:
            self._queue.shutdown()
            self._orphan_checks.shutdown()

    # --- attachments -------------------------------------------------------------------

    def _forget_detaching(self, disk: DiskId) -> None:
        vm_uid = self._vm_of.pop(disk, None)
        if vm_uid is not None:
            of_vm = self._detaching.get(vm_uid, {})
            of_vm.pop(disk, None)
            if not of_vm:
                self._detaching.pop(vm_uid, None)

    def _attachment(self, disk: DiskId, state: AttachmentState | None) -> None:
        self._forget_detaching(disk)
        if state is None and disk in self._deleting:
            self._queue.add(disk)  # a DELETING disk let go of: its record does not change
        if state is not None:
            self._detaching.setdefault(state.vm_uid, {})[disk] = state
            self._vm_of[disk] = state.vm_uid
            self._on_detaching(state.vm_uid)
            self._orphan_checks.add(disk)

    async def _list_and_watch(self, listing: Callable[[], Awaitable[tuple[Sequence[T], int]]],
                              watching: Callable[[int], AsyncIterator[list[Change]]], forget: Callable[[], None],
                              apply: Callable[[DiskId, T | None], None], kind: type[T], what: str,
                              extra: Mapping[str, str] | None = None) -> None:
        """Forever: list (then ``forget`` what the last listing said, and ``apply``
        each listed state), watch from the listing's revision for ``resync_s``
        (``apply`` each change; None: gone), list again; a compacted watch lists again
        at once. The one loop of both of the keeper's views."""
        while True:
            listed, revision = await listing()
            forget()
            for state in listed:
                apply((state.tenant, state.project, state.disk_id), state)
            try:
                async with asyncio.timeout(self._resync_s):
                    async for changes in watching(revision + 1):
                        for change in changes:
                            value = change.value
                            assert value is None or isinstance(value, kind)
                            apply((change.tenant, change.project, change.disk_id), value)
            except TimeoutError:
                pass
            except Compacted:
                log.warning(f"{what} watch compacted; re-listing", extra=extra)

    async def _sync_attachments(self) -> None:
        def forget() -> None:
            self._detaching.clear()
            self._vm_of.clear()

        await self._list_and_watch(self._store.list_detaching, self._store.watch_detaching, forget,
                                   self._attachment, AttachmentState, "detaching disk attachments")

    async def _clear_orphans(self) -> None:
        while True:
            try:
                disk = await self._orphan_checks.get()
            except QueueShutDown:
                return
            try:
                state = self._detaching.get(self._vm_of.get(disk, ""), {}).get(disk)
                if state is not None and await self._store.clear_orphaned(state):
                    log.info("detaching attachment of a VM that is gone deleted",
                             extra={"disk": state.disk_id, "vm_uid": state.vm_uid})
                    self._forget_detaching(disk)
                self._orphan_checks.forget(disk)
            except EtcdError as err:
                log.info("detaching attachment check failed; will retry", extra={"disk": disk[2], "error": str(err)})
                self._orphan_checks.add_rate_limited(disk)
            except Exception:
                log.exception("detaching attachment check failed; will retry", extra={"disk": disk[2]})
                self._orphan_checks.add_rate_limited(disk)
            finally:
                self._orphan_checks.done(disk)

    # --- the collector -----------------------------------------------------------------

    def _disk(self, disk: DiskId, state: DiskState | None) -> None:
        if state is None or self.reaching_host(state.datastore_class) is None:
            self._deleting.pop(disk, None)
            return
        self._deleting[disk] = state
        self._queue.add(disk)

    async def _sync_deleting(self, datastore_class: str) -> None:
        def forget() -> None:
            for disk, state in list(self._deleting.items()):
                if state.datastore_class == datastore_class:
                    del self._deleting[disk]

        await self._list_and_watch(functools.partial(self._store.list_deleting, datastore_class),
                                   functools.partial(self._store.watch_deleting, datastore_class), forget,
                                   self._disk, DiskState, "deleting disks", {"datastore_class": datastore_class})

    async def _collect(self) -> None:
        while True:
            try:
                disk = await self._queue.get()
            except QueueShutDown:
                return
            try:
                await self._delete(disk)
                self._queue.forget(disk)
            except (DriverError, EtcdError) as err:
                log.info("disk deletion failed; will retry", extra={"disk": disk[2], "error": str(err)})
                self._queue.add_rate_limited(disk)
            except Exception:
                log.exception("disk deletion failed; will retry", extra={"disk": disk[2]})
                self._queue.add_rate_limited(disk)
            finally:
                self._queue.done(disk)

    async def _delete(self, disk: DiskId) -> None:
        state = self._deleting.get(disk)
        if state is None:
            return
        host = self.reaching_host(state.datastore_class)
        if host is None:
            return
        now = await self._store.deleting_now(state)
        if now.next is Next.WAIT:
            return  # a VM holds it: queued again when it lets go (see the module doc)
        if now.next is Next.DESTROY:
            await self._drivers[host].delete_disk(state.uid, state.datastore_class)
            removed = await self._store.remove_deleted(state, now.record_revision)
            log.info("disk destroyed" if removed else "disk destroyed; its record changed or went meanwhile",
                     extra={"disk": state.disk_id, "uid": state.uid, "host": host})
        if self._deleting.get(disk) is state:
            del self._deleting[disk]
