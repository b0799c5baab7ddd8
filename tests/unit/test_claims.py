"""What a VM holds outside its own keys (``controlplane/store/claims.py``): a removal
gives back exactly what its create took (ports, addresses and MACs on their backing,
disk attachments), and a failed claim is told apart (the network gone, or which NIC's
address or MAC is taken)."""

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

# Both networks on one backing ("pg"): one pool, one MAC space.
nic_strategy = st.builds(
    lambda net, mode, host, mac: Nic(NETWORKS[net], f"uid{net}", "pg", mode,
                                     "" if mode is AddressMode.DHCP else f"10.0.{net}.{host}", 24,
                                     mac=f"00:50:56:00:00:{mac:02x}" if mac >= 0 else ""),
    st.integers(0, 1), st.sampled_from(list(AddressMode)), st.integers(1, 250), st.integers(-1, 255))


def _distinct(nic: Nic) -> tuple:
    return (nic.backing, nic.ip or id(nic))


def _distinct_mac(nics: list[Nic]) -> bool:
    with_mac = [n.mac for n in nics if n.mac]
    return len(with_mac) == len(set(with_mac))


def spec_with(nics: list[Nic], disks: int = 0) -> VmSpec:
    return VmSpec(VmRef("t", "p", "vm"), "u", "f", "i", Resources(1, 1, 1), nics=tuple(nics),
                  disks=tuple(DiskRef(f"d{i}", f"du{i}", 1) for i in range(disks)))


def _keys_of(op) -> bytes:
    return op.request_put.key if op.WhichOneof("request") == "request_put" else op.request_delete_range.key


@settings(max_examples=80, deadline=None)
@given(nics=st.lists(nic_strategy, max_size=claims.MAX_NICS, unique_by=_distinct).filter(_distinct_mac),
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
    with_mac = [nic for nic in nics if nic.mac]
    # Every address and MAC is compared absent on its backing and exclusive (no two
    # charges of one txn write it), and so is every disk (its attachment absent, its
    # record as read; its prefix held).
    assert set(made.exclusive) == ({KEYS.address(nic.backing, nic.ip) for nic in static}
                                   | {KEYS.mac(nic.backing, nic.mac) for nic in with_mac}
                                   | {KEYS.disk_prefix("t", "p", d.disk_id) for d in spec.disks})
    assert len(made.compares) == (len({nic.network for nic in nics}) + len(static) + len(with_mac)
                                  + 2 * len(spec.disks))


@settings(max_examples=80, deadline=None)
@given(nics=st.lists(nic_strategy, max_size=claims.MAX_NICS, unique_by=_distinct).filter(_distinct_mac),
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
    assert shared == {KEYS.address("pg", "10.0.0.5"), KEYS.disk_prefix("t", "p", "d0")}
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
    assert taken is not None and taken.address_taken and taken.nic == 2 and not taken.mac_taken


def test_a_failed_mac_claim_says_which_nic() -> None:
    nics = [Nic(NETWORKS[0], "uid0", "pg", AddressMode.DHCP, mac="00:50:56:00:00:01"),
            Nic(NETWORKS[1], "uid1", "pg", AddressMode.STATIC, "10.0.1.6", 24, mac="00:50:56:00:00:02")]
    spec = spec_with(nics)
    revisions = {NETWORKS[0]: 3, NETWORKS[1]: 4}
    made = claims.create_claims(KEYS, spec, revisions)
    assert [op.request_range.key for op in made.reads[2:]] == [
        KEYS.address("pg", "10.0.1.6"), KEYS.mac("pg", "00:50:56:00:00:01"), KEYS.mac("pg", "00:50:56:00:00:02")]

    def kv(create: int = 1) -> list[KeyValue]:
        return [KeyValue(b"k", b"", create, create, 1, 0)]

    lost = claims.failed_claim(spec, revisions, [kv(3), kv(4), [], [], kv()])
    assert lost is not None and lost.mac_taken and not lost.address_taken and lost.nic == 1
    # A lost address is told before a lost MAC (both would make the create pick again).
    both = claims.failed_claim(spec, revisions, [kv(3), kv(4), kv(), kv(), []])
    assert both is not None and both.address_taken and both.nic == 1


def test_keys_put_any_backing_in_one_segment_and_sort_addresses_numerically() -> None:
    assert KEYS.address("dv/pg 1%", "10.0.0.9").startswith(KEYS.addresses_prefix("dv/pg 1%"))
    assert b"/" not in KEYS.addresses_prefix("dv/pg 1%")[len(KEYS.base) + len("addresses/"):-1]
    assert not KEYS.addresses_prefix("pg").startswith(KEYS.addresses_prefix("p"))
    ips = ["10.0.0.9", "10.0.0.10", "9.255.255.255", "10.0.1.0"]
    assert sorted(ips, key=lambda ip: KEYS.address("pg", ip)) == ["9.255.255.255", "10.0.0.9", "10.0.0.10",
                                                                    "10.0.1.0"]
    assert KEYS.parse_address_key("pg", KEYS.address("pg", "10.0.0.10")) == 0x0A00000A
