"""Network backings granted to tenants, against a real etcd: a network maps only to a
backing granted to its tenant (a tenant record written before grants existed has
none), a backing one of the tenant's networks is on is not revoked, and a revoke
racing creates on its backing never leaves a network on a revoked backing."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Coroutine
from typing import Any

import pytest

from controlplane.etcd import EtcdClient, ops
from controlplane.gen.quanta.store.v1 import tenancy_pb2 as trec
from controlplane.models import now_ns
from controlplane.store.keys import Keys
from controlplane.store.networks import SHARED, BackingNotGranted, Network, NetworkStore
from controlplane.store.tenancy import BackingInUse, TenancyStore
from controlplane.tenancy import Tenant
from tests.conftest import make_projects
from tests.store.test_network_store import run

TENANT, OTHER, PROJECT = "acme", "globex", "web"


@pytest.fixture(autouse=True)
def _projects(etcd_endpoint: str, root: str) -> None:
    make_projects(etcd_endpoint, root, TENANT, PROJECT, backings=["pg-acme", "pg-both"])
    make_projects(etcd_endpoint, root, OTHER, PROJECT, backings=["pg-globex", "pg-both"])


def network(network_id: str, backing: str, *, tenant: str = TENANT, project: str = PROJECT) -> Network:
    return Network(tenant, project, network_id, uuid.uuid4().hex, backing, create_time_ns=now_ns())


async def grant(tenancy: TenancyStore, tenant: str, *backings: str) -> None:
    await tenancy.update_tenant(tenant, lambda t: t.with_(
        network_backings=tuple(dict.fromkeys((*t.network_backings, *backings)))))


async def revoke(tenancy: TenancyStore, tenant: str, *backings: str) -> Tenant:
    tenant_now, _ = await tenancy.update_tenant(tenant, lambda t: t.with_(
        network_backings=tuple(b for b in t.network_backings if b not in backings)))
    return tenant_now


async def later(call: Coroutine[Any, Any, Any], delay_s: float) -> Any:
    """``call``, started after ``delay_s`` (to vary a race's interleavings, not to wait for anything)."""
    await asyncio.sleep(delay_s)
    return await call


def test_a_network_maps_only_to_a_backing_granted_to_its_tenant(etcd_endpoint: str, root: str) -> None:
    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client:
            store, tenancy = NetworkStore(client, keys), TenancyStore(client, keys)
            # Another tenant's backing: refused, for a project's network and a shared one.
            for project in (PROJECT, SHARED):
                with pytest.raises(BackingNotGranted) as refused:
                    await store.create(network("theirs", "pg-globex", project=project))
                assert (refused.value.tenant, refused.value.backing) == (TENANT, "pg-globex")
            assert not (await client.range_prefix(keys.networks_prefix(TENANT)))[0]
            # Its own, and one granted to both tenants: made.
            await store.create(network("own", "pg-acme"))
            await store.create(network("both", "pg-both", project=SHARED))
            await store.create(network("both", "pg-both", tenant=OTHER))
            # Granted later: made from then on.
            with pytest.raises(BackingNotGranted):
                await store.create(network("late", "pg-late"))
            await grant(tenancy, TENANT, "pg-late")
            await store.create(network("late", "pg-late"))

    run(main())


def test_a_tenant_record_from_before_grants_has_none(etcd_endpoint: str, root: str) -> None:
    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client:
            old = trec.TenantRecord(tenant_id="legacy", display_name="made before grants existed")
            await client.txn([], [ops.put(keys.tenant("legacy"), old.SerializeToString())])
            tenant, _ = await TenancyStore(client, keys).get_tenant("legacy")
            assert tenant.network_backings == ()
            with pytest.raises(BackingNotGranted):
                await NetworkStore(client, keys).create(network("n", "VM Network", tenant="legacy", project=SHARED))

    run(main())


def test_a_backing_a_network_is_on_is_not_revoked(etcd_endpoint: str, root: str) -> None:
    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client:
            store, tenancy = NetworkStore(client, keys), TenancyStore(client, keys)
            await grant(tenancy, TENANT, "pg-used", "pg-idle")
            for i in range(5):
                await store.create(network(f"n{i}", "pg-used", project=SHARED if i == 4 else PROJECT))
            with pytest.raises(BackingInUse) as refused:
                await revoke(tenancy, TENANT, "pg-used", "pg-idle")
            assert refused.value.revoked == ("pg-used", "pg-idle")
            assert refused.value.networks == sorted(
                [f"tenants/{TENANT}/projects/{PROJECT}/networks/n{i}" for i in range(4)]
                + [f"tenants/{TENANT}/networks/n4"])
            assert "n0" in str(refused.value) and "and 2 more" in str(refused.value)
            tenant, _ = await tenancy.get_tenant(TENANT)
            assert {"pg-used", "pg-idle"} <= set(tenant.network_backings)  # nothing revoked
            # The same backing granted to another tenant is that tenant's to lose: not in use there.
            await grant(tenancy, OTHER, "pg-used")
            assert "pg-used" not in (await revoke(tenancy, OTHER, "pg-used")).network_backings
            # An idle one goes; a change that revokes nothing is not held up.
            assert "pg-idle" not in (await revoke(tenancy, TENANT, "pg-idle")).network_backings
            await tenancy.update_tenant(TENANT, lambda t: t.with_(labels={"touched": "yes"}))
            # Once its networks are gone, the backing goes too.
            for i in range(5):
                await store.delete(TENANT, SHARED if i == 4 else PROJECT, f"n{i}")
            assert "pg-used" not in (await revoke(tenancy, TENANT, "pg-used")).network_backings

    run(main())


def test_a_revoke_racing_creates_on_its_backing_never_leaves_a_network_on_it(etcd_endpoint: str,
                                                                             root: str) -> None:
    """Rounds of two creates (through two clients) and a revoke of their backing (through
    a third), all at once: either the revoke is refused because a create made its
    network first, or both creates are refused; never a network on a revoked backing."""
    rounds = 40

    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as one, EtcdClient(etcd_endpoint) as two, \
                EtcdClient(etcd_endpoint) as three:
            creators = [NetworkStore(one, keys), NetworkStore(two, keys)]
            tenancy = TenancyStore(three, keys)
            outcomes: Counter[str] = Counter()
            for i in range(rounds):
                backing = f"race-{i}"
                await grant(tenancy, TENANT, backing)
                calls = [*(store.create(network(f"r{i}-{j}", backing)) for j, store in enumerate(creators)),
                         revoke(tenancy, TENANT, backing)]
                # The revoke starts first, second or last, some rounds a little later than
                # the creates (it takes one more read): each has its own interleavings.
                head_start = (i % 4) * 0.001
                order = [(i + k) % 3 for k in range(3)]
                results = dict(zip(order, await asyncio.gather(
                    *(later(calls[k], head_start if k < 2 else 0) for k in order), return_exceptions=True),
                    strict=True))
                creates, revoked = [results[0], results[1]], results[2]
                made = [r for r in creates if not isinstance(r, BaseException)]
                refused = [r for r in creates if isinstance(r, BaseException)]
                assert all(isinstance(r, BackingNotGranted) for r in refused), refused
                on_it = [Network.from_bytes(kv.value).name for kv in (await one.range_prefix(
                    keys.networks_prefix(TENANT)))[0] if Network.from_bytes(kv.value).backing == backing]
                granted = backing in (await tenancy.get_tenant(TENANT))[0].network_backings
                if isinstance(revoked, BaseException):
                    assert isinstance(revoked, BackingInUse), revoked
                    assert made and granted and sorted(on_it) == sorted(v.network.name for v, _ in made)
                    outcomes[f"revoke refused, {len(made)} made"] += 1
                else:
                    assert not made and not granted and not on_it, (made, on_it)
                    outcomes["revoked, none made"] += 1
                for name in on_it:
                    await creators[0].delete(TENANT, PROJECT, name.rsplit("/", 1)[1])
            print(f"{rounds} rounds: {dict(outcomes)}")

    run(main(), timeout=240)
