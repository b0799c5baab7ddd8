"""Quarantined VMs (``orphans/{host}/{uid}``): found on a host, wanted by no binding,
condemned by no tombstone (controlplane/store/tombstones.py).

The host's agent records each one under its heartbeat lease (so the records of a
host whose agent is gone vanish, and come back when it returns), guarded by the
absence of the VM's binding and tombstone. An operator then either

- adopts it: the VM comes back under its project, bound to the host it runs on,
  as its driver recorded it when it was made, in one transaction that charges the
  project's quota, grows the host's allocation (and a zone group count), and
  deletes the record; the agent sees the new binding and finds the VM it has;
- or destroys it: one transaction deletes the record and writes its tombstone;
  the agent, watching its records, sees the deletion, finds the tombstone and
  destroys the VM.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace

from controlplane.etcd import EtcdClient, KeyValue, ops, prefix_end
from controlplane.gen.quanta.store.v1 import records_pb2 as rec
from controlplane.models import (
    Binding,
    HostAllocation,
    HostRegistration,
    VmRef,
    VmSpec,
    now_ns,
    zone_of,
)
from controlplane.store import bindings
from controlplane.store.bindings import HostRead
from controlplane.store.errors import AlreadyExists, Conflict, NotFound, StoreError
from controlplane.store.keys import Keys
from controlplane.store.ledger import Charge, GuardFailed, UsageLedger
from controlplane.store.tombstones import DESTROYED, Tombstones
from controlplane.store.vms import VmRecord
from controlplane.store.zones import ZoneStore
from controlplane.tenancy import Usage

log = logging.getLogger(__name__)

_MAX_ATTEMPTS = 8

HostUid = tuple[str, str]


def spec_record(spec: VmSpec) -> str:
    """The text an agent gives its driver to keep with a VM it makes (VmRequest.record):
    the spec, so that the VM can be adopted if the store forgets it."""
    return base64.b64encode(replace(spec, delete_time_ns=0).to_bytes()).decode()


def spec_from_record(record: str) -> VmSpec | None:
    """The spec a driver kept with a VM (see :func:`spec_record`), or None when it kept
    none or something unreadable."""
    if not record:
        return None
    try:
        return VmSpec.from_bytes(base64.b64decode(record, validate=True))
    except (binascii.Error, ValueError):
        return None


def unadoptable(spec: VmSpec) -> str | None:
    """Why a recorded spec cannot be adopted as it is, or None. A VM made with NICs or
    persistent disks holds addresses, ports and disk attachments that its adoption would
    have to claim again (another VM may have them since: a store restored from an older
    backup handed them out anew), and its record is its spec at create time (later
    attaches and detaches are not in it): adopting it as recorded could give one address
    or disk to two VMs, and its deletion would then release the other's. Refused until
    adoption claims them (left open). Pure."""
    if spec.nics or spec.disks:
        return ("it has NICs or persistent disks, whose addresses and attachments an adoption cannot claim "
                "yet: destroy it (quanta host orphans destroy) and create it again")
    return None


class NotAdoptable(StoreError):
    """The orphan's driver recorded no spec to adopt it by."""


class ProjectNotFound(NotFound):
    """The project an orphan was made in is gone."""


class HostDead(StoreError):
    """The orphan's host is declared dead: its VMs are being placed elsewhere."""


@dataclass(frozen=True, slots=True)
class Orphan:
    host: str
    uid: str
    vm: str  # tenants/{t}/projects/{p}/vms/{v}, "" if unknown
    spec: VmSpec | None  # as recorded when the VM was made; None: not adoptable
    powered_on: bool
    found_time_ns: int
    agent: str = ""
    revision: int = 0  # mod_revision of the record; 0 before it is stored

    @property
    def ref(self) -> VmRef | None:
        return self.spec.ref if self.spec is not None else VmRef.from_name(self.vm)

    def to_bytes(self) -> bytes:
        record = rec.OrphanVm(host=self.host, uid=self.uid, vm=self.vm, powered_on=self.powered_on,
                              found_time_ns=self.found_time_ns, agent=self.agent)
        if self.spec is not None:
            record.spec.CopyFrom(self.spec.to_proto())
        return record.SerializeToString()

    @classmethod
    def from_kv(cls, kv: KeyValue) -> Orphan:
        m = rec.OrphanVm.FromString(kv.value)
        spec = VmSpec.from_proto(m.spec) if m.HasField("spec") else None
        return cls(m.host, m.uid, m.vm, spec, m.powered_on, m.found_time_ns, m.agent, kv.mod_revision)


