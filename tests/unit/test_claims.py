"""What a VM holds outside its own keys (``controlplane/store/claims.py``): a removal
gives back exactly what its create took (ports, addresses, disk attachments), and a
failed claim is told apart (the network gone, or which NIC's address is taken)."""

from __future__ import annotations

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
