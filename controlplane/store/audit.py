"""The audit log: one record per mutation attempt, written in batches.

Records are appended by the frontend after the mutation's outcome is known (so a
refused attempt is recorded too) and flushed every few milliseconds in one
transaction per batch, under a retention lease. A frontend killed between answering
and flushing loses at most that window's records (``flush_interval_s``); the
mutation itself is unaffected.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from controlplane.etcd import EtcdClient, EtcdError, KeyValue, ops, prefix_end
from controlplane.gen.quanta.store.v1 import tenancy_pb2 as trec
from controlplane.store.keys import Keys
from controlplane.store.retention import RetentionLeases

log = logging.getLogger(__name__)

DEFAULT_AUDIT_RETENTION_S = 30 * 24 * 3600


@dataclass(frozen=True, slots=True)
class AuditEntry:
    key: str
    """The entry's id within its tenant: ``{time_ns:020d}-{id}``."""
    record: trec.AuditRecord


def _entry(prefix: bytes, kv: KeyValue) -> AuditEntry:
    return AuditEntry(kv.key[len(prefix):].decode(), trec.AuditRecord.FromString(kv.value))


class AuditLog:
    def __init__(self, client: EtcdClient, keys: Keys, *, retention_s: int = DEFAULT_AUDIT_RETENTION_S,
                 flush_interval_s: float = 0.05):
        self._etcd = client
        self._keys = keys
        self._leases = RetentionLeases(client, retention_s)
        self._flush_s = flush_interval_s
        self._buffer: list[tuple[bytes, bytes]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    def append(self, record: trec.AuditRecord) -> None:
        """Queue ``record`` for the next flush; never blocks."""
        key = self._keys.audit(record.tenant, record.time_ns, uuid.uuid4().hex[:12])
        self._buffer.append((key, record.SerializeToString()))
        self._wake.set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Flush what is queued, then stop."""
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        try:
            await self.flush()
        except EtcdError as err:
            log.warning("audit records lost at shutdown: %s", err, extra={"records": len(self._buffer)})

    async def flush(self) -> None:
        """Write everything queued so far (one txn per --max-txn-ops records)."""
        if not self._buffer:
            return
        batch, self._buffer = self._buffer, []
        try:
            lease = await self._leases.current()
            await self._etcd.txn_chunked([ops.put(key, value, lease=lease) for key, value in batch])
        except BaseException:
            self._buffer[:0] = batch  # keep them for the next attempt
            raise

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self.flush()
            except EtcdError as err:
                log.warning("audit flush failed; retrying: %s", err, extra={"records": len(self._buffer)})
                self._wake.set()
            await asyncio.sleep(self._flush_s)  # batch what arrives meanwhile

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

    async def watch(self, tenant: str | None, *, start_revision: int) -> AsyncIterator[list[AuditEntry]]:
        """New records from ``start_revision``; an empty list is progress. Raises Compacted."""
        prefix = self._keys.audit_prefix(tenant)
        async for batch in self._etcd.watch(prefix, prefix_end(prefix), start_revision=start_revision,
                                            progress_notify=True):
            yield [_entry(prefix, event.kv) for event in batch.events if not event.is_delete]
