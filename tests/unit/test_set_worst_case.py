"""A set's admission budget counts its members' claims (vmsets.Shape, most_members):
ports and MACs per NIC, addresses per static NIC, a network compare each, attachments
per disk; measured on what admission builds, never hand-counted. Pure."""

from __future__ import annotations

import random

import pytest

from controlplane.etcd import ops
from controlplane.models import AddressMode, DiskRef, Nic, Resources, VmRef, VmSet, VmSetRef, VmSpec
from controlplane.store.addresses import AddressPicker
from controlplane.store.keys import Keys
from controlplane.store.vmsets import Member, Shape, _worst_case, admission, admission_ops, most_members

KEYS = Keys("/u")


def real_set(specs: list[VmSpec], networks: dict[str, int]) -> int:
    """The ops of admitting ``specs`` as VmSetStore.admit builds it: every NIC given a
    MAC (AddressPicker.with_macs; pure, no etcd read)."""
    ref = VmSetRef("t", "p", "s")
    picker = AddressPicker(None, KEYS, random.Random(7))  # type: ignore[arg-type]
    members = [Member(spec, None, {d.disk_id: 1 for d in spec.disks}) for spec in picker.with_macs(specs)]
    assert all(nic.mac for m in members for nic in m.spec.nics)
    vm_set = VmSet(ref, "u", tuple(m.spec.ref.vm_id for m in members), 0)
    request_key = KEYS.request("t", "p", "r")
    return admission_ops(admission(KEYS, vm_set, members, also=[ops.put(KEYS.audit("t", 0, "a"), b"")],
                                   request=(request_key, ops.put(request_key, b"")), networks=networks))


@pytest.mark.parametrize("limit", [128, 1000])
@pytest.mark.parametrize("shape", [Shape(), Shape(1), Shape(2, 2), Shape(8, 8, 16), Shape(0, 0, 3)])
def test_the_most_members_of_a_shape_fit_and_one_more_does_not(limit: int, shape: Shape) -> None:
    most = most_members(limit, with_bootstrap=False, shape=shape)
    assert admission_ops(_worst_case(KEYS, most, False, 1, shape)) <= limit
    assert admission_ops(_worst_case(KEYS, most + 1, False, 1, shape)) > limit


def test_claims_lower_the_limit() -> None:
    bare = most_members(128, with_bootstrap=False)
    assert most_members(128, with_bootstrap=False, shape=Shape(2)) < bare
    assert most_members(128, with_bootstrap=False, shape=Shape(2, 2)) < most_members(128, with_bootstrap=False,
                                                                                     shape=Shape(2))
    assert most_members(128, with_bootstrap=False, shape=Shape(0, 0, 4)) < bare
    assert most_members(128, with_bootstrap=False, shape=Shape(8, 8, 16)) >= 1


def test_a_real_set_costs_no_more_than_the_worst_case_of_its_widest_shape() -> None:
    """Members on shared networks, some static, some with disks, their MACs drawn as
    admit draws them: never more ops than members of their widest shape (each NIC on a
    network of its own, all static ones)."""
    specs = []
    for i in range(6):
        nics = (Nic("tenants/t/projects/p/networks/web", "uid-web", "web"),
                Nic("tenants/t/projects/p/networks/db", "uid-db", "db", AddressMode.STATIC, f"10.0.0.{i + 2}", 24))
        disks = tuple(DiskRef(f"d-{i}-{j}", f"u-{i}-{j}", 1) for j in range(i % 3))
        specs.append(VmSpec(VmRef("t", "p", f"vm-{i}"), "u", "f", "i", Resources(1, 1, 1), vm_set="s",
                            nics=nics[: 1 + i % 2], disks=disks))
    networks = {"tenants/t/projects/p/networks/web": 1, "tenants/t/projects/p/networks/db": 1}
    shape = Shape.widest(specs)
    assert shape == Shape(2, 1, 2)
    assert real_set(specs, networks) <= admission_ops(_worst_case(KEYS, len(specs), False, 1, shape))


@pytest.mark.parametrize("limit", [128, 1000])
@pytest.mark.parametrize("nics", [1, 3])
def test_the_most_members_promised_fit_with_their_macs(limit: int, nics: int) -> None:
    """most_members of a shape, as real members (DHCP NICs, a MAC each as admit gives
    them), fit the limit."""
    shape = Shape(nics)
    most = most_members(limit, with_bootstrap=False, shape=shape)
    networks = {f"tenants/t/projects/p/networks/n-{j}": 1 for j in range(nics)}
    specs = [VmSpec(VmRef("t", "p", f"vm-{i}"), "u", "f", "i", Resources(1, 1, 1), vm_set="s",
                    nics=tuple(Nic(f"tenants/t/projects/p/networks/n-{j}", f"uid-{j}", f"pg-{j}")
                               for j in range(nics)))
             for i in range(most)]
    assert most >= 1 and real_set(specs, networks) <= limit
