"""What a VM holds outside its own keys (``controlplane/store/claims.py``): a removal
gives back exactly what its create took (ports, addresses, disk attachments), and a
failed claim is told apart (the network gone, or which NIC's address is taken)."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.etcd import KeyValue
from controlplane.models import AddressMode, DiskRef, Nic, Resources, VmRef, VmSpec
from controlplane.store import claims
from controlplane.store.keys import Keys

KEYS = Keys("/c")
NETWORKS = ["tenants/t/networks/a", "tenants/t/projects/p/networks/b"]

nic_strategy = st.builds(
    lambda net, mode, host: Nic(NETWORKS[net], f"uid{net}", "pg", mode,
                                "" if mode is AddressMode.DHCP else f"10.0.{net}.{host}", 24),
    st.integers(0, 1), st.sampled_from(list(AddressMode)), st.integers(1, 250))


def spec_with(nics: list[Nic], disks: int = 0) -> VmSpec:
    return VmSpec(VmRef("t", "p", "vm"), "u", "f", "i", Resources(1, 1, 1), nics=tuple(nics),
                  disks=tuple(DiskRef(f"d{i}", f"du{i}", 1) for i in range(disks)))


def _keys_of(op) -> bytes:
    return op.request_put.key if op.WhichOneof("request") == "request_put" else op.request_delete_range.key


@settings(max_examples=80, deadline=None)
@given(nics=st.lists(nic_strategy, max_size=claims.MAX_NICS, unique_by=lambda n: (n.network_uid, n.ip or id(n))),
       disks=st.integers(0, claims.MAX_DISKS))
def test_a_removal_releases_exactly_what_the_create_claimed(nics, disks) -> None:
    spec = spec_with(nics, disks)
    made = claims.create_claims(KEYS, spec, {name: 7 for name in NETWORKS}, {d.disk_id: 5 for d in spec.disks})
    released = claims.release_ops(KEYS, spec)
    attachments = {KEYS.disk_attachment("t", "p", d.disk_id) for d in spec.disks}
    assert attachments <= {_keys_of(op) for op in made.writes}
    assert {_keys_of(op) for op in released} == {_keys_of(op) for op in made.writes}
    assert all(op.WhichOneof("request") == "request_delete_range" for op in released)
    static = [nic for nic in nics if nic.static]
    # Every address is compared absent and exclusive (no two charges of one txn write it),
    # and so is every disk (its attachment absent, its record as read; its prefix held).
    assert set(made.exclusive) == ({KEYS.address(nic.network_uid, nic.ip) for nic in static}
                                   | {KEYS.disk_prefix("t", "p", d.disk_id) for d in spec.disks})
    assert len(made.compares) == len({nic.network for nic in nics}) + len(static) + 2 * len(spec.disks)


@settings(max_examples=80, deadline=None)
@given(nics=st.lists(nic_strategy, max_size=claims.MAX_NICS, unique_by=lambda n: (n.network_uid, n.ip or id(n))),
       disks=st.integers(0, claims.MAX_DISKS))
def test_a_release_holds_what_a_create_of_the_same_address_or_disk_holds(nics, disks) -> None:
    # A pending VM's delete (or a failed set) releases in a ledger charge: a create of
    # one of its addresses or disks by another VM must not share its transaction.
    spec = spec_with(nics, disks)
    other = replace(spec, ref=VmRef("t", "p", "other"), uid="u2")
    made = claims.create_claims(KEYS, other, {name: 7 for name in NETWORKS}, {d.disk_id: 5 for d in spec.disks})
    released = set(claims.release_exclusive(KEYS, spec))
    assert released == set(made.exclusive)
    # Every key the release deletes that a create may put is named (ports are the VM's own).
    assert {_keys_of(op) for op in claims.release_ops(KEYS, spec)} - released == {
        KEYS.port(nic.network_uid, spec.ref, i) for i, nic in enumerate(nics)
    } | {KEYS.disk_attachment("t", "p", d.disk_id) for d in spec.disks}
    for d in spec.disks:  # an attachment is under its disk's prefix: held with it
        assert KEYS.disk_attachment("t", "p", d.disk_id).startswith(KEYS.disk_prefix("t", "p", d.disk_id))


def test_a_release_of_a_static_address_meets_a_create_of_it() -> None:
    nic = Nic(NETWORKS[1], "uid1", "pg", AddressMode.STATIC, "10.0.0.5", 24)
    pending = spec_with([nic], disks=1)
    create = claims.create_claims(KEYS, replace(pending, ref=VmRef("t", "p", "new"), uid="u9"),
                                  {NETWORKS[1]: 4}, {"d0": 3})
    shared = set(claims.release_exclusive(KEYS, pending)) & set(create.exclusive)
    assert shared == {KEYS.address("uid1", "10.0.0.5"), KEYS.disk_prefix("t", "p", "d0")}
    assert claims.release_exclusive(KEYS, spec_with([Nic(NETWORKS[0], "uid0", "pg", AddressMode.DHCP)])) == ()


def test_a_failed_claim_says_which() -> None:
    nics = [Nic(NETWORKS[0], "uid0", "pg", AddressMode.DHCP),
            Nic(NETWORKS[1], "uid1", "pg", AddressMode.STATIC_POOL, "10.0.1.5", 24),
            Nic(NETWORKS[1], "uid1", "pg", AddressMode.STATIC, "10.0.1.6", 24)]
    spec = spec_with(nics)
    revisions = {NETWORKS[0]: 3, NETWORKS[1]: 4}

    def kv(create: int = 1) -> list[KeyValue]:
        return [KeyValue(b"k", b"", create, create, 1, 0)]

    assert claims.failed_claim(spec, revisions, [kv(3), kv(4), [], []]) is None
    gone = claims.failed_claim(spec, revisions, [kv(3), kv(9), [], []])  # made again under its name
    assert gone is not None and gone.network == NETWORKS[1] and not gone.address_taken
    taken = claims.failed_claim(spec, revisions, [kv(3), kv(4), [], kv()])
    assert taken is not None and taken.address_taken and taken.nic == 2
