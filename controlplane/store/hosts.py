"""Hosts as stored: an agent's registration (under its heartbeat lease) and the
allocation the scheduler and agent keep with the host's bindings; and the plans'
holds (holds/{plan}) whose room is in those allocations, as the scheduler follows them."""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator
from dataclasses import dataclass

from controlplane.etcd import EtcdClient, KeyValue, ops, prefix_end
from controlplane.models import Hold, HostAllocation, HostRegistration
from controlplane.store.errors import Conflict, HostAlive, HostNotEmpty, NotFound
from controlplane.store.keys import Keys


@dataclass(frozen=True, slots=True)
class HostRecord:
    host: str
    registration: HostRegistration | None  # None: no heartbeat (agent gone)
    allocation: HostAllocation
    alloc_revision: int  # mod_revision of the allocation key, 0 when absent
    revision: int
    maintenance: bool = False  # an operator took it out of placement
    dead: bool = False  # declared dead (missing past the grace); its VMs are moved off
    dead_revision: int = 0  # mod_revision of the dead marker, 0 when absent
    drain: bool = False  # the drain marker: an operator asked for it to be emptied

    @property
    def ready(self) -> bool:
        return self.registration is not None

    @property
    def draining(self) -> bool:
        """Its VMs are to be moved off: drained (marker) and still out of placement
        (a drain without maintenance would move VMs off a host that takes new ones)."""
        return self.drain and self.maintenance


@dataclass(frozen=True, slots=True)
class HostsAndHolds:
    """One batch of ``HostStore.watch_with_holds``: holds made (plan, Hold) and ended
    (plan, None: lease expired or consumed), in event order; the hosts changed (a
    HostRecord, or the id of a host now gone); the batch's revision."""

    holds: list[tuple[str, Hold | None]]
    hosts: list[HostRecord | str]
    revision: int


class HostTable:
    """Folds host key-values into HostRecords; used by list, watch and the scheduler."""

    def __init__(self, keys: Keys):
        self._keys = keys
        self.regs: dict[str, tuple[HostRegistration, int]] = {}
        self.allocs: dict[str, tuple[HostAllocation, int]] = {}
        self.maintenance: set[str] = set()
        self.drain: set[str] = set()
        self.dead: dict[str, int] = {}  # host -> the dead marker's mod_revision

    def apply(self, kv: KeyValue, deleted: bool) -> str:
        """Fold one key's change in; returns the host it concerns."""
        host, part = self._keys.parse_host_key(kv.key)
        if part in ("maintenance", "drain"):
            marked = self.maintenance if part == "maintenance" else self.drain
            (marked.discard if deleted else marked.add)(host)
            return host
        if part == "dead":
            if deleted:
                self.dead.pop(host, None)
            else:
                self.dead[host] = kv.mod_revision
            return host
        if part not in ("reg", "alloc"):
            return host  # a part this version does not know
        if deleted:
            (self.regs if part == "reg" else self.allocs).pop(host, None)
        elif part == "reg":
            self.regs[host] = (HostRegistration.from_bytes(kv.value), kv.mod_revision)
        else:
            self.allocs[host] = (HostAllocation.from_bytes(kv.value), kv.mod_revision)
        return host

    def record(self, host: str) -> HostRecord | None:
        reg = self.regs.get(host)
        alloc = self.allocs.get(host)
        if reg is None and alloc is None:
            return None
        return HostRecord(
            host,
            reg[0] if reg else None,
            alloc[0] if alloc else HostAllocation(),
            alloc[1] if alloc else 0,
            max(reg[1] if reg else 0, alloc[1] if alloc else 0),
            host in self.maintenance,
            host in self.dead,
            self.dead.get(host, 0),
            host in self.drain,
        )

    def hosts(self) -> list[str]:
        return sorted(set(self.regs) | set(self.allocs))

    def records(self) -> list[HostRecord]:
        """Every host in the table, in name order."""
        return [record for h in self.hosts() if (record := self.record(h)) is not None]


