"""What a VM holds outside its own keys, and the one place that takes and gives it back:

- a port per NIC, ``ports/{network uid}/{t}/{p}/{vm}/{i}`` (DeleteNetwork compares
  that none is under the network's uid);
- an address per static NIC (STATIC_POOL or STATIC), ``addresses/{backing}/{ip}``,
  created with a compare that it is absent: never handed out twice on one port group,
  whichever network on it (one pool per backing);
- a MAC per NIC that has one (chosen at create, ``controlplane/macs.py``),
  ``macs/{backing}/{mac}``, created with a compare that it is absent: no two NICs on
  one port group share a MAC;
- an attachment per disk, ``disks/{t}/{p}/{disk}/attachment``, created with a compare
  that it is absent and that the disk's record is as read (``disks.attach_ops``, the
  rule it shares with AttachDisk).

:func:`create_claims` is what a VM's create adds to its transaction (``vms.create_ops``,
the one builder of a create, used by VmStore.create and a set's admission), with a
compare per network that it is still the incarnation the create read: one object
that carries a create's compares, writes and exclusive keys.
:func:`release_ops` is what every transaction that finally removes a VM deletes
(``bindings.pending_removal`` and ``bindings.unbind``, not when a VM is requeued: a
moved VM keeps its NICs, addresses and disks), and :func:`release_exclusive` the
names such a removal holds in a group commit when it goes through the ledger (a
pending VM's delete, a failed set): the same names a create of that address or disk
holds (``Claims.exclusive``), so the two never share a transaction. Pure.

A create's reads, in order (what :func:`failed_claim` reads back): one per network,
then one per static NIC's address, then one per NIC's MAC.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from controlplane.etcd import KeyValue, ops
from controlplane.etcd.ops import Compare, RequestOp
from controlplane.gen.quanta.store.v1 import records_pb2 as rec
from controlplane.models import AddressMode, VmSpec
from controlplane.store import disks
from controlplane.store.keys import Keys
from controlplane.store.networks import network_guard, parse_network_name

MAX_NICS = 8
MAX_DISKS = 16


@dataclass(frozen=True, slots=True)
class Claims:
    """A create's part for its NICs and disks: compares, writes, the reads that explain
    a failed NIC compare (:func:`failed_claim`; a failed disk compare is explained by
    reading the disks again, ``VmStore.disk_refusal``), and the keys no other charge
    of the same transaction may write (its addresses, its disks' prefixes)."""

    compares: list[Compare]
    writes: list[RequestOp]
    reads: list[RequestOp]
    exclusive: tuple[bytes, ...]


def _networks(spec: VmSpec) -> list[str]:
    return list(dict.fromkeys(nic.network for nic in spec.nics))


def create_claims(keys: Keys, spec: VmSpec, networks: Mapping[str, int],
                  disk_revisions: Mapping[str, int] | None = None) -> Claims:
    """The claims of ``spec``'s NICs (every static one with its address chosen) and
    disks: per network (by full name) a compare that it is the incarnation whose
    create_revision ``networks`` gives; per static NIC its address on its backing
    compared absent and put; per NIC its port put, and its MAC on its backing (if it
    has one) compared absent and put; per disk its attachment (``disks.attach_ops`` with
    ``disk_revisions``, disk id → the record's mod_revision as read). Raises
    ValueError for a NIC whose network is not in ``networks``, a static NIC without
    an address, or a disk without a revision."""
    compares: list[Compare] = []
    writes: list[RequestOp] = []
    reads: list[RequestOp] = []
    exclusive: list[bytes] = []
    for name in _networks(spec):
        if name not in networks:
            raise ValueError(f"the create of {spec.ref.name} did not read network {name}")
        compares.append(network_guard(keys, name, networks[name]))
        parsed = parse_network_name(name)
        assert parsed is not None  # network_guard parsed it
        reads.append(ops.get(keys.network(*parsed)))
    address = rec.AddressRecord(vm=spec.ref.name, vm_uid=spec.uid).SerializeToString()
    for i, nic in enumerate(spec.nics):
        if nic.static:
            if not nic.ip:
                raise ValueError(f"NIC {i} of {spec.ref.name} is static without an address")
            key = keys.address(nic.backing, nic.ip)
            compares.append(ops.absent(key))
            writes.append(ops.put(key, address))
            reads.append(ops.get(key))
            exclusive.append(key)
        writes.append(ops.put(keys.port(nic.network_uid, spec.ref, i),
                              rec.PortRecord(vm_uid=spec.uid, ip=nic.ip).SerializeToString()))
    for nic in spec.nics:
        if nic.mac:
            key = keys.mac(nic.backing, nic.mac)
            compares.append(ops.absent(key))
            writes.append(ops.put(key, address))
            reads.append(ops.get(key))
            exclusive.append(key)
    if spec.disks:
        c, w = disks.attach_ops(keys, spec.ref, spec.uid, spec.disks, disk_revisions or {},
                                at_ns=spec.create_time_ns)
        compares += c
        writes += w
        exclusive += disks.attach_exclusive(keys, spec.ref, spec.disks)
    return Claims(compares, writes, reads, tuple(exclusive))


@dataclass(frozen=True, slots=True)
class FailedClaim:
    """Why a create's claims failed: the network ``network`` is gone (or another
    incarnation now), or the address (``mac`` False) or MAC (``mac`` True) of NIC
    ``nic`` is taken on its backing (``network`` the NIC's)."""

    network: str
    nic: int = -1  # -1: the network itself
    mac: bool = False

    @property
    def address_taken(self) -> bool:
        return self.nic >= 0 and not self.mac

    @property
    def mac_taken(self) -> bool:
        return self.nic >= 0 and self.mac


def failed_claim(spec: VmSpec, networks: Mapping[str, int], kvs: Sequence[list[KeyValue]]) -> FailedClaim | None:
    """Which claim of ``spec`` failed, from what the reads of :func:`create_claims`
    returned (``kvs``, in their order); None when every claim still held. A lost
    network comes first, then a lost address, then a lost MAC (a STATIC_POOL address
    or a MAC lost to another create is picked again; see ``VmStore.create``)."""
    names = _networks(spec)
    for name, found in zip(names, kvs, strict=False):
        if not found or found[0].create_revision != networks.get(name):
            return FailedClaim(name)
    statics = [i for i, nic in enumerate(spec.nics) if nic.static]
    rest = kvs[len(names):]
    for i, found in zip(statics, rest, strict=False):
        if found:
            return FailedClaim(spec.nics[i].network, i)
    with_mac = [i for i, nic in enumerate(spec.nics) if nic.mac]
    for i, found in zip(with_mac, rest[len(statics):], strict=False):
        if found:
            return FailedClaim(spec.nics[i].network, i, mac=True)
    return None


def release_ops(keys: Keys, spec: VmSpec) -> list[RequestOp]:
    """What a transaction that finally removes a VM deletes besides its own keys: its
    ports, its addresses (static NICs), its MACs and its disks' attachments."""
    writes = []
    for i, nic in enumerate(spec.nics):
        writes.append(ops.delete(keys.port(nic.network_uid, spec.ref, i)))
        if nic.static and nic.ip:
            writes.append(ops.delete(keys.address(nic.backing, nic.ip)))
        if nic.mac:
            writes.append(ops.delete(keys.mac(nic.backing, nic.mac)))
    for disk in spec.disks:
        writes.append(ops.delete(keys.disk_attachment(spec.ref.tenant, spec.ref.project, disk.disk_id)))
    return writes


def release_exclusive(keys: Keys, spec: VmSpec) -> tuple[bytes, ...]:
    """The names a ledger charge that includes :func:`release_ops` holds in a group
    commit (``Charge.exclusive``): its static addresses' and MACs' keys and its disks'
    prefixes, as :func:`create_claims` names them for a create taking one of them (etcd
    refuses a txn that deletes and puts one key: every charge of that batch would fail)."""
    addresses = tuple(keys.address(nic.backing, nic.ip) for nic in spec.nics if nic.static and nic.ip)
    macs = tuple(keys.mac(nic.backing, nic.mac) for nic in spec.nics if nic.mac)
    return addresses + macs + disks.attach_exclusive(keys, spec.ref, spec.disks)


def uses_pool(spec: VmSpec) -> bool:
    return any(nic.address_mode is AddressMode.STATIC_POOL for nic in spec.nics)
