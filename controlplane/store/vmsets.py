"""All-or-nothing sets of VMs (CreateVms, ALL_OR_NOTHING), as the frontends admit and
read them.

A set is admitted in ONE etcd transaction, through the quota ledger as ONE charge
(the sum of its members' usage): it compares that every member's name, the set's key
and the set's request key are free, and writes every member's spec, status and queue
entry (all in the set's shard, ``VmSet.shard``, so that one scheduler shard places
the whole set), every member's bootstrap data, the set's record (PENDING), its
request record and the caller's ``also`` (its audit record). What a member's create
compares and writes is :func:`controlplane.store.vms.create_ops`, the one place for
it. The scheduler shard owning the set then binds all its members in one txn or none
(``scheduling.py``), or fails it at its deadline.

A set's size is bounded by etcd's ``--max-txn-ops`` (``EtcdClient.max_txn_ops``):
:func:`admission_ops` measures what a set's admission counts against it, on the ops
:func:`admission` builds, and :func:`most_members` the largest set that fits.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from controlplane.etcd import EtcdClient, KeyValue, ops, prefix_end
from controlplane.gen.quanta.store.v1 import records_pb2 as rec
from controlplane.models import (
    AddressMode,
    BootstrapFormat,
    DiskRef,
    Hold,
    Nic,
    Resources,
    VmRef,
    VmSet,
    VmSetRef,
    VmSpec,
    VmStatus,
)
from controlplane.store import bindings, bootstrap, claims
from controlplane.store.addresses import AddressInUse, AddressPicker, NetworkGone, PoolExhausted
from controlplane.store.bootstrap import BootstrapData
from controlplane.store.errors import (
    AlreadyExists,
    Conflict,
    NotFound,
    PlanEnded,
    RequestMismatch,
    RequestReplayed,
    StoreError,
)
from controlplane.store.keys import Keys
from controlplane.store.ledger import Charge, GuardFailed, ProjectDeleting, QuotaExceeded, UsageLedger, txn_ops
from controlplane.store.networks import NetworkView
from controlplane.store.retention import RetentionLeases
from controlplane.store.vms import VmRecord, VmStore, create_ops, pending_status
from controlplane.tenancy import Usage

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Member:
    """A VM of a set to admit: its spec (``vm_set`` and ``shard`` the set's) and its
    bootstrap data, if any (secret: never logged)."""

    spec: VmSpec
    bootstrap: BootstrapData | None = None
    disk_revisions: Mapping[str, int] = field(default_factory=dict)  # its disks' records as read (create_ops)


@dataclass(frozen=True, slots=True)
class Admission:
    """The outcome of :meth:`VmSetStore.admit`: the set and its members as stored
    (for a retry: as the first attempt made them, those still there), the revision,
    and whether this call wrote them (False: a retry, nothing written)."""

    vm_set: VmSet
    vms: list[VmRecord]
    revision: int
    created: bool


class SetTooLarge(StoreError):
    """The set's admission would not fit one etcd transaction: ``ops`` counted against
    ``limit`` (``--max-txn-ops``); ``most``/``most_with_bootstrap``: the most members
    this store takes without / with bootstrap data on every member."""

    def __init__(self, members: int, ops_: int, limit: int, most: int, most_with_bootstrap: int, *,
                 what: str = "", shape: Shape | None = None):
        if what:  # the bind, not the admission: bootstrap data does not count there
            super().__init__(
                f"a set of {members} VMs needs {ops_} operations in one etcd transaction for {what}; this store "
                f"takes at most {limit}: at most {most} VMs per set when every one is zone-scoped")
        else:
            like = (f", counted for VMs with {shape.nics} NICs ({shape.static_nics} static) and {shape.disks} "
                    f"disks each" if shape is not None and shape != Shape() else "")
            super().__init__(
                f"a set of {members} VMs needs {ops_} operations in one etcd transaction; this store takes at most "
                f"{limit}: at most {most} VMs per set ({most_with_bootstrap} when every VM has bootstrap data){like}")
        self.members, self.ops, self.limit = members, ops_, limit
        self.most, self.most_with_bootstrap = most, most_with_bootstrap


def admission(keys: Keys, vm_set: VmSet, members: Sequence[Member], *, also: Sequence = (),
              request: tuple[bytes, object] | None = None, networks: Mapping[str, int] | None = None) -> Charge:
    """The charge that admits ``vm_set`` with ``members`` (see the module docstring);
    ``request``: the set's request key and the put of its record; ``networks``: the
    create_revision of each network the members' NICs are on, as read. Its reads:
    the set's key, the request key (if any), every member's claim reads in member
    order, then each plan's hold. Pure."""
    compares: list = []
    writes: list = []
    claim_reads: list = []
    delta = Usage()
    prefixes: list[bytes] = []
    for member in members:
        spec = member.spec
        c, w, taken = create_ops(keys, spec, pending_status(spec), networks, member.disk_revisions)
        compares += c
        writes += w
        claim_reads += taken.reads
        prefixes += (keys.vm_prefix(spec.ref), *taken.exclusive)
        if member.bootstrap is not None:
            writes.append(bootstrap.put_op(keys, spec.ref, member.bootstrap))
        delta = delta + Usage.of_vm(spec.resources)
    ref = vm_set.ref
    set_key = keys.vm_set(ref.tenant, ref.project, ref.set_id)
    compares.append(ops.absent(set_key))
    writes.append(ops.put(set_key, vm_set.to_bytes()))
    reads = [ops.get(set_key)]
    exclusive = (set_key, *prefixes)
    if request is not None:
        request_key, put = request
        compares.append(ops.absent(request_key))
        writes.append(put)
        reads.append(ops.get(request_key))
        exclusive += (request_key,)
    reads += claim_reads
    # A set made with a plan is admitted only while the plan's hold lasts (compared here,
    # not only checked before: it may end in between); read last, for the failure branch.
    for plan in sorted({m.spec.plan for m in members if m.spec.plan}):
        compares.append(ops.present(keys.hold(plan)))
        reads.append(ops.get(keys.hold(plan)))
    return Charge(delta, compares, [*writes, *also], reads, exclusive=exclusive)


def admission_ops(charge: Charge) -> int:
    """What admitting a set by ``charge`` counts against etcd's ``--max-txn-ops``."""
    return txn_ops(charge)


def _bind_too_large(keys: Keys, members: Sequence[Member], limit: int) -> SetTooLarge | None:
    """SetTooLarge if the set's bind, however placement spreads its members (nested
    under the scheduler's fence: one op more), could exceed ``limit``: such a set
    would be admitted only to wait for its deadline."""
    cost = bindings.set_bind_worst(keys, [m.spec for m in members]).ops + 1
    if cost <= limit:
        return None
    most = bindings.set_bind_limit(limit)
    return SetTooLarge(len(members), cost, limit, most, most, what="its bind (each member on a host of its own)")


@dataclass(frozen=True, slots=True)
class Shape:
    """What a member takes besides its own keys, as a set's worst case counts it: its
    NICs (a port and a MAC each, as admit gives every NIC a MAC; ``static_nics`` of
    them an address too), each on a network of its own (a network compare each), and
    its disks (an attachment each)."""

    nics: int = 0
    static_nics: int = 0
    disks: int = 0

    @classmethod
    def widest(cls, specs: Sequence[VmSpec]) -> Shape:
        """The shape that takes at least what each of ``specs`` takes."""
        return cls(max((len(s.nics) for s in specs), default=0),
                   max((sum(nic.static for nic in s.nics) for s in specs), default=0),
                   max((len(s.disks) for s in specs), default=0))


@functools.lru_cache(maxsize=64)
def most_members(max_txn_ops: int, *, with_bootstrap: bool, also: int = 1, shape: Shape = Shape()) -> int:
    """The most members a set's admission fits in one txn under ``max_txn_ops``, with a
    request_id and ``also`` extra puts (its audit record), every member with bootstrap
    data or none and of ``shape`` (its NICs and disks: their claims count). Measured
    on what :func:`admission` builds (0: not even one)."""
    keys = Keys("/m")

    def cost(n: int) -> int:
        return admission_ops(_worst_case(keys, n, with_bootstrap, also, shape))

    each = cost(2) - cost(1)
    n = max(0, (max_txn_ops - cost(1)) // each + 1) if each > 0 else 0
    while n > 0 and cost(n) > max_txn_ops:  # the derivation assumes a linear cost: hold it to the built ops
        n -= 1
    while cost(n + 1) <= max_txn_ops:
        n += 1
    return n


def _worst_case(keys: Keys, n: int, with_bootstrap: bool, also: int, shape: Shape = Shape()) -> Charge:
    """A set of ``n`` members of ``shape`` as :func:`admission` builds it: each NIC on a
    network of its own with a MAC of its own (admit draws one for every NIC), the
    static ones with an address, each disk its own."""
    ref = VmSetRef("t", "p", "s")
    members = []
    networks: dict[str, int] = {}
    for i in range(n):
        nics = []
        for j in range(shape.nics):
            network = f"tenants/t/projects/p/networks/n-{j}"
            networks[network] = 1
            static = j < shape.static_nics
            nics.append(Nic(network, f"uid-{j}", f"pg-{j}", AddressMode.STATIC if static else AddressMode.DHCP,
                            f"10.{j}.{i // 256}.{i % 256}" if static else "", 16 if static else 0,
                            mac=f"02:{j % 256:02x}:" + ":".join(f"{i >> shift & 255:02x}" for shift in (24, 16, 8, 0))))
        disks = tuple(DiskRef(f"d-{i}-{j}", f"u-{i}-{j}", 1) for j in range(shape.disks))
        spec = VmSpec(ref=VmRef("t", "p", f"vm-{i}"), uid="u", flavor="f", image="i",
                      resources=Resources(1, 1, 1), vm_set="s", nics=tuple(nics), disks=disks)
        data = BootstrapData("u", BootstrapFormat.CLOUD_INIT, b"x") if with_bootstrap else None
        members.append(Member(spec, data, {d.disk_id: 1 for d in disks}))
    vm_set = VmSet(ref, "u", tuple(m.spec.ref.vm_id for m in members), 0)
    request_key = keys.request("t", "p", "r")
    return admission(keys, vm_set, members, also=[ops.put(keys.audit("t", 0, "a"), b"")] * also,
                     request=(request_key, ops.put(request_key, b"")), networks=networks)


_MAX_POOL_ATTEMPTS = 64


class _PoolAddressTaken(Exception):
    """A member's STATIC_POOL address was taken by another create first: pick again."""


class _MacTaken(Exception):
    """The MAC of NIC ``nic`` of member ``member`` was taken on its backing first: draw again."""

    def __init__(self, member: int, nic: int):
        super().__init__(member, nic)
        self.member = member
        self.nic = nic


def _raise_failed_claim(keys: Keys, members: Sequence[Member], networks: Mapping[str, int],
                        kvs: Sequence[list[KeyValue]]) -> None:
    """Raise what made a member's claims fail (NetworkGone, AddressInUse for a STATIC
    address, _PoolAddressTaken for a pool's, _MacTaken for a MAC), from the claim reads
    of an admission (``kvs``, in member order); nothing when every claim held."""
    at = 0
    for index, member in enumerate(members):
        spec = member.spec
        n = len(claims.create_claims(keys, spec, networks, member.disk_revisions).reads)
        failure = claims.failed_claim(spec, networks, kvs[at:at + n])
        at += n
        if failure is None:
            continue
        if failure.mac_taken:
            raise _MacTaken(index, failure.nic)
        if not failure.address_taken:
            raise NetworkGone(failure.network)
        nic = spec.nics[failure.nic]
        if nic.address_mode is AddressMode.STATIC_POOL:
            raise _PoolAddressTaken()
        raise AddressInUse(nic.network, nic.ip)


def measurable(members: Sequence[Member]) -> tuple[list[Member], dict[str, int]]:
    """``members`` as an admission can be built (measured) before addresses and MACs
    are picked: each STATIC_POOL NIC with a placeholder address, each NIC with a
    placeholder MAC, a revision for each network and for each disk not read yet. For
    validate-only checks."""
    out = []
    networks: dict[str, int] = {}
    for m in members:
        nics = tuple(replace(nic, ip=nic.ip or f"10.0.0.{i + 1}", mac=nic.mac or f"00:50:56:00:00:{i:02x}")
                     for i, nic in enumerate(m.spec.nics))
        networks.update((nic.network, 1) for nic in nics)
        disk_revisions = {d.disk_id: m.disk_revisions.get(d.disk_id, 1) for d in m.spec.disks}
        out.append(replace(m, spec=replace(m.spec, nics=nics), disk_revisions=disk_revisions))
    return out, networks


class VmSetStore:
    """Admits and reads all-or-nothing sets. Shares the frontend's quota ledger and
    request retention with its :class:`~controlplane.store.vms.VmStore`."""

    def __init__(self, client: EtcdClient, keys: Keys, requests: RetentionLeases, ledger: UsageLedger,
                 addresses: AddressPicker | None = None):
        self._etcd = client
        self._keys = keys
        self._requests = requests
        self._ledger = ledger
        self._addresses = addresses or AddressPicker(client, keys)

    def most_members(self, *, with_bootstrap: bool, shape: Shape = Shape()) -> int:
        """The most members of ``shape`` a set may have in this store (see :func:`most_members`)."""
        return most_members(self._etcd.max_txn_ops, with_bootstrap=with_bootstrap, shape=shape)

    def too_large(self, vm_set: VmSet, members: Sequence[Member], *, also: Sequence = ()) -> SetTooLarge | None:
        """SetTooLarge if admitting ``members`` would not fit one txn of this store, else None."""
        request = None
        if vm_set.request_id:
            key = self._keys.request(vm_set.ref.tenant, vm_set.ref.project, vm_set.request_id)
            request = (key, ops.put(key, b""))
        built, networks = measurable(members)
        cost = admission_ops(admission(self._keys, vm_set, built, also=also, request=request, networks=networks))
        limit = self._etcd.max_txn_ops
        if cost <= limit:
            return _bind_too_large(self._keys, members, limit)
        return self._too_large(members, cost, limit)

    def _too_large(self, members: Sequence[Member], cost: int, limit: int) -> SetTooLarge:
        """The refusal of ``members`` (``cost`` ops, past ``limit``), with the most members
        of their widest shape (:class:`Shape`) this store takes."""
        shape = Shape.widest([m.spec for m in members])
        return SetTooLarge(len(members), cost, limit, self.most_members(with_bootstrap=False, shape=shape),
                           self.most_members(with_bootstrap=True, shape=shape), shape=shape)

    async def admit(self, vm_set: VmSet, members: Sequence[Member], *, also: Sequence = (),
                    fingerprint: bytes = b"", networks: Mapping[str, NetworkView] | None = None) -> Admission:
        """Admit a PENDING set and all its members in one transaction with its quota
        charge (see the module docstring), with the puts ``also`` (keys no other change
        writes, e.g. its audit record) and the members' claims (``networks``: each
        network their NICs are on, by full name, as read; STATIC_POOL addresses are
        picked here, all distinct, and picked again when another create took one;
        MACs drawn here, all distinct, and drawn again when one is taken;
        each member's disks at its ``Member.disk_revisions``).

        Idempotent by ``vm_set.request_id`` for the request retention: a retry (same
        ``fingerprint``, :func:`controlplane.store.idempotency.set_fingerprint`) returns
        the set the first attempt admitted and those of its members still stored,
        ``created`` False, nothing written. Raises RequestMismatch (the request_id was
        used with another fingerprint), RequestReplayed (its set is gone),
        AlreadyExists (the set's name or a member's is taken: the message names it),
        NotFound (no such project), QuotaExceeded (the whole set does not fit the
        quota), ProjectDeleting, SetTooLarge (more ops than one txn takes),
        PoolExhausted, AddressInUse, NetworkGone, a member's disk refusal (DiskInUse,
        DiskDeleting, NotFound, DiskChanged), or Conflict; nothing is written when it
        raises.
        """
        ref = vm_set.ref
        k = self._keys
        request = None
        request_key = b""
        if vm_set.request_id:
            request_key = k.request(ref.tenant, ref.project, vm_set.request_id)
            record = rec.RequestRecord(vm_key=ref.name, uid=vm_set.uid, fingerprint=fingerprint)
            request = (request_key, ops.put(request_key, record.SerializeToString(),
                                            lease=await self._requests.current()))
        networks = networks or {}
        revisions = {name: view.create_revision for name, view in networks.items()}
        subnets = {view.network.uid: view.network.subnet for view in networks.values()
                   if view.network.subnet is not None}
        pooled = any(claims.uses_pool(m.spec) for m in members)
        if any(m.spec.nics for m in members):
            members = [replace(m, spec=spec) for m, spec in
                       zip(members, self._addresses.with_macs([m.spec for m in members]), strict=True)]
        for _attempt in range(_MAX_POOL_ATTEMPTS):
            try:
                specs = await self._addresses.propose([m.spec for m in members], subnets) if pooled else None
            except PoolExhausted:
                if request_key and (made := (await self._etcd.txn([], [ops.get(request_key)])).kvs(0)):
                    return await self._retried(vm_set, made[0], fingerprint)
                raise
            chosen = [replace(m, spec=spec) for m, spec in zip(members, specs, strict=True)] if specs else members
            try:
                return await self._admit_once(vm_set, chosen, also, fingerprint, request, revisions)
            except _PoolAddressTaken:
                self._addresses.lost()
                continue
            except _MacTaken as taken:
                redrawn = self._addresses.redraw_mac([m.spec for m in members], taken.member, taken.nic)
                members = [replace(m, spec=spec) for m, spec in zip(members, redrawn, strict=True)]
                continue
            finally:
                if specs:
                    await self._addresses.forget(specs)
        raise Conflict(f"the admission of {ref.name} kept losing pool addresses or MACs to other creates; retry")

    async def _admit_once(self, vm_set: VmSet, members: Sequence[Member], also: Sequence, fingerprint: bytes,
                          request: tuple[bytes, object] | None, networks: Mapping[str, int]) -> Admission:
        ref = vm_set.ref
        k = self._keys
        request_key = request[0] if request else b""
        charge = admission(k, vm_set, members, also=also, request=request, networks=networks)
        cost, limit = admission_ops(charge), self._etcd.max_txn_ops
        if cost > limit:
            raise self._too_large(members, cost, limit)
        if (unbindable := _bind_too_large(k, members, limit)) is not None:
            raise unbindable
        set_kvs: list[KeyValue] = []
        ended: list[str] = []
        try:
            revision = await self._ledger.apply(ref.tenant, ref.project, charge)
            log.info("vm set admitted", extra={"tenant": ref.tenant, "project": ref.project, "vm_set": ref.set_id,
                                               "members": len(members), "shard": vm_set.shard, "revision": revision})
            return Admission(vm_set, [VmRecord(m.spec, pending_status(m.spec), revision, revision) for m in members],
                             revision, True)
        except GuardFailed as failed:
            set_kvs, request_kvs = failed.kvs[0], (failed.kvs[1] if request else [])
            plans = sorted({m.spec.plan for m in members if m.spec.plan})
            ended = [plan for plan, kvs in zip(plans, failed.kvs[len(failed.kvs) - len(plans):], strict=True)
                     if not kvs]
            if not set_kvs and not request_kvs:
                _raise_failed_claim(k, members, networks, failed.kvs[2 if request else 1:])
        except (QuotaExceeded, ProjectDeleting):
            if not request:
                raise
            # A retry of an admission that succeeded returns its set, even when the
            # quota is full now or the project is being deleted.
            request_kvs = (await self._etcd.txn([], [ops.get(request_key)])).kvs(0)
            if not request_kvs:
                raise
        if request_kvs:
            return await self._retried(vm_set, request_kvs[0], fingerprint)
        if set_kvs:
            raise AlreadyExists(ref.name)
        if ended:
            raise PlanEnded(f"the hold of plan {ended[0]} ended before the set was admitted; plan again")
        taken = await self._taken([m.spec.ref for m in members])
        if taken is not None:
            raise AlreadyExists(taken.name)
        vms = VmStore(self._etcd, k, self._requests, self._ledger, self._addresses)
        for member in members:
            if member.spec.disks:
                refusal = await vms.disk_refusal(member.spec, member.disk_revisions)
                if not isinstance(refusal, Conflict):
                    raise refusal
        raise Conflict(f"the admission of {ref.name} raced; retry")

    async def _retried(self, vm_set: VmSet, request_kv: KeyValue, fingerprint: bytes) -> Admission:
        made = rec.RequestRecord.FromString(request_kv.value)
        if made.fingerprint and fingerprint and made.fingerprint != fingerprint:
            raise RequestMismatch(vm_set.request_id, made.vm_key)
        ref = VmSetRef.from_name(made.vm_key)
        if ref is not None:
            try:
                first, revision = await self.get(ref)
            except NotFound:
                pass
            else:
                if first.uid == made.uid:
                    return Admission(first, await self.members(first), revision, False)
        raise RequestReplayed(vm_set.request_id, made.vm_key)

    async def _taken(self, refs: Sequence[VmRef]) -> VmRef | None:
        """The first of ``refs`` whose name is taken, or None."""
        responses = await self._etcd.txn_chunked([ops.get(self._keys.vm_spec(r)) for r in refs])
        return next((r for r, response in zip(refs, responses, strict=True) if response.response_range.kvs),
                    None)

    async def hold(self, plan: str) -> Hold | None:
        """A plan's hold as it is now (holds/{plan}); None once it ended (its lease
        expired or its set was bound) or if it never was."""
        kv = await self._etcd.get(self._keys.hold(plan))
        return Hold.from_bytes(kv.value) if kv is not None else None

    async def made(self, tenant: str, project: str, request_id: str) -> bool:
        """Whether a create with ``request_id`` was admitted (its request record is kept)."""
        return await self._etcd.get(self._keys.request(tenant, project, request_id)) is not None

    async def get(self, ref: VmSetRef) -> tuple[VmSet, int]:
        """The set and its record's mod_revision. Raises NotFound."""
        kv = await self._etcd.get(self._keys.vm_set(ref.tenant, ref.project, ref.set_id))
        if kv is None:
            raise NotFound(ref.name)
        return VmSet.from_bytes(ref, kv.value), kv.mod_revision

    async def members(self, vm_set: VmSet) -> list[VmRecord]:
        """The set's members still stored, in admission order (one round trip per
        ``max_txn_ops`` members)."""
        refs = [vm_set.member(vm_id) for vm_id in vm_set.vms]
        prefixes = [self._keys.vm_prefix(r) for r in refs]
        responses = await self._etcd.txn_chunked([ops.get(p, prefix_end(p)) for p in prefixes])
        records = []
        for response in responses:
            spec_kv = status_kv = None
            for raw in response.response_range.kvs:
                kv = KeyValue.from_pb(raw)
                if kv.key.endswith(b"/spec"):
                    spec_kv = kv
                elif kv.key.endswith(b"/status"):
                    status_kv = kv
            if spec_kv is not None and status_kv is not None:
                records.append(VmRecord(VmSpec.from_bytes(spec_kv.value), VmStatus.from_bytes(status_kv.value),
                                        spec_kv.mod_revision, status_kv.mod_revision))
        return records
