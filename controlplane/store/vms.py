"""VM desired state in etcd, as the frontends read and write it.

Every write is one etcd transaction guarded by compares, so that two frontends
(or a retry after a timeout) can never create a VM twice or lose a deletion.
"""

from __future__ import annotations

import builtins
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from controlplane.disks import DiskName
from controlplane.etcd import EtcdClient, KeyValue, WatchEvent, ops, prefix_end
from controlplane.gen.quanta.store.v1 import records_pb2 as rec
from controlplane.models import (
    AddressMode,
    Binding,
    HostAllocation,
    HostRegistration,
    VmRef,
    VmSpec,
    VmState,
    VmStatus,
    now_ns,
)
from controlplane.store import bindings, claims, disks
from controlplane.store.addresses import AddressInUse, AddressPicker, NetworkGone, PoolExhausted
from controlplane.store.errors import (
    AlreadyExists,
    Conflict,
    EtagMismatch,
    NotFound,
    RequestMismatch,
    RequestReplayed,
    StoreError,
)
from controlplane.store.keys import Keys
from controlplane.store.ledger import Charge, GuardFailed, ProjectDeleting, QuotaExceeded, UsageLedger
from controlplane.store.networks import NetworkView
from controlplane.store.retention import RetentionLeases
from controlplane.tenancy import Usage

log = logging.getLogger(__name__)

_MAX_CAS_ATTEMPTS = 8
_NO_USAGE = Usage()


@dataclass(frozen=True, slots=True)
class VmRecord:
    """A VM as stored: its spec and status with their etcd revisions."""

    spec: VmSpec
    status: VmStatus
    spec_revision: int
    status_revision: int

    @property
    def ref(self) -> VmRef:
        return self.spec.ref

    @property
    def state(self) -> VmState:
        if self.spec.deleting:
            return VmState.DELETING
        return self.status.state

    @property
    def resource_version(self) -> int:
        return max(self.spec_revision, self.status_revision)

    @property
    def etag(self) -> str:
        return f"{self.spec_revision:x}"

    @property
    def reconciling(self) -> bool:
        """True until the host's agent has made the latest desired state true. Every
        spec change rewrites the binding in its txn and a bind comes after the create,
        so a bound VM's binding revision is never below its spec's: the agent's
        observed revision reaches the spec's once it has acted on the latest."""
        return self.status.observed_revision < self.spec_revision


@dataclass(frozen=True, slots=True)
class SpecUpdate:
    """Outcome of a spec change: the VM as it is after it, whether it was removed at
    once (deleted while still pending), the revision, and whether this change wrote
    anything (False: the spec was as wanted already)."""

    record: VmRecord
    removed: bool
    revision: int
    changed: bool = True


#: What a delete request returns.
Deletion = SpecUpdate


def held(spec: VmSpec) -> Usage:
    """What a VM holds of its project's quota: its resources, until it is being deleted."""
    return Usage() if spec.deleting else Usage.of_vm(spec.resources)


@dataclass(frozen=True, slots=True)
class VmChange:
    """One change of a VM in a watch stream. ``record`` is the VM after the change
    (for a deletion: as it was last seen, or None if it was never seen)."""

    deleted: bool
    record: VmRecord | None
    ref: VmRef
    revision: int


def _pair(spec_kv: KeyValue | None, status_kv: KeyValue | None) -> VmRecord | None:
    if spec_kv is None or status_kv is None:
        return None
    return _record(spec_kv, status_kv)


def _record(spec_kv: KeyValue, status_kv: KeyValue) -> VmRecord:
    return VmRecord(VmSpec.from_bytes(spec_kv.value), VmStatus.from_bytes(status_kv.value),
                    spec_kv.mod_revision, status_kv.mod_revision)


def pending_status(spec: VmSpec) -> VmStatus:
    """A new VM's status: PENDING, accepted at its create time."""
    return VmStatus(VmState.PENDING, update_time_ns=spec.create_time_ns, accepted_time_ns=spec.create_time_ns)


