"""quanta.v1.HostService: the hosts agents registered; maintenance and drain
(system admins). Drain blocks the call, not the system: the moves are
compare-and-swap transactions (controlplane.store.lifecycle), so a drain cut
short by its deadline or a frontend crash leaves nothing half-done, and a
retry continues where it stopped."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import grpc

from controlplane.api import errors, validation
from controlplane.api.access import require
from controlplane.api.convert import host_to_proto
from controlplane.api.streams import watch_with_bookmarks
from controlplane.auth.policy import Action
from controlplane.etcd import Compacted
from controlplane.gen.quanta.v1 import common_pb2, host_pb2, host_pb2_grpc
from controlplane.store.errors import Conflict, HostAlive, HostNotEmpty, NotFound
from controlplane.store.hosts import HostStore
from controlplane.store.lifecycle import HostEvictor, LifecycleStore

DRAIN_TIMEOUT_S = 300.0
MAX_DRAIN_TIMEOUT_S = 3600.0


class HostService(host_pb2_grpc.HostServiceServicer):
    def __init__(self, store: HostStore, *, lifecycle: LifecycleStore | None = None,
                 evictor: HostEvictor | None = None, bookmark_s: float = 10.0):
        self._store = store
        self._lifecycle = lifecycle
        self._evictor = evictor
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
        host = validation.parse_host_name(request.name)
        timeout_s = request.timeout.ToNanoseconds() / 1e9 if request.HasField("timeout") else 0.0
        if timeout_s < 0 or timeout_s > MAX_DRAIN_TIMEOUT_S:
            raise errors.invalid_argument([("timeout", f"must be between 0 and {MAX_DRAIN_TIMEOUT_S:.0f} s")])
        require(Action.SYSTEM, kind="host", name=request.name)
        if self._evictor is None or self._lifecycle is None:
            raise errors.failed_precondition("this frontend cannot drain hosts", "DRAIN_UNSUPPORTED")
        deadline = time.monotonic() + (timeout_s or DRAIN_TIMEOUT_S)
        record = await self._existing(host, request.name)
        await self._store.set_maintenance(host, True)
        while True:
            left = await self._evictor.evict(host, dead=record.dead)
            if not left.bound:
                break
            # What is left is being destroyed by its agent, or lost a race: wait for a change.
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0 or not await self._lifecycle.wait_bindings_change(host, left.revision, remaining_s):
                raise errors.ApiError(
                    grpc.StatusCode.DEADLINE_EXCEEDED, "DRAIN_TIMEOUT",
                    f"{request.name} still holds {len(left.bound)} VMs; what was moved stays moved, "
                    "drain again to continue", metadata={"host": request.name, "vms": str(len(left.bound))})
            record = await self._existing(host, request.name)
        return host_to_proto(await self._existing(host, request.name))

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
            raise errors.out_of_range("the listing's revision was compacted; start it again",
                                      "PAGE_TOKEN_EXPIRED") from err
        next_token = validation.encode_page_token("hosts", revision, last) if last else ""
        return host_pb2.ListHostsResponse(hosts=[host_to_proto(r) for r in records], next_page_token=next_token,
                                          resource_version=revision)

    async def WatchHosts(self, request: host_pb2.WatchHostsRequest, context) -> AsyncIterator[host_pb2.HostEvent]:
        require(Action.SYSTEM_READ, kind="host", name="hosts")
        validation.validate_resource_version(request.resource_version)
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
