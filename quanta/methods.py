"""The SDK's method table, written once for both clients: which request builder of
:class:`quanta.calls.Calls` each method calls, and how its answer is handed back
(``unary``: one message; ``pages``: every item of a paginated list, as an iterator;
``listed``: the same, as one list; ``stream``: a server stream's messages).

:class:`Methods` holds the table as markers; each client, once its class is made,
calls :func:`install` with its own way of making a method of each kind (blocking in
:mod:`quanta.client`, coroutines and async iterators in :mod:`quanta.aio`), so each
method is a plain function of its client's class. The markers' ``__get__`` overloads
only tell type checkers what each client's method takes and returns."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Coroutine, Iterator
from typing import TYPE_CHECKING, Any, Concatenate, Generic, ParamSpec, TypeVar, overload

from quanta.calls import Calls, Pages, Stream, Unary

if TYPE_CHECKING:
    from quanta import aio, client

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


class _Method:
    """A method of the table not yet installed on a client (see :func:`install`)."""

    def __init__(self, build: Callable[..., Any]) -> None:
        self.build = build


class unary(_Method, Generic[P, R]):  # noqa: N801 - a decorator-like marker, named as the kinds are
    def __init__(self, build: Callable[Concatenate[Calls, P], Unary[R]]) -> None:
        super().__init__(build)

    if TYPE_CHECKING:
        @overload
        def __get__(self, obj: client.Client, owner: type | None = None) -> Callable[P, R]: ...
        @overload
        def __get__(self, obj: aio.Client, owner: type | None = None) -> Callable[P, Coroutine[Any, Any, R]]: ...
        def __get__(self, obj: object, owner: type | None = None) -> Any: ...


class listed(unary[P, list[T]]):  # noqa: N801
    """Every item of a paginated list at once: typed as a unary call answering a list."""

    def __init__(self, build: Callable[Concatenate[Calls, P], Pages[T]]) -> None:
        _Method.__init__(self, build)


class _Items(_Method, Generic[P, T]):
    """Items handed back one by one: an iterator, or an async iterator."""

    if TYPE_CHECKING:
        @overload
        def __get__(self, obj: client.Client, owner: type | None = None) -> Callable[P, Iterator[T]]: ...
        @overload
        def __get__(self, obj: aio.Client, owner: type | None = None) -> Callable[P, AsyncGenerator[T, None]]: ...
        def __get__(self, obj: object, owner: type | None = None) -> Any: ...


class pages(_Items[P, T]):  # noqa: N801
    def __init__(self, build: Callable[Concatenate[Calls, P], Pages[T]]) -> None:
        super().__init__(build)


class stream(_Items[P, T]):  # noqa: N801
    def __init__(self, build: Callable[Concatenate[Calls, P], Stream[T]]) -> None:
        super().__init__(build)


class Methods:
    """The SDK methods both clients have that only build a request and hand back its
    answer (the waits and ``drain_host``, written per client, are beside them there)."""

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


def install(cls: type[Methods], **kinds: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
    """Give ``cls`` (a client, subclass of :class:`Methods`) each method of the table,
    made by ``kinds[kind]`` (``unary=``, ``pages=``, ``listed=``, ``stream=``) from
    its request builder. Raises KeyError for a kind not given."""
    for name, marker in vars(Methods).items():
        if isinstance(marker, _Method):
            setattr(cls, name, kinds[type(marker).__name__](marker.build))
