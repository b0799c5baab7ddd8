"""The benchmark client (bench/e2e.py) against real processes: a CreateVms call
refused after it applied is resent with the same request_ids and every VM is
counted once; a watch
refused OUT_OF_RANGE lists the project again, counts the states listed and watches
on from the listing's revision."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest

from bench.e2e import Bench, ensure_project
from bench.tally import Backoff
from controlplane.gen.quanta.v1 import common_pb2, vm_pb2
from quanta.local import LocalSystem

VMS = 60


@pytest.fixture(scope="module")
def system():
    with LocalSystem(hosts=2, frontends=2, latency="zero", metrics=False) as local:
        yield local


def bench_of(system: LocalSystem, project: str, **kwargs) -> Bench:
    return Bench(system.endpoint, vms=VMS, concurrency=2, channels=2, flavor="small", image="ubuntu",
                 tenant="default", project=project, token=system.admin_token, **kwargs)


async def created(bench: Bench) -> Bench:
    watch = asyncio.create_task(bench.watch(await bench.start_revision()))
    try:
        async with asyncio.timeout(120):
            await bench.create_all()
    finally:
        watch.cancel()
        await asyncio.gather(watch, return_exceptions=True)
        await bench.close()
    return bench


class LosesFirstAnswers:
    """A stub whose CreateVms applies but answers UNAVAILABLE the first time each
    batch (its first VM) is sent: the case of a create that took effect while its
    caller was told to retry."""

    def __init__(self, stub) -> None:
        self._stub, self._seen, self.lost = stub, set(), 0

    def __getattr__(self, name):
        return getattr(self._stub, name)

    async def CreateVms(self, request, **kwargs):  # noqa: N802 - the stub's method
        answer = await self._stub.CreateVms(request, **kwargs)
        first = request.requests[0].vm_id
        if first not in self._seen:
            self._seen.add(first)
            self.lost += 1
            raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(),
                                       "answer lost (test)")
        return answer


def test_a_call_refused_after_it_applied_is_resent_and_each_vm_is_counted_once(system) -> None:
    project = f"bench-{uuid.uuid4().hex[:8]}"
    ensure_project(system.endpoint, system.admin_token, "default", project)

    async def create() -> tuple[Bench, list[LosesFirstAnswers]]:
        bench = bench_of(system, project, batch=20, backoff=Backoff(base_s=0.05, cap_s=0.5))
        stubs = bench._stubs = [LosesFirstAnswers(stub) for stub in bench._stubs]
        return await created(bench), stubs

    bench, stubs = asyncio.run(create())
    assert sum(stub.lost for stub in stubs) == VMS // 20
    assert bench.resends.calls == VMS // 20 and bench.resends.vms == {"UNAVAILABLE": VMS}
    assert len(bench.create.answered) == VMS and len(bench.create.done) == VMS, bench.create.failed
    assert not bench.create.failed
    # The resent creates (same request_ids) made no second VM: one ADDED event per id.
    assert bench.watch_events[(common_pb2.ADDED, vm_pb2.Vm.PENDING)] == VMS, bench.watch_events


def test_a_watch_refused_out_of_range_relists_and_counts_from_the_listing(system) -> None:
    project = f"bench-{uuid.uuid4().hex[:8]}"
    ensure_project(system.endpoint, system.admin_token, "default", project)

    async def create() -> Bench:   # channels need the running loop: made inside it
        return await created(bench_of(system, project, batch=30))

    asyncio.run(create())

    async def watch_from_the_future() -> Bench:
        bench = bench_of(system, project)
        bench.create.requested, bench.create.requests_done = VMS, True
        # A revision newer than the store's is OUT_OF_RANGE, as a compacted one is.
        watch = asyncio.create_task(bench.watch(10**12))
        try:
            async with asyncio.timeout(60):
                await bench.create.complete.wait()
        finally:
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)
            await bench.close()
        return bench

    bench = asyncio.run(watch_from_the_future())
    assert bench.relists >= 1 and bench.relisted_vms >= VMS
    assert bench.errors["WatchVms"]["OUT_OF_RANGE"] >= 1
    assert len(bench.create.done) == VMS and not bench.create.failed
