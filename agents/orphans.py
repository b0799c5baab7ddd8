"""VMs on this agent's hosts that no binding wants: destroyed with proof, else quarantined.

DESIGN: "Orphans need proof". Such a VM (found by the periodic scan of the hosts,
or one whose binding went away while it was not being deleted) is destroyed only
when its tombstone exists (controlplane/store/tombstones.py: written with every
deletion or move off a host). Any other is quarantined: left as it is, recorded in
``orphans/{host}/{uid}`` under the agent's heartbeat lease and counted in
``quanta_agent_orphan_vms``, until an operator adopts it (a binding appears; the
reconciler finds the VM it already has) or destroys it (the record goes and a
tombstone appears; :meth:`OrphanKeeper.watch` sees that and destroys the VM).

So a store restored from an older backup, which knows nothing of the VMs made
since, makes their agents report them, never destroy them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Mapping

from agents import metrics
from agents.drivers.protocol import DriverError, HostDriver, PowerState, VmInfo
from controlplane.etcd import Compacted, EtcdError
from controlplane.models import now_ns
from controlplane.store.orphans import Orphan, OrphanStore, spec_from_record

log = logging.getLogger(__name__)

HostUid = tuple[str, str]


def sort_unknown(found: Collection[HostUid], tombstoned: Collection[HostUid]) -> tuple[list[HostUid], list[HostUid]]:
    """Pure: the rule. Of VMs no binding wants, (those to destroy: a tombstone proves
    they were deleted or moved, those to quarantine: everything else)."""
    destroy = [pair for pair in found if pair in tombstoned]
    quarantine = [pair for pair in found if pair not in tombstoned]
    return destroy, quarantine


class OrphanKeeper:
    """Applies the rule for one agent's hosts. Not safe to run two scans at once (the
    agent runs one, from its binding sync); :meth:`release` and :meth:`watch` may run
    alongside."""

    def __init__(self, drivers: Mapping[str, HostDriver], store: OrphanStore, *, agent: str):
        self._drivers = drivers
        self._store = store
        self._agent = agent
        self._lease = 0
        #: What is quarantined now, as recorded.
        self.quarantined: dict[HostUid, Orphan] = {}

    def start(self, lease_id: int) -> None:
        """Records made from now on live under ``lease_id`` (the agent's heartbeat)."""
        self._lease = lease_id

    def _count(self) -> None:
        metrics.ORPHAN_VMS.set(len(self.quarantined))

    async def scan(self, wanted: Collection[HostUid]) -> None:
        """Look at every VM of every host: those not in ``wanted`` (host, uid) are
        destroyed or quarantined by the rule; records of VMs gone or wanted since go.
        Raises DriverError (a host could not be listed) or EtcdError."""
        found: dict[HostUid, VmInfo] = {}
        for host, driver in self._drivers.items():
            for info in await driver.list_vms():
                if (host, info.vm_uid) not in wanted:
                    found[(host, info.vm_uid)] = info
        await self._settle(found)
        stale = [pair for pair in self.quarantined if pair not in found]
        for pair in stale:
            del self.quarantined[pair]
        await self._store.forget(stale)
        self._count()
        if self.quarantined:
            log.warning("VMs quarantined: on this agent's hosts, unknown to the store, no tombstone",
                        extra={"vms": len(self.quarantined)})

    async def release(self, host: str, uid: str) -> None:
        """The binding of ``uid`` on ``host`` went away without a deletion (the VM was
        moved off this host, or the store forgot it): destroy it with proof, else
        quarantine it. Idempotent."""
        info = await self._drivers[host].get_vm(uid)
        if info is not None:
            await self._settle({(host, uid): info})
            self._count()

    async def _settle(self, found: Mapping[HostUid, VmInfo]) -> None:
        pending = dict(found)
        for _round in range(2):  # a tombstone that appears while recording: look once more
            if not pending:
                return
            tombstones = await self._store.tombstones.present(list(pending))
            destroy, quarantine = sort_unknown(pending, tombstones)
            for host, uid in destroy:
                log.info("destroying a VM its tombstone condemns",
                         extra={"host": host, "uid": uid, "vm": pending[(host, uid)].name,
                                "reason": tombstones[(host, uid)]})
                await self._drivers[host].destroy_vm(uid)
                self.quarantined.pop((host, uid), None)
            new = [pair for pair in quarantine if pair not in self.quarantined]
            orphans = [self._orphan(pair, pending[pair]) for pair in new]
            recorded = await self._store.quarantine(orphans, self._lease) if orphans else []
            pending = {}
            for pair, orphan, ok in zip(new, orphans, recorded, strict=True):
                if ok:
                    self.quarantined[pair] = orphan
                    log.warning("VM quarantined: unknown to the store and no tombstone; adopt or destroy it",
                                extra={"host": pair[0], "uid": pair[1], "vm": orphan.vm})
                else:  # its tombstone or binding appeared meanwhile
                    pending[pair] = found[pair]

    def _orphan(self, pair: HostUid, info: VmInfo) -> Orphan:
        spec = spec_from_record(info.record)
        return Orphan(pair[0], pair[1], info.name or (spec.ref.name if spec else ""), spec,
                      info.power is PowerState.ON, now_ns(), self._agent)

    async def watch(self) -> None:
        """Act on operators' decisions until cancelled: a quarantined VM whose record
        was deleted is destroyed if its tombstone now exists, else forgotten (adopted:
        its binding makes it wanted; otherwise the next scan finds it again)."""
        hosts = sorted(self._drivers)
        while True:
            try:
                # Records deleted before the watch starts (or while it was down) count too.
                present, revision = await self._store.recorded(hosts)
                await self._decided([pair for pair in self.quarantined if pair not in present])
                async for gone in self._store.watch_removals(hosts, revision + 1):
                    await self._decided([pair for pair in gone if pair in self.quarantined])
            except Compacted:
                log.warning("orphan records watch compacted; watching again")
            except EtcdError as err:
                log.warning("orphan records watch failed; watching again", extra={"error": str(err)})
                await asyncio.sleep(1.0)

    async def _decided(self, pairs: list[HostUid]) -> None:
        """Quarantined VMs whose records are gone: destroy those a tombstone now condemns,
        forget the others."""
        if not pairs:
            return
        tombstones = await self._store.tombstones.present(pairs)
        for host, uid in pairs:
            orphan = self.quarantined.pop((host, uid), None)
            if orphan is None:
                continue
            if (host, uid) not in tombstones:
                log.info("quarantined VM released (adopted)", extra={"host": host, "uid": uid, "vm": orphan.vm})
                continue
            log.info("destroying a quarantined VM an operator condemned",
                     extra={"host": host, "uid": uid, "vm": orphan.vm})
            try:
                await self._drivers[host].destroy_vm(uid)
            except DriverError as err:  # the next scan finds it, and its tombstone
                log.warning("destroy failed; the next scan retries",
                            extra={"host": host, "uid": uid, "reason": err.reason})
        self._count()
