"""grpc.aio server interceptors: request context, metrics and exception → status mapping.

Each interceptor wraps the behaviour of unary-unary and unary-stream handlers (async
functions, async generators, or coroutines that stream through ``context.write``);
client-streaming handlers and sync behaviours pass through untouched. They compose
in any order; the recommended one (outermost first) is :func:`default_interceptors`::

    server = grpc.aio.server(interceptors=default_interceptors())

- :class:`RequestContextInterceptor` binds the ``correlation_id``/``method``
  contextvars and echoes the correlation id (``x-correlation-id`` and
  ``x-request-id``) in trailing metadata.
- :class:`MetricsInterceptor` counts requests by method and final status code and
  times them (streams until they end).
- :class:`ErrorInterceptor` turns :class:`~controlplane.api.errors.ApiError`,
  etcd failures and unexpected exceptions into rich statuses (see
  :func:`error_for_exception`); nothing internal leaks to the caller.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from contextlib import aclosing
from typing import Any

import grpc
from prometheus_client import Counter, Histogram

from controlplane import logcontext
from controlplane.api import errors
from controlplane.api.errors import GRPC_DETAILS_METADATA_KEY, ApiError
from controlplane.etcd.client import Compacted, EtcdError, call_deadline

log = logging.getLogger(__name__)

#: Metadata keys a caller may send its correlation id under, in order of preference;
#: the frontend echoes the id under both. ``x-request-id`` is the common convention
#: (proxies, load balancers); it is not a create's ``request_id`` (idempotency key).
CORRELATION_ID_HEADERS = ("x-correlation-id", "x-request-id")
_MAX_CORRELATION_ID = 128

API_REQUESTS = Counter(
    "quanta_api_requests_total",
    "API requests handled, by method and final gRPC status code.",
    ["method", "code"],
)
API_REQUEST_DURATION = Histogram(
    "quanta_api_request_duration_seconds",
    "API request latency by method; for streaming methods, until the stream ends.",
    ["method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)

UnaryBehavior = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
StreamBehavior = Callable[[Any, grpc.aio.ServicerContext], AsyncGenerator[Any, None]]

_TRANSIENT_ETCD_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


def short_method(full_method: str) -> str:
    """``"/quanta.v1.VmService/CreateVm"`` → ``"CreateVm"``."""
    return full_method.rsplit("/", 1)[-1]


def initialise_request_metrics(methods: Iterable[str]) -> None:
    """Create the ``quanta_api_requests_total`` series of ``methods`` (full or short
    names) for every status code, at 0, as go-grpc-prometheus' InitializeMetrics does: a
    healthy frontend's error panels show 0 instead of no data, and rate() sees a series'
    first failure. Idempotent; call at start with the methods the server serves."""
    for method in methods:
        for code in grpc.StatusCode:
            API_REQUESTS.labels(short_method(method), code.name)


def error_for_exception(exc: BaseException) -> ApiError:
    """The ApiError a caller should see for an exception escaping a handler.

    - ApiError: itself.
    - etcd ``Compacted``: OUT_OF_RANGE ``RESOURCE_VERSION_EXPIRED`` (re-list).
    - ``EtcdError`` OUT_OF_RANGE (a future revision): OUT_OF_RANGE ``RESOURCE_VERSION_TOO_NEW``.
    - ``EtcdError`` UNAVAILABLE / DEADLINE_EXCEEDED: UNAVAILABLE ``STORE_UNAVAILABLE``,
      retry after 1 s; any other ``EtcdError``: UNAVAILABLE ``STORE_ERROR``, retry after 5 s.
    - anything else: INTERNAL with a generic message (no internals leaked).
    """
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, Compacted):
        return errors.out_of_range(
            "the requested resource version is no longer available; list again", "RESOURCE_VERSION_EXPIRED"
        )
    if isinstance(exc, EtcdError):
        if exc.code is grpc.StatusCode.OUT_OF_RANGE:  # etcd: "required revision is a future revision"
            return errors.out_of_range("the requested resource version is newer than the store's",
                                       "RESOURCE_VERSION_TOO_NEW")
        if exc.code in _TRANSIENT_ETCD_CODES:
            return errors.unavailable("the store is temporarily unavailable; retry", 1.0, "STORE_UNAVAILABLE")
        return errors.unavailable("the store failed the request; retry later", 5.0, "STORE_ERROR")
    return errors.internal()


def _code_name(code: Any) -> str | None:
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(code, int):  # the cython layer may hand back the raw number
        for member in grpc.StatusCode:
            if member.value[0] == code:
                return member.name
    return None


class _BehaviorInterceptor(grpc.aio.ServerInterceptor):
    """Base: wraps a handler's behaviour once per (handler, method) and reuses the wrapper.

    grpc.aio calls ``intercept_service`` on every RPC; caching keeps that to a dict
    lookup. Wrappers built by these interceptors are stable objects, so a chain of
    them caches at every level.
    """

    _MAX_CACHE = 4096

    def __init__(self) -> None:
        self._cache: dict[tuple[int, str], tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_streaming:
            return handler
        method: str = handler_call_details.method
        key = (id(handler), method)
        hit = self._cache.get(key)
        if hit is not None and hit[0] is handler:
            return hit[1]
        wrapped = self._wrap_handler(handler, method)
        if len(self._cache) >= self._MAX_CACHE:
            self._cache.clear()
        self._cache[key] = (handler, wrapped)  # holding `handler` keeps id() unique
        return wrapped

    def _wrap_handler(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        if handler.response_streaming:
            behavior = handler.unary_stream
            if inspect.isasyncgenfunction(behavior):
                new: Any = self.wrap_stream(behavior, method)
            elif inspect.iscoroutinefunction(behavior):  # streams through context.write
                new = self.wrap_unary(behavior, method)
            else:
                return handler
            return grpc.unary_stream_rpc_method_handler(
                new,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        behavior = handler.unary_unary
        if not inspect.iscoroutinefunction(behavior):
            return handler
        return grpc.unary_unary_rpc_method_handler(
            self.wrap_unary(behavior, method),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def wrap_unary(self, behavior: UnaryBehavior, method: str) -> UnaryBehavior:
        raise NotImplementedError

    def wrap_stream(self, behavior: StreamBehavior, method: str) -> StreamBehavior:
        raise NotImplementedError


# --- request context -----------------------------------------------------------------


def _incoming_correlation_id(context: grpc.aio.ServicerContext) -> str | None:
    given: dict[str, str] = {}
    for key, given_value in context.invocation_metadata() or ():
        if key in CORRELATION_ID_HEADERS and isinstance(given_value, str):
            given.setdefault(key, given_value)
    value = next((given[header] for header in CORRELATION_ID_HEADERS if header in given), None)
    if value is not None and 0 < len(value) <= _MAX_CORRELATION_ID and all(" " < ch <= "~" for ch in value):
        return value
    return None  # none given, or a malformed one: replaced, not echoed into our logs


class RequestContextInterceptor(_BehaviorInterceptor):
    """Binds the ``correlation_id``, ``method`` and etcd ``call_deadline`` contextvars
    for the handler's duration.

    The correlation id ties a call's log lines (field ``correlation_id``) and audit
    record together. It is the caller's ``x-correlation-id`` metadata, else its
    ``x-request-id`` (the common convention), when that is 1–128 printable ASCII
    characters without spaces; else a fresh uuid4 hex. It is sent back under both
    keys in trailing metadata (a handler that calls ``set_trailing_metadata`` itself
    should include them; ErrorInterceptor keeps them). Unrelated to a create's
    ``request_id`` field, the idempotency key.
    """

    def _enter(self, context: grpc.aio.ServicerContext, method: str) -> tuple[Any, Any, Any]:
        cid = _incoming_correlation_id(context) or uuid.uuid4().hex
        context.set_trailing_metadata(tuple((header, cid) for header in CORRELATION_ID_HEADERS))
        # The caller's deadline bounds the etcd calls made for it (see call_deadline).
        remaining = context.time_remaining()
        deadline = time.monotonic() + remaining if remaining is not None else None
        return (logcontext.correlation_id.set(cid), logcontext.method.set(method), call_deadline.set(deadline))

    @staticmethod
    def _exit(tokens: tuple[Any, Any, Any]) -> None:
        try:
            call_deadline.reset(tokens[2])
            logcontext.method.reset(tokens[1])
            logcontext.correlation_id.reset(tokens[0])
        except ValueError:
            pass  # a stream closed from another context; the RPC's task context dies with it

    def wrap_unary(self, behavior: UnaryBehavior, method: str) -> UnaryBehavior:
        short = short_method(method)

        async def with_request_context(request: Any, context: grpc.aio.ServicerContext) -> Any:
            tokens = self._enter(context, short)
            try:
                return await behavior(request, context)
            finally:
                self._exit(tokens)

        return with_request_context

    def wrap_stream(self, behavior: StreamBehavior, method: str) -> StreamBehavior:
        short = short_method(method)

        async def with_request_context(request: Any, context: grpc.aio.ServicerContext) -> AsyncGenerator[Any, None]:
            tokens = self._enter(context, short)
            try:
                async with aclosing(behavior(request, context)) as responses:
                    async for response in responses:
                        yield response
            finally:
                self._exit(tokens)

        return with_request_context


# --- errors --------------------------------------------------------------------------


class ErrorInterceptor(_BehaviorInterceptor):
    """Maps exceptions escaping a handler (also mid-stream) to statuses; see :func:`error_for_exception`.

    grpc's own abort (``grpc.aio.AbortError``) and other ``grpc.aio.BaseError``\\ s
    propagate untouched, as do cancellation and GeneratorExit (BaseExceptions).
    Unexpected exceptions are logged with their traceback; etcd failures as
    warnings; ApiErrors not at all (they are answers, not faults). Trailing
    metadata the RPC already set (e.g. ``x-correlation-id``) is kept.
    """

    async def _abort(self, context: grpc.aio.ServicerContext, method: str, exc: Exception) -> None:
        api = error_for_exception(exc)
        if api is not exc:
            if isinstance(exc, EtcdError):
                log.warning("%s: store error mapped to %s: %s", method, api.reason, exc)
            else:
                log.error("%s: unhandled exception", method, exc_info=exc)
        kept = tuple(
            (key, value)
            for key, value in (context.trailing_metadata() or ())
            if key != GRPC_DETAILS_METADATA_KEY
        )
        await context.abort_with_status(api.to_status(kept))

    def wrap_unary(self, behavior: UnaryBehavior, method: str) -> UnaryBehavior:
        async def mapping_errors(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                return await behavior(request, context)
            except grpc.aio.BaseError:
                raise
            except Exception as exc:  # noqa: BLE001 - every failure becomes a status
                await self._abort(context, method, exc)
                raise  # not reached: abort raises

        return mapping_errors

    def wrap_stream(self, behavior: StreamBehavior, method: str) -> StreamBehavior:
        async def mapping_errors(request: Any, context: grpc.aio.ServicerContext) -> AsyncGenerator[Any, None]:
            try:
                async with aclosing(behavior(request, context)) as responses:
                    async for response in responses:
                        yield response
            except grpc.aio.BaseError:
                raise
            except Exception as exc:  # noqa: BLE001 - every failure becomes a status
                await self._abort(context, method, exc)
                raise  # not reached: abort raises

        return mapping_errors


# --- metrics -------------------------------------------------------------------------


def _final_code(context: grpc.aio.ServicerContext, exc: BaseException | None) -> str:
    if exc is None:
        return _code_name(context.code()) or "OK"
    if isinstance(exc, grpc.aio.AbortError):
        return _code_name(context.code()) or "UNKNOWN"
    if isinstance(exc, asyncio.CancelledError):
        return "CANCELLED"
    if isinstance(exc, Exception) and not isinstance(exc, grpc.aio.BaseError):
        return error_for_exception(exc).code.name  # what ErrorInterceptor will send
    return "UNKNOWN"


class MetricsInterceptor(_BehaviorInterceptor):
    """Counts ``quanta_api_requests_total{method,code}`` and observes
    ``quanta_api_request_duration_seconds{method}``.

    ``method`` is the short method name; ``code`` the final status name. Correct in
    either order relative to ErrorInterceptor: outside it the code is read from the
    aborted context, inside it the exception is mapped the same way.
    """

    def wrap_unary(self, behavior: UnaryBehavior, method: str) -> UnaryBehavior:
        short = short_method(method)
        duration = API_REQUEST_DURATION.labels(short)

        async def measured(request: Any, context: grpc.aio.ServicerContext) -> Any:
            start = time.perf_counter()
            failure: BaseException | None = None
            try:
                return await behavior(request, context)
            except BaseException as exc:
                failure = exc
                raise
            finally:
                duration.observe(time.perf_counter() - start)
                API_REQUESTS.labels(short, _final_code(context, failure)).inc()

        return measured

    def wrap_stream(self, behavior: StreamBehavior, method: str) -> StreamBehavior:
        short = short_method(method)
        duration = API_REQUEST_DURATION.labels(short)

        async def measured(request: Any, context: grpc.aio.ServicerContext) -> AsyncGenerator[Any, None]:
            start = time.perf_counter()
            failure: BaseException | None = None
            try:
                async with aclosing(behavior(request, context)) as responses:
                    async for response in responses:
                        yield response
            except GeneratorExit:
                failure = asyncio.CancelledError()  # the consumer went away: the client cancelled
                raise
            except BaseException as exc:
                failure = exc
                raise
            finally:
                duration.observe(time.perf_counter() - start)
                API_REQUESTS.labels(short, _final_code(context, failure)).inc()

        return measured


def default_interceptors() -> list[grpc.aio.ServerInterceptor]:
    """The standard chain, outermost first: request context, metrics, errors."""
    return [RequestContextInterceptor(), MetricsInterceptor(), ErrorInterceptor()]
