"""Networks in etcd (``networks/{tenant}/{project or -}/{network}``), as the frontends
read and write them: create (idempotent by request_id), get, list, update, delete,
watch, and the lookup a VM create resolves its NICs' networks with.

A network's ports (``ports/{network uid}/...``, one per NIC of a VM on it) and the
addresses handed out on its backing (``addresses/{backing}/{ip}``: one pool per port
group, shared by every network on it) are written by the VM's create and removal
(``vms.py``, ``bindings.py``); here they are only counted and compared: a deletion
compares that no port exists (a range compare in its own txn), so a network is never
deleted under a VM, and a create compares that the network still exists
(:func:`network_guard`), so a concurrent deletion sees the port or the create fails.
A network's ``addresses_used`` counts the taken keys of its pool's range on its
backing, whichever network took them: they are not free for it either.

A network with a gateway claims it on its backing in its create txn
(``addresses/{backing}/{gateway}`` holding :data:`GATEWAY`): no pool of another
network on the segment and no STATIC NIC is ever handed the router's address. Networks
on one segment may share a router (the key already holds the marker: the create
compares that and writes nothing); an address a VM holds is refused
(:class:`GatewayInUse`). The claim is never released, not even when the network is
deleted: a router's address on a segment is never a host address.

A create compares its tenant's record as read, whose grants hold its backing
(controlplane/backings.py), so a concurrent revoke refuses it or is refused. That
record is also rewritten by every project create and delete of the tenant (and a
project's limits changing: the tenant's allocation), so network creates retry under
project churn: at most ``_MAX_CAS_ATTEMPTS`` reads, then Conflict (ABORTED).
"""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from controlplane.addressing import Subnet
from controlplane.etcd import EtcdClient, KeyValue, ops, prefix_end
from controlplane.gen.quanta.store.v1 import records_pb2 as rec
from controlplane.models import now_ns
from controlplane.store.addresses import Pool
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
from controlplane.store.retention import RetentionLeases
from controlplane.tenancy import Tenant

_MAX_CAS_ATTEMPTS = 8
SHARED = ""  # the project of a tenant's shared network
#: What ``addresses/{backing}/{gateway}`` holds once a network claimed its gateway: the
#: same bytes whichever network did (a create finding them compares them, no put).
GATEWAY = rec.AddressRecord(gateway=True).SerializeToString()


class BackingNotGranted(StoreError):
    """The network's backing is not one granted to its tenant (see controlplane/backings.py)."""

    def __init__(self, tenant: str, backing: str):
        super().__init__(f"backing {backing!r} is not granted to tenants/{tenant}; a system admin grants "
                         "backings (UpdateTenant network_backings)")
        self.tenant = tenant
        self.backing = backing


class GatewayInUse(StoreError):
    """The gateway ``gateway`` of network ``name`` is an address a VM's NIC holds on
    ``backing`` (handed out by another network's pool, or STATIC)."""

    def __init__(self, name: str, backing: str, gateway: str):
        super().__init__(f"the gateway {gateway} of network {name} is an address a VM holds on backing "
                         f"{backing!r}; choose another gateway or free the address first")
        self.name = name
        self.backing = backing
        self.gateway = gateway


class NetworkInUse(StoreError):
    """A network VMs' NICs are on: ``vms`` VMs (counted when refused)."""

    def __init__(self, name: str, vms: int):
        super().__init__(f"network {name} is in use by {vms} VM{'' if vms == 1 else 's'}; delete them first")
        self.vms = vms


def network_name(tenant: str, project: str, network_id: str) -> str:
    """tenants/{t}/projects/{p}/networks/{n}, or tenants/{t}/networks/{n} when shared."""
    if project == SHARED:
        return f"tenants/{tenant}/networks/{network_id}"
    return f"tenants/{tenant}/projects/{project}/networks/{network_id}"


def parse_network_name(name: str) -> tuple[str, str, str] | None:
    """(tenant, project or SHARED, network id) of a full name, or None (not one)."""
    parts = name.split("/")
    if len(parts) == 6 and parts[0] == "tenants" and parts[2] == "projects" and parts[4] == "networks":
        return parts[1], parts[3], parts[5]
    if len(parts) == 4 and parts[0] == "tenants" and parts[2] == "networks":
        return parts[1], SHARED, parts[3]
    return None


