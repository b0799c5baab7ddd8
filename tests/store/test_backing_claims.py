"""Claims per backing (port group: one L2 segment) against a real etcd: two networks on
one backing share one address pool (never one address twice on the segment, whichever
network asked), each counts the pool's taken keys as used; a NIC's MAC is claimed on
its backing (a taken one makes the create draw another, never two NICs with one
MAC); a removal frees both the address and the MAC. A network's gateway is claimed on
its backing: no other network's pool or STATIC NIC gets it, networks sharing a router
share the claim, a gateway a VM holds refuses the network."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Coroutine
from typing import Any

import pytest

from controlplane import macs
from controlplane.addressing import parse_subnet, to_int
from controlplane.etcd import EtcdClient, prefix_end
from controlplane.models import AddressMode, Nic, Resources, VmRef, VmSpec, now_ns
from controlplane.store.addresses import AddressInUse, AddressPicker, PoolExhausted
from controlplane.store.keys import Keys, shard_of
from controlplane.store.networks import GATEWAY, GatewayInUse, Network, NetworkStore, NetworkView
from controlplane.store.vms import VmStore
from tests.conftest import make_projects

TENANT, PROJECT = "acme", "web"
BACKING = "dvs/VLAN 12"  # a port group name with a '/' in it: one key segment all the same


def run(coro: Coroutine[Any, Any, Any], timeout: float = 90.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout=timeout))


@pytest.fixture(autouse=True)
def _projects(etcd_endpoint: str, root: str) -> None:
    make_projects(etcd_endpoint, root, TENANT, PROJECT, "other",
                  backings=(BACKING, "pg-other", "pg-2", "pg-big", "pg-small", "pg-gw"))


def network(network_id: str, cidr: str, *, project: str = PROJECT, backing: str = BACKING, gateway: str = "",
            range_start: str = "", range_end: str = "") -> Network:
    subnet, problems = parse_subnet(cidr, gateway, (), range_start, range_end)
    assert subnet is not None, problems
    return Network(TENANT, project, network_id, uuid.uuid4().hex, backing, {}, "", subnet, now_ns(), now_ns())


def vm(vm_id: str, *views: NetworkView, mode: AddressMode = AddressMode.STATIC_POOL, ip: str = "",
       project: str = PROJECT) -> VmSpec:
    uid = uuid.uuid4().hex
    nics = []
    for view in views:
        n, s = view.network, view.network.subnet
        assert s is not None
        nics.append(Nic(n.name, n.uid, n.backing, mode, ip, s.prefix_length, s.gateway, s.dns_servers))
    return VmSpec(VmRef(TENANT, project, vm_id), uid, "small", "ubuntu", Resources(1, 1024, 10),
                  create_time_ns=now_ns(), shard=shard_of(uid, 4), nics=tuple(nics))


async def keys_under(client: EtcdClient, prefix: bytes) -> set[bytes]:
    return {kv.key for kv in (await client.range(prefix, prefix_end(prefix), keys_only=True)).kvs}


def test_two_networks_on_one_backing_never_hand_out_one_address_twice(etcd_endpoint: str, root: str) -> None:
    """Two projects' networks with the same /29 on one port group, creates racing on
    both through two stores (two frontends): 6 VMs in all, 6 distinct addresses, the
    rest PoolExhausted; both networks count the 6 as used; a STATIC address the other
    network's pool handed out is AddressInUse; a network on another backing with the
    same subnet is a pool of its own."""
    async def main() -> None:
        async with EtcdClient(etcd_endpoint) as client:
            keys = Keys(root)
            networks = NetworkStore(client, keys)
            fronts = [VmStore(client, keys), VmStore(client, keys)]
            a, _ = await networks.create(network("a", "10.6.0.0/29"))
            b, _ = await networks.create(network("b", "10.6.0.0/29", project="other"))
            views = {a.network.name: a, b.network.name: b}
            outcomes = await asyncio.gather(
                *(fronts[i % 2].create(vm(f"v{i}", a) if i % 3 else vm(f"v{i}", b, project="other"),
                                       networks=views) for i in range(16)),
                return_exceptions=True)
            made = [o[0] for o in outcomes if isinstance(o, tuple)]
            refused = [o for o in outcomes if not isinstance(o, tuple)]
            assert all(isinstance(o, PoolExhausted) for o in refused), refused
            ips = [r.spec.nics[0].ip for r in made]
            assert len(made) == 6 and len(set(ips)) == 6, ips
            assert len(await keys_under(client, keys.addresses_prefix(BACKING))) == 6
            for name in ("a", "b"):
                view = await networks.get(TENANT, PROJECT if name == "a" else "other", name)
                assert (view.addresses_used, view.addresses_total) == (6, 6)
            with pytest.raises(AddressInUse):
                await fronts[0].create(vm("fixed", a, mode=AddressMode.STATIC, ip=ips[0]), networks=views)
            elsewhere, _ = await networks.create(network("c", "10.6.0.0/29", backing="pg-other"))
            record, _ = await fronts[1].create(vm("there", elsewhere), networks={elsewhere.network.name: elsewhere})
            assert record.spec.nics[0].ip in ips  # the same subnet on another segment: its own pool
            assert (await networks.get(TENANT, PROJECT, "c")).addresses_used == 1

    run(main())


def test_a_taken_mac_makes_the_create_draw_another_and_a_removal_frees_address_and_mac(
        etcd_endpoint: str, root: str) -> None:
    """The MAC a seeded picker draws first is taken on the backing beforehand: the
    create draws another and holds it; a VM with the same MAC on another backing is
    fine. Two stores whose pickers draw the same MACs (same seed) race creates: every
    NIC gets a distinct MAC, each claimed. Deleting a pending VM frees its address
    and its MAC."""
    async def main() -> None:
        async with EtcdClient(etcd_endpoint) as client:
            keys = Keys(root)
            networks = NetworkStore(client, keys)
            view, _ = await networks.create(network("m", "10.9.0.0/24"))
            views = {view.network.name: view}
            forced = macs.random_mac(random.Random(7))
            await client.put(keys.mac(BACKING, forced), b"")
            store = VmStore(client, keys, addresses=AddressPicker(client, keys, random.Random(7)))
            record, _ = await store.create(vm("one", view), networks=views)
            nic = record.spec.nics[0]
            assert macs.is_mac(nic.mac) and nic.mac != forced
            assert keys.mac(BACKING, nic.mac) in await keys_under(client, keys.macs_prefix(BACKING))
            assert (await store.get(record.ref)).spec.nics[0].mac == nic.mac  # in the stored spec
            # Another backing is another segment: the same MAC is free there.
            other, _ = await networks.create(network("o", "10.9.0.0/24", backing="pg-2"))
            store2 = VmStore(client, keys, addresses=AddressPicker(client, keys, random.Random(7)))
            there, _ = await store2.create(vm("there", other), networks={other.network.name: other})
            assert there.spec.nics[0].mac == forced

            racing = [VmStore(client, keys, addresses=AddressPicker(client, keys, random.Random(11)))
                      for _ in range(2)]
            made = await asyncio.gather(*(racing[i % 2].create(vm(f"r{i}", view, view), networks=views)
                                          for i in range(8)))
            nics = [n for r, _ in made for n in r.spec.nics]
            assert len({n.mac for n in nics}) == len(nics) == 16
            claimed = await keys_under(client, keys.macs_prefix(BACKING))
            assert {keys.mac(BACKING, n.mac) for n in nics} <= claimed

            deletion = await store.request_delete(record.ref)  # pending: removed at once, claims released
            assert deletion.removed
            assert keys.mac(BACKING, nic.mac) not in await keys_under(client, keys.macs_prefix(BACKING))
            assert keys.address(BACKING, nic.ip) not in await keys_under(client, keys.addresses_prefix(BACKING))
            assert keys.mac(BACKING, forced) in await keys_under(client, keys.macs_prefix(BACKING))

    run(main())


def test_a_large_sparse_pool_is_searched_by_a_window_not_read_whole(etcd_endpoint: str, root: str) -> None:
    """A /20 with 300 addresses taken in one run: a create reads a window (or two), not
    the 300 keys, and still never hands out a taken address; a pool filled but for one
    address hands out exactly that one, then is exhausted."""
    async def main() -> None:
        async with EtcdClient(etcd_endpoint) as client:
            keys = Keys(root)
            networks = NetworkStore(client, keys)
            view, _ = await networks.create(network("big", "10.16.0.0/20", backing="pg-big"))
            subnet = view.network.subnet
            assert subnet is not None
            lo, _hi = subnet.bounds
            taken = {lo + i for i in range(300)}
            await client.txn_chunked([_put(keys.address_at("pg-big", v)) for v in taken])
            reads: list[tuple[bytes, int]] = []
            real_range = client.range

            async def counting_range(key: bytes, range_end: bytes = b"", **kw: Any):
                result = await real_range(key, range_end, **kw)
                if key.startswith(keys.addresses_prefix("pg-big")):
                    reads.append((key, len(result.kvs)))
                return result

            client.range = counting_range  # type: ignore[method-assign]
            store = VmStore(client, keys)
            views = {view.network.name: view}
            for i in range(20):
                record, _ = await store.create(vm(f"s{i}", view), networks=views)
                value = keys.parse_address_key("pg-big", keys.address("pg-big", record.spec.nics[0].ip))
                assert value not in taken
                taken.add(value)
            assert all(n <= 64 for _key, n in reads) and len(reads) <= 40, reads
            client.range = real_range  # type: ignore[method-assign]

            small, _ = await networks.create(network("small", "10.17.0.0/28", backing="pg-small"))
            s = small.network.subnet
            assert s is not None
            lo, hi = s.bounds
            last = lo + 7
            await client.txn_chunked([_put(keys.address_at("pg-small", v)) for v in range(lo, hi + 1) if v != last])
            views = {small.network.name: small}
            record, _ = await store.create(vm("last", small), networks=views)
            assert keys.address("pg-small", record.spec.nics[0].ip) == keys.address_at("pg-small", last)
            with pytest.raises(PoolExhausted):
                await store.create(vm("none", small), networks=views)

    run(main())


def _put(key: bytes):
    from controlplane.etcd import ops
    return ops.put(key, b"")


def test_no_pool_and_no_static_nic_gets_another_networks_gateway(etcd_endpoint: str, root: str) -> None:
    """The reviewer's case: network A (gateway .1) and B (gateway .254, range .1-.10) on
    one backing. Filling B's pool hands out .2-.10 (9 addresses) and never .1, then is
    exhausted; B counts A's gateway as used; STATIC .1 on B is AddressInUse. Deleting A
    leaves its gateway claimed (a router's address is never a host address)."""
    async def main() -> None:
        async with EtcdClient(etcd_endpoint) as client:
            keys = Keys(root)
            networks = NetworkStore(client, keys)
            store = VmStore(client, keys)
            await networks.create(network("a", "10.20.0.0/24", backing="pg-gw", gateway="10.20.0.1"))
            b, _ = await networks.create(network("b", "10.20.0.0/24", backing="pg-gw", gateway="10.20.0.254",
                                                 range_start="10.20.0.1", range_end="10.20.0.10"))
            gw = await client.get(keys.address("pg-gw", "10.20.0.1"))
            assert gw is not None and gw.value == GATEWAY
            views = {b.network.name: b}
            ips = []
            for i in range(12):
                try:
                    record, _ = await store.create(vm(f"b{i}", b), networks=views)
                except PoolExhausted:
                    break
                ips.append(record.spec.nics[0].ip)
            assert sorted(ips, key=to_int) == [f"10.20.0.{i}" for i in range(2, 11)], ips
            view = await networks.get(TENANT, PROJECT, "b")
            assert (view.addresses_used, view.addresses_total) == (10, 10)  # A's gateway is not free for B
            with pytest.raises(AddressInUse):
                await store.create(vm("fixed", b, mode=AddressMode.STATIC, ip="10.20.0.1"), networks=views)
            await networks.delete(TENANT, PROJECT, "a")
            assert await client.get(keys.address("pg-gw", "10.20.0.1")) == gw  # the same claim, untouched
            with pytest.raises(AddressInUse):
                await store.create(vm("fixed", b, mode=AddressMode.STATIC, ip="10.20.0.1"), networks=views)

    run(main())


def test_networks_sharing_a_router_on_one_backing_all_create(etcd_endpoint: str, root: str) -> None:
    """Four networks with gateway .1 on one backing, created at once through two stores
    (two frontends), two projects: all four are made; the gateway key holds the marker,
    written once (version 1)."""
    async def main() -> None:
        async with EtcdClient(etcd_endpoint) as client:
            keys = Keys(root)
            fronts = [NetworkStore(client, keys), NetworkStore(client, keys)]
            made = await asyncio.gather(*(
                fronts[i % 2].create(network(f"r{i}", "10.21.0.0/24", backing="pg-gw", gateway="10.21.0.1",
                                             project=PROJECT if i < 2 else "other"))
                for i in range(4)))
            assert all(created for _view, created in made)
            gw = await client.get(keys.address("pg-gw", "10.21.0.1"))
            assert gw is not None and (gw.value, gw.version) == (GATEWAY, 1)
            # Each one's pool is the range but the shared gateway: nothing counted as used.
            assert [(await fronts[0].get(v.network.tenant, v.network.project, v.network.network_id)).addresses_used
                    for v, _ in made] == [0, 0, 0, 0]

    run(main())


def test_a_network_whose_gateway_a_vm_holds_is_refused(etcd_endpoint: str, root: str) -> None:
    """A VM holds 10.22.0.1 STATIC on a network without a gateway: a network on the same
    backing with gateway 10.22.0.1 is GatewayInUse and not stored (nor is its claim);
    once the VM is deleted, it is made."""
    async def main() -> None:
        async with EtcdClient(etcd_endpoint) as client:
            keys = Keys(root)
            networks = NetworkStore(client, keys)
            store = VmStore(client, keys)
            plain, _ = await networks.create(network("plain", "10.22.0.0/24", backing="pg-gw"))
            record, _ = await store.create(vm("holder", plain, mode=AddressMode.STATIC, ip="10.22.0.1"),
                                           networks={plain.network.name: plain})
            routed = network("routed", "10.22.0.0/24", backing="pg-gw", gateway="10.22.0.1")
            with pytest.raises(GatewayInUse) as refused:
                await networks.create(routed)
            assert (refused.value.gateway, refused.value.backing) == ("10.22.0.1", "pg-gw")
            held = await client.get(keys.address("pg-gw", "10.22.0.1"))
            assert held is not None and held.value != GATEWAY
            assert await client.get(keys.network(TENANT, PROJECT, "routed")) is None
            assert (await store.request_delete(record.ref)).removed
            view, created = await networks.create(routed)
            assert created and view.network.uid == routed.uid
            gw = await client.get(keys.address("pg-gw", "10.22.0.1"))
            assert gw is not None and gw.value == GATEWAY

    run(main())