class HostStore:
    def __init__(self, client: EtcdClient, keys: Keys):
        self._etcd = client
        self._keys = keys

    @property
    def keys(self) -> Keys:
        return self._keys

    async def current_revision(self) -> int:
        """The store's revision now (a count-only read): where a watch may start."""
        prefix = self._keys.hosts_prefix()
        return (await self._etcd.range(prefix, prefix_end(prefix), count_only=True)).revision

    async def snapshot(self, *, revision: int = 0) -> tuple[HostTable, int]:
        """Every known host at one revision (0: now), as a table to hand to
        ``watch(revision + 1, table)``. Raises Compacted."""
        kvs, revision = await self._etcd.range_prefix(self._keys.hosts_prefix(), revision=revision)
        table = HostTable(self._keys)
        for kv in kvs:
            table.apply(kv, False)
        return table, revision

    async def list(self, *, revision: int = 0) -> tuple[list[HostRecord], int]:
        """Every known host at one revision (0: now), in name order. Raises Compacted."""
        table, revision = await self.snapshot(revision=revision)
        return table.records(), revision

    async def page(self, *, after: str = "", limit: int, revision: int = 0
                   ) -> tuple[builtins.list[HostRecord], str, int]:
        """Up to ``limit`` hosts in name order after host ``after``, read at
        ``revision`` (0: now). Returns (records, last host if more may follow
        else "", revision). Reads about 2 keys per host, not the whole fleet."""
        prefix = self._keys.hosts_prefix()
        start = prefix_end(prefix + after.encode() + b"/") if after else prefix
        # Each host has at most 5 keys (reg, alloc, maintenance, dead, drain); one more shows whether more follow.
        result = await self._etcd.range(start, prefix_end(prefix), limit=5 * limit + 1, revision=revision)
        table = HostTable(self._keys)
        hosts: list[str] = []  # in key order ("a-b/" sorts before "a/"), which paging follows
        for kv in result.kvs:
            host = table.apply(kv, False)
            if not hosts or hosts[-1] != host:
                hosts.append(host)
        more = result.more or len(hosts) > limit
        if more and len(hosts) > 1 and result.more:
            hosts = hosts[:-1]  # the last host's keys may have been cut by the limit
        hosts = hosts[:limit]
        # A host with only a maintenance or dead marker left has no record (as in records()).
        records = [record for h in hosts if (record := table.record(h)) is not None]
        return records, (hosts[-1] if more and hosts else ""), result.revision

    async def get(self, host: str) -> HostRecord:
        prefix = self._keys.hosts_prefix() + host.encode() + b"/"
        result = await self._etcd.range(prefix, prefix_end(prefix))
        table = HostTable(self._keys)
        for kv in result.kvs:
            table.apply(kv, False)
        record = table.record(host)
        if record is None:
            raise NotFound(f"hosts/{host}")
        return record

    async def delete(self, host: str) -> HostRecord:
        """Forget a host that has no heartbeat and holds no VMs: its allocation, and
        its maintenance, drain and dead markers, in one txn that compares it is still so.
        Returns the record as it was. Raises NotFound, HostAlive, HostNotEmpty."""
        k = self._keys
        for _attempt in range(8):
            record = await self.get(host)
            if record.registration is not None:
                raise HostAlive(host)
            if record.allocation.vm_count:
                raise HostNotEmpty(host, record.allocation.vm_count)
            alloc = k.host_alloc(host)
            guard = [ops.absent(k.host_reg(host)),
                     ops.mod_revision_is(alloc, record.alloc_revision) if record.alloc_revision else ops.absent(alloc)]
            deletes = [ops.delete(alloc), ops.delete(k.host_maintenance(host)), ops.delete(k.host_dead(host)),
                       ops.delete(k.host_drain(host))]
            if (await self._etcd.txn(guard, deletes)).succeeded:
                return record
        raise Conflict(f"host {host} kept changing; retry")

    async def set_maintenance(self, host: str, on: bool) -> None:
        """Take the host out of placement (``on``; VMs on it keep running) or put it
        back, which also ends a drain (both markers go in one txn; VMs already
        marked evicting still move). Idempotent."""
        k = self._keys
        if on:
            await self._etcd.put(k.host_maintenance(host), b"")
        else:
            await self._etcd.txn([], [ops.delete(k.host_maintenance(host)), ops.delete(k.host_drain(host))])

    async def drain(self, host: str) -> None:
        """Record that ``host`` is to be emptied: maintenance (no new placements) and
        the drain marker, in one txn. Returns at once; the scheduler that owns shard 0
        moves the VMs off (scheduler.lifecycle). Idempotent."""
        k = self._keys
        await self._etcd.txn([], [ops.put(k.host_maintenance(host), b""), ops.put(k.host_drain(host), b"")])

    def _plan_of(self, key: bytes) -> str | None:
        """The plan id of a key under holds/, None for any other key."""
        prefix = self._keys.holds_prefix()
        return key[len(prefix):].decode() if key.startswith(prefix) else None

    async def snapshot_with_holds(self) -> tuple[HostTable, dict[str, Hold], int]:
        """Every known host (as ``snapshot``) and every live hold by plan id, read as ONE
        key range at one revision (``Keys.holds_and_hosts``): a hold and the
        allocations its txn wrote are never seen apart. Raises Compacted."""
        start, end = self._keys.holds_and_hosts()
        kvs, revision = await self._etcd.range_all(start, end)
        table, plans = HostTable(self._keys), {}
        hosts = self._keys.hosts_prefix()
        for kv in kvs:
            plan = self._plan_of(kv.key)
            if plan is not None:
                plans[plan] = Hold.from_bytes(kv.value)
            elif kv.key.startswith(hosts):
                table.apply(kv, False)
        return table, plans, revision

    async def watch_with_holds(self, start_revision: int, table: HostTable) -> AsyncIterator[HostsAndHolds]:
        """Host and hold changes from ``start_revision``, from ONE watch of the range of
        ``snapshot_with_holds`` (host changes folded into ``table``, which must hold the
        state at start_revision - 1), per watch response. etcd never splits one
        revision's events across responses, so a plan's hold and the allocations its
        txn wrote arrive in the same batch. Raises Compacted (re-list then)."""
        start, end = self._keys.holds_and_hosts()
        hosts = self._keys.hosts_prefix()
        async for batch in self._etcd.watch(start, end, start_revision=start_revision):
            plans: builtins.list[tuple[str, Hold | None]] = []
            changed: dict[str, HostRecord | str] = {}
            for event in batch.events:
                plan = self._plan_of(event.kv.key)
                if plan is not None:
                    plans.append((plan, None if event.is_delete else Hold.from_bytes(event.kv.value)))
                elif event.kv.key.startswith(hosts):
                    host = table.apply(event.kv, event.is_delete)
                    changed[host] = table.record(host) or host
            yield HostsAndHolds(plans, builtins.list(changed.values()), batch.revision)

    async def watch(self, start_revision: int, table: HostTable
                    ) -> AsyncIterator[tuple[builtins.list[HostRecord | str], int]]:
        """Host changes from ``start_revision``, folded into ``table`` (which must
        hold the state at start_revision - 1). Yields (changed, revision) where
        each changed item is a HostRecord, or the host id of a host now gone."""
        prefix = self._keys.hosts_prefix()
        async for batch in self._etcd.watch(prefix, prefix_end(prefix), start_revision=start_revision):
            changed: dict[str, HostRecord | str] = {}
            for event in batch.events:
                host = table.apply(event.kv, event.is_delete)
                changed[host] = table.record(host) or host
            yield list(changed.values()), batch.revision
