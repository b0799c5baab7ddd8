"""HostView: a scheduler shard's in-memory set of hosts, sampled by index.

Two layers per host, after Kubernetes' scheduler cache (Assume/Forget):

- the *committed* snapshot, exactly as last read from etcd (``upsert``);
- the *assumed* delta: placements this shard made whose bind has not been confirmed.

What ``get`` and index access return, and what placement sees, is committed + assumed,
so a burst of placements does not pile onto one host before the binds land. Keeping
the two apart means an ``upsert`` from the watch never drops an assumption in flight,
and ``forget`` after a failed bind restores the committed snapshot exactly.

Intended shard flow: ``assume`` when placing; on a committed bind, ``upsert`` the host
with the allocation the bind wrote and ``forget`` the assumption, with no ``await`` in
between (else the placement is counted twice or not at all for a moment); on a lost
race or error, ``forget``.

Not thread-safe; meant for one asyncio loop. Every operation is O(1).
"""

from __future__ import annotations

from collections.abc import Iterator

from controlplane.placement.model import HostSnapshot, Resources

_ZERO = Resources()


class HostView:
    """Mutable set of host snapshots with O(1) upsert, remove, lookup and sampling."""

    __slots__ = ("_assumed", "_assumed_groups", "_committed", "_hosts", "_index")

    def __init__(self, snapshots: tuple[HostSnapshot, ...] | list[HostSnapshot] = ()) -> None:
        # Effective snapshots in a dense list so place() can sample by position.
        self._hosts: list[HostSnapshot] = []
        self._index: dict[str, int] = {}
        self._committed: dict[str, HostSnapshot] = {}
        # Only hosts with a non-zero pending delta have an entry.
        self._assumed: dict[str, tuple[Resources, int]] = {}
        # Anti-affinity group counts assumed per host (only hosts with some).
        self._assumed_groups: dict[str, dict[str, int]] = {}
        for s in snapshots:
            self.upsert(s)

    def __len__(self) -> int:
        return len(self._hosts)

    def __getitem__(self, i: int) -> HostSnapshot:
        """The effective snapshot at position ``i`` (0 <= i < len). Positions are not
        stable across ``remove`` (swap-remove moves the last host into the gap)."""
        return self._hosts[i]

    def __iter__(self) -> Iterator[HostSnapshot]:
        return iter(self._hosts)

    def __contains__(self, host_id: object) -> bool:
        return host_id in self._index

    def get(self, host_id: str) -> HostSnapshot | None:
        """The effective snapshot (committed + assumed), or None if unknown."""
        i = self._index.get(host_id)
        return None if i is None else self._hosts[i]

    def committed(self, host_id: str) -> HostSnapshot | None:
        """The snapshot as last upserted, without assumptions, or None if unknown.

        A bind transaction writes committed allocation + its own delta, never the
        effective one, which holds other placements that may yet fail."""
        return self._committed.get(host_id)

    def assumed(self, host_id: str) -> tuple[Resources, int]:
        """The pending (resources, vm count) assumed on the host; zeros if none."""
        return self._assumed.get(host_id, (_ZERO, 0))

    def upsert(self, snapshot: HostSnapshot) -> None:
        """Adds the host or replaces its committed snapshot; assumptions are kept.

        Idempotent. The caller is responsible for not upserting an older state over a
        newer one (the watch delivers in revision order)."""
        host_id = snapshot.host_id
        self._committed[host_id] = snapshot
        effective = self._effective(snapshot)
        i = self._index.get(host_id)
        if i is None:
            self._index[host_id] = len(self._hosts)
            self._hosts.append(effective)
        else:
            self._hosts[i] = effective

    def remove(self, host_id: str) -> bool:
        """Drops the host and its assumptions. Idempotent: False if it was unknown."""
        i = self._index.pop(host_id, None)
        if i is None:
            return False
        del self._committed[host_id]
        self._assumed.pop(host_id, None)
        self._assumed_groups.pop(host_id, None)
        last = self._hosts.pop()
        if i < len(self._hosts):
            # Swap-remove: the former last host fills the gap, keeping the list dense.
            self._hosts[i] = last
            self._index[last.host_id] = i
        return True

    def assume(self, host_id: str, resources: Resources, vm_delta: int = 1, group: str = "") -> None:
        """Counts a placement (of anti-affinity ``group``, if any) on the host until
        ``forget``. Raises KeyError if unknown."""
        if host_id not in self._index:
            raise KeyError(host_id)
        res, vms = self._assumed.get(host_id, (_ZERO, 0))
        self._set_assumed(host_id, res + resources, vms + vm_delta, group, vm_delta)

    def forget(self, host_id: str, resources: Resources, vm_delta: int = 1, group: str = "") -> None:
        """Undoes a matching ``assume``. A no-op if the host was removed meanwhile
        (its assumptions went with it), so a late bind failure needs no check."""
        if host_id not in self._index:
            return
        res, vms = self._assumed.get(host_id, (_ZERO, 0))
        self._set_assumed(host_id, res - resources, vms - vm_delta, group, -vm_delta)

    def _set_assumed(self, host_id: str, res: Resources, vms: int, group: str, group_delta: int) -> None:
        if res == _ZERO and vms == 0:
            self._assumed.pop(host_id, None)
        else:
            self._assumed[host_id] = (res, vms)
        if group:
            groups = self._assumed_groups.setdefault(host_id, {})
            n = groups.get(group, 0) + group_delta
            if n:
                groups[group] = n
            else:
                groups.pop(group, None)
            if not groups:
                del self._assumed_groups[host_id]
        self._hosts[self._index[host_id]] = self._effective(self._committed[host_id])

    def _effective(self, committed: HostSnapshot) -> HostSnapshot:
        pending = self._assumed.get(committed.host_id)
        groups = self._assumed_groups.get(committed.host_id)
        # Recomputed from the committed snapshot rather than adjusted step by step, so
        # once the last assumption is forgotten the view holds that very snapshot again.
        if pending is None and groups is None:
            return committed
        res, vms = pending or (_ZERO, 0)
        return committed.with_allocated(res, vms, groups or {})
