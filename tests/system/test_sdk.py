"""The SDK against real processes: the asyncio client creates VMs and watches them
to RUNNING (and drains a host, watching), and the typed exceptions arrive from real
frontends for NOT_FOUND, quota, rate limit and permission, in both clients."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

import quanta
import quanta.aio
from controlplane.api.errors import ApiError
from controlplane.gen.quanta.v1 import common_pb2, vm_pb2
from quanta.local import LocalSystem
from tests.conftest import async_wait_until

RATE = 30


@pytest.fixture(scope="module")
def system() -> Iterator[LocalSystem]:
    with LocalSystem(hosts=2, frontends=1, latency="zero", metrics=False,
                     frontend_args=("--rate-limit", str(RATE), "--rate-burst", str(RATE))) as system:
        with system.client(ensure_project=False) as admin:
            admin.create_tenant("acme")
            admin.create_project("web", tenant="acme", quota={"vms": 6})
            admin.create_project("tiny", tenant="acme", quota={"vms": 1})
        yield system


def aio_client(system: LocalSystem, project: str = "web", **kwargs) -> quanta.aio.Client:
    kwargs.setdefault("token", system.admin_token)
    return quanta.aio.Client(system.endpoint, tenant="acme", project=project, **kwargs)


def test_the_async_client_creates_vms_and_watches_them_run(system) -> None:
    names = [f"a-{n}" for n in range(5)]

    async def run() -> tuple[list[vm_pb2.Vm], dict[str, int], list[vm_pb2.Vm], list[str]]:
        async with aio_client(system) as client:
            states: dict[str, int] = {}
            created = await asyncio.gather(*(client.create_vm(name, flavor="small", image="ubuntu",
                                                              labels={"set": "a"}) for name in names))

            async def watch() -> None:  # from resource version 0: the current state first, then changes
                async for event in client.watch_vms(label_selector="set=a", timeout=60):
                    if event.type != common_pb2.BOOKMARK:
                        states[event.vm.name.rsplit("/", 1)[1]] = event.vm.state
                    if len(states) == len(names) and all(s == vm_pb2.Vm.RUNNING for s in states.values()):
                        return

            await asyncio.wait_for(watch(), 60)
            running = await asyncio.gather(*(client.wait_for_vm(name, "RUNNING", timeout=30) for name in names))
            listed = sorted([vm.name.rsplit("/", 1)[1] async for vm in client.list_vms(label_selector="set=a")])
            return created, states, running, listed

    created, states, running, listed = asyncio.run(run())
    assert {vm.state for vm in created} == {vm_pb2.Vm.PENDING}
    assert states == dict.fromkeys(names, vm_pb2.Vm.RUNNING)
    assert [vm.name.rsplit("/", 1)[1] for vm in running] == names
    assert listed == names


def test_the_async_wait_times_out_with_what_it_saw(system) -> None:
    async def run() -> quanta.WaitTimeout:
        async with aio_client(system) as client:
            await client.create_vm("stuck", flavor="small", image="ubuntu")
            await client.wait_for_vm("stuck", "RUNNING", timeout=30)
            try:
                await client.wait_for_vm("stuck", "STOPPED", timeout=1.5)
            except quanta.WaitTimeout as err:
                return err
        raise AssertionError("waited for a state that never comes")

    err = asyncio.run(run())
    assert isinstance(err, TimeoutError) and err.last.state == vm_pb2.Vm.RUNNING
    assert "not STOPPED within 1.5s; it is RUNNING" in str(err)


def test_not_found_arrives_typed_in_both_clients(system) -> None:
    with system.client(ensure_project=False, tenant="acme", project="web") as client, \
            pytest.raises(quanta.NotFound) as sync:
        client.get_vm("nope")

    async def run() -> None:
        async with aio_client(system) as client:
            await client.get_vm("nope")

    with pytest.raises(quanta.NotFound) as aio:
        asyncio.run(run())
    for caught in (sync, aio):
        assert caught.value.reason == "VM_NOT_FOUND" and caught.value.metadata["kind"] == "vm"
        assert isinstance(caught.value, ApiError)


def test_quota_exceeded_arrives_typed_with_its_dimension(system) -> None:
    with system.client(ensure_project=False, tenant="acme", project="tiny") as client:
        client.create_vm("only", flavor="small", image="ubuntu")
        with pytest.raises(quanta.QuotaExceeded) as sync:
            client.create_vm("second", flavor="small", image="ubuntu")

    async def run() -> None:
        async with aio_client(system, "tiny") as client:
            await client.create_vm("third", flavor="small", image="ubuntu")

    with pytest.raises(quanta.QuotaExceeded) as aio:
        asyncio.run(run())
    for caught in (sync, aio):
        assert caught.value.dimensions == ["vms"] and caught.value.metadata["project"] == "tenants/acme/projects/tiny"


def test_rate_limited_and_permission_denied_arrive_typed(system) -> None:
    with system.client(ensure_project=False) as admin:
        token = admin.create_token("viewer-bot", [("viewer", "acme", "")]).bearer_token

    async def run() -> list[BaseException | object]:
        async with aio_client(system, token=token) as client:
            with pytest.raises(quanta.PermissionDenied):
                await client.create_vm("nope", flavor="small", image="ubuntu")
            return await asyncio.gather(*(client.get_project("web") for _ in range(3 * RATE)),
                                        return_exceptions=True)

    outcomes = asyncio.run(run())
    limited = [o for o in outcomes if isinstance(o, quanta.RateLimited)]
    others = [o for o in outcomes if isinstance(o, BaseException) and not isinstance(o, quanta.RateLimited)]
    assert limited and not others, others[:3]
    assert all(0 < err.retry_delay <= 1 for err in limited)
    assert limited[0].reason == "RATE_LIMITED" and limited[0].metadata["subject"] == "viewer-bot"


def test_the_async_client_waits_for_a_host_to_empty_by_watching() -> None:
    progress: list[int] = []

    async def run(system: LocalSystem) -> tuple[int, int]:
        async with quanta.aio.Client(system.endpoint, token=system.admin_token) as client:
            host = (await client.list_hosts().__anext__()).name  # the only one: every VM lands there
            await asyncio.gather(*(client.create_vm(f"d-{n}", flavor="small", image="ubuntu") for n in range(3)))
            await asyncio.gather(*(client.wait_for_vm(f"d-{n}", "RUNNING", timeout=60) for n in range(3)))
            waiting = asyncio.create_task(client.wait_for_host_drained(
                host, timeout_s=60, on_progress=lambda h: progress.append(h.vm_count)))
            await async_wait_until(lambda: progress, timeout=30, message="the wait to read the host",
                                   seen=lambda: f"waiting task done: {waiting.done()}")
            for n in range(3):  # one by one: the watch sees the count go down
                await client.delete_vm(f"d-{n}")
            emptied = await waiting
            drained = await client.drain_host(host, wait=True, timeout_s=60)
            return emptied.vm_count, drained.vm_count

    with LocalSystem(hosts=1, frontends=1, latency="zero", metrics=False) as system:
        system.client().close()  # the default tenant and project
        emptied, drained = asyncio.run(run(system))
    assert (emptied, drained) == (0, 0)
    assert progress[0] == 3 and progress[-1] == 0, progress
    assert progress == sorted(progress, reverse=True), progress
