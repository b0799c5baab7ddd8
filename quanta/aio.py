"""The SDK for asyncio: :class:`Client` has the methods of :class:`quanta.Client`,
as coroutines (lists and streams as async iterators), built from the same request
builders (:mod:`quanta.calls`) and raising the same exceptions (:mod:`quanta.errors`).

    import quanta.aio

    async with quanta.aio.Client() as quanta:
        await quanta.create_vm("web-1", flavor="small", image="ubuntu")
        vm = await quanta.wait_for_vm("web-1", "RUNNING")       # watches, does not poll
        async for event in quanta.watch_vms(timeout=30):
            print(event.type, event.vm.name, event.vm.state)

The channel is opened on the first call, in the event loop that makes it; use a
client in one event loop only.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncGenerator, Callable, Coroutine, Iterable
from typing import Any, Concatenate, ParamSpec, TypeVar

import grpc

from controlplane.gen.quanta.v1 import host_pb2, vm_pb2
from quanta.calls import STUBS, Calls, ClientBase, Pages, Stream, Unary, named
from quanta.methods import Methods, install
from quanta.waits import DrainWait, VmSetWait, VmsWait, VmWait

__all__ = ["Client"]

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


def unary(build: Callable[Concatenate[Calls, P], Unary[R]]
          ) -> Callable[Concatenate[Client, P], Coroutine[Any, Any, R]]:
    """The coroutine SDK method for a request builder."""
    @functools.wraps(build)
    async def method(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return await self._unary(build(self._calls, *args, **kwargs))
    return method


def pages(build: Callable[Concatenate[Calls, P], Pages[T]]
          ) -> Callable[Concatenate[Client, P], AsyncGenerator[T, None]]:
    """The SDK method that yields every item of a paginated list (an async iterator)."""
    @functools.wraps(build)
    def method(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> AsyncGenerator[T, None]:
        return self._pages(build(self._calls, *args, **kwargs))
    return method


def listed(build: Callable[Concatenate[Calls, P], Pages[T]]
           ) -> Callable[Concatenate[Client, P], Coroutine[Any, Any, list[T]]]:
    """The coroutine SDK method that returns every item of a paginated list at once."""
    @functools.wraps(build)
    async def method(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> list[T]:
        return [item async for item in self._pages(build(self._calls, *args, **kwargs))]
    return method


def stream(build: Callable[Concatenate[Calls, P], Stream[T]]
           ) -> Callable[Concatenate[Client, P], AsyncGenerator[T, None]]:
    """The SDK method that yields a server stream's messages (an async iterator)."""
    @functools.wraps(build)
    def method(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> AsyncGenerator[T, None]:
        return self._stream(build(self._calls, *args, **kwargs))
    return method


class Client(ClientBase, Methods):
    """:class:`quanta.Client` for asyncio: same arguments, same settings resolution,
    same methods, awaited. ``async with`` closes it; or call :meth:`close`."""

    _channel: grpc.aio.Channel | None = None

    def _stub(self, service: str) -> Any:
        if self._channel is None:  # opened in the running loop: a grpc.aio channel belongs to one
            if self._credentials is not None:
                self._channel = grpc.aio.secure_channel(self.endpoint, self._credentials, options=self._options)
            else:
                self._channel = grpc.aio.insecure_channel(self.endpoint, options=self._options)
            self._stubs = {name: stub(self._channel) for name, stub in STUBS.items()}
        return self._stubs[service]

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # How calls are carried out: the only part the blocking client does differently.
    async def _unary(self, call: Unary[R]) -> R:
        method = getattr(self._stub(call.service), call.method)
        try:
            response = await method(call.request, timeout=call.timeout or self.timeout, metadata=self._metadata)
        except grpc.RpcError as err:
            raise self._error(err) from None
        return call.parse(response)

    async def _pages(self, listing: Pages[T]) -> AsyncGenerator[T, None]:
        token = ""
        while True:
            items, token = listing.read(await self._unary(listing.page(token)))
            for item in items:
                yield item
            if not token:
                return

    async def _stream(self, call: Stream[T]) -> AsyncGenerator[T, None]:
        """The items of a server stream (see :class:`quanta.calls.Stream`); ends quietly
        when its timeout (if any) runs out, raises QuantaError for anything else, and
        cancels the call when abandoned."""
        responses = getattr(self._stub(call.service), call.method)(
            call.request, timeout=call.timeout, metadata=self._metadata)
        received = False
        instead: Stream[T] | None = None
        try:
            async for response in responses:
                received = True
                if call.items is None:
                    yield response
                else:
                    for item in getattr(response, call.items):
                        yield item
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.DEADLINE_EXCEEDED and call.timeout is not None:
                return
            instead = call.instead(err.code(), received)
            if instead is None:
                raise self._error(err) from None
        finally:
            responses.cancel()
        if instead is not None:
            async with contextlib.aclosing(self._stream(instead)) as older:
                async for item in older:
                    yield item

    async def wait_for_vm(self, vm_id: str, state: str = "RUNNING", *, timeout: float = 60.0,
                          address: bool = False) -> vm_pb2.Vm:
        """Return once the VM is in ``state`` (e.g. "RUNNING") and, with ``address``,
        has at least one address; watching, not polling. Raises WaitTimeout (a
        TimeoutError) with the VM as last seen."""
        wait = VmWait(self.vm_name(vm_id), state, address=address)
        async with contextlib.aclosing(self.watch_vms(timeout=timeout)) as events:  # ends after timeout
            async for event in events:
                if (vm := wait.seen(event)) is not None:
                    return vm
        raise wait.timed_out(timeout)

    async def wait_for_vms(self, vm_ids: Iterable[str], state: str = "RUNNING", *, timeout: float = 60.0,
                           address: bool = False) -> list[vm_pb2.Vm]:
        """As :meth:`quanta.Client.wait_for_vms`: one watch for several VMs."""
        wait = VmsWait([self.vm_name(v) for v in vm_ids], state, address=address)
        async with contextlib.aclosing(self.watch_vms(timeout=timeout)) as events:
            async for event in events:
                if (vms := wait.seen(event)) is not None:
                    return vms
        raise wait.timed_out(timeout)

    async def wait_for_vm_set(self, set_id: str, state: str = "RUNNING", *, timeout: float = 300.0,
                              address: bool = False,
                              on_progress: Callable[[VmSetWait], None] | None = None) -> list[vm_pb2.Vm]:
        """As :meth:`quanta.Client.wait_for_vm_set`: reads the set, watches its members;
        VmSetFailed, WaitTimeout, NotFound."""
        wait = VmSetWait(await self.get_vm_set(set_id), state, address=address, on_progress=on_progress)
        wait.start()
        async with contextlib.aclosing(self.watch_vms(timeout=timeout)) as events:  # ends after timeout
            async for event in events:
                if (vms := wait.seen(event)) is not None:
                    return vms
                if wait.gone:
                    raise wait.failed(await self.get_vm_set(set_id))
        raise wait.timed_out(timeout, await self.get_vm_set(set_id))

    async def drain_host(self, host_id: str, *, wait: bool = False, timeout_s: float = 300.0,
                         on_progress: Callable[[host_pb2.Host], None] | None = None) -> host_pb2.Host:
        """As :meth:`quanta.Client.drain_host`."""
        host = await self._unary(self._calls.drain_host(host_id))
        if not wait:
            return host
        return await self.wait_for_host_drained(host_id, timeout_s=timeout_s, on_progress=on_progress)

    async def wait_for_host_drained(self, host_id: str, *, timeout_s: float = 300.0,
                                    on_progress: Callable[[host_pb2.Host], None] | None = None) -> host_pb2.Host:
        """As :meth:`quanta.Client.wait_for_host_drained`: watches; WaitTimeout, NotFound."""
        wait = DrainWait(named("hosts/", host_id), on_progress)
        if (done := wait.start(await self.get_host(host_id))) is not None:
            return done
        async with contextlib.aclosing(self.watch_hosts(timeout=timeout_s)) as events:  # ends after timeout_s
            async for event in events:
                if (done := wait.seen(event)) is not None:
                    return done
        raise wait.timed_out(timeout_s)


install(Client, unary=unary, pages=pages, listed=listed, stream=stream)
