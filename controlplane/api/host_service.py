"""quanta.v1.HostService: the hosts agents registered; maintenance and drain;
quarantined VMs, adopted or destroyed (system admins). A drain is an intent
recorded in etcd (maintenance and the drain marker, one txn); the frontend
answers at once and never waits for a host: the scheduler that owns shard 0
moves the VMs off (scheduler.lifecycle)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from controlplane.api import errors, validation
from controlplane.api.access import require
from controlplane.api.convert import host_to_proto, orphan_to_proto, vm_to_proto
from controlplane.api.streams import start_revision, watch_with_bookmarks
from controlplane.auth.policy import Action
from controlplane.etcd import Compacted
from controlplane.gen.quanta.v1 import common_pb2, host_pb2, host_pb2_grpc
from controlplane.store.errors import AlreadyExists, Conflict, HostAlive, HostNotEmpty, NotFound
from controlplane.store.hosts import HostStore
from controlplane.store.ledger import QuotaExceeded
from controlplane.store.orphans import HostDead, NotAdoptable, OrphanStore, ProjectNotFound


class HostService(host_pb2_grpc.HostServiceServicer):
    def __init__(self, store: HostStore, *, bookmark_s: float = 10.0, orphans: OrphanStore | None = None):
        self._store = store
        self._orphans = orphans
        self._bookmark_s = bookmark_s

    async def _existing(self, host: str, name: str):
        try:
            return await self._store.get(host)
        except NotFound as err:
            raise errors.not_found("host", name) from err

    async def SetMaintenance(self, request: host_pb2.SetMaintenanceRequest, context) -> host_pb2.Host:
        host = validation.parse_host_name(request.name)
        require(Action.SYSTEM, kind="host", name=request.name)
        await self._existing(host, request.name)
        await self._store.set_maintenance(host, request.maintenance)
        return host_to_proto(await self._existing(host, request.name))

    async def DeleteHost(self, request: host_pb2.DeleteHostRequest, context) -> host_pb2.Host:
        host = validation.parse_host_name(request.name)
        require(Action.SYSTEM, kind="host", name=request.name)
        try:
            return host_to_proto(await self._store.delete(host))
        except NotFound as err:
            raise errors.not_found("host", request.name) from err
        except HostAlive as err:
            raise errors.failed_precondition(str(err), "HOST_ALIVE") from err
        except HostNotEmpty as err:
            raise errors.failed_precondition(str(err), "HOST_NOT_EMPTY") from err
        except Conflict as err:
            raise errors.aborted(str(err)) from err

    async def DrainHost(self, request: host_pb2.DrainHostRequest, context) -> host_pb2.Host:
        """Idempotent; answers at once (``timeout`` is deprecated and ignored)."""
        host = validation.parse_host_name(request.name)
        require(Action.SYSTEM, kind="host", name=request.name)
        await self._existing(host, request.name)
        await self._store.drain(host)
        return host_to_proto(await self._existing(host, request.name))

    def _orphan_store(self) -> OrphanStore:
        if self._orphans is None:
            raise errors.failed_precondition("this frontend cannot handle orphans", "ORPHANS_UNSUPPORTED")
        return self._orphans

    async def ListOrphans(self, request: host_pb2.ListOrphansRequest, context) -> host_pb2.ListOrphansResponse:
        v = validation.Violations()
        host = v.capture(validation.parse_host_name, request.host, "host") if request.host else None
        size = v.capture(validation.page_size, request.page_size)
        v.raise_if_any()
        require(Action.SYSTEM_READ, kind="host", name=request.host or "hosts")
        scope = f"orphans|{request.host}"
        token = validation.decode_page_token(request.page_token, scope)
        after = token[1] if token else ""
        orphans, last = await self._orphan_store().list(host=host, after=after, limit=v.valid(size))
        return host_pb2.ListOrphansResponse(
            orphans=[orphan_to_proto(o) for o in orphans],
            next_page_token=validation.encode_page_token(scope, 0, last) if last else "")

    async def AdoptOrphan(self, request: host_pb2.AdoptOrphanRequest, context):
        host, uid = validation.parse_orphan_name(request.name)
        require(Action.SYSTEM, kind="orphan", name=request.name)
        try:
            return vm_to_proto(await self._orphan_store().adopt(host, uid))
        except ProjectNotFound as err:
            raise errors.not_found("project", str(err)) from err
        except NotFound as err:
            raise errors.not_found("orphan", request.name) from err
        except NotAdoptable as err:
            raise errors.failed_precondition(str(err), "NOT_ADOPTABLE") from err
        except HostDead as err:
            raise errors.failed_precondition(str(err), "HOST_DEAD") from err
        except AlreadyExists as err:
            raise errors.already_exists("vm", str(err)) from err
        except QuotaExceeded as err:
            raise errors.resource_exhausted(str(err), "QUOTA_EXCEEDED",
                                            metadata={"dimensions": ",".join(err.dimensions)}) from err
        except Conflict as err:
            raise errors.aborted(str(err)) from err

    async def DestroyOrphan(self, request: host_pb2.DestroyOrphanRequest, context) -> host_pb2.OrphanVm:
        host, uid = validation.parse_orphan_name(request.name)
        require(Action.SYSTEM, kind="orphan", name=request.name)
        try:
            return orphan_to_proto(await self._orphan_store().destroy(host, uid))
        except NotFound as err:
            raise errors.not_found("orphan", request.name) from err
        except Conflict as err:
            raise errors.aborted(str(err)) from err

    async def GetHost(self, request: host_pb2.GetHostRequest, context) -> host_pb2.Host:
        host = validation.parse_host_name(request.name)
        require(Action.SYSTEM_READ, kind="host", name=request.name)
        try:
            return host_to_proto(await self._store.get(host))
        except NotFound as err:
            raise errors.not_found("host", request.name) from err

    async def ListHosts(self, request: host_pb2.ListHostsRequest, context) -> host_pb2.ListHostsResponse:
        require(Action.SYSTEM_READ, kind="host", name="hosts")
        size = validation.page_size(request.page_size)
        token = validation.decode_page_token(request.page_token, "hosts")
        revision, after = token if token else (0, "")
        if after:
            validation.parse_host_name(f"hosts/{after}", "page_token")
        try:
            records, last, revision = await self._store.page(after=after, limit=size, revision=revision)
        except Compacted as err:
            raise errors.page_token_expired() from err
        next_token = validation.encode_page_token("hosts", revision, last) if last else ""
        return host_pb2.ListHostsResponse(hosts=[host_to_proto(r) for r in records], next_page_token=next_token,
                                          resource_version=revision)

    async def WatchHosts(self, request: host_pb2.WatchHostsRequest, context) -> AsyncIterator[host_pb2.HostEvent]:
        require(Action.SYSTEM_READ, kind="host", name="hosts")
        validation.validate_resource_version(request.resource_version)
        if request.resource_version:
            start_revision(request.resource_version, await self._store.current_revision())
        table, revision = await self._store.snapshot(revision=request.resource_version)
        for known in table.records():
            if request.resource_version == 0:
                yield host_pb2.HostEvent(type=common_pb2.ADDED, host=host_to_proto(known),
                                         resource_version=known.revision)
        yield host_pb2.HostEvent(type=common_pb2.BOOKMARK, resource_version=revision)
        try:
            async for item in watch_with_bookmarks(self._store.watch(revision + 1, table), self._bookmark_s):
                if item is None:
                    yield host_pb2.HostEvent(type=common_pb2.BOOKMARK, resource_version=revision)
                    continue
                changed, revision = item
                for record in changed:
                    if isinstance(record, str):
                        yield host_pb2.HostEvent(type=common_pb2.DELETED,
                                                 host=host_pb2.Host(name=f"hosts/{record}"),
                                                 resource_version=revision)
                    else:
                        yield host_pb2.HostEvent(type=common_pb2.MODIFIED, host=host_to_proto(record),
                                                 resource_version=revision)
        except Compacted as err:
            raise errors.out_of_range("resource_version is too old; list again", "RESOURCE_VERSION_EXPIRED") \
                from err
