"""NetworkStore and the NIC claims of VM creates against a real etcd: idempotent create,
pages at one revision, etags, the watch, deletion refused while a port exists, exact
pool allocation under concurrency, STATIC conflicts, release on removal, and a create
racing a network's deletion."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Coroutine
from dataclasses import replace
from typing import Any

import pytest

from controlplane.addressing import parse_subnet, to_ip
from controlplane.etcd import EtcdClient, prefix_end
from controlplane.models import AddressMode, Nic, Resources, RestartPolicy, VmRef, VmSpec, VmState, now_ns
from controlplane.store.addresses import AddressInUse, NetworkGone, PoolExhausted
from controlplane.store.errors import AlreadyExists, EtagMismatch, NotFound, RequestMismatch
from controlplane.store.hostagent import AgentStore
from controlplane.store.hosts import HostStore
from controlplane.store.keys import Keys, shard_of
from controlplane.store.lifecycle import HostEvictor, LifecycleStore
from controlplane.store.networks import SHARED, Network, NetworkInUse, NetworkStore, NetworkView
from controlplane.store.scheduling import HostBind, SchedulingStore
from controlplane.store.tenancy import TenancyStore
from controlplane.store.vms import VmStore
from tests.conftest import make_projects

TENANT, PROJECT = "acme", "web"
BACKING = "pg-acme"  # the port group the tenant is granted (its networks may map only to such)


def run(coro: Coroutine[Any, Any, Any], timeout: float = 60.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout=timeout))


@pytest.fixture(autouse=True)
def _projects(etcd_endpoint: str, root: str) -> None:
    make_projects(etcd_endpoint, root, TENANT, PROJECT, "other", backings=[BACKING])


def network(network_id: str, cidr: str = "", *, project: str = PROJECT, request_id: str = "",
            labels: dict[str, str] | None = None, gateway: str = "") -> Network:
    subnet = None
    if cidr:
        subnet, problems = parse_subnet(cidr, gateway)
        assert subnet is not None, problems
    return Network(TENANT, project, network_id, uuid.uuid4().hex, BACKING, labels or {}, "", subnet,
                   now_ns(), now_ns(), request_id)


def vm(vm_id: str, view: NetworkView, mode: AddressMode = AddressMode.STATIC_POOL, ip: str = "", *,
       request_id: str = "") -> VmSpec:
    uid = uuid.uuid4().hex
    n = view.network
    s = n.subnet
    nic = Nic(n.name, n.uid, n.backing, mode, ip, s.prefix_length if s else 0, s.gateway if s else "",
              s.dns_servers if s else ())
    return VmSpec(VmRef(TENANT, PROJECT, vm_id), uid, "small", "ubuntu", Resources(1, 1024, 10),
                  request_id=request_id, create_time_ns=now_ns(), shard=shard_of(uid, 4), nics=(nic,))


async def taken(client: EtcdClient, keys: Keys, backing: str) -> set[str]:
    """The addresses handed out on ``backing`` (its one pool's keys)."""
    prefix = keys.addresses_prefix(backing)
    result = await client.range(prefix, prefix_end(prefix), keys_only=True)
    return {to_ip(keys.parse_address_key(backing, kv.key)) for kv in result.kvs}


def test_create_is_idempotent_by_request_id_and_names_are_exclusive(etcd_endpoint: str, root: str) -> None:
    async def main() -> None:
        async with EtcdClient(etcd_endpoint) as client:
            store = NetworkStore(client, Keys(root))
            first, created = await store.create(network("web", "10.0.0.0/24", request_id="r1"), fingerprint=b"a")
            assert created
            again, created = await store.create(network("web", "10.0.0.0/24", request_id="r1"), fingerprint=b"a")
            assert not created and again.network.uid == first.network.uid
            with pytest.raises(RequestMismatch):
                await store.create(network("web2", request_id="r1"), fingerprint=b"b")
            with pytest.raises(AlreadyExists):
                await store.create(network("web"))
            with pytest.raises(NotFound):
                await store.create(network("x", project="nope"))
            shared, _ = await store.create(network("shared", project=SHARED))
            assert shared.network.name == f"tenants/{TENANT}/networks/shared"
            got = await store.get(TENANT, PROJECT, "web")
            assert (got.addresses_used, got.addresses_total, got.etag) == (0, 254, first.etag)
            # A VM resolves an id to its project's network first, then its tenant's shared one.
            resolved = await store.resolve(TENANT, PROJECT, ["web", "shared", shared.network.name, "nope",
                                                            f"tenants/{TENANT}/projects/other/networks/web"])
            assert set(resolved) == {"web", "shared", shared.network.name}
            assert resolved["shared"].network.uid == shared.network.uid

    run(main())


def test_list_pages_at_one_revision_with_a_selector_and_update_checks_the_etag(etcd_endpoint: str,
                                                                                 root: str) -> None:
    async def main() -> None:
        async with EtcdClient(etcd_endpoint) as client:
            store = NetworkStore(client, Keys(root))
            for i in range(5):
                await store.create(network(f"n{i}", labels={"tier": "a" if i % 2 else "b"}))
            page, after, revision = await store.list(TENANT, PROJECT, page_size=2)
            assert [v.network.network_id for v in page] == ["n0", "n1"] and after == "n1"
            await store.create(network("n15"))  # after the listing's revision: not in its later pages
            seen = [v.network.network_id for v in page]
            while after:
                page, after, _ = await store.list(TENANT, PROJECT, page_size=2, after=after, revision=revision)
                seen += [v.network.network_id for v in page]
            assert seen == ["n0", "n1", "n2", "n3", "n4"]
            odd, _, _ = await store.list(TENANT, PROJECT, page_size=10, selector=lambda n: n.labels.get("tier") == "a")
            assert [v.network.network_id for v in odd] == ["n1", "n3"]
            view = await store.get(TENANT, PROJECT, "n0")
            updated, changed = await store.update(TENANT, PROJECT, "n0", lambda n: replace(n, description="d"),
                                                  etag=view.etag)
            assert changed and updated.network.description == "d" and updated.etag != view.etag
            with pytest.raises(EtagMismatch):
                await store.update(TENANT, PROJECT, "n0", lambda n: replace(n, description="e"), etag=view.etag)

    run(main())


def test_the_watch_reports_creates_updates_and_deletes_with_their_revisions(etcd_endpoint: str, root: str) -> None:
    async def main() -> None:
        async with EtcdClient(etcd_endpoint) as client:
            store = NetworkStore(client, Keys(root))
            start = await store.current_revision()
            made, _ = await store.create(network("w"))
            updated, _ = await store.update(TENANT, PROJECT, "w", lambda n: replace(n, labels={"a": "b"}))
            gone = await store.delete(TENANT, PROJECT, "w")
            seen: list[tuple[bool, int, str]] = []
            async for batch in store.watch(TENANT, PROJECT, start_revision=start + 1):
                seen += [(c.deleted, c.revision, c.view.network.uid) for c in batch]
                if len(seen) >= 3:
                    break
            assert [s[:2] for s in seen] == [(False, made.revision), (False, updated.revision),
                                             (True, seen[2][1])]
            assert seen[2][1] > updated.revision and {s[2] for s in seen} == {gone.network.uid}

    run(main())


def test_a_network_in_use_is_not_deleted_and_a_removed_vm_gives_its_port_and_address_back(
        etcd_endpoint: str, root: str) -> None:
    async def main() -> None:
        async with EtcdClient(etcd_endpoint) as client:
            keys = Keys(root)
            networks, vms = NetworkStore(client, keys), VmStore(client, keys)
            view, _ = await networks.create(network("used", "10.5.0.0/29"))
            record, _ = await vms.create(vm("a", view), networks={view.network.name: view})
            ip = record.spec.nics[0].ip
            assert await taken(client, keys, view.network.backing) == {ip}
            assert (await networks.get(TENANT, PROJECT, "used")).addresses_used == 1
            with pytest.raises(NetworkInUse) as info:
                await networks.delete(TENANT, PROJECT, "used")
            assert info.value.vms == 1
            deletion = await vms.request_delete(record.ref)  # pending: removed at once, claims released
            assert deletion.removed
            assert await taken(client, keys, view.network.backing) == set()
            ports = keys.ports_prefix(view.network.uid)
            assert not (await client.range(ports, prefix_end(ports))).kvs
            await networks.delete(TENANT, PROJECT, "used")
            with pytest.raises(NotFound):
                await networks.get(TENANT, PROJECT, "used")

    run(main())


def test_a_pool_hands_out_each_address_once_under_concurrency_and_a_retry_keeps_its_address(
        etcd_endpoint: str, root: str) -> None:
    """Two stores (two frontends) race 14 creates for the 6 addresses of a /29: exactly 6
    VMs, 6 distinct addresses, 8 PoolExhausted; a retried create gets its first address
    even with the pool full; a removed VM's address is handed out again."""
    async def main() -> None:
        async with EtcdClient(etcd_endpoint) as client:
            keys = Keys(root)
            networks = NetworkStore(client, keys)
            fronts = [VmStore(client, keys), VmStore(client, keys)]
            view, _ = await networks.create(network("pool", "10.6.0.0/29"))
            by_name = {view.network.name: view}
            outcomes = await asyncio.gather(*(fronts[i % 2].create(vm(f"v{i}", view, request_id=f"r{i}"),
                                                                   networks=by_name) for i in range(14)),
                                            return_exceptions=True)
            made = [o[0] for o in outcomes if isinstance(o, tuple)]
            refused = [o for o in outcomes if not isinstance(o, tuple)]
            assert all(isinstance(o, PoolExhausted) for o in refused), refused
            ips = [r.spec.nics[0].ip for r in made]
            assert len(made) == 6 and len(set(ips)) == 6
            assert await taken(client, keys, view.network.backing) == set(ips)
            # A retry of a create that made its VM returns it, with its address, pool full or not.
            first = made[0]
            i = int(first.ref.vm_id[1:])
            again, created = await fronts[1].create(vm(first.ref.vm_id, view, request_id=f"r{i}"),
                                                    networks=by_name)
            assert not created and again.spec.nics[0].ip == first.spec.nics[0].ip
            await fronts[0].request_delete(first.ref)
            record, _ = await fronts[1].create(vm("late", view), networks=by_name)
            assert record.spec.nics[0].ip == first.spec.nics[0].ip

    run(main(), timeout=120)


def test_a_static_address_is_taken_once_and_a_create_fails_if_its_network_was_deleted(
        etcd_endpoint: str, root: str) -> None:
    async def main() -> None:
        async with EtcdClient(etcd_endpoint) as client:
            keys = Keys(root)
            networks, vms = NetworkStore(client, keys), VmStore(client, keys)
            view, _ = await networks.create(network("fixed", "10.7.0.0/24"))
            by_name = {view.network.name: view}
            outcomes = await asyncio.gather(*(vms.create(vm(f"s{i}", view, AddressMode.STATIC, "10.7.0.10"),
                                                         networks=by_name) for i in range(3)),
                                            return_exceptions=True)
            assert sum(isinstance(o, tuple) for o in outcomes) == 1
            assert sum(isinstance(o, AddressInUse) for o in outcomes) == 2
            # Deleted (and made again under its name) after the create read it: the create fails.
            other, _ = await networks.create(network("gone"))
            await networks.delete(TENANT, PROJECT, "gone")
            await networks.create(network("gone"))
            with pytest.raises(NetworkGone):
                await vms.create(vm("late", other, AddressMode.DHCP), networks={other.network.name: other})

    run(main())


def test_a_deleted_project_or_tenant_takes_its_networks_along(etcd_endpoint: str, root: str) -> None:
    async def main() -> None:
        async with EtcdClient(etcd_endpoint) as client:
            keys = Keys(root)
            store, tenancy = NetworkStore(client, keys), TenancyStore(client, keys)
            await store.create(network("in-other", project="other"))
            await store.create(network("kept"))
            await tenancy.delete_project(TENANT, "other")
            with pytest.raises(NotFound):
                await store.get(TENANT, "other", "in-other")
            await store.get(TENANT, PROJECT, "kept")
            await store.create(network("shared", project=SHARED))
            await tenancy.delete_tenant(TENANT, delete_project=lambda p: tenancy.delete_project(TENANT, p))
            assert not (await client.range(keys.networks_prefix(), prefix_end(keys.networks_prefix()))).kvs

    run(main())


def test_a_drained_vm_keeps_its_address_and_a_removed_one_gives_it_back(etcd_endpoint: str, root: str) -> None:
    """On a drained host: a VM that restarts elsewhere (ALWAYS) is requeued with its
    port and address; one that does not (NEVER) is removed by its agent's unbind,
    which releases them."""
    async def main() -> None:
        async with EtcdClient(etcd_endpoint) as client:
            keys = Keys(root)
            networks, vms = NetworkStore(client, keys), VmStore(client, keys)
            sched, lifecycle = SchedulingStore(client, keys), LifecycleStore(client, keys)
            view, _ = await networks.create(network("drained", "10.8.0.0/24"))
            keep = vm("keep", view)
            gone = replace(vm("gone", view), restart_policy=RestartPolicy.NEVER)
            made = [(await vms.create(s, networks={view.network.name: view}))[0] for s in (keep, gone)]
            ips = {r.ref.vm_id: r.spec.nics[0].ip for r in made}
            queued = {q.spec.ref: q for shard in {s.shard for s in (keep, gone)}
                      for q in (await sched.list_queue(shard))[0]}
            current = await sched.read_current(["h1"], [])
            result = await sched.bind(None, [HostBind("h1", current[0]["h1"][1], current[0]["h1"][0],
                                                      [queued[r.ref] for r in made])])
            assert result.committed == [True]
            await HostStore(client, keys).drain("h1")
            left = await HostEvictor(lifecycle, vms).evict("h1", dead=False)
            assert await AgentStore(client, keys).remove_destroyed("h1", list(left.bound))
            assert (await vms.get(made[0].ref)).status.state == VmState.PENDING
            with pytest.raises(NotFound):
                await vms.get(made[1].ref)
            assert await taken(client, keys, view.network.backing) == {ips["keep"]}
            ports = keys.ports_prefix(view.network.uid)
            assert len((await client.range(ports, prefix_end(ports))).kvs) == 1

    run(main())
