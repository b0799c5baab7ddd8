"""The fleet as placement sees it: host records turned into ``HostSnapshot``s, the
room of live plans' holds counted as taken.

One place for the rule, used by the scheduler (``HostSync`` keeps its view with
:func:`snapshot_of` and :func:`with_holds`) and by the frontend's ``PlanVms``, which
reads the fleet once per call (:meth:`FleetStore.read`: hosts, zone group counts and
holds at one revision) and places on a view built from it (:meth:`Fleet.view`).

A plan is *live* while its ``holds/{plan}`` key exists (controlplane/store/holds.py);
the room ``HostAllocation.holds[plan]`` keeps for it (resources, VM count, host groups)
is taken exactly then, and counts for nothing once the key is gone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Container, Mapping
from dataclasses import dataclass, replace

from controlplane.etcd import EtcdClient
from controlplane.models import Hold, HostAllocation, Resources
from controlplane.placement import HostSnapshot, HostView, ZoneCounts
from controlplane.store import holds
from controlplane.store.hosts import HostRecord, HostTable
from controlplane.store.keys import Keys
from controlplane.store.zones import ZoneCount, ZoneGroupId, decode


def snapshot_of(record: HostRecord, live: Container[str] = ()) -> HostSnapshot:
    """The placement view of a host record. Allocatable capacity is the registration's
    raw capacity times its overcommit setting (:meth:`HostRegistration.allocatable`,
    the one place a ratio is applied). The room held by ``live`` plans counts as
    allocated (:func:`allocated`); by default no plan is live (holds count for nothing)."""
    reg = record.registration
    resources, vm_count, groups = allocated(record.allocation, live)
    return HostSnapshot(
        host_id=record.host,
        ready=record.ready and not record.dead,  # a dead host takes nothing until its marker is lifted
        capacity=reg.capacity if reg else Resources(),
        allocated=resources,
        vm_count=vm_count,
        labels=dict(reg.labels) if reg else {},
        alloc_revision=record.alloc_revision,
        maintenance=record.maintenance,
        allocatable=reg.allocatable if reg else Resources(),
        groups=groups,
        networks=reg.networks if reg else frozenset(),
    )


def with_holds(snapshot: HostSnapshot, allocation: HostAllocation, revision: int,
               live: Container[str]) -> HostSnapshot:
    """``snapshot`` with ``allocation`` (at ``revision``) as what is allocated, plus the
    room the ``live`` plans among its holds take (:func:`allocated`)."""
    resources, vm_count, groups = allocated(allocation, live)
    return replace(snapshot, allocated=resources, vm_count=vm_count, groups=groups, alloc_revision=revision)


def allocated(allocation: HostAllocation, live: Container[str]) -> tuple[Resources, int, Mapping[str, int]]:
    """What placement counts as taken on a host: ``allocation``'s resources, VM count and
    host groups, plus the room the ``live`` plans among its holds take
    (:func:`holds.held_total`). Without holds (nearly always) the allocation's own."""
    if not allocation.holds:
        return allocation.resources, allocation.vm_count, allocation.groups
    held = holds.held_total(allocation.holds, live)
    groups = dict(allocation.groups)
    for group, n in held.groups.items():
        groups[group] = groups.get(group, 0) + n
    return allocation.resources + held.resources, allocation.vm_count + held.vm_count, groups


@dataclass(frozen=True, slots=True)
class Fleet:
    """Hosts, zone group counts and live holds as read at one ``revision``."""

    hosts: Mapping[str, HostRecord]
    zones: Mapping[ZoneGroupId, ZoneCount]
    plans: Mapping[str, Hold]  # live holds by plan id
    revision: int

    def view(self) -> tuple[HostView, ZoneCounts]:
        """A fresh HostView (live holds counted) and ZoneCounts of this fleet, for
        ``place``/``place_set``; the caller may assume into them freely."""
        view = HostView([snapshot_of(record, self.plans) for record in self.hosts.values()])
        counts = ZoneCounts()
        counts.reset({zg: (c.vms, c.revision) for zg, c in self.zones.items()}, self.revision)
        return view, counts


class FleetStore:
    """Reads the fleet for the frontend (PlanVms): not a watch, one read per call."""

    def __init__(self, client: EtcdClient, keys: Keys):
        self._etcd = client
        self._keys = keys

    async def read(self) -> Fleet:
        """Every host (registration, allocation, maintenance, drain and dead markers),
        every zone group count and every live hold, at one revision: the hosts are read
        first (paged), then zones and holds at the hosts' revision. About 2-5 keys per
        host: a plan costs a read of the fleet, not a round trip per VM. Raises
        Compacted only if the revision was compacted between the reads (retry then)."""
        k = self._keys
        kvs, revision = await self._etcd.range_prefix(k.hosts_prefix())
        table = HostTable(k)
        for kv in kvs:
            table.apply(kv, False)
        (zone_kvs, _), (hold_kvs, _) = await asyncio.gather(
            self._etcd.range_prefix(k.zones_prefix(), revision=revision),
            self._etcd.range_prefix(k.holds_prefix(), revision=revision))
        zones: dict[ZoneGroupId, ZoneCount] = {}
        for kv in zone_kvs:
            zg = k.parse_zone_group_key(kv.key)
            if zg is not None:
                zones[zg] = ZoneCount(decode(kv.value), kv.mod_revision)
        start = len(k.holds_prefix())
        plans = {kv.key[start:].decode(): Hold.from_bytes(kv.value) for kv in hold_kvs}
        return Fleet({r.host: r for r in table.records()}, zones, plans, revision)