@dataclass(frozen=True, slots=True)
class Network:
    """A network's desired state (see network.proto)."""

    tenant: str
    project: str  # SHARED: the tenant's
    network_id: str
    uid: str
    backing: str
    labels: Mapping[str, str] = field(default_factory=dict)
    description: str = ""
    subnet: Subnet | None = None
    create_time_ns: int = 0
    update_time_ns: int = 0
    request_id: str = ""

    @property
    def name(self) -> str:
        return network_name(self.tenant, self.project, self.network_id)

    @property
    def shared(self) -> bool:
        return self.project == SHARED

    def to_bytes(self) -> bytes:
        m = rec.NetworkRecord(tenant=self.tenant, project=self.project, network_id=self.network_id, uid=self.uid,
                              labels=dict(self.labels), description=self.description, backing=self.backing,
                              create_time_ns=self.create_time_ns, update_time_ns=self.update_time_ns,
                              request_id=self.request_id)
        if self.subnet is not None:
            s = self.subnet
            m.subnet.CopyFrom(rec.SubnetRecord(cidr=s.cidr, gateway=s.gateway, dns_servers=list(s.dns_servers),
                                               range_start=s.range_start, range_end=s.range_end))
        return m.SerializeToString()

    @classmethod
    def from_bytes(cls, data: bytes) -> Network:
        m = rec.NetworkRecord.FromString(data)
        subnet = None
        if m.HasField("subnet"):
            s = m.subnet
            subnet = Subnet(s.cidr, s.gateway, tuple(s.dns_servers), s.range_start, s.range_end)
        return cls(m.tenant, m.project, m.network_id, m.uid, m.backing, dict(m.labels), m.description, subnet,
                   m.create_time_ns, m.update_time_ns, m.request_id)


@dataclass(frozen=True, slots=True)
class NetworkView:
    """A network as read: with its key's mod_revision (etag, resource_version),
    create_revision (its incarnation: what a VM create compares) and how many
    addresses of its pool are handed out on its backing (by any network on it)."""

    network: Network
    revision: int
    create_revision: int
    addresses_used: int = 0

    @property
    def etag(self) -> str:
        return f"{self.revision:x}"

    @property
    def addresses_total(self) -> int:
        subnet = self.network.subnet
        return subnet.pool_size if subnet is not None else 0


@dataclass(frozen=True, slots=True)
class NetworkChange:
    """One change in a watch: the network after it (for a deletion: as it was)."""

    deleted: bool
    view: NetworkView
    revision: int


def network_guard(keys: Keys, name: str, create_revision: int) -> ops.Compare:
    """The compare a VM create carries per network its NICs are on: the network
    ``name`` is still the incarnation that was read (a deletion, or a deletion and
    re-creation under the same name, fails the create)."""
    parsed = parse_network_name(name)
    if parsed is None:
        raise ValueError(f"not a network name: {name!r}")
    return ops.create_revision_is(keys.network(*parsed), create_revision)


def _view(kv: KeyValue, used: int = 0) -> NetworkView:
    return NetworkView(Network.from_bytes(kv.value), kv.mod_revision, kv.create_revision, used)


