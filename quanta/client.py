"""Python SDK for Quanta's gRPC API (what the ``quanta`` CLI uses); blocking.

    from quanta import Client, QuotaExceeded
    with Client() as quanta:          # settings: arguments > $QUANTA_* > context > `quanta up`'s
        vm = quanta.create_vm("web-1", flavor="small", image="ubuntu")
        vm = quanta.wait_for_vm("web-1", "RUNNING")

Returns quanta.v1 protobuf messages; raises a :class:`quanta.errors.QuantaError`
subclass (``NotFound``, ``QuotaExceeded``, ``RateLimited``, ...; all of them still
``controlplane.api.errors.ApiError``) for every failed call. Reads, idempotent verbs
and creates of VMs are retried on UNAVAILABLE by the channel's retry policy within
the call's timeout; a create carries a request_id (generated if not given), which
every attempt resends, so a retry never makes a second VM. :mod:`quanta.aio` has the
same client for asyncio.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Concatenate, ParamSpec, TypeVar

import grpc

from controlplane.gen.quanta.v1 import host_pb2, vm_pb2
from quanta.calls import (
    AUDIT,
    FLAVORS,
    HOSTS,
    IMAGES,
    PROJECTS,
    QUOTAS,
    ROLES,
    STUBS,
    TENANTS,
    TOKENS,
    VMS,
    Calls,
    ClientBase,
    Pages,
    Stream,
    Unary,
    named,
)
from quanta.config import DEFAULT_ENDPOINT, local_state_path, settings
from quanta.methods import Methods, install
from quanta.waits import DrainWait, VmSetWait, VmsWait, VmWait

__all__ = ["DEFAULT_ENDPOINT", "ROLES", "Client", "local_state_path", "resolve_endpoint", "resolve_token"]

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


def resolve_endpoint(endpoint: str | None = None) -> str:
    """The endpoint a client would use: ``endpoint``, else $QUANTA_ENDPOINT, else the
    current context's, else `quanta up`'s (see :mod:`quanta.config`)."""
    return settings(endpoint=endpoint).endpoint


def resolve_token(token: str | None = None) -> str:
    """The token a client would send: ``token``, else $QUANTA_TOKEN, else the current
    context's, else `quanta up`'s admin token ("" if none)."""
    return settings(token=token).token


def unary(build: Callable[Concatenate[Calls, P], Unary[R]]) -> Callable[Concatenate[Client, P], R]:
    """The blocking SDK method for a request builder."""
    @functools.wraps(build)
    def method(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return self._unary(build(self._calls, *args, **kwargs))
    return method


def pages(build: Callable[Concatenate[Calls, P], Pages[T]]) -> Callable[Concatenate[Client, P], Iterator[T]]:
    """The SDK method that yields every item of a paginated list."""
    @functools.wraps(build)
    def method(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> Iterator[T]:
        return self._pages(build(self._calls, *args, **kwargs))
    return method


def listed(build: Callable[Concatenate[Calls, P], Pages[T]]) -> Callable[Concatenate[Client, P], list[T]]:
    """The SDK method that returns every item of a paginated list at once."""
    @functools.wraps(build)
    def method(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> list[T]:
        return list(self._pages(build(self._calls, *args, **kwargs)))
    return method


def stream(build: Callable[Concatenate[Calls, P], Stream[T]]) -> Callable[Concatenate[Client, P], Iterator[T]]:
    """The SDK method that yields a server stream's messages."""
    @functools.wraps(build)
    def method(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> Iterator[T]:
        return self._stream(build(self._calls, *args, **kwargs))
    return method


class _Metadata(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Adds fixed metadata (the bearer token) to every call."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    def _details(self, details: Any) -> Any:
        return details._replace(metadata=(*(details.metadata or ()), *self._metadata))

    def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return continuation(self._details(client_call_details), request)


class Client(ClientBase, Methods):
    """A connection to Quanta's API as one caller (``token``) in one project (the
    default for VM calls; tenant and project methods name their resources). Settings
    not given come from the environment, the config context, or ``quanta up`` (see
    :mod:`quanta.config`). Use it from one thread at a time per call, or share it:
    gRPC channels are thread-safe."""

    def __init__(self, endpoint: str | None = None, *, token: str | None = None, tenant: str | None = None,
                 project: str | None = None, timeout: float = 10.0, tls_ca: str | None = None,
                 own_connection: bool = False, context: str | None = None) -> None:
        super().__init__(endpoint, token=token, tenant=tenant, project=project, timeout=timeout, tls_ca=tls_ca,
                         own_connection=own_connection, context=context)
        if self._credentials is not None:
            self._raw_channel = grpc.secure_channel(self.endpoint, self._credentials, options=self._options)
        else:
            self._raw_channel = grpc.insecure_channel(self.endpoint, options=self._options)
        # The token rides on the channel, so raw stub calls (below) are authenticated too.
        self._channel = (grpc.intercept_channel(self._raw_channel, _Metadata(self._metadata))
                         if self._metadata else self._raw_channel)
        self._stubs = {service: stub(self._channel) for service, stub in STUBS.items()}
        # The raw stubs, for tests that send requests the SDK's methods would not build.
        self._vms, self._hosts, self._tenants = self._stubs[VMS], self._stubs[HOSTS], self._stubs[TENANTS]
        self._projects, self._quotas, self._flavors = self._stubs[PROJECTS], self._stubs[QUOTAS], self._stubs[FLAVORS]
        self._images, self._tokens, self._audit = self._stubs[IMAGES], self._stubs[TOKENS], self._stubs[AUDIT]

    def close(self) -> None:
        self._raw_channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # How calls are carried out: the only part the asyncio client does differently.
    def _unary(self, call: Unary[R]) -> R:
        return call.parse(self._call(getattr(self._stubs[call.service], call.method), call.request,
                                     timeout=call.timeout))

    def _call(self, method: Any, request: Any, *, timeout: float | None = None) -> Any:
        """``method`` (a raw stub's) with ``request`` within ``timeout`` (default: the
        client's), retried as the channel's policy says; raises QuantaError."""
        try:
            return method(request, timeout=timeout or self.timeout)
        except grpc.RpcError as err:
            raise self._error(err) from None

    def _pages(self, listing: Pages[T]) -> Iterator[T]:
        token = ""
        while True:
            items, token = listing.read(self._unary(listing.page(token)))
            yield from items
            if not token:
                return

    def _stream(self, call: Stream[T]) -> Iterator[T]:
        """The items of a server stream (see :class:`Stream`); ends quietly when its
        timeout (if any) runs out, raises QuantaError for anything else, and cancels the
        call when abandoned."""
        responses: Any = getattr(self._stubs[call.service], call.method)(call.request, timeout=call.timeout)
        received = False
        instead: Stream[T] | None = None
        try:
            for response in responses:
                received = True
                if call.items is None:
                    yield response
                else:
                    yield from getattr(response, call.items)
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.DEADLINE_EXCEEDED and call.timeout is not None:
                return
            instead = call.instead(err.code(), received)
            if instead is None:
                raise self._error(err) from None
        finally:
            responses.cancel()
        if instead is not None:
            yield from self._stream(instead)

    def wait_for_vm(self, vm_id: str, state: str = "RUNNING", *, timeout: float = 60.0,
                    address: bool = False) -> vm_pb2.Vm:
        """Block until the VM is in ``state`` (e.g. "RUNNING", "STOPPED") and, with
        ``address``, has at least one address; watching, not polling. Raises
        WaitTimeout (a TimeoutError) with the VM as last seen."""
        wait = VmWait(self.vm_name(vm_id), state, address=address)
        deadline = time.monotonic() + timeout
        for event in self.watch_vms(timeout=timeout):
            if (vm := wait.seen(event)) is not None:
                return vm
            if time.monotonic() > deadline:
                break
        raise wait.timed_out(timeout)

    def wait_for_vms(self, vm_ids: Iterable[str], state: str = "RUNNING", *, timeout: float = 60.0,
                     address: bool = False) -> list[vm_pb2.Vm]:
        """:meth:`wait_for_vm` for several VMs through one watch; returns them in the
        order given once every one is as waited for. WaitTimeout (``.last``: the VMs
        still awaited, as last seen)."""
        wait = VmsWait([self.vm_name(v) for v in vm_ids], state, address=address)
        deadline = time.monotonic() + timeout
        for event in self.watch_vms(timeout=timeout):
            if (vms := wait.seen(event)) is not None:
                return vms
            if time.monotonic() > deadline:
                break
        raise wait.timed_out(timeout)

    def wait_for_vm_set(self, set_id: str, state: str = "RUNNING", *, timeout: float = 300.0,
                        address: bool = False,
                        on_progress: Callable[[VmSetWait], None] | None = None) -> list[vm_pb2.Vm]:
        """Block until every member of the VM set ``set_id`` (see :meth:`create_vms`)
        is in ``state`` and, with ``address``, has an address; returns the members in
        the set's order. Reads the set once, then watches its members (no polling);
        ``on_progress(wait)`` is called on every change of a member (``wait.placed``,
        ``len(wait.done)`` of ``len(wait.waits)``). Raises VmSetFailed when the set
        FAILED (its deadline passed before it fitted) or a member was deleted meanwhile,
        WaitTimeout (saying the set's state and condition) after ``timeout``, NotFound
        for an unknown set."""
        wait = VmSetWait(self.get_vm_set(set_id), state, address=address, on_progress=on_progress)
        wait.start()
        deadline = time.monotonic() + timeout
        for event in self.watch_vms(timeout=timeout):
            if (vms := wait.seen(event)) is not None:
                return vms
            if wait.gone:
                raise wait.failed(self.get_vm_set(set_id))
            if time.monotonic() > deadline:
                break
        raise wait.timed_out(timeout, self.get_vm_set(set_id))

    def drain_host(self, host_id: str, *, wait: bool = False, timeout_s: float = 300.0,
                   on_progress: Callable[[host_pb2.Host], None] | None = None) -> host_pb2.Host:
        """Have the host emptied: maintenance, then the scheduler moves its VMs off by
        restart policy (ALWAYS: placed again elsewhere; NEVER: deleted). Returns at
        once with the host (DRAINING, or DRAINED when empty); with ``wait``, as
        :meth:`wait_for_host_drained` does. Idempotent; ``set_maintenance(host,
        False)`` ends the drain."""
        host = self._unary(self._calls.drain_host(host_id))
        return self.wait_for_host_drained(host_id, timeout_s=timeout_s, on_progress=on_progress) if wait else host

    def wait_for_host_drained(self, host_id: str, *, timeout_s: float = 300.0,
                              on_progress: Callable[[host_pb2.Host], None] | None = None) -> host_pb2.Host:
        """Block until the host holds no VMs, watching, not polling; returns it then
        (a host forgotten meanwhile was empty: its last known state, with no VMs).
        ``on_progress(host)`` is called when the host is first seen and whenever
        its VM count changes. Raises WaitTimeout (a TimeoutError) after
        ``timeout_s`` (the drain goes on), NotFound for an unknown host."""
        wait = DrainWait(named("hosts/", host_id), on_progress)
        if (done := wait.start(self.get_host(host_id))) is not None:  # NotFound now, not a silent timeout
            return done
        deadline = time.monotonic() + timeout_s
        for event in self.watch_hosts(timeout=timeout_s):
            if (done := wait.seen(event)) is not None:
                return done
            if time.monotonic() > deadline:
                break
        raise wait.timed_out(timeout_s)


install(Client, unary=unary, pages=pages, listed=listed, stream=stream)
