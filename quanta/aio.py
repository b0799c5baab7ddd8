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


class Client(ClientBase):
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
        """The messages of a server stream; ends quietly when its timeout (if any) runs
        out, raises QuantaError for anything else, and cancels the call when abandoned."""
        responses = getattr(self._stub(call.service), call.method)(
            call.request, timeout=call.timeout, metadata=self._metadata)
        try:
            async for response in responses:
                yield response
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.DEADLINE_EXCEEDED and call.timeout is not None:
                return
            raise self._error(err) from None
        finally:
            responses.cancel()

    # VMs
    create_vm = unary(Calls.create_vm)
    create_vms = unary(Calls.create_vms)
    plan_vms = unary(Calls.plan_vms)
    get_vm_set = unary(Calls.get_vm_set)
    get_vm = unary(Calls.get_vm)
    list_vms = pages(Calls.list_vms)
    delete_vm = unary(Calls.delete_vm)
    watch_vms = stream(Calls.watch_vms)
    start_vm = unary(Calls.start_vm)
    stop_vm = unary(Calls.stop_vm)
    restart_vm = unary(Calls.restart_vm)
    update_vm = unary(Calls.update_vm)
    resize_vm = unary(Calls.resize_vm)

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

    attach_disk = unary(Calls.attach_disk)
    detach_disk = unary(Calls.detach_disk)

    # Networks
    create_network = unary(Calls.create_network)
    get_network = unary(Calls.get_network)
    list_networks = listed(Calls.list_networks)
    update_network = unary(Calls.update_network)
    delete_network = unary(Calls.delete_network)
    watch_networks = stream(Calls.watch_networks)

    # Persistent disks
    create_disk = unary(Calls.create_disk)
    get_disk = unary(Calls.get_disk)
    list_disks = listed(Calls.list_disks)
    update_disk = unary(Calls.update_disk)
    delete_disk = unary(Calls.delete_disk)
    watch_disks = stream(Calls.watch_disks)

    # Hosts
    list_hosts = pages(Calls.list_hosts)
    get_host = unary(Calls.get_host)
    set_maintenance = unary(Calls.set_maintenance)
    delete_host = unary(Calls.delete_host)
    watch_hosts = stream(Calls.watch_hosts)

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

    list_orphans = pages(Calls.list_orphans)
    adopt_orphan = unary(Calls.adopt_orphan)
    destroy_orphan = unary(Calls.destroy_orphan)

    # Tenants, projects and quotas
    create_tenant = unary(Calls.create_tenant)
    get_tenant = unary(Calls.get_tenant)
    list_tenants = listed(Calls.list_tenants)
    update_tenant = unary(Calls.update_tenant)
    delete_tenant = unary(Calls.delete_tenant)
    create_project = unary(Calls.create_project)
    get_project = unary(Calls.get_project)
    list_projects = listed(Calls.list_projects)
    delete_project = unary(Calls.delete_project)
    get_quota = unary(Calls.get_quota)
    update_quota = unary(Calls.update_quota)
    list_quotas = listed(Calls.list_quotas)

    # Catalog
    create_flavor = unary(Calls.create_flavor)
    list_flavors = listed(Calls.list_flavors)
    delete_flavor = unary(Calls.delete_flavor)
    create_image = unary(Calls.create_image)
    list_images = listed(Calls.list_images)
    delete_image = unary(Calls.delete_image)

    # Tokens and audit
    create_token = unary(Calls.create_token)
    get_token = unary(Calls.get_token)
    revoke_token = unary(Calls.revoke_token)
    whoami = unary(Calls.whoami)
    list_audit = listed(Calls.list_audit)
    watch_audit = stream(Calls.watch_audit)
