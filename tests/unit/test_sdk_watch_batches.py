"""The batched VM watch (WatchVmBatches) without a real system: the SDK's watch_vms
hands back each message's events one by one, in order, in both clients; from a
frontend without the method (UNIMPLEMENTED before any message) it watches through
WatchVms instead; any other refusal is raised, not papered over. And the rule the
frontend cuts its batches by (``streams.by_size``)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
from collections.abc import Iterator

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import quanta
import quanta.aio
from controlplane.api import errors as api
from controlplane.api.streams import by_size
from controlplane.gen.quanta.v1 import common_pb2, vm_pb2, vm_pb2_grpc
from quanta import errors

NAME = "tenants/t/projects/p/vms/"


def event(vm_id: str, revision: int, kind: int = common_pb2.MODIFIED) -> vm_pb2.VmEvent:
    return vm_pb2.VmEvent(type=kind, vm=vm_pb2.Vm(name=NAME + vm_id), resource_version=revision)


EVENTS = [event("a", 5, common_pb2.ADDED), event("b", 5, common_pb2.ADDED),
          vm_pb2.VmEvent(type=common_pb2.BOOKMARK, resource_version=5), event("a", 6), event("b", 7)]
BATCHES = [EVENTS[:3], EVENTS[3:4], EVENTS[4:]]
ASKED = ("tenants/t/projects/p", 7, "tier=web")  # what each watch below asks for


class Older(vm_pb2_grpc.VmServiceServicer):
    """A frontend without WatchVmBatches (the generated base answers UNIMPLEMENTED)."""

    def __init__(self) -> None:
        self.watched: list[tuple] = []  # (method, parent, resource_version, label_selector)

    def asked(self, method: str, request) -> None:
        self.watched.append((method, request.parent, request.resource_version, request.label_selector))

    def WatchVms(self, request, context):  # noqa: N802 - gRPC's method name
        self.asked("WatchVms", request)
        yield from EVENTS


class Batched(Older):
    """Sends ``BATCHES``, then ends or refuses with ``refusal``."""

    def __init__(self, refusal: api.ApiError | None = None) -> None:
        super().__init__()
        self.refusal = refusal

    def WatchVmBatches(self, request, context):  # noqa: N802
        self.asked("WatchVmBatches", request)
        for batch in BATCHES:
            yield vm_pb2.VmEventBatch(events=batch)
        if self.refusal is not None:
            context.abort_with_status(self.refusal.to_status())


class Refusing(Older):
    def WatchVmBatches(self, request, context):  # noqa: N802
        self.asked("WatchVmBatches", request)
        context.abort_with_status(api.out_of_range("too old", "RESOURCE_VERSION_EXPIRED").to_status())
        yield  # a generator, as a stream handler is


def serve(servicer: Older) -> tuple[grpc.Server, str]:
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(4))
    vm_pb2_grpc.add_VmServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"


@pytest.fixture
def serving() -> Iterator:
    servers: list[grpc.Server] = []

    def start(servicer: Older) -> str:
        server, endpoint = serve(servicer)
        servers.append(server)
        return endpoint
    yield start
    for server in servers:
        server.stop(None)


def watched_blocking(endpoint: str) -> list[vm_pb2.VmEvent]:
    with quanta.Client(endpoint, token="t", tenant="t", project="p") as client:
        return list(client.watch_vms(resource_version=7, label_selector="tier=web", timeout=10))


def watched_async(endpoint: str) -> list[vm_pb2.VmEvent]:
    async def run() -> list[vm_pb2.VmEvent]:
        async with quanta.aio.Client(endpoint, token="t", tenant="t", project="p") as client:
            return [e async for e in client.watch_vms(resource_version=7, label_selector="tier=web", timeout=10)]
    return asyncio.run(run())


@pytest.mark.parametrize("watched", [watched_blocking, watched_async])
def test_batches_are_handed_back_event_by_event_in_order(serving, watched) -> None:
    servicer = Batched()
    assert watched(serving(servicer)) == EVENTS
    assert servicer.watched == [("WatchVmBatches", *ASKED)]


@pytest.mark.parametrize("watched", [watched_blocking, watched_async])
def test_a_frontend_without_batches_is_watched_through_watch_vms(serving, watched) -> None:
    servicer = Older()
    assert watched(serving(servicer)) == EVENTS
    assert servicer.watched == [("WatchVms", *ASKED)]


@pytest.mark.parametrize("watched", [watched_blocking, watched_async])
def test_a_refusal_is_raised_not_answered_by_the_older_method(serving, watched) -> None:
    servicer = Refusing()
    with pytest.raises(errors.QuantaError) as refused:
        watched(serving(servicer))
    assert (refused.value.code, refused.value.reason) == (grpc.StatusCode.OUT_OF_RANGE, "RESOURCE_VERSION_EXPIRED")
    assert servicer.watched == [("WatchVmBatches", *ASKED)]


@pytest.mark.parametrize("watched", [watched_blocking, watched_async])
def test_unimplemented_after_events_is_raised(serving, watched) -> None:
    """Only a method the frontend lacks (refused before any message) is watched the older way."""
    servicer = Batched(refusal=api.ApiError(grpc.StatusCode.UNIMPLEMENTED, "NOT_NOW", "gone mid-stream"))
    with pytest.raises(errors.QuantaError) as refused:
        watched(serving(servicer))
    assert refused.value.code == grpc.StatusCode.UNIMPLEMENTED
    assert servicer.watched == [("WatchVmBatches", *ASKED)]


# --- the frontend's cut ---------------------------------------------------------------

SIZES = st.lists(st.tuples(st.integers(min_value=0, max_value=300), st.booleans()), max_size=40)


def _revision(event: vm_pb2.VmEvent) -> int:
    return event.resource_version


@settings(deadline=None)
@given(SIZES, st.integers(min_value=1, max_value=1000))
def test_by_size_keeps_order_and_revisions_and_cuts_at_the_limit(drawn: list[tuple[int, bool]], limit: int) -> None:
    """Events with names of the drawn lengths; each True starts a new revision."""
    messages, revision = [], 0
    for length, new_revision in drawn:
        revision += new_revision
        messages.append(vm_pb2.VmEvent(vm=vm_pb2.Vm(name="x" * length), resource_version=revision))
    runs = list(by_size(messages, limit, key=_revision))
    assert [m for run in runs for m in run] == messages
    size = lambda run: sum(m.ByteSize() for m in run)  # noqa: E731
    group = lambda r: [m for m in messages if m.resource_version == r]  # noqa: E731
    for run in runs:
        assert run, "no run is empty"
        assert len(run) == 1 or size(run) <= limit
    for before, after in itertools.pairwise(runs):
        last, first = before[-1], after[0]
        if last.resource_version == first.resource_version:  # a revision cut apart: only when over the limit
            assert size(group(first.resource_version)) > limit
            assert size(before) + first.ByteSize() > limit
        else:  # cut only where the next revision (or, over the limit, its first event) would not fit
            assert size(before) + size(group(first.resource_version)) > limit
