"""quanta.v1.AuditService: list and watch the audit log. System admins (and global
viewers) read all of it (parent ""); a tenant's admins read that tenant's."""

from __future__ import annotations

from collections.abc import AsyncIterator

from controlplane.api import errors, validation
from controlplane.api.access import require
from controlplane.api.convert import audit_to_proto
from controlplane.api.streams import start_revision, watch_with_bookmarks
from controlplane.auth.policy import Action
from controlplane.etcd import Compacted
from controlplane.gen.quanta.v1 import auth_pb2, auth_pb2_grpc, common_pb2
from controlplane.store.audit import AuditLog


def _scope(parent: str) -> str | None:
    """The tenant a parent names (None: all); checks the caller may read it."""
    if not parent:
        require(Action.SYSTEM_READ, kind="audit log", name="auditRecords")
        return None
    tenant = validation.parse_tenant_name(parent, "parent")
    require(Action.ADMIN, tenant, kind="tenant", name=parent)
    return tenant


class AuditService(auth_pb2_grpc.AuditServiceServicer):
    def __init__(self, log: AuditLog, *, bookmark_s: float = 10.0):
        self._log = log
        self._bookmark_s = bookmark_s

    async def ListAuditRecords(self, request: auth_pb2.ListAuditRecordsRequest,
                               context) -> auth_pb2.ListAuditRecordsResponse:
        tenant = _scope(request.parent)
        size = validation.page_size(request.page_size)
        scope = f"audit|{request.parent}"
        token = validation.decode_page_token(request.page_token, scope)
        revision, after = token if token else (0, "")
        try:
            entries, last, revision = await self._log.list(tenant, after=after, page_size=size, revision=revision)
        except Compacted as err:
            raise errors.page_token_expired() from err
        return auth_pb2.ListAuditRecordsResponse(
            records=[audit_to_proto(e.key, e.record) for e in entries], resource_version=revision,
            next_page_token=validation.encode_page_token(scope, revision, last) if last else "")

    async def WatchAuditRecords(self, request: auth_pb2.WatchAuditRecordsRequest,
                                context) -> AsyncIterator[auth_pb2.AuditEvent]:
        """Records written after ``resource_version`` (0: now) as ADDED events, each
        with the revision that wrote it; BOOKMARKs carry the revision up to which
        every record was sent (see :mod:`controlplane.api.streams`)."""
        tenant = _scope(request.parent)
        validation.validate_resource_version(request.resource_version)
        start = start_revision(request.resource_version, await self._log.current_revision())
        yield auth_pb2.AuditEvent(type=common_pb2.BOOKMARK, resource_version=start)
        try:
            async for item in watch_with_bookmarks(self._log.watch(tenant, start_revision=start + 1),
                                                   self._bookmark_s):
                if item is None:
                    yield auth_pb2.AuditEvent(type=common_pb2.BOOKMARK, resource_version=start)
                    continue
                entries, start = item[0], max(start, item[1])
                for entry in entries:
                    yield auth_pb2.AuditEvent(type=common_pb2.ADDED, record=audit_to_proto(entry.key, entry.record),
                                              resource_version=entry.revision)
                if not entries:
                    yield auth_pb2.AuditEvent(type=common_pb2.BOOKMARK, resource_version=start)
        except Compacted as err:
            raise errors.out_of_range(f"resource_version {request.resource_version} is too old; list again",
                                      "RESOURCE_VERSION_EXPIRED") from err