class NetworkStore:
    def __init__(self, client: EtcdClient, keys: Keys, requests: RetentionLeases | None = None):
        self._etcd = client
        self._keys = keys
        self._requests = requests or RetentionLeases(client)

    @property
    def keys(self) -> Keys:
        return self._keys

    def _owner_key(self, tenant: str, project: str) -> bytes:
        return self._keys.tenant(tenant) if project == SHARED else self._keys.project(tenant, project)

    async def create(self, network: Network, *, fingerprint: bytes = b"",
                     also: Sequence = ()) -> tuple[NetworkView, bool]:
        """Store a new network, with the puts ``also`` (its audit record), in one txn
        that compares its name free, its project (or, shared, its tenant) present, its
        tenant's record as read, whose grants must hold its backing (a revoke
        meanwhile makes it read again, and refuse), and, with a gateway, claims the
        gateway on its backing: the key compared absent and :data:`GATEWAY` put, or,
        when it already holds :data:`GATEWAY` (another network on the segment with
        the same router), compared to hold it and left as it is. The claim outlives
        the network (:meth:`delete` leaves it: a router's address is never a host
        address). Idempotent by ``network.request_id``: a retry (same
        ``fingerprint``) returns the network the first attempt made, ``created``
        False, nothing written. The tenant's record is also rewritten by the
        tenant's project creates and deletes (and limit changes), so under project
        churn this reads and tries again, at most ``_MAX_CAS_ATTEMPTS`` times.
        Raises AlreadyExists (the name is another request's), NotFound (no such
        project or tenant), BackingNotGranted, GatewayInUse (a VM holds the
        gateway's address on the backing), RequestMismatch, RequestReplayed (its
        network is gone), Conflict (ABORTED: the tenant's record kept changing)."""
        k = self._keys
        n = network
        key = k.network(n.tenant, n.project, n.network_id)
        owner = self._owner_key(n.tenant, n.project)
        tenant_key = k.tenant(n.tenant)
        missing = NotFound(f"tenants/{n.tenant}" if n.shared else f"tenants/{n.tenant}/projects/{n.project}")
        request_key = k.request(n.tenant, n.project or "-", n.request_id) if n.request_id else b""
        gateway_key = k.address(n.backing, n.subnet.gateway) if n.subnet is not None and n.subnet.gateway else b""
        gateway_claimed = False  # the gateway key holds GATEWAY already: compare it, do not put
        for _attempt in range(_MAX_CAS_ATTEMPTS):
            tenant_kv = await self._etcd.get(tenant_key)
            if tenant_kv is None:
                raise missing
            granted = Tenant.from_bytes(tenant_kv.value).network_backings
            if n.backing not in granted:
                raise BackingNotGranted(n.tenant, n.backing)
            compares = [ops.absent(key), ops.present(owner), ops.mod_revision_is(tenant_key, tenant_kv.mod_revision)]
            writes = [ops.put(key, n.to_bytes()), *also]
            reads = [ops.get(key), ops.get(owner)]
            if gateway_key:
                if gateway_claimed:
                    compares.append(ops.value_is(gateway_key, GATEWAY))
                else:
                    compares.append(ops.absent(gateway_key))
                    writes.append(ops.put(gateway_key, GATEWAY))
                reads.append(ops.get(gateway_key))
            if request_key:
                compares.append(ops.absent(request_key))
                writes.append(ops.put(request_key, rec.RequestRecord(vm_key=n.name, uid=n.uid,
                                                                     fingerprint=fingerprint).SerializeToString(),
                                      lease=await self._requests.current()))
                reads.append(ops.get(request_key))
            result = await self._etcd.txn(compares, writes, reads)
            if result.succeeded:
                return NetworkView(n, result.revision, result.revision), True
            existing, owner_kvs = result.kvs(0), result.kvs(1)
            gateway_kvs = result.kvs(2) if gateway_key else []
            if request_key and (made_kvs := result.kvs(3 if gateway_key else 2)):
                made = rec.RequestRecord.FromString(made_kvs[0].value)
                if made.fingerprint and fingerprint and made.fingerprint != fingerprint:
                    raise RequestMismatch(n.request_id, made.vm_key)
                first = parse_network_name(made.vm_key)
                if first is not None:
                    try:
                        view = await self.get(*first)
                    except NotFound:
                        view = None
                    if view is not None and view.network.uid == made.uid:
                        return view, False
                raise RequestReplayed(n.request_id, made.vm_key)
            if not owner_kvs:
                raise missing
            if existing:
                raise AlreadyExists(n.name)
            if gateway_kvs and gateway_kvs[0].value != GATEWAY:
                assert n.subnet is not None  # gateway_key is set only with a subnet
                raise GatewayInUse(n.name, n.backing, n.subnet.gateway)
            # Else the gateway key is as this attempt expects it now (GATEWAY: another
            # network on the segment claimed the same router), or the tenant's record
            # changed since it was read (a grant, a revoke, a project created or
            # deleted): read it again.
            gateway_claimed = bool(gateway_kvs)
        raise Conflict(f"the create of {n.name} raced; retry")

    async def _counted(self, kvs: Sequence[KeyValue], revision: int = 0) -> list[NetworkView]:
        """Views of ``kvs`` with their pools' taken addresses counted (keys in
        ``Pool.key_ranges``: the range on the backing, the network's own gateway
        excepted; one round trip, at ``revision``)."""
        if not kvs:
            return []
        networks = [Network.from_bytes(kv.value) for kv in kvs]
        k = self._keys
        reads, spans = [], []
        for n in networks:
            parts = Pool.of(n.backing, n.subnet).key_ranges(k) if n.subnet is not None else []
            spans.append(len(parts))
            reads += [ops.get(start, end, revision=revision, count_only=True) for start, end in parts]
        responses = await self._etcd.txn_chunked(reads) if reads else []
        views, at = [], 0
        for n, kv, count in zip(networks, kvs, spans, strict=True):
            used = sum(r.response_range.count for r in responses[at:at + count])
            at += count
            views.append(NetworkView(n, kv.mod_revision, kv.create_revision, used))
        return views

    async def get(self, tenant: str, project: str, network_id: str) -> NetworkView:
        """The network now, its addresses counted. Raises NotFound."""
        kv = await self._etcd.get(self._keys.network(tenant, project, network_id))
        if kv is None:
            raise NotFound(network_name(tenant, project, network_id))
        return (await self._counted([kv]))[0]

    async def resolve(self, tenant: str, project: str, refs: Sequence[str]) -> dict[str, NetworkView]:
        """What each of ``refs`` (as a VM's NIC names a network: an id, the project's
        first, then its tenant's shared one; or the full name of either) means for a
        VM of ``tenant``/``project``, read in one round trip; refs that name nothing
        (or a network of another project or tenant) are absent from the answer."""
        wanted: dict[str, list[bytes]] = {}
        for ref in dict.fromkeys(refs):
            parsed = parse_network_name(ref)
            if parsed is None:
                wanted[ref] = [self._keys.network(tenant, project, ref), self._keys.network(tenant, SHARED, ref)]
            elif parsed[0] == tenant and parsed[1] in (project, SHARED):
                wanted[ref] = [self._keys.network(*parsed)]
        keys = [key for choices in wanted.values() for key in choices]
        if not keys:
            return {}
        responses = await self._etcd.txn_chunked([ops.get(key) for key in keys])
        found = {}
        for key, response in zip(keys, responses, strict=True):
            if response.response_range.kvs:
                found[key] = KeyValue.from_pb(response.response_range.kvs[0])
        out = {}
        for ref, choices in wanted.items():
            kv = next((found[key] for key in choices if key in found), None)
            if kv is not None:
                out[ref] = _view(kv)
        return out

    async def current_revision(self) -> int:
        result = await self._etcd.range(self._keys.networks_prefix() + b"\0", count_only=True)
        return result.revision

    async def list(self, tenant: str, project: str, *, page_size: int, after: str = "", revision: int = 0,
                   selector: Callable[[Network], bool] | None = None) -> tuple[list[NetworkView], str, int]:
        """One page of the networks of ``project`` (SHARED: the tenant's shared ones)
        in id order after ``after``, read at ``revision`` (0: now), addresses counted
        at that revision. Returns (views, the last id scanned if there may be more
        else "", revision). Raises Compacted."""
        prefix = self._keys.networks_prefix(tenant, project)
        start = prefix_end(self._keys.network(tenant, project, after)) if after else prefix
        result = await self._etcd.range(start, prefix_end(prefix), limit=page_size, revision=revision)
        kvs = [kv for kv in result.kvs if selector is None or selector(Network.from_bytes(kv.value))]
        views = await self._counted(kvs, result.revision)
        last = result.kvs[-1].key.rsplit(b"/", 1)[1].decode() if result.more and result.kvs else ""
        return views, last, result.revision

    async def update(self, tenant: str, project: str, network_id: str, change: Callable[[Network], Network], *,
                     etag: str = "", also: Sequence = ()) -> tuple[NetworkView, bool]:
        """Apply ``change`` (pure; returning the network unchanged writes nothing) by
        compare-and-swap on the key's mod_revision, with the puts ``also``. Returns
        (view, changed). Raises NotFound, EtagMismatch, Conflict."""
        key = self._keys.network(tenant, project, network_id)
        for _attempt in range(_MAX_CAS_ATTEMPTS):
            view = await self.get(tenant, project, network_id)
            if etag and etag != view.etag:
                raise EtagMismatch(f"etag {etag} does not match {view.etag}")
            updated = change(view.network)
            if updated == view.network:
                return view, False
            updated = replace(updated, update_time_ns=now_ns())
            result = await self._etcd.txn([ops.mod_revision_is(key, view.revision)],
                                          [ops.put(key, updated.to_bytes()), *also])
            if result.succeeded:
                return NetworkView(updated, result.revision, view.create_revision, view.addresses_used), True
        raise Conflict(f"{network_name(tenant, project, network_id)} kept changing; retry")

    async def delete(self, tenant: str, project: str, network_id: str, *, etag: str = "",
                     also: Sequence = ()) -> NetworkView:
        """Delete a network no NIC is on, in one txn comparing its mod_revision and that
        no port is under its uid (with the puts ``also``). Its gateway's claim on the
        backing stays (a router's address on a segment is never a host address).
        Returns it as it was.
        Raises NotFound, EtagMismatch, NetworkInUse (``vms``: how many VMs), Conflict."""
        key = self._keys.network(tenant, project, network_id)
        name = network_name(tenant, project, network_id)
        for _attempt in range(_MAX_CAS_ATTEMPTS):
            view = await self.get(tenant, project, network_id)
            if etag and etag != view.etag:
                raise EtagMismatch(f"etag {etag} does not match {view.etag}")
            ports = self._keys.ports_prefix(view.network.uid)
            # Its addresses went with its VMs (no port: no VM); the backing's other
            # networks' addresses stay.
            result = await self._etcd.txn(
                [ops.mod_revision_is(key, view.revision), ops.none_under(ports)],
                [ops.delete(key), *also],
                [ops.get(key), ops.get(ports, prefix_end(ports), keys_only=True)])
            if result.succeeded:
                return view
            now, port_kvs = result.kvs(0), result.kvs(1)
            if not now:
                raise NotFound(name)
            if port_kvs and now[0].mod_revision == view.revision:
                # ports/{uid}/{t}/{p}/{vm}/{i}: count the VMs, not their NICs.
                vms = {kv.key[len(ports):].rsplit(b"/", 1)[0] for kv in port_kvs}
                raise NetworkInUse(name, len(vms))
        raise Conflict(f"{name} kept changing; retry")

    async def watch(self, tenant: str, project: str, *, start_revision: int
                    ) -> AsyncIterator[builtins.list[NetworkChange]]:
        """Changes of the networks of ``project`` (SHARED: the tenant's shared ones)
        from ``start_revision`` (inclusive), batched (an empty batch is progress);
        addresses counted when the batch is delivered. Raises Compacted."""
        prefix = self._keys.networks_prefix(tenant, project)
        async for batch in self._etcd.watch(prefix, prefix_end(prefix), start_revision=start_revision,
                                            prev_kv=True):
            changes: builtins.list[NetworkChange] = []
            live = [event.kv for event in batch.events if not event.is_delete]
            counted = {(kv.key, kv.mod_revision): view for kv, view in
                       zip(live, await self._counted(live, 0), strict=True)}
            for event in batch.events:
                if event.is_delete:
                    if event.prev_kv is not None:
                        changes.append(NetworkChange(True, _view(event.prev_kv), event.kv.mod_revision))
                    continue
                changes.append(NetworkChange(False, counted[(event.kv.key, event.kv.mod_revision)],
                                             event.kv.mod_revision))
            yield changes
