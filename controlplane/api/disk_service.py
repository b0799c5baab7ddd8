"""quanta.v1.DiskService: persistent data disks of a project (controlplane/store/disks.py).

Access as for VMs: project members manage disks, viewers read them; a disk of a
project the caller cannot read is NOT_FOUND and never listed. Every mutation is
audited in its own transaction (the audit draft's writes go with it)."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator

import grpc

from controlplane.api import errors, paging, validation
from controlplane.api.access import audit_draft, require
from controlplane.api.convert import disk_to_proto
from controlplane.api.streams import start_revision, watch_with_bookmarks
from controlplane.auth.policy import Action
from controlplane.disks import MAX_DISK_GIB, MIN_DISK_GIB, Disk, DiskName
from controlplane.etcd import Compacted
from controlplane.gen.quanta.v1 import common_pb2, disk_pb2, disk_pb2_grpc
from controlplane.models import DEFAULT_DATASTORE_CLASS, now_ns
from controlplane.store.disks import DiskAttached, DiskStore, DiskView
from controlplane.store.errors import (
    AlreadyExists,
    Conflict,
    EtagMismatch,
    NotFound,
    RequestMismatch,
    RequestReplayed,
)
from controlplane.store.ledger import ProjectDeleting, QuotaExceeded

#: A datastore class: an id-like word (it is part of a host label's key).
DATASTORE_CLASS = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
MAX_DESCRIPTION = 1024
MAX_LABELS_BYTES = 16 * 1024
UPDATABLE = ("labels", "description")
FIXED = ("size_gib", "datastore_class")


class DiskService(disk_pb2_grpc.DiskServiceServicer):
    def __init__(self, store: DiskStore, *, bookmark_s: float = 10.0):
        self._store = store
        self._bookmark_s = bookmark_s

    async def CreateDisk(self, request: disk_pb2.CreateDiskRequest, context) -> disk_pb2.Disk:
        v = validation.Violations()
        parent = v.capture(validation.parse_project_parent, request.parent)
        if parent:
            require(Action.WRITE_VMS, *parent, kind="project", name=request.parent)
        v.capture(validation.validate_resource_id, request.disk_id, "disk_id", "disk id")
        v.capture(validation.validate_request_id, request.request_id)
        d = request.disk
        if not MIN_DISK_GIB <= d.size_gib <= MAX_DISK_GIB:
            v.add("disk.size_gib", f"{d.size_gib}; {MIN_DISK_GIB} to {MAX_DISK_GIB} GiB")
        datastore_class = d.datastore_class or DEFAULT_DATASTORE_CLASS
        if not DATASTORE_CLASS.match(datastore_class):
            v.add("disk.datastore_class", f"must match {DATASTORE_CLASS.pattern}")
        _check_labels_and_description(v, d)
        for output in ("state", "vm", "uid", "etag"):
            if getattr(d, output):
                v.add(f"disk.{output}", "output only; leave it unset")
        if d.name and parent and d.name != DiskName(*parent, request.disk_id).name:
            v.add("disk.name", "output only; leave empty or equal to parent/disks/disk_id")
        v.raise_if_any()
        tenant, project = v.valid(parent)
        at = now_ns()
        disk = Disk(tenant, project, request.disk_id, uuid.uuid4().hex, d.size_gib, datastore_class,
                    dict(d.labels), d.description, at, at, request_id=request.request_id)
        draft = audit_draft()
        try:
            view, created = await self._store.create(disk, also=await draft.writes() if draft else ())
        except RequestMismatch as err:
            raise errors.ApiError(grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED", str(err),
                                  metadata={"request_id": request.request_id, "created": err.made}) from err
        except RequestReplayed as err:
            raise errors.ApiError(grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_ALREADY_USED", str(err),
                                  metadata={"request_id": request.request_id, "created": err.made}) from err
        except AlreadyExists as err:
            raise errors.already_exists("disk", disk.name) from err
        except NotFound as err:
            raise errors.not_found("project", request.parent) from err
        except QuotaExceeded as err:
            raise errors.resource_exhausted(str(err), "QUOTA_EXCEEDED", metadata={
                "project": request.parent, "dimensions": ",".join(err.dimensions)}) from err
        except ProjectDeleting as err:
            raise errors.failed_precondition(str(err), "PROJECT_DELETING",
                                             metadata={"project": request.parent}) from err
        except Conflict as err:
            raise errors.aborted(str(err)) from err
        if created and draft:
            draft.committed()
        return disk_to_proto(view)

    async def GetDisk(self, request: disk_pb2.GetDiskRequest, context) -> disk_pb2.Disk:
        tenant, project, disk_id = validation.parse_disk_name(request.name)
        require(Action.READ, tenant, project, kind="disk", name=request.name)
        try:
            return disk_to_proto(await self._store.get(DiskName(tenant, project, disk_id)))
        except NotFound as err:
            raise errors.not_found("disk", request.name) from err

    async def ListDisks(self, request: disk_pb2.ListDisksRequest, context) -> disk_pb2.ListDisksResponse:
        listing = paging.project_listing("disks", request.parent, request.page_size, request.label_selector,
                                         request.page_token)
        selector, scope = listing.selector, listing.scope
        try:
            views, next_after, revision = await self._store.list(
                listing.tenant, listing.project, page_size=listing.size, after=listing.after,
                revision=listing.revision,
                selector=(lambda disk: validation.matches(selector, disk.labels)) if selector else None)
        except Compacted as err:
            raise errors.page_token_expired() from err
        return disk_pb2.ListDisksResponse(
            disks=[disk_to_proto(view) for view in views],
            next_page_token=validation.encode_page_token(scope, revision, next_after) if next_after else "",
            resource_version=revision)

    async def UpdateDisk(self, request: disk_pb2.UpdateDiskRequest, context) -> disk_pb2.Disk:
        d = request.disk
        tenant, project, disk_id = validation.parse_disk_name(d.name, "disk.name")
        require(Action.WRITE_VMS, tenant, project, kind="disk", name=d.name)
        v = validation.Violations()
        paths = v.capture(validation.update_mask, list(request.update_mask.paths), UPDATABLE, write_once=FIXED)
        v.raise_if_any()
        paths = v.valid(paths)
        _check_labels_and_description(v, d)
        v.raise_if_any()

        def change(disk: Disk) -> Disk:
            if "labels" in paths:
                disk = disk.with_(labels=dict(d.labels))
            if "description" in paths:
                disk = disk.with_(description=d.description)
            return disk

        draft = audit_draft()
        try:
            view, changed = await self._store.update(DiskName(tenant, project, disk_id), change, etag=d.etag,
                                                     also=await draft.writes() if draft else ())
        except NotFound as err:
            raise errors.not_found("disk", d.name) from err
        except EtagMismatch as err:
            raise errors.aborted(str(err), "ETAG_MISMATCH") from err
        except Conflict as err:
            raise errors.aborted(str(err)) from err
        if changed and draft:
            draft.committed()
        return disk_to_proto(view)

    async def DeleteDisk(self, request: disk_pb2.DeleteDiskRequest, context) -> disk_pb2.Disk:
        tenant, project, disk_id = validation.parse_disk_name(request.name)
        require(Action.WRITE_VMS, tenant, project, kind="disk", name=request.name)
        draft = audit_draft()
        try:
            view, changed = await self._store.delete(DiskName(tenant, project, disk_id), etag=request.etag,
                                                     also=await draft.writes() if draft else ())
        except NotFound as err:
            raise errors.not_found("disk", request.name) from err
        except DiskAttached as err:
            raise errors.failed_precondition(str(err), "DISK_ATTACHED",
                                             metadata={"name": request.name, "vm": err.vm}) from err
        except EtagMismatch as err:
            raise errors.aborted(str(err), "ETAG_MISMATCH") from err
        except Conflict as err:
            raise errors.aborted(str(err)) from err
        if changed and draft:
            draft.committed()
        return disk_to_proto(view)

    async def WatchDisks(self, request: disk_pb2.WatchDisksRequest, context) -> AsyncIterator[disk_pb2.DiskEvent]:
        v = validation.Violations()
        parent = v.capture(validation.parse_project_parent, request.parent)
        selector = v.capture(validation.parse_label_selector, request.label_selector)
        v.capture(validation.validate_resource_version, request.resource_version)
        v.raise_if_any()
        tenant, project = v.valid(parent)
        require(Action.READ, tenant, project, kind="project", name=request.parent)

        def wanted(view: DiskView) -> bool:
            return not selector or validation.matches(selector, view.disk.labels)

        start = start_revision(request.resource_version, await self._store.current_revision())
        seed: list[DiskView] = []
        try:
            if request.resource_version == 0:
                after: str | None = ""
                while after is not None:
                    views, after, _ = await self._store.list(tenant, project, page_size=1000, after=after,
                                                             revision=start)
                    seed.extend(views)
                    for view in views:
                        if wanted(view):
                            yield disk_pb2.DiskEvent(type=common_pb2.ADDED, disk=disk_to_proto(view),
                                                     resource_version=view.resource_version)
                yield disk_pb2.DiskEvent(type=common_pb2.BOOKMARK, resource_version=start)
            changes = self._store.watch(tenant, project, start_revision=start + 1, seed=seed)
            async for item in watch_with_bookmarks(changes, self._bookmark_s):
                if item is None:
                    yield disk_pb2.DiskEvent(type=common_pb2.BOOKMARK, resource_version=start)
                    continue
                for change in item:
                    start = max(start, change.revision)
                    if not wanted(change.view):
                        continue
                    disk = disk_to_proto(change.view)
                    disk.resource_version = change.revision
                    kind = (common_pb2.DELETED if change.deleted else
                            common_pb2.ADDED if change.created else common_pb2.MODIFIED)
                    yield disk_pb2.DiskEvent(type=kind, disk=disk, resource_version=change.revision)
                if not item:
                    yield disk_pb2.DiskEvent(type=common_pb2.BOOKMARK, resource_version=start)
        except Compacted as err:
            raise errors.watch_expired(request.resource_version) from err


def _check_labels_and_description(v: validation.Violations, d: disk_pb2.Disk) -> None:
    v.capture(validation.validate_labels, d.labels, "disk.labels")
    if sum(len(k) + len(val) for k, val in d.labels.items()) > MAX_LABELS_BYTES:
        v.add("disk.labels", f"labels exceed {MAX_LABELS_BYTES} bytes in total")
    if len(d.description) > MAX_DESCRIPTION:
        v.add("disk.description", f"{len(d.description)} characters; at most {MAX_DESCRIPTION}")

