"""The interceptor chain against an in-process grpc.aio server on loopback."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from prometheus_client import REGISTRY

from controlplane import logcontext
from controlplane.api import errors
from controlplane.api.errors import ApiError
from controlplane.api.interceptors import (
    ErrorInterceptor,
    MetricsInterceptor,
    RequestContextInterceptor,
    default_interceptors,
    error_for_exception,
)
from controlplane.etcd.client import Compacted, EtcdError, call_deadline
from controlplane.gen.quanta.v1 import vm_pb2

SERVICE = "quanta.test.Probe"

seen_correlation_ids: list[str | None] = []


async def ok(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    seen_correlation_ids.append(logcontext.correlation_id.get())
    return request


async def not_found(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    raise errors.not_found("vm", "tenants/t/projects/p/vms/v")


async def invalid(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    raise errors.invalid_argument([("parent", "required"), ('vm.labels["a b"]', "bad key")])


async def crash(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    raise RuntimeError("secret internals: /etc/quanta/key")


async def etcd_down(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    raise EtcdError("etcd range: UNAVAILABLE: connection refused", grpc.StatusCode.UNAVAILABLE)


async def etcd_odd(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    raise EtcdError("etcd txn: RESOURCE_EXHAUSTED: database space exceeded",
                    grpc.StatusCode.RESOURCE_EXHAUSTED)


async def compacted(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    raise Compacted(17)


async def own_abort(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    await context.abort(grpc.StatusCode.PERMISSION_DENIED, "not yours")
    return b""


async def stream_then_fail(request: bytes, context: grpc.aio.ServicerContext):
    yield b"1"
    yield b"2"
    raise errors.out_of_range("resource version 5 expired", "RESOURCE_VERSION_EXPIRED")


async def stream_ok(request: bytes, context: grpc.aio.ServicerContext):
    seen_correlation_ids.append(logcontext.correlation_id.get())
    for i in range(3):
        yield str(i).encode()


async def write_then_crash(request: bytes, context: grpc.aio.ServicerContext) -> None:
    await context.write(b"w1")
    raise RuntimeError("boom mid-stream")


async def deadline_left(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    deadline = call_deadline.get()
    return b"none" if deadline is None else f"{deadline - time.monotonic():.3f}".encode()


async def get_vm(request: vm_pb2.GetVmRequest, context: grpc.aio.ServicerContext) -> vm_pb2.Vm:
    return vm_pb2.Vm(name=request.name)


HANDLERS = grpc.method_handlers_generic_handler(
    SERVICE,
    {
        "Ok": grpc.unary_unary_rpc_method_handler(ok),
        "NotFound": grpc.unary_unary_rpc_method_handler(not_found),
        "Invalid": grpc.unary_unary_rpc_method_handler(invalid),
        "Crash": grpc.unary_unary_rpc_method_handler(crash),
        "EtcdDown": grpc.unary_unary_rpc_method_handler(etcd_down),
        "EtcdOdd": grpc.unary_unary_rpc_method_handler(etcd_odd),
        "Compacted": grpc.unary_unary_rpc_method_handler(compacted),
        "OwnAbort": grpc.unary_unary_rpc_method_handler(own_abort),
        "DeadlineLeft": grpc.unary_unary_rpc_method_handler(deadline_left),
        "StreamThenFail": grpc.unary_stream_rpc_method_handler(stream_then_fail),
        "StreamOk": grpc.unary_stream_rpc_method_handler(stream_ok),
        "WriteThenCrash": grpc.unary_stream_rpc_method_handler(write_then_crash),
        "GetVm": grpc.unary_unary_rpc_method_handler(
            get_vm,
            request_deserializer=vm_pb2.GetVmRequest.FromString,
            response_serializer=vm_pb2.Vm.SerializeToString,
        ),
    },
)


def serve(
    client: Callable[[grpc.aio.Channel, str], Awaitable[Any]],
    interceptors: list[grpc.aio.ServerInterceptor] | None = None,
) -> Any:
    """Runs ``client(channel, target)`` against a fresh server on 127.0.0.1:0."""

    async def main() -> Any:
        chain = default_interceptors() if interceptors is None else interceptors
        server = grpc.aio.server(interceptors=chain)
        server.add_generic_rpc_handlers((HANDLERS,))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        target = f"127.0.0.1:{port}"
        try:
            async with grpc.aio.insecure_channel(target) as channel:
                return await client(channel, target)
        finally:
            await server.stop(None)

    return asyncio.run(main())


async def unary_error(channel: grpc.aio.Channel, method: str, **kwargs: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await channel.unary_unary(f"/{SERVICE}/{method}")(b"x", **kwargs)
    return info.value


def requests_total(method: str, code: str) -> float:
    return REGISTRY.get_sample_value("quanta_api_requests_total", {"method": method, "code": code}) or 0.0


def duration_count(method: str) -> float:
    return REGISTRY.get_sample_value("quanta_api_request_duration_seconds_count", {"method": method}) or 0.0


# --- error mapping ---------------------------------------------------------------------

def test_api_error_reaches_an_aio_client_with_its_details() -> None:
    async def client(channel: grpc.aio.Channel, target: str) -> tuple[ApiError, ApiError]:
        return (ApiError.from_rpc_error(await unary_error(channel, "NotFound")),
                ApiError.from_rpc_error(await unary_error(channel, "Invalid")))

    missing, bad = serve(client)
    assert missing.code is grpc.StatusCode.NOT_FOUND
    assert missing.reason == "VM_NOT_FOUND"
    assert missing.metadata == {"kind": "vm", "name": "tenants/t/projects/p/vms/v"}
    assert bad.code is grpc.StatusCode.INVALID_ARGUMENT
    assert bad.reason == "FIELD_INVALID"
    assert bad.field_violations == [("parent", "required"), ('vm.labels["a b"]', "bad key")]


def test_api_error_reaches_a_sync_client_with_its_details() -> None:
    def sync_call(target: str) -> ApiError:
        with grpc.insecure_channel(target) as channel:
            with pytest.raises(grpc.RpcError) as info:
                channel.unary_unary(f"/{SERVICE}/Invalid")(b"x", timeout=10)
            assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            return ApiError.from_rpc_error(info.value)

    async def client(channel: grpc.aio.Channel, target: str) -> ApiError:
        return await asyncio.to_thread(sync_call, target)  # the server's loop must keep running

    err = serve(client)
    assert (err.code, err.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "FIELD_INVALID")
    assert err.field_violations == [("parent", "required"), ('vm.labels["a b"]', "bad key")]
    assert "parent: required" in err.message


def test_unknown_exception_becomes_internal_without_leaking(caplog: pytest.LogCaptureFixture) -> None:
    async def client(channel: grpc.aio.Channel, target: str) -> grpc.aio.AioRpcError:
        return await unary_error(channel, "Crash")

    with caplog.at_level(logging.ERROR, logger="controlplane.api.interceptors"):
        err = serve(client)
    assert err.code() is grpc.StatusCode.INTERNAL
    assert "secret" not in err.details() and "/etc" not in err.details()
    assert ApiError.from_rpc_error(err).reason == "INTERNAL"
    records = [r for r in caplog.records if r.exc_info]
    assert records and "secret internals" in str(records[0].exc_info[1])


@pytest.mark.parametrize(
    "method, code, reason, retry",
    [
        ("EtcdDown", grpc.StatusCode.UNAVAILABLE, "STORE_UNAVAILABLE", 1.0),
        ("EtcdOdd", grpc.StatusCode.UNAVAILABLE, "STORE_ERROR", 5.0),
        ("Compacted", grpc.StatusCode.OUT_OF_RANGE, "RESOURCE_VERSION_EXPIRED", None),
    ],
)
def test_store_errors_map_to_retryable_statuses(method: str, code: grpc.StatusCode, reason: str,
                                                retry: float | None) -> None:
    async def client(channel: grpc.aio.Channel, target: str) -> ApiError:
        return ApiError.from_rpc_error(await unary_error(channel, method))

    err = serve(client)
    assert (err.code, err.reason, err.retry_delay_s) == (code, reason, retry)
    assert "database" not in err.message and "refused" not in err.message


def test_handlers_own_abort_passes_untouched() -> None:
    async def client(channel: grpc.aio.Channel, target: str) -> grpc.aio.AioRpcError:
        return await unary_error(channel, "OwnAbort")

    err = serve(client)
    assert (err.code(), err.details()) == (grpc.StatusCode.PERMISSION_DENIED, "not yours")


def test_error_raised_mid_stream_is_mapped() -> None:
    async def client(channel: grpc.aio.Channel, target: str) -> tuple[list[bytes], ApiError]:
        received: list[bytes] = []
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for message in channel.unary_stream(f"/{SERVICE}/StreamThenFail")(b"x"):
                received.append(message)
        return received, ApiError.from_rpc_error(info.value)

    received, err = serve(client)
    assert received == [b"1", b"2"]
    assert (err.code, err.reason) == (grpc.StatusCode.OUT_OF_RANGE, "RESOURCE_VERSION_EXPIRED")


def test_error_in_a_context_write_stream_is_mapped() -> None:
    async def client(channel: grpc.aio.Channel, target: str) -> tuple[list[bytes], grpc.aio.AioRpcError]:
        received: list[bytes] = []
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for message in channel.unary_stream(f"/{SERVICE}/WriteThenCrash")(b"x"):
                received.append(message)
        return received, info.value

    received, err = serve(client)
    assert received == [b"w1"]
    assert err.code() is grpc.StatusCode.INTERNAL and "boom" not in err.details()


def test_serializers_are_kept() -> None:
    async def client(channel: grpc.aio.Channel, target: str) -> vm_pb2.Vm:
        get = channel.unary_unary(
            f"/{SERVICE}/GetVm",
            request_serializer=vm_pb2.GetVmRequest.SerializeToString,
            response_deserializer=vm_pb2.Vm.FromString,
        )
        return await get(vm_pb2.GetVmRequest(name="tenants/t/projects/p/vms/v"))

    assert serve(client).name == "tenants/t/projects/p/vms/v"


def test_unknown_method_is_unimplemented() -> None:
    async def client(channel: grpc.aio.Channel, target: str) -> grpc.aio.AioRpcError:
        return await unary_error(channel, "NoSuchMethod")

    assert serve(client).code() is grpc.StatusCode.UNIMPLEMENTED


def test_error_for_exception_table() -> None:
    api = errors.aborted("m")
    assert error_for_exception(api) is api
    timeout = EtcdError("x", grpc.StatusCode.DEADLINE_EXCEEDED)
    assert error_for_exception(timeout).reason == "STORE_UNAVAILABLE"
    assert error_for_exception(EtcdError("x")).reason == "STORE_ERROR"
    assert error_for_exception(KeyError("k")).code is grpc.StatusCode.INTERNAL


# --- request context -------------------------------------------------------------------

def test_correlation_id_from_x_request_id_is_propagated_and_echoed() -> None:
    async def client(channel: grpc.aio.Channel, target: str) -> tuple[Any, Any, Any, list[bytes]]:
        call = channel.unary_unary(f"/{SERVICE}/Ok")(b"x", metadata=(("x-request-id", "req-123"),))
        await call
        given = await call.trailing_metadata()
        call = channel.unary_unary(f"/{SERVICE}/Ok")(b"x")
        await call
        generated = await call.trailing_metadata()
        failed = await unary_error(channel, "NotFound", metadata=(("x-request-id", "req-err"),))
        stream = channel.unary_stream(f"/{SERVICE}/StreamOk")(b"x", metadata=(("x-request-id", "req-s"),))
        items = [m async for m in stream]
        return given, generated, failed.trailing_metadata(), items

    seen_correlation_ids.clear()
    given, generated, failed, items = serve(client)
    assert dict(given)["x-request-id"] == "req-123"
    cid = dict(generated)["x-request-id"]
    assert len(cid) == 32 and int(cid, 16) >= 0
    assert dict(failed)["x-request-id"] == "req-err"  # kept beside the rich status
    assert items == [b"0", b"1", b"2"]
    assert seen_correlation_ids == ["req-123", cid, "req-s"]
    # Echoed under both keys, whichever the caller used.
    assert dict(given)["x-correlation-id"] == "req-123" and dict(generated)["x-correlation-id"] == cid
    assert dict(failed)["x-correlation-id"] == "req-err"
    assert logcontext.correlation_id.get() is None


def test_correlation_id_from_x_correlation_id_wins() -> None:
    async def client(channel: grpc.aio.Channel, target: str) -> list[Any]:
        trailers = []
        for metadata in ((("x-correlation-id", "corr-1"),),
                         (("x-request-id", "req-2"), ("x-correlation-id", "corr-2"))):
            call = channel.unary_unary(f"/{SERVICE}/Ok")(b"x", metadata=metadata)
            await call
            trailers.append(dict(await call.trailing_metadata()))
        return trailers

    seen_correlation_ids.clear()
    only, both = serve(client)
    assert (only["x-correlation-id"], only["x-request-id"]) == ("corr-1", "corr-1")
    assert (both["x-correlation-id"], both["x-request-id"]) == ("corr-2", "corr-2")
    assert seen_correlation_ids == ["corr-1", "corr-2"]


def test_malformed_correlation_id_is_replaced() -> None:
    async def client(channel: grpc.aio.Channel, target: str) -> Any:
        call = channel.unary_unary(f"/{SERVICE}/Ok")(b"x", metadata=(("x-request-id", "x" * 200),))
        await call
        return await call.trailing_metadata()

    cid = dict(serve(client))["x-request-id"]
    assert len(cid) == 32


# --- metrics ---------------------------------------------------------------------------

CHAIN = [RequestContextInterceptor, MetricsInterceptor, ErrorInterceptor]
ORDERS = [list(p) for p in itertools.permutations(CHAIN)]


@pytest.mark.parametrize("order", ORDERS, ids=lambda o: ">".join(c.__name__[:3] for c in o))
def test_metrics_count_final_codes_in_any_order(order: list[type]) -> None:
    cases = [("Ok", "OK"), ("NotFound", "NOT_FOUND"), ("Crash", "INTERNAL"),
             ("OwnAbort", "PERMISSION_DENIED"),
             ("EtcdDown", "UNAVAILABLE"), ("StreamOk", "OK"), ("StreamThenFail", "OUT_OF_RANGE"),
             ("WriteThenCrash", "INTERNAL")]
    before = {case: requests_total(*case) for case in cases}
    durations = {m: duration_count(m) for m, _ in cases}

    async def client(channel: grpc.aio.Channel, target: str) -> dict[str, str]:
        codes: dict[str, str] = {}
        for method, _ in cases:
            try:
                if method.startswith(("Stream", "Write")):
                    [m async for m in channel.unary_stream(f"/{SERVICE}/{method}")(b"x")]
                else:
                    await channel.unary_unary(f"/{SERVICE}/{method}")(b"x")
                codes[method] = "OK"
            except grpc.aio.AioRpcError as err:
                codes[method] = err.code().name
        return codes

    codes = serve(client, [cls() for cls in order])
    assert codes == dict(cases)  # every order maps errors identically
    for case in cases:
        assert requests_total(*case) == before[case] + 1, case
        assert duration_count(case[0]) == durations[case[0]] + 1, case


def test_stream_duration_covers_the_whole_stream() -> None:
    gate: asyncio.Event | None = None

    async def slow_stream(request: bytes, context: grpc.aio.ServicerContext):
        yield b"first"
        assert gate is not None
        await gate.wait()  # released by the client after it saw the first message
        yield b"last"

    handler = grpc.method_handlers_generic_handler(
        "quanta.test.Slow", {"SlowStream": grpc.unary_stream_rpc_method_handler(slow_stream)}
    )
    labels = {"method": "SlowStream"}
    before = REGISTRY.get_sample_value("quanta_api_request_duration_seconds_sum", labels) or 0.0

    async def main() -> list[bytes]:
        nonlocal gate
        gate = asyncio.Event()
        server = grpc.aio.server(interceptors=default_interceptors())
        server.add_generic_rpc_handlers((handler,))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        loop = asyncio.get_running_loop()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                received = []
                async for message in channel.unary_stream("/quanta.test.Slow/SlowStream")(b"x"):
                    received.append(message)
                    if message == b"first":
                        # Hold the stream open for a measurable while, then let it finish.
                        loop.call_later(0.05, gate.set)
                return received
        finally:
            await server.stop(None)

    assert asyncio.run(main()) == [b"first", b"last"]
    after = REGISTRY.get_sample_value("quanta_api_request_duration_seconds_sum", labels)
    assert after is not None and after - before >= 0.045
    assert requests_total("SlowStream", "OK") >= 1


# --- structured logs ------------------------------------------------------------------

def test_json_logs_carry_context() -> None:
    record = logging.LogRecord("quanta.test", logging.INFO, __file__, 1, "placed %s", ("vm-1",), None)
    with logcontext.bound(correlation_id="r-9", tenant="acme", shard="3"):
        assert logcontext.ContextFilter().filter(record)
        line = logcontext.JsonFormatter().format(record)
    assert logcontext.tenant.get() is None
    data = json.loads(line)
    assert data["msg"] == "placed vm-1"
    assert (data["correlation_id"], data["tenant"], data["shard"]) == ("r-9", "acme", "3")
    assert "request_id" not in data  # a create's idempotency key is another thing
    assert "vm" not in data and data["level"] == "INFO" and data["ts"].endswith("Z")


def test_json_logs_include_extra_and_exception() -> None:
    logger = logging.getLogger("quanta.test.json")
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    handler = Collect()
    handler.addFilter(logcontext.ContextFilter())
    handler.setFormatter(logcontext.JsonFormatter())
    logger.addHandler(handler)
    logger.propagate = False
    try:
        try:
            raise ValueError("bad")
        except ValueError:
            logger.exception("failed", extra={"hosts_removed": {"ram": 3}, "vm": "v1"})
    finally:
        logger.removeHandler(handler)
    data = json.loads(lines[0])
    assert data["hosts_removed"] == {"ram": 3} and data["vm"] == "v1"
    assert "ValueError: bad" in data["exc"] and data["level"] == "ERROR"


def test_the_callers_deadline_bounds_etcd_calls_made_for_it() -> None:
    async def client(channel: grpc.aio.Channel, target: str) -> tuple[bytes, bytes]:
        call = channel.unary_unary(f"/{SERVICE}/DeadlineLeft")
        return await call(b"x", timeout=5), await call(b"x")

    with_deadline, without = serve(client)
    # gRPC rounds the timeout it sends up to its wire unit, so the server may see a
    # few milliseconds more than the client asked for; the bound is what matters.
    assert 0 < float(with_deadline) <= 5.5
    assert without == b"none"
    assert call_deadline.get() is None  # nothing leaks out of the handler