def create_ops(keys: Keys, spec: VmSpec, status: VmStatus,
               networks: Mapping[str, int] | None = None,
               disk_revisions: Mapping[str, int] | None = None) -> tuple[list, list, claims.Claims]:
    """What creating a VM compares (its name is free) and writes (its spec, status and
    queue entry in its shard), with what it takes with it (``claims.create_claims``:
    its NICs' ports and addresses, ``networks`` giving the create_revision of each
    network they are on, as read; its disks' attachments, ``disk_revisions`` giving
    each disk's record mod_revision as read). The claims come back too: their reads
    and exclusive keys belong in the caller's charge (with the VM's own prefix). The
    one place for it, used by :meth:`VmStore.create` and by a set's admission
    (``vmsets.py``). Pure."""
    spec_key = keys.vm_spec(spec.ref)
    spec_bytes = spec.to_bytes()
    taken = claims.create_claims(keys, spec, networks or {}, disk_revisions)
    return ([ops.absent(spec_key), *taken.compares],
            [ops.put(spec_key, spec_bytes), ops.put(keys.vm_status(spec.ref), status.to_bytes()),
             ops.put(keys.queue(spec.shard, spec.ref), spec_bytes), *taken.writes], taken)


_MAX_POOL_ATTEMPTS = 64  # creates that lost a pool address to another frontend, then pick again


class _PoolAddressTaken(Exception):
    """A create's STATIC_POOL address was taken by another create first: pick again."""


class _MacTaken(Exception):
    """The MAC of NIC ``nic`` of a create was taken on its backing first: draw again."""

    def __init__(self, nic: int):
        super().__init__(nic)
        self.nic = nic


