"""Request decoding as an interceptor: bytes that are not the method's request
message get INVALID_ARGUMENT, in the chain's order (after authentication).

grpc.aio parses a request with its handler's ``request_deserializer`` before any
interceptor's wrapper runs, and answers a parse failure itself: UNKNOWN, with
the exception's class and text ("Unexpected <class 'google.protobuf.message.
DecodeError'>: ..."), to any caller, token or not. :class:`DecodeInterceptor`
gives the handler an identity deserializer instead (the bytes as they came) and
parses inside its wrapper, where a :class:`~google.protobuf.message.DecodeError`
(truncated or corrupt bytes; a proto3 string that is not UTF-8) becomes
INVALID_ARGUMENT ``REQUEST_MALFORMED``. Its place in the chain decides what comes
first: after :class:`~controlplane.api.authn.AuthInterceptor` (no valid token is
UNAUTHENTICATED whatever the bytes), before the audit one (which reads the
message). An undecodable request names no resource, so it is not audited.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from controlplane.api import errors
from controlplane.api.interceptors import StreamBehavior, UnaryBehavior, _BehaviorInterceptor

Parse = Callable[[bytes], Any]

REASON = "REQUEST_MALFORMED"


def _message_name(parse: Parse) -> str:
    """``GetVmRequest.FromString`` → ``"quanta.v1.GetVmRequest"`` (a public API name)."""
    descriptor = getattr(getattr(parse, "__self__", None), "DESCRIPTOR", None)
    return getattr(descriptor, "full_name", "") or "request"


def malformed(parse: Parse) -> errors.ApiError:
    """INVALID_ARGUMENT ``REQUEST_MALFORMED`` for bytes ``parse`` refused."""
    name = _message_name(parse)
    return errors.ApiError(
        grpc.StatusCode.INVALID_ARGUMENT, REASON,
        f"the request is not a valid {name} message (truncated or corrupt bytes, or a string field "
        "that is not UTF-8)", metadata={"message": name})


def decode(parse: Parse, data: bytes) -> Any:
    """``parse(data)``; raises :func:`malformed` instead of DecodeError."""
    try:
        return parse(data)
    except DecodeError as err:
        raise malformed(parse) from err


class DecodeInterceptor(_BehaviorInterceptor):
    """Parses unary requests inside the chain (see the module docstring).

    Handlers without a deserializer, client-streaming ones and sync behaviours
    are left as they are.
    """

    def _wrap_handler(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        parse = handler.request_deserializer
        if parse is None:
            return handler
        if handler.response_streaming:
            behavior = handler.unary_stream
            if inspect.isasyncgenfunction(behavior):
                new: Any = self._stream(behavior, parse)
            elif inspect.iscoroutinefunction(behavior):  # streams through context.write
                new = self._unary(behavior, parse)
            else:
                return handler
            return grpc.unary_stream_rpc_method_handler(new, request_deserializer=None,
                                                        response_serializer=handler.response_serializer)
        if not inspect.iscoroutinefunction(handler.unary_unary):
            return handler
        return grpc.unary_unary_rpc_method_handler(self._unary(handler.unary_unary, parse), request_deserializer=None,
                                                   response_serializer=handler.response_serializer)

    @staticmethod
    def _unary(behavior: UnaryBehavior, parse: Parse) -> UnaryBehavior:
        async def decoded(request: Any, context: grpc.aio.ServicerContext) -> Any:
            return await behavior(decode(parse, request), context)

        return decoded

    @staticmethod
    def _stream(behavior: StreamBehavior, parse: Parse) -> StreamBehavior:
        async def decoded(request: Any, context: grpc.aio.ServicerContext) -> AsyncGenerator[Any, None]:
            async with aclosing(behavior(decode(parse, request), context)) as responses:
                async for response in responses:
                    yield response

        return decoded
