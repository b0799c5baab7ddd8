"""Zone group counts: how many zone-scoped VMs of each anti-affinity group run in
each availability zone (``zones/{zone}/groups/{tenant}/{project}/{group}``).

A count changes only in the transaction that binds or removes such a VM, and that
transaction compares the count key's mod_revision, exactly as it compares the host's
allocation. So two binds that would put two VMs of one group into one zone, made by
different shards or processes at once, cannot both commit; the scheduler learns the
counts by watching ``zones/`` and placement filters on them.

Writers: the scheduler (bind), the agent (removal of destroyed VMs), host lifecycle
(moves off drained or dead hosts), all through ``bindings.py``, whose builders call
``counted_changes`` for the compares and writes of the counts they read.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass

from controlplane.etcd import EtcdClient, ops, prefix_end
from controlplane.etcd.ops import Compare
from controlplane.gen.quanta.store.v1 import records_pb2 as rec
from controlplane.store.keys import Keys

#: (zone, group) with group as ``{tenant}/{project}/{name}`` (VmSpec.zone_group).
ZoneGroupId = tuple[str, str]


@dataclass(frozen=True, slots=True)
class ZoneCount:
    vms: int = 0
    revision: int = 0  # mod_revision of the key; 0 when absent


def encode(vms: int) -> bytes:
    return rec.ZoneGroup(vms=vms).SerializeToString()


def decode(value: bytes) -> int:
    return rec.ZoneGroup.FromString(value).vms


def counted_changes(keys: Keys, current: Mapping[ZoneGroupId, ZoneCount], deltas: Mapping[ZoneGroupId, int]
                    ) -> tuple[list[Compare], list]:
    """Compares (each count's mod_revision as read) and writes (count + delta; the key
    deleted at zero) for ``deltas``. Pure. A count never goes below zero: a removal
    retried after it applied is caught by the caller's binding compares, not here."""
    compares, writes = [], []
    for zg, delta in deltas.items():
        if not delta:
            continue
        key = keys.zone_group(*zg)
        was = current.get(zg, ZoneCount())
        compares.append(ops.mod_revision_is(key, was.revision))
        n = was.vms + delta
        writes.append(ops.put(key, encode(n)) if n > 0 else ops.delete(key))
    return compares, writes


def add_delta(deltas: dict[ZoneGroupId, int], zone: str, group: str, delta: int) -> None:
    """Accumulates ``delta`` for (zone, group) when both are set (a VM not counted in a
    zone has "" for either)."""
    if zone and group:
        deltas[(zone, group)] = deltas.get((zone, group), 0) + delta


class ZoneStore:
    def __init__(self, client: EtcdClient, keys: Keys):
        self._etcd = client
        self._keys = keys

    def read_ops(self, ids: Iterable[ZoneGroupId]) -> list:
        """Range requests for ``ids``, to put into the caller's read txn (see ``parse``)."""
        return [ops.get(self._keys.zone_group(*zg)) for zg in ids]

    @staticmethod
    def parse(kvs) -> ZoneCount:
        """A count from the kvs of one ``read_ops`` range."""
        return ZoneCount(decode(kvs[0].value), kvs[0].mod_revision) if kvs else ZoneCount()

    async def read(self, ids: Iterable[ZoneGroupId]) -> tuple[dict[ZoneGroupId, ZoneCount], int]:
        """The counts of ``ids`` now (absent: ZoneCount()) and the revision read at, in
        one round trip (none without ids: revision 0)."""
        ids = list(ids)
        if not ids:
            return {}, 0
        result = await self._etcd.txn([], self.read_ops(ids))
        return {zg: self.parse(result.kvs(i)) for i, zg in enumerate(ids)}, result.revision

    async def snapshot(self) -> tuple[dict[ZoneGroupId, ZoneCount], int]:
        """Every count at one revision (watch from revision + 1). Raises Compacted."""
        kvs, revision = await self._etcd.range_prefix(self._keys.zones_prefix())
        counts = {}
        for kv in kvs:
            zg = self._keys.parse_zone_group_key(kv.key)
            if zg is not None:
                counts[zg] = ZoneCount(decode(kv.value), kv.mod_revision)
        return counts, revision

    async def watch(self, start_revision: int) -> AsyncIterator[tuple[list[tuple[ZoneGroupId, ZoneCount]], int]]:
        """Count changes from ``start_revision`` (a deleted key as ZoneCount(), as if
        never written: its mod_revision compares as 0), with the batch's revision.
        Raises Compacted (re-list then)."""
        prefix = self._keys.zones_prefix()
        async for batch in self._etcd.watch(prefix, prefix_end(prefix), start_revision=start_revision):
            changes = []
            for event in batch.events:
                zg = self._keys.parse_zone_group_key(event.kv.key)
                if zg is None:
                    continue
                count = ZoneCount() if event.is_delete else ZoneCount(decode(event.kv.value), event.kv.mod_revision)
                changes.append((zg, count))
            yield changes, batch.revision