class OrphanStore:
    def __init__(self, client: EtcdClient, keys: Keys, ledger: UsageLedger | None = None,
                 tombstones: Tombstones | None = None):
        self._etcd = client
        self._keys = keys
        self._ledger = ledger
        self._tombstones = tombstones or Tombstones(client, keys)

    @property
    def tombstones(self) -> Tombstones:
        return self._tombstones

    # --- the host's agent ----------------------------------------------------------------

    async def quarantine(self, orphans: Sequence[Orphan], lease_id: int) -> list[bool]:
        """Record ``orphans`` under the agent's heartbeat lease, each only while it
        has no tombstone and no binding of its own uid on its host (one under its name
        and host appears when it is adopted); returns which were recorded (False: one
        of those appeared; look again). Idempotent."""
        k = self._keys

        def record(orphan: Orphan, *, unbound: bool):
            compares = [ops.absent(k.tombstone(orphan.host, orphan.uid))]
            if unbound and orphan.ref is not None:
                compares.append(ops.absent(k.binding(orphan.host, orphan.ref)))
            return ops.txn(compares, [ops.put(k.orphan(orphan.host, orphan.uid), orphan.to_bytes(), lease=lease_id)])

        responses = await self._etcd.txn_chunked([record(o, unbound=True) for o in orphans])
        done = [response.response_txn.succeeded for response in responses]
        # Failed: a tombstone, or a binding under the same name; that binding may be
        # another VM's (another uid under a name reused since): then record it anyway.
        again = [(i, ref) for i, ok in enumerate(done) if not ok and (ref := orphans[i].ref) is not None]
        if again:
            reads = await self._etcd.txn_chunked([ops.get(k.binding(orphans[i].host, ref)) for i, ref in again])
            others = [i for (i, _), response in zip(again, reads, strict=True)
                      if response.response_range.kvs
                      and Binding.from_bytes(response.response_range.kvs[0].value).spec.uid != orphans[i].uid]
            if others:
                retried = await self._etcd.txn_chunked([record(orphans[i], unbound=False) for i in others])
                for i, response in zip(others, retried, strict=True):
                    done[i] = response.response_txn.succeeded
        return done

    async def forget(self, pairs: Sequence[HostUid]) -> None:
        """Delete the records of ``pairs`` (their VMs are gone or wanted). Idempotent."""
        if pairs:
            await self._etcd.txn_chunked([ops.delete(self._keys.orphan(h, u)) for h, u in pairs])

    async def recorded(self, hosts: Sequence[str]) -> tuple[set[HostUid], int]:
        """The (host, uid) of every record of ``hosts`` now, and the revision read at."""
        start, end = self._keys.orphans_range(list(hosts))
        kvs, revision = await self._etcd.range_all(start, end)
        return {self._keys.parse_orphan_key(kv.key) for kv in kvs}, revision

    async def watch_removals(self, hosts: Sequence[str], start_revision: int) -> AsyncIterator[list[HostUid]]:
        """(host, uid) of each record of ``hosts`` deleted from ``start_revision`` on
        (an operator adopted or destroyed it, or its agent forgot it). Raises Compacted."""
        start, end = self._keys.orphans_range(list(hosts))
        wanted = set(hosts)
        async for batch in self._etcd.watch(start, end, start_revision=start_revision):
            gone = [self._keys.parse_orphan_key(e.kv.key) for e in batch.events if e.is_delete]
            gone = [pair for pair in gone if pair[0] in wanted]
            if gone:
                yield gone

    # --- operators (frontends) ---------------------------------------------------------

    async def list(self, *, host: str | None = None, after: str = "", limit: int = 100
                   ) -> tuple[list[Orphan], str]:
        """Up to ``limit`` records in key order after ``after`` (``host/uid``), of one
        host or all; returns (orphans, where the next page starts after, or "")."""
        prefix = self._keys.orphans_prefix(host)
        start = self._keys.orphans_prefix() + after.encode() + b"\0" if after else prefix
        result = await self._etcd.range(start, prefix_end(prefix), limit=limit)
        orphans = [Orphan.from_kv(kv) for kv in result.kvs]
        last = f"{orphans[-1].host}/{orphans[-1].uid}" if result.more and orphans else ""
        return orphans, last

    async def get(self, host: str, uid: str) -> Orphan:
        kv = await self._etcd.get(self._keys.orphan(host, uid))
        if kv is None:
            raise NotFound(f"hosts/{host}/orphans/{uid}")
        return Orphan.from_kv(kv)

    async def destroy(self, host: str, uid: str) -> Orphan:
        """Condemn a quarantined VM: its record goes and its tombstone is written, in
        one txn comparing the record; its agent then destroys it. Raises NotFound,
        Conflict (the record kept changing)."""
        for _attempt in range(_MAX_ATTEMPTS):
            orphan = await self.get(host, uid)
            key = self._keys.orphan(host, uid)
            tombstone = await self._tombstones.put_ops(host, uid, orphan.vm, DESTROYED)
            result = await self._etcd.txn([ops.mod_revision_is(key, orphan.revision)], [ops.delete(key), *tombstone])
            if result.succeeded:
                log.info("orphan VM condemned", extra={"host": host, "uid": uid, "vm": orphan.vm})
                return orphan
        raise Conflict(f"orphan {uid} on {host} kept changing; retry")

    async def adopt(self, host: str, uid: str) -> VmRecord:
        """Bring a quarantined VM back under its project (see the module doc), as its
        driver recorded it, bound to ``host``. Raises NotFound (no such orphan),
        ProjectNotFound, NotAdoptable, HostDead, AlreadyExists (its name is taken),
        QuotaExceeded, Conflict."""
        if self._ledger is None:
            raise RuntimeError("OrphanStore.adopt needs a ledger")
        k = self._keys
        for _attempt in range(_MAX_ATTEMPTS):
            orphan = await self.get(host, uid)
            if orphan.spec is None:
                raise NotAdoptable(f"{orphan.vm or uid} on {host}: its driver recorded no spec")
            if (why := unadoptable(orphan.spec)) is not None:
                raise NotAdoptable(f"{orphan.vm or uid} on {host}: {why}")
            spec = replace(orphan.spec, delete_time_ns=0)
            read = await self._etcd.txn([], [ops.get(k.host_alloc(host)), ops.get(k.host_dead(host)),
                                             ops.get(k.host_reg(host))])
            if read.kvs(1):
                raise HostDead(f"host {host} is declared dead")
            alloc_kvs, reg_kvs = read.kvs(0), read.kvs(2)
            allocation = HostAllocation.from_bytes(alloc_kvs[0].value) if alloc_kvs else HostAllocation()
            zone = zone_of(HostRegistration.from_bytes(reg_kvs[0].value).labels) if reg_kvs else ""
            counts, _ = await ZoneStore(self._etcd, k).read(bindings.bind_zone_ids(zone, [spec]))
            at = now_ns()
            bound = bindings.bind(k, HostRead(host, allocation, alloc_kvs[0].mod_revision if alloc_kvs else 0),
                                  [(spec, 0)], zone=zone, zone_counts=counts, at=at, adopting=True)
            vm_range = ops.get(k.vm_prefix(spec.ref), prefix_end(k.vm_prefix(spec.ref)))
            charge = Charge(
                Usage.of_vm(spec.resources),
                compares=[ops.mod_revision_is(k.orphan(host, uid), orphan.revision), ops.absent(k.vm_spec(spec.ref)),
                          *bound.compares],
                writes=[ops.put(k.vm_spec(spec.ref), spec.to_bytes()), ops.delete(k.orphan(host, uid)),
                        *bound.writes],
                reads=[vm_range],
                exclusive=(k.vm_prefix(spec.ref),),
            )
            try:
                revision = await self._ledger.apply(spec.ref.tenant, spec.ref.project, charge)
            except NotFound:
                raise ProjectNotFound(f"tenants/{spec.ref.tenant}/projects/{spec.ref.project}") from None
            except GuardFailed as failed:
                if any(kv.key.endswith(b"/spec") for kv in failed.kvs[0]):
                    raise AlreadyExists(spec.ref.name) from None
                continue  # the record, the allocation or a count changed: read again
            log.info("orphan VM adopted", extra={"host": host, "uid": uid, "vm": spec.ref.name})
            return VmRecord(spec, bindings.bound_status(spec, host, at), revision, revision)
        raise Conflict(f"adoption of orphan {uid} on {host} kept conflicting; retry")
