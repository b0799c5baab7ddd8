"""The audit log: one record per mutation attempt, written by group commit.

A frontend records each attempt once its outcome is known (so a refused attempt is
recorded too) and answers a mutation that happened only after its record is in
etcd: an answered mutation is audited even if the frontend is killed right after.
(VM creates and deletes carry their record in their own transaction: :meth:`put`.)
Records queued while a write is in flight go together in the next one, one atomic
transaction per ``max_txn_ops`` records; a failed transaction is retried under the
same keys (never two records for one attempt). If etcd cannot take a record within
the caller's patience the answer goes out anyway and the record stays queued,
retried until it is written or the process stops.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
from prometheus_client import Counter

from controlplane.etcd import EtcdClient, EtcdError, KeyValue, ops, prefix_end
from controlplane.gen.quanta.store.v1 import tenancy_pb2 as trec
from controlplane.store.keys import Keys
from controlplane.store.retention import RetentionLeases

log = logging.getLogger(__name__)

DEFAULT_AUDIT_RETENTION_S = 30 * 24 * 3600
RETRY_S = (0.05, 2.0)
"""Backoff between failed writes: first, at most."""


@dataclass(frozen=True, slots=True)
class AuditEntry:
    key: str
    """The entry's id within its tenant: ``{time_ns:020d}-{id}``."""
    record: trec.AuditRecord
    revision: int = 0
    """The etcd revision that wrote it (records written in one transaction share it)."""


AUDIT_DROPPED = Counter("quanta_audit_records_dropped_total",
                        "Audit records dropped because etcd refused them, alone, as too large.")


@dataclass(slots=True)
class _Pending:
    key: bytes
    value: bytes
    written: asyncio.Future[None]
    alone: bool = False  # was in a transaction refused as too large: goes in one of its own


def _settle(pending: _Pending) -> None:
    if not pending.written.done():
        pending.written.set_result(None)


def _too_large(error: BaseException) -> bool:
    """etcd (or gRPC before it) refused the request for its size: retrying it as it
    is would fail forever."""
    return isinstance(error, EtcdError) and (
        error.code is grpc.StatusCode.INVALID_ARGUMENT
        or (error.code is grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in str(error)))


def _entry(prefix: bytes, kv: KeyValue) -> AuditEntry:
    return AuditEntry(kv.key[len(prefix):].decode(), trec.AuditRecord.FromString(kv.value), kv.mod_revision)


class AuditLog:
    def __init__(self, client: EtcdClient, keys: Keys, *, retention_s: int = DEFAULT_AUDIT_RETENTION_S):
        self._etcd = client
        self._keys = keys
        self._leases = RetentionLeases(client, retention_s)
        self._queue: list[_Pending] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    def _key(self, record: trec.AuditRecord) -> bytes:
        return self._keys.audit(record.tenant, record.time_ns, uuid.uuid4().hex[:12])

    async def put(self, record: trec.AuditRecord) -> ops.RequestOp:
        """The put that files ``record``, for a caller to run in its own transaction
        (the mutation it records), instead of :meth:`append`."""
        return ops.put(self._key(record), record.SerializeToString(), lease=await self._leases.current())

    def append(self, record: trec.AuditRecord) -> asyncio.Future[None]:
        """Queue ``record``; never blocks. The future is done once the record is
        written (it never fails: a failed write is retried), or dropped as too large
        for etcd. Cancelling it does not withdraw the record."""
        pending = _Pending(self._key(record), record.SerializeToString(),
                           asyncio.get_running_loop().create_future())
        self._queue.append(pending)
        self._wake.set()
        return asyncio.shield(pending.written)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Write what is queued (one attempt), then stop."""
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        try:
            await self.flush()
        except EtcdError as err:
            log.warning("audit records lost at shutdown: %s", err, extra={"records": len(self._queue)})

    async def flush(self) -> None:
        """Write everything queued so far: one transaction per ``max_txn_ops`` records
        (a record that was in a transaction etcd refused as too large goes alone),
        all in flight at once. A record refused alone as too large is dropped
        (logged, counted). Raises the first other failure after putting the records
        of every failed transaction back at the head of the queue."""
        if not self._queue:
            return
        batch, self._queue = self._queue, []
        limit = self._etcd.max_txn_ops
        together = [p for p in batch if not p.alone]
        chunks = [together[i:i + limit] for i in range(0, len(together), limit)]
        chunks += [[p] for p in batch if p.alone]
        try:
            lease = await self._leases.current()
            results = await asyncio.gather(
                *(self._etcd.txn([], [ops.put(p.key, p.value, lease=lease) for p in chunk]) for chunk in chunks),
                return_exceptions=True)
        except BaseException:
            self._queue[:0] = batch
            raise
        again: list[_Pending] = []
        error: BaseException | None = None
        for chunk, result in zip(chunks, results, strict=True):
            if not isinstance(result, BaseException):
                for pending in chunk:
                    _settle(pending)
            elif _too_large(result) and len(chunk) == 1:
                AUDIT_DROPPED.inc()
                log.error("audit record dropped: etcd refuses it as too large: %s", result,
                          extra={"bytes": len(chunk[0].value)})
                _settle(chunk[0])
            else:
                if _too_large(result):
                    for pending in chunk:
                        pending.alone = True
                else:
                    error = error or result
                again.extend(chunk)
        if again:
            self._queue[:0] = again
            self._wake.set()
        if error is not None:
            raise error

    async def _run(self) -> None:
        backoff = RETRY_S[0]
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self.flush()
                backoff = RETRY_S[0]
            except Exception as err:  # noqa: BLE001 - the writer must outlive any failure
                if isinstance(err, EtcdError):
                    log.warning("audit write failed; retrying: %s", err, extra={"records": len(self._queue)})
                else:
                    log.exception("audit write failed; retrying", extra={"records": len(self._queue)})
                self._wake.set()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, RETRY_S[1])

    # --- reading -------------------------------------------------------------------------

    async def list(self, tenant: str | None, *, after: str = "", page_size: int = 100,
                   revision: int = 0) -> tuple[list[AuditEntry], str, int]:
        """One page of records, oldest first (``tenant`` None: all, key order by tenant
        then time; "" : the system's own). Returns (entries, next ``after`` or "",
        revision)."""
        prefix = self._keys.audit_prefix(tenant)
        start = prefix + after.encode() + b"\0" if after else prefix
        result = await self._etcd.range(start, prefix_end(prefix), limit=page_size, revision=revision)
        entries = [_entry(prefix, kv) for kv in result.kvs]
        return entries, (entries[-1].key if entries and result.more else ""), result.revision

    async def current_revision(self) -> int:
        """The store's revision now (a count-only read): where a watch may start."""
        prefix = self._keys.audit_prefix(None)
        return (await self._etcd.range(prefix, prefix_end(prefix), count_only=True)).revision

    async def watch(self, tenant: str | None, *,
                    start_revision: int) -> AsyncIterator[tuple[builtins.list[AuditEntry], int]]:
        """New records from ``start_revision``, in batches of whole revisions: (entries,
        the revision up to which every record was delivered). No entries: progress.
        Raises Compacted."""
        prefix = self._keys.audit_prefix(tenant)
        async for batch in self._etcd.watch(prefix, prefix_end(prefix), start_revision=start_revision,
                                            progress_notify=True):
            yield [_entry(prefix, event.kv) for event in batch.events if not event.is_delete], batch.revision
