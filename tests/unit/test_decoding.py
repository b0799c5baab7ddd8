"""DecodeInterceptor against an in-process grpc.aio server on loopback: bytes that
are not the request message get INVALID_ARGUMENT (never grpc's UNKNOWN with an
exception's class), and only once the interceptors before it let the call in."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from controlplane.api import errors
from controlplane.api.decoding import DecodeInterceptor
from controlplane.api.errors import ApiError
from controlplane.api.interceptors import UnaryBehavior, _BehaviorInterceptor, default_interceptors
from controlplane.gen.quanta.v1 import vm_pb2

SERVICE = "quanta.test.Decoding"
INVALID_UTF8_NAME = bytes.fromhex("0a04fffec328")  # GetVmRequest.name = b"\xff\xfe\xc3("


async def get_vm(request: vm_pb2.GetVmRequest, context: grpc.aio.ServicerContext) -> vm_pb2.Vm:
    assert isinstance(request, vm_pb2.GetVmRequest)
    return vm_pb2.Vm(name=request.name)


async def watch_vms(request: vm_pb2.WatchVmsRequest, context: grpc.aio.ServicerContext):
    assert isinstance(request, vm_pb2.WatchVmsRequest)
    yield vm_pb2.VmEvent(resource_version=request.resource_version)


HANDLERS = grpc.method_handlers_generic_handler(SERVICE, {
    "GetVm": grpc.unary_unary_rpc_method_handler(
        get_vm, request_deserializer=vm_pb2.GetVmRequest.FromString,
        response_serializer=vm_pb2.Vm.SerializeToString),
    "WatchVms": grpc.unary_stream_rpc_method_handler(
        watch_vms, request_deserializer=vm_pb2.WatchVmsRequest.FromString,
        response_serializer=vm_pb2.VmEvent.SerializeToString),
})


class NeedsKey(_BehaviorInterceptor):
    """Stands in for authentication: a call without ``key`` metadata is refused."""

    @staticmethod
    def _check(context: grpc.aio.ServicerContext) -> None:
        if not any(k == "key" for k, _v in context.invocation_metadata() or ()):
            raise errors.unauthenticated("no key", "TOKEN_MISSING")

    def wrap_unary(self, behavior: UnaryBehavior, method: str) -> UnaryBehavior:
        async def checked(request: Any, context: grpc.aio.ServicerContext) -> Any:
            self._check(context)
            return await behavior(request, context)

        return checked

    def wrap_stream(self, behavior, method: str):
        async def checked(request: Any, context: grpc.aio.ServicerContext):
            self._check(context)
            async for response in behavior(request, context):
                yield response

        return checked


def serve(client: Callable[[grpc.aio.Channel], Awaitable[Any]], chain: list | None = None) -> Any:
    async def main() -> Any:
        server = grpc.aio.server(interceptors=chain if chain is not None else
                                 [*default_interceptors(), NeedsKey(), DecodeInterceptor()])
        server.add_generic_rpc_handlers((HANDLERS,))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                return await client(channel)
        finally:
            await server.stop(None)

    return asyncio.run(main())


async def unary(channel: grpc.aio.Channel, data: bytes, keyed: bool = True) -> ApiError | bytes:
    try:
        return await channel.unary_unary(f"/{SERVICE}/GetVm")(data, metadata=(("key", "1"),) if keyed else None,
                                                             timeout=10)
    except grpc.aio.AioRpcError as err:
        return ApiError.from_rpc_error(err)


async def stream(channel: grpc.aio.Channel, data: bytes, keyed: bool = True) -> ApiError | list[bytes]:
    try:
        call = channel.unary_stream(f"/{SERVICE}/WatchVms")(data, metadata=(("key", "1"),) if keyed else None,
                                                           timeout=10)
        return [item async for item in call]
    except grpc.aio.AioRpcError as err:
        return ApiError.from_rpc_error(err)


def test_undecodable_bytes_are_invalid_argument_without_internals() -> None:
    async def client(channel: grpc.aio.Channel) -> list:
        return [await unary(channel, b"\xff"), await unary(channel, INVALID_UTF8_NAME),
                await stream(channel, b"\xff")]

    for err in serve(client):
        assert isinstance(err, ApiError), err
        assert (err.code, err.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_MALFORMED")
        assert "<class" not in err.message and "DecodeError" not in err.message
        assert err.metadata["message"] in ("quanta.v1.GetVmRequest", "quanta.v1.WatchVmsRequest")


def test_what_comes_before_it_in_the_chain_decides_first() -> None:
    async def client(channel: grpc.aio.Channel) -> list:
        return [await unary(channel, b"\xff", keyed=False), await stream(channel, INVALID_UTF8_NAME, keyed=False)]

    for err in serve(client):
        assert isinstance(err, ApiError), err
        assert (err.code, err.reason) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_MISSING")


def test_good_requests_reach_the_handler_as_messages() -> None:
    async def client(channel: grpc.aio.Channel) -> list:
        return [await unary(channel, vm_pb2.GetVmRequest(name="tenants/t/projects/p/vms/v").SerializeToString()),
                await stream(channel, vm_pb2.WatchVmsRequest(resource_version=7).SerializeToString())]

    got, events = serve(client)
    assert vm_pb2.Vm.FromString(got).name == "tenants/t/projects/p/vms/v"
    assert [vm_pb2.VmEvent.FromString(e).resource_version for e in events] == [7]


def test_without_it_grpc_answers_unknown_with_the_exception_class() -> None:
    """Why the interceptor exists: grpc's own answer to undecodable bytes."""
    async def client(channel: grpc.aio.Channel) -> ApiError | bytes:
        return await unary(channel, b"\xff")

    err = serve(client, chain=default_interceptors())
    assert isinstance(err, ApiError) and err.code is grpc.StatusCode.UNKNOWN
    assert "DecodeError" in err.message
