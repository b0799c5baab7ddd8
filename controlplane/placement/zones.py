"""ZoneCounts: per (zone, group) VM counts as committed in etcd plus those assumed.

The zone-level twin of ``HostView``'s group counts. Committed counts come from the
``zones/`` watch (and from binds this process made); assumed ones are placements
whose bind is in flight, so one batch cannot put two VMs of one group into one zone
either. A group is ``{tenant}/{project}/{name}`` (VmSpec.zone_group).

Each committed count keeps the etcd mod_revision of its key (the bind compares it)
and the revision it was seen at, so a late watch event never overwrites a newer
count that a bind confirmed. Pure and synchronous; not thread-safe.
"""

from __future__ import annotations


class ZoneCounts:
    __slots__ = ("_assumed", "_committed")

    def __init__(self) -> None:
        # group -> zone -> (vms, key mod_revision, revision seen at)
        self._committed: dict[str, dict[str, tuple[int, int, int]]] = {}
        # group -> zone -> assumed vms (non-zero entries only)
        self._assumed: dict[str, dict[str, int]] = {}

    def reset(self, counts: dict[tuple[str, str], tuple[int, int]], revision: int) -> None:
        """Replace every committed count by ``counts`` ((zone, group) -> (vms, mod_revision))
        read at ``revision``; assumptions are kept."""
        self._committed = {}
        for (zone, group), (vms, mod) in counts.items():
            self.update(zone, group, vms, mod, revision)

    def update(self, zone: str, group: str, vms: int, mod_revision: int, revision: int) -> bool:
        """Take a count read or written at ``revision`` unless a newer one is known.
        ``vms`` 0 with ``mod_revision`` 0: the key is gone. Returns whether the zone's
        presence flipped (the group newly in the zone, or gone from it): only that
        changes what the zone filters decide."""
        zones = self._committed.get(group)
        current = zones.get(zone) if zones else None
        if current is not None and current[2] > revision:
            return False
        self._committed.setdefault(group, {})[zone] = (vms, mod_revision, revision)
        return (current is not None and current[0] > 0) != (vms > 0)

    def committed(self, zone: str, group: str) -> tuple[int, int]:
        """(vms, key mod_revision) as last known from etcd; (0, 0) when absent."""
        current = self._committed.get(group, {}).get(zone)
        return (current[0], current[1]) if current else (0, 0)

    def count(self, zone: str, group: str) -> int:
        """Committed plus assumed VMs of ``group`` in ``zone``."""
        return self.committed(zone, group)[0] + self._assumed.get(group, {}).get(zone, 0)

    def zones_with(self, group: str) -> frozenset[str]:
        """The zones where ``group`` has a VM, committed or assumed."""
        zones = {z for z, c in self._committed.get(group, {}).items() if c[0] > 0}
        zones.update(z for z, n in self._assumed.get(group, {}).items() if n > 0)
        return frozenset(zones)

    def assume(self, zone: str, group: str, delta: int = 1) -> None:
        """Count ``delta`` more VMs of ``group`` in ``zone`` until ``forget``; no-op for "" either."""
        if not zone or not group:
            return
        zones = self._assumed.setdefault(group, {})
        n = zones.get(zone, 0) + delta
        if n:
            zones[zone] = n
        else:
            zones.pop(zone, None)
            if not zones:
                del self._assumed[group]

    def forget(self, zone: str, group: str, delta: int = 1) -> None:
        """Undo a matching ``assume``."""
        self.assume(zone, group, -delta)
