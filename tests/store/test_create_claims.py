"""A create's claims are one: NICs (port, pool or static address, the network's
incarnation) and disks (attachment) are taken in the same transaction or not at all,
for VmStore.create and a set's admission alike, against a real etcd; a removal gives
all of them back."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace

import pytest

from controlplane.disks import DiskState
from controlplane.etcd import EtcdClient, prefix_end
from controlplane.models import AddressMode, VmSet, VmSetRef, now_ns
from controlplane.store.addresses import AddressInUse
from controlplane.store.disks import DiskInUse, DiskStore
from controlplane.store.keys import Keys
from controlplane.store.ledger import UsageLedger
from controlplane.store.networks import NetworkStore
from controlplane.store.retention import RetentionLeases
from controlplane.store.vms import VmStore
from controlplane.store.vmsets import Member, VmSetStore
from tests.store.test_network_store import PROJECT, TENANT, network, run, taken, vm
from tests.store.test_network_store import _projects as _projects  # noqa: F401 - autouse fixture
from tests.store.test_store_disks import make_disk


async def ports(client: EtcdClient, keys: Keys, network_uid: str) -> int:
    prefix = keys.ports_prefix(network_uid)
    return len((await client.range(prefix, prefix_end(prefix), keys_only=True)).kvs)


def test_racing_creates_with_a_pool_nic_and_one_disk_take_both_or_neither(etcd_endpoint: str, root: str) -> None:
    """Six creates on two stores, each with a STATIC_POOL NIC and the same disk: one VM
    is made, with one address and one port; the five that lost the disk hold no address
    and no port. Deleting the pending VM gives back its address, port and disk."""
    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as one, EtcdClient(etcd_endpoint) as two:
            view, _ = await NetworkStore(one, keys).create(network("pool", "10.9.0.0/28"))
            disk, _ = await DiskStore(one, keys).create(make_disk("shared", 8))
            stores = [VmStore(c, keys, ledger=UsageLedger(c, keys, stripe=i)) for i, c in enumerate((one, two))]
            by_name = {view.network.name: view}
            specs = [replace(vm(f"v{i}", view), disks=(disk.disk.attached_as(),)) for i in range(6)]
            outcomes = await asyncio.gather(
                *(stores[i % 2].create(spec, networks=by_name, disk_revisions={"shared": disk.revision})
                  for i, spec in enumerate(specs)), return_exceptions=True)
            made = [o[0] for o in outcomes if isinstance(o, tuple)]
            assert len(made) == 1, outcomes
            assert all(isinstance(o, DiskInUse) for o in outcomes if not isinstance(o, tuple)), outcomes
            winner = made[0]
            assert await taken(one, keys, view.network.backing) == {winner.spec.nics[0].ip}
            assert await ports(one, keys, view.network.uid) == 1
            now = await DiskStore(one, keys).get(disk.disk.ref)
            assert now.state is DiskState.ATTACHED and now.attachment.vm_uid == winner.spec.uid

            deletion = await stores[1].request_delete(winner.ref)  # pending: removed at once
            assert deletion.removed
            assert await taken(one, keys, view.network.backing) == set()
            assert await ports(one, keys, view.network.uid) == 0
            assert (await DiskStore(one, keys).get(disk.disk.ref)).state is DiskState.AVAILABLE

    run(main())


def test_a_set_whose_member_cannot_take_its_disk_takes_no_address_and_no_disk(etcd_endpoint: str,
                                                                               root: str) -> None:
    """An ALL_OR_NOTHING admission of two members, each with a pool NIC and a disk of
    its own, one of whose disks another VM has: refused (DiskInUse), no address, port or
    attachment of either member written; once that disk is free, admitted with both."""
    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client:
            requests, ledger = RetentionLeases(client), UsageLedger(client, keys)
            vms = VmStore(client, keys, requests, ledger)
            sets = VmSetStore(client, keys, requests, ledger, vms.addresses)
            disks = DiskStore(client, keys, requests, ledger)
            view, _ = await NetworkStore(client, keys).create(network("setnet", "10.9.1.0/28"))
            by_name = {view.network.name: view}
            a, _ = await disks.create(make_disk("a"))
            b, _ = await disks.create(make_disk("b"))
            holder, _ = await vms.create(replace(vm("holder", view, mode=AddressMode.DHCP), disks=(
                b.disk.attached_as(),)), networks=by_name, disk_revisions={"b": b.revision})
            b = await disks.get(b.disk.ref)
            ref = VmSetRef(TENANT, PROJECT, "s")
            uid = uuid.uuid4().hex

            def members() -> list[Member]:
                out = []
                for vm_id, d in (("m0", a), ("m1", b)):
                    spec = replace(vm(vm_id, view), vm_set="s", shard=0, disks=(d.disk.attached_as(),))
                    out.append(Member(spec, disk_revisions={d.disk.disk_id: d.revision}))
                return out

            vm_set = VmSet(ref, uid, ("m0", "m1"), 0, create_time_ns=now_ns())
            before = await taken(client, keys, view.network.backing)
            with pytest.raises(DiskInUse):
                await sets.admit(vm_set, members(), networks=by_name)
            assert await taken(client, keys, view.network.backing) == before
            assert await ports(client, keys, view.network.uid) == 1  # the holder's
            assert (await disks.get(a.disk.ref)).state is DiskState.AVAILABLE

            assert (await vms.request_delete(holder.ref)).removed
            b = await disks.get(b.disk.ref)
            assert b.state is DiskState.AVAILABLE
            admitted = await sets.admit(vm_set, members(), networks=by_name)
            ips = {r.spec.nics[0].ip for r in admitted.vms}
            assert admitted.created and len(ips) == 2
            assert await taken(client, keys, view.network.backing) == ips
            for d, record in zip((a, b), admitted.vms, strict=True):
                now = await disks.get(d.disk.ref)
                assert now.state is DiskState.ATTACHED and now.attachment.vm_uid == record.spec.uid

    run(main())


def test_a_pending_delete_racing_a_create_of_its_static_address_never_fails_their_batch(
        etcd_endpoint: str, root: str) -> None:
    """A pending VM holding STATIC 10.0.0.5 deleted while other creates ask for
    10.0.0.5 through the same VmStore (one ledger: their charges are group-committed;
    unrelated creates keep its lane busy so they queue up together): the release names
    the address (``claims.release_exclusive``), so it never shares a transaction with
    such a create (etcd would refuse one that deletes and puts the key, failing every
    charge of the batch). Every round: the delete removes the VM, each create is made
    or told AddressInUse, and at most one holds the address."""
    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client:
            store = VmStore(client, keys, ledger=UsageLedger(client, keys))
            view, _ = await NetworkStore(client, keys).create(network("fixed", "10.0.0.0/24"))
            by_name = {view.network.name: view}
            for i in range(10):
                held, _ = await store.create(vm(f"held{i}", view, AddressMode.STATIC, "10.0.0.5"), networks=by_name)
                others = [vm(f"busy{i}-{j}", view, AddressMode.DHCP) for j in range(4)]
                wanting = [vm(f"new{i}-{j}", view, AddressMode.STATIC, "10.0.0.5") for j in range(3)]
                deletion, *outcomes = await asyncio.gather(
                    store.request_delete(held.ref),
                    *(store.create(spec, networks=by_name) for pair in zip(others, [*wanting, None], strict=True)
                      for spec in pair if spec is not None),
                    return_exceptions=True)
                assert not isinstance(deletion, BaseException), deletion
                assert deletion.removed
                assert all(isinstance(o, (tuple, AddressInUse)) for o in outcomes), outcomes
                made = [o[0] for o in outcomes if isinstance(o, tuple)]
                holders = [r for r in made if r.spec.nics[0].address_mode is AddressMode.STATIC]
                assert len(holders) <= 1, holders
                assert await taken(client, keys, view.network.backing) == ({"10.0.0.5"} if holders else set())
                for record in made:
                    assert (await store.request_delete(record.ref)).removed
                assert await taken(client, keys, view.network.backing) == set()

    run(main(), timeout=180.0)