class VmStore:
    def __init__(self, client: EtcdClient, keys: Keys, requests: RetentionLeases | None = None,
                 ledger: UsageLedger | None = None, addresses: AddressPicker | None = None):
        self._etcd = client
        self._keys = keys
        self._requests = requests or RetentionLeases(client)
        self._ledger = ledger or UsageLedger(client, keys)
        self._addresses = addresses or AddressPicker(client, keys)

    @property
    def addresses(self) -> AddressPicker:
        return self._addresses

    @property
    def keys(self) -> Keys:
        return self._keys

    @property
    def client(self) -> EtcdClient:
        return self._etcd

    @property
    def ledger(self) -> UsageLedger:
        return self._ledger

    @property
    def requests(self) -> RetentionLeases:
        return self._requests

    # --- create ------------------------------------------------------------------------

    async def create(self, spec: VmSpec, *, also: Sequence = (), fingerprint: bytes = b"",
                     networks: Mapping[str, NetworkView] | None = None,
                     disk_revisions: Mapping[str, int] | None = None) -> tuple[VmRecord, bool]:
        """Store a new PENDING VM, queue it for its scheduler shard and charge its
        project's quota, in one transaction, with the puts ``also`` (e.g. its audit
        record; keys no other change writes) and its claims (``claims.py``: NICs' ports
        and addresses, ``networks`` giving each network its NICs are on, by full name,
        as read; disks' attachments, ``disk_revisions`` giving each disk's record
        mod_revision as read). A STATIC_POOL NIC gets a free address of its network's pool
        on its backing, picked here (``addresses.AddressPicker``) and picked again when
        another create took it first; every NIC without a MAC gets a random one, drawn
        again when it is taken on the backing.

        Idempotent by ``spec.request_id`` for the request retention: a retry
        returns the VM the first attempt made (with its addresses), or raises
        RequestReplayed if that VM is gone (never a second VM, nor a second address).
        ``fingerprint`` (see :mod:`controlplane.store.idempotency`) is kept with the
        request_id: a create with the same request_id and another fingerprint raises
        RequestMismatch (when both have one). Returns (record, created). Raises
        AlreadyExists when the name is taken by another request, NotFound when the
        project does not exist, QuotaExceeded when the VM does not fit its quota,
        ProjectDeleting when the project is being deleted, PoolExhausted (a pool has
        no free address), AddressInUse (a STATIC address is taken), NetworkGone (a
        network was deleted meanwhile). With ``spec.disks`` (each read at
        ``disk_revisions``): DiskInUse, DiskDeleting, NotFound (a disk is gone) or
        DiskChanged (one changed since it was read: read again) when one cannot be
        taken. ``created`` False: nothing was written, ``also`` neither.
        """
        networks = networks or {}
        revisions = {name: view.create_revision for name, view in networks.items()}
        subnets = {view.network.uid: view.network.subnet for view in networks.values()
                   if view.network.subnet is not None}
        spec = self._addresses.with_macs([spec])[0] if spec.nics else spec
        for _attempt in range(_MAX_POOL_ATTEMPTS):
            try:
                chosen = (await self._addresses.propose([spec], subnets))[0] if claims.uses_pool(spec) else spec
            except PoolExhausted:
                if spec.request_id:  # a retry of a create that made its VM gets it, whatever the pool holds now
                    existing, request_kvs = await self._read_existing(spec)
                    if request_kvs or existing is not None:
                        return await self._existing(spec, existing, request_kvs, fingerprint)
                raise
            proposed = chosen is not spec
            try:
                return await self._create_once(chosen, also, fingerprint, revisions, disk_revisions or {})
            except _PoolAddressTaken:
                self._addresses.lost()
                continue
            except _MacTaken as taken:
                spec = self._addresses.redraw_mac([spec], 0, taken.nic)[0]
                continue
            finally:
                if proposed:
                    await self._addresses.forget([chosen])
        raise Conflict(f"the create of {spec.ref.name} kept losing its pool address or MAC to other creates; retry")

    async def _read_existing(self, spec: VmSpec) -> tuple[VmRecord | None, list[KeyValue]]:
        k = self._keys
        request = [ops.get(k.request(spec.ref.tenant, spec.ref.project, spec.request_id))] if spec.request_id else []
        result = await self._etcd.txn([], [ops.get(k.vm_prefix(spec.ref), prefix_end(k.vm_prefix(spec.ref))),
                                           *request])
        return self._record_from(result.kvs(0)), (result.kvs(1) if request else [])

    async def _create_once(self, spec: VmSpec, also: Sequence, fingerprint: bytes,
                           networks: Mapping[str, int], disk_revisions: Mapping[str, int]) -> tuple[VmRecord, bool]:
        """One attempt of :meth:`create` with the addresses chosen; raises
        _PoolAddressTaken when a STATIC_POOL address was taken meanwhile."""
        k = self._keys
        status = pending_status(spec)
        vm_range = ops.get(k.vm_prefix(spec.ref), prefix_end(k.vm_prefix(spec.ref)))
        compares, writes, taken = create_ops(k, spec, status, networks, disk_revisions)
        charge = Charge(Usage.of_vm(spec.resources), compares=compares, writes=[*writes, *also], reads=[vm_range],
                        exclusive=(k.vm_prefix(spec.ref), *taken.exclusive))
        request_key = b""
        if spec.request_id:
            request_key = k.request(spec.ref.tenant, spec.ref.project, spec.request_id)
            charge.compares.append(ops.absent(request_key))
            charge.writes.append(ops.put(request_key, rec.RequestRecord(
                vm_key=spec.ref.name, uid=spec.uid, fingerprint=fingerprint).SerializeToString(),
                lease=await self._requests.current()))
            charge.reads.append(ops.get(request_key))
            charge.exclusive += (request_key,)
        charge.reads += taken.reads
        try:
            revision = await self._ledger.apply(spec.ref.tenant, spec.ref.project, charge)
            return VmRecord(spec, status, revision, revision), True
        except GuardFailed as failed:
            existing, request_kvs = self._record_from(failed.kvs[0]), failed.kvs[1] if spec.request_id else []
            if existing is None and not request_kvs:
                failure = claims.failed_claim(spec, networks, failed.kvs[2 if spec.request_id else 1:])
                if failure is not None and failure.mac_taken:
                    raise _MacTaken(failure.nic) from None
                if failure is not None and not failure.address_taken:
                    raise NetworkGone(failure.network) from None
                if failure is not None:
                    nic = spec.nics[failure.nic]
                    if nic.address_mode is AddressMode.STATIC_POOL:
                        raise _PoolAddressTaken() from None
                    raise AddressInUse(nic.network, nic.ip) from None
        except (QuotaExceeded, ProjectDeleting):
            if not spec.request_id:
                raise
            # A retry of a create that succeeded must return its VM, even when the
            # quota is now full or the project is being deleted.
            existing, request_kvs = await self._read_existing(spec)
            if not request_kvs:
                raise
        try:
            return await self._existing(spec, existing, request_kvs, fingerprint)
        except Conflict:
            if spec.disks:  # neither its name nor its request: a disk it takes
                raise await self.disk_refusal(spec, disk_revisions) from None
            raise

    async def _existing(self, spec: VmSpec, existing: VmRecord | None,
                        request_kvs: list[KeyValue], fingerprint: bytes = b"") -> tuple[VmRecord, bool]:
        """The outcome of a create whose name or request_id was taken already."""
        if spec.request_id and request_kvs:
            made = rec.RequestRecord.FromString(request_kvs[0].value)
            if made.fingerprint and fingerprint and made.fingerprint != fingerprint:
                raise RequestMismatch(spec.request_id, made.vm_key)
            if existing is not None and existing.spec.uid == made.uid:
                return existing, False
            # The request made another VM (another name), or its VM is gone.
            ref = VmRef.from_name(made.vm_key)
            if ref is not None and ref != spec.ref:
                try:
                    other = await self.get(ref)
                except NotFound:
                    other = None
                if other is not None and other.spec.uid == made.uid:
                    return other, False
            raise RequestReplayed(spec.request_id, made.vm_key)
        if existing is not None:
            raise AlreadyExists(spec.ref.name)
        raise Conflict(f"create of {spec.ref.name} raced; retry")

    async def disk_refusal(self, spec: VmSpec, revisions: Mapping[str, int]) -> StoreError:
        """Why a create of ``spec`` could not take its disks (read now): NotFound,
        DiskDeleting, DiskInUse, else DiskChanged (a disk changed since ``revisions``)."""
        names = [DiskName(spec.ref.tenant, spec.ref.project, d.disk_id) for d in spec.disks]
        views = await disks.DiskStore(self._etcd, self._keys).get_many(names)
        for name, view in zip(names, views, strict=True):
            refusal = disks.attach_refusal(view, name.name, spec.ref)
            if refusal is not None:
                return refusal
        return disks.DiskChanged(f"a disk of {spec.ref.name} changed while it was created; retry")

    # --- read --------------------------------------------------------------------------

    def _record_from(self, kvs: list[KeyValue]) -> VmRecord | None:
        spec_kv = status_kv = None
        for kv in kvs:
            if kv.key.endswith(b"/spec"):
                spec_kv = kv
            elif kv.key.endswith(b"/status"):
                status_kv = kv
        return _pair(spec_kv, status_kv)

    async def get(self, ref: VmRef, *, revision: int = 0) -> VmRecord:
        """The VM now (or at ``revision``); raises NotFound."""
        prefix = self._keys.vm_prefix(ref)
        result = await self._etcd.range(prefix, prefix_end(prefix), revision=revision)
        record = self._record_from(result.kvs)
        if record is None:
            raise NotFound(ref.name)
        return record

    async def names_taken(self, refs: Sequence[VmRef]) -> builtins.list[bool]:
        """Per ref, whether a VM of that name is stored now (one round trip per
        ``max_txn_ops`` refs, all at once). Writes nothing."""
        responses = await self._etcd.txn_chunked([ops.get(self._keys.vm_spec(ref)) for ref in refs])
        return [bool(response.response_range.kvs) for response in responses]

    async def current_revision(self) -> int:
        """The store's revision now: a consistent point to list at and watch after."""
        result = await self._etcd.range(self._keys.vms_prefix() + b"\0", count_only=True)
        return result.revision

    async def list(
        self,
        tenant: str,
        project: str,
        *,
        page_size: int,
        after: VmRef | None = None,
        revision: int = 0,
        selector: Callable[[VmSpec], bool] | None = None,
    ) -> tuple[list[VmRecord], VmRef | None, int]:
        """One page of a project's VMs in id order after ``after``, read at
        ``revision`` (0: now).

        Returns (records, where the next page starts after or None, revision).
        Pages may hold fewer than page_size records when ``selector`` filters
        some out. Raises Compacted when ``revision`` is gone.
        """
        prefix = self._keys.vms_prefix(tenant, project)
        start = prefix_end(self._keys.vm_prefix(after)) if after else prefix
        result = await self._etcd.range(start, prefix_end(prefix), limit=2 * page_size + 1,
                                        revision=revision)
        records: list[VmRecord] = []
        last: VmRef | None = None
        kvs = result.kvs
        i = 0
        scanned = 0
        while i + 1 < len(kvs) and scanned < page_size:
            spec_kv, status_kv = kvs[i], kvs[i + 1]
            if spec_kv.key[:-4] != status_kv.key[:-6]:
                i += 1  # a spec without status cannot be stored; skip defensively
                continue
            i += 2
            scanned += 1
            record = _record(spec_kv, status_kv)
            last = record.ref
            if selector is None or selector(record.spec):
                records.append(record)
        more = result.more or i < len(kvs)
        return records, (last if more else None), result.revision

    # --- change ------------------------------------------------------------------------

    async def update_spec(self, ref: VmRef, change: Callable[[VmSpec], VmSpec], *, etag: str = "",
                          guard: Sequence = (), also: Sequence = (),
                          check: Callable[[VmRecord], None] | None = None,
                          exclusive: Sequence[bytes] = (), delta: Usage = _NO_USAGE,
                          on_conflict: Callable[[], Awaitable[None]] | None = None) -> SpecUpdate:
        """Change a VM's desired state: the one path every change after create takes.

        ``check`` (optional) is called with the VM as read before each attempt: it
        raises to refuse the change (e.g. a stop of a VM still pending), and what it
        raises propagates with nothing written. The attempt that commits compares
        what ``check`` saw (the spec, and the queue entry or the binding), so a
        decision on the VM's state cannot race with its bind or unbind.

        ``change`` (pure, may be called more than once) maps the spec as stored to the
        wanted one; returning it unchanged writes nothing (``changed`` False). Every
        copy of the spec is rewritten with it in one transaction, compared against
        what was read: the spec key, and the queue entry of a pending VM or the binding
        of a bound one (the scheduler places, and an agent reconciles, from those
        copies). The project's quota moves by what the VM holds before and after
        (``held``), in the same transaction, with the puts ``also`` (keys no other
        change writes, e.g. an audit record). A change that marks a pending VM deleted
        removes it at once (``removed``): nobody holds it to destroy it. A change of a
        bound VM's resources (a resize) also moves its host's allocation, built by
        ``bindings.resize`` from the binding, allocation and registration read in one
        round trip, all in that same transaction.

        What the change takes or gives besides the VM (AttachDisk's attachment, DeleteVm's
        disks): ``guard`` compares, ``also`` puts, ``exclusive`` names it holds in a group
        commit (keys it writes that another change may write too), ``delta`` the quota it
        moves on top of the VM's own. ``on_conflict`` (optional) is awaited after an
        attempt that failed its compares, before the next: it raises to stop (e.g. a
        guarded key changed, so ``guard`` can never hold again).

        Raises NotFound; EtagMismatch (a Conflict) when ``etag`` does not match (and there
        is something to change); Conflict when the VM or a ``guard`` compare (the
        caller's own, e.g. a fence) keeps changing under it;
        QuotaExceeded when the change grows the VM beyond its project's quota;
        HostFull when a resize grows a bound VM beyond its host's allocatable;
        ValueError when ``change`` alters the VM's identity or shard, or a bound VM's
        groups (that is a move: ``bindings.py``).
        """
        k = self._keys
        spec_key, prefix = k.vm_spec(ref), k.vm_prefix(ref)
        vm_range = ops.get(prefix, prefix_end(prefix))
        extra_exclusive = tuple(exclusive)
        record = await self.get(ref)
        # The VM's binding, its host's allocation and registration as last read (a
        # resize needs all three; another change of a bound VM at most the binding).
        binding_kv: KeyValue | None = None
        host_kvs: tuple[str, KeyValue | None, KeyValue | None] | None = None  # host, alloc, reg
        for _attempt in range(_MAX_CAS_ATTEMPTS):
            if check is not None:
                check(record)
            was = record.spec
            spec = change(was)
            if spec == was:
                # Nothing to change, whatever the etag: a retry of a change that applied
                # (its answer lost) gets the same answer, not a conflict with itself.
                return SpecUpdate(record, False, record.resource_version, changed=False)
            if etag and etag != record.etag:
                raise EtagMismatch(f"etag {etag} does not match {record.etag}")
            if (spec.ref, spec.uid, spec.shard) != (was.ref, was.uid, was.shard):
                raise ValueError(f"a spec change may not change the identity or shard of {ref.name}")
            compares = [ops.mod_revision_is(spec_key, record.spec_revision), *guard]
            reads = [vm_range]
            names: tuple[bytes, ...] = (prefix,)
            if record.status.state == VmState.PENDING:
                queue_key = k.queue(was.shard, ref)
                compares.append(ops.present(queue_key))
                if spec.deleting:
                    writes = bindings.pending_removal(k, was)
                    names += claims.release_exclusive(k, was)  # addresses, disks a create may take
                else:
                    writes = [ops.put(spec_key, spec.to_bytes()), ops.put(queue_key, spec.to_bytes())]
            else:
                if (was.host_group, was.zone_group) != (spec.host_group, spec.zone_group):
                    raise ValueError(f"{ref.name} is bound: its groups stay while it is")
                host = record.status.host
                binding_key = k.binding(host, ref)
                resizing = was.resources != spec.resources
                if resizing and (host_kvs is None or host_kvs[0] != host
                                 or binding_kv is None or binding_kv.key != binding_key):
                    read = await self._etcd.txn([], [ops.get(binding_key), ops.get(k.host_alloc(host)),
                                                     ops.get(k.host_reg(host))])
                    binding_kv = next(iter(read.kvs(0)), None)
                    host_kvs = (host, next(iter(read.kvs(1)), None), next(iter(read.kvs(2)), None))
                    if binding_kv is None:
                        record = await self.get(ref)  # moved off meanwhile
                        continue
                elif (binding_kv is None or binding_kv.key != binding_key) and was.zone_group:
                    # The binding names the zone the VM is counted in: read it.
                    binding_kv = await self._etcd.get(binding_key)
                    if binding_kv is None:
                        record = await self.get(ref)  # moved off meanwhile
                        continue
                if binding_kv is not None and binding_kv.key == binding_key:
                    placed = Binding.from_bytes(binding_kv.value)
                    binding_compare = ops.mod_revision_is(binding_key, binding_kv.mod_revision)
                else:
                    # A binding never written since its bind holds what the bind wrote
                    # (the spec as stored: every change rewrites both): no need to read it.
                    placed = bindings.as_bound(was, host, "")
                    binding_compare = ops.version_is(binding_key, 1)
                reads.append(ops.get(binding_key))
                if resizing:
                    assert host_kvs is not None and binding_kv is not None
                    alloc_kv, reg_kv = host_kvs[1], host_kvs[2]
                    host_read = bindings.HostRead(host, HostAllocation.from_bytes(alloc_kv.value),
                                                  alloc_kv.mod_revision) if alloc_kv else bindings.HostRead(host)
                    allocatable = HostRegistration.from_bytes(reg_kv.value).allocatable if reg_kv else None
                    txn = bindings.resize(k, host_read, placed, binding_kv.mod_revision, spec, allocatable)
                    compares += txn.compares
                    writes = [ops.put(spec_key, spec.to_bytes()), *txn.writes]
                    reads += [ops.get(k.host_alloc(host)), ops.get(k.host_reg(host))]
                    # Two resizes on one host in one group commit would write its allocation twice.
                    names += (k.host_alloc(host),)
                else:
                    compares.append(binding_compare)
                    writes = [ops.put(spec_key, spec.to_bytes()),
                              ops.put(binding_key, replace(placed, spec=spec).to_bytes())]
            charge = Charge(held(spec) - held(was) + delta, compares, [*writes, *also], reads,
                            exclusive=(*names, *extra_exclusive))
            try:
                revision = await self._ledger.apply(ref.tenant, ref.project, charge)
            except GuardFailed as failed:
                now = self._record_from(failed.kvs[0])
                if now is None:
                    raise NotFound(ref.name) from None
                if on_conflict is not None:
                    await on_conflict()
                record = now
                binding_kv = failed.kvs[1][0] if len(failed.kvs) > 1 and failed.kvs[1] else None
                if len(failed.kvs) > 3 and host_kvs is not None:
                    host_kvs = (host_kvs[0], next(iter(failed.kvs[2]), None), next(iter(failed.kvs[3]), None))
                continue
            if spec.deleting and record.status.state == VmState.PENDING:
                return SpecUpdate(VmRecord(spec, record.status, record.spec_revision, record.status_revision), True,
                                  revision)
            return SpecUpdate(VmRecord(spec, record.status, revision, record.status_revision), False, revision)
        raise Conflict(f"the change of {ref.name} kept conflicting; retry")

    async def request_delete(self, ref: VmRef, *, etag: str = "", guard: Sequence = (),
                             also: Sequence = (), check: Callable[[VmRecord], None] | None = None,
                             exclusive: Sequence[bytes] = (), delta: Usage = _NO_USAGE,
                             on_conflict: Callable[[], Awaitable[None]] | None = None) -> Deletion:
        """Request deletion of a VM: its spec marked deleted through :meth:`update_spec`
        (quota released in the same transaction). A pending VM is removed at once
        (``removed``); a bound VM's agent destroys it, then removes it. Idempotent: a
        VM already being deleted is returned, nothing written (``changed`` False).
        Raises NotFound, or Conflict (see :meth:`update_spec`)."""
        at = now_ns()
        return await self.update_spec(ref, lambda spec: spec if spec.deleting else spec.marked_deleted(at),
                                      etag=etag, guard=guard, also=also, check=check, exclusive=exclusive,
                                      delta=delta, on_conflict=on_conflict)

    # --- watch -------------------------------------------------------------------------

    async def watch(
        self, tenant: str, project: str, *, start_revision: int, seed: Iterable[VmRecord] = (),
        cache_size: int = 200_000,
    ) -> AsyncIterator[builtins.list[VmChange]]:
        """Changes of a project's VMs from ``start_revision`` (inclusive), batched.

        A batch holds whole revisions; an empty batch is progress. ``seed``: the
        VMs as of ``start_revision - 1`` if the caller listed them (lets the
        stream complete changes without reading etcd). A change that touched only
        one half of a VM (spec or status) is completed from the stream's own
        record of the VM; a VM the stream has not seen yet is read at the
        change's revision, in one round trip per batch. Raises Compacted.
        """
        known = _RecordCache(cache_size)
        for record in seed:
            known.put(record)
        known.trim()
        prefix = self._keys.vms_prefix(tenant, project)
        async for batch in self._etcd.watch(prefix, prefix_end(prefix), start_revision=start_revision,
                                            prev_kv=True):
            if not batch.events:
                yield []
                continue
            yield await self._changes(batch.events, known)
            known.trim()

    async def _changes(self, events: Iterable[WatchEvent], known: _RecordCache) -> builtins.list[VmChange]:
        # Group per VM and revision: one txn may change spec and status together.
        grouped: dict[tuple[VmRef, int], dict[str, WatchEvent]] = {}
        for event in events:
            ref, part = self._keys.parse_vm_key(event.kv.key)
            grouped.setdefault((ref, event.kv.mod_revision), {})[part] = event
        missing = [
            gk for gk, parts in grouped.items()
            if len(parts) == 1 and not next(iter(parts.values())).is_delete and gk[0] not in known
        ]
        fetched: dict[tuple[VmRef, int], VmRecord | None] = {}
        if missing:
            # Read the other half as it was at the event's revision, so a record
            # never shows a later change before the event that made it.
            responses = await self._etcd.txn_chunked([
                ops.get(self._keys.vm_prefix(ref), prefix_end(self._keys.vm_prefix(ref)), revision=revision)
                for ref, revision in missing
            ])
            for gk, response in zip(missing, responses, strict=True):
                fetched[gk] = self._record_from([KeyValue.from_pb(kv) for kv in response.response_range.kvs])
        changes: builtins.list[VmChange] = []
        for (ref, revision), parts in grouped.items():
            if any(ev.is_delete for ev in parts.values()):
                prev = {("spec" if ev.kv.key.endswith(b"/spec") else "status"): ev.prev_kv
                        for ev in parts.values()}
                last = _pair(prev.get("spec"), prev.get("status")) or known.get(ref)
                known.pop(ref)
                changes.append(VmChange(True, last, ref, revision))
                continue
            if len(parts) == 2:
                record = _record(parts["spec"].kv, parts["status"].kv)
            elif (ref, revision) in fetched:
                read = fetched[(ref, revision)]
                if read is None:
                    continue  # removed again before it could be read; its deletion follows
                record = read
            else:
                before = known.get(ref)
                if before is None:  # not missing above, and nothing is evicted within a batch
                    raise RuntimeError(f"watch lost its record of {ref} within a batch")
                part, event = next(iter(parts.items()))
                if part == "spec":
                    record = VmRecord(VmSpec.from_bytes(event.kv.value), before.status, revision,
                                      before.status_revision)
                else:
                    record = VmRecord(before.spec, VmStatus.from_bytes(event.kv.value), before.spec_revision,
                                      revision)
            known.put(record)
            changes.append(VmChange(False, record, ref, revision))
        return changes


class _RecordCache:
    """A watch stream's latest record per VM, bounded between batches (``trim``: the
    oldest entries go first; a VM evicted is simply read from etcd again when it next
    changes). Nothing is evicted within a batch, so a VM found in it stays there
    unless the batch deletes it."""

    def __init__(self, size: int):
        self._size = size
        self._records: dict[VmRef, VmRecord] = {}

    def __contains__(self, ref: VmRef) -> bool:
        return ref in self._records

    def get(self, ref: VmRef) -> VmRecord | None:
        return self._records.get(ref)

    def put(self, record: VmRecord) -> None:
        self._records[record.ref] = record

    def trim(self) -> None:
        """Evict the oldest entries down to the size bound."""
        while len(self._records) > self._size:
            del self._records[next(iter(self._records))]

    def pop(self, ref: VmRef) -> None:
        self._records.pop(ref, None)
