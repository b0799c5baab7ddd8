"""Per-caller rate limits on real frontends: one tenant flooding the API is refused
with RESOURCE_EXHAUSTED and a retry delay, while another tenant's calls go through;
and a caller's limit holds across frontends."""

from __future__ import annotations

import threading
import time

import grpc

from controlplane.api.errors import ApiError
from controlplane.etcd.server import free_port
from quanta.client import Client
from quanta.local import LocalSystem
from tests.conftest import wait_until


def test_a_flooding_tenant_cannot_starve_another() -> None:
    with LocalSystem(hosts=1, frontends=1, latency="zero", metrics=False,
                     frontend_args=("--rate-limit", "20", "--rate-burst", "20")) as system:
        with system.client(ensure_project=False) as admin:
            for tenant in ("loud", "quiet"):
                admin.create_tenant(tenant)
                admin.create_project("p", tenant=tenant)
            loud_token = admin.create_token("loud-bot", [("tenant-admin", "loud", "")]).bearer_token
            quiet_token = admin.create_token("quiet-bot", [("tenant-admin", "quiet", "")]).bearer_token
        refusals: list[ApiError] = []
        served: list[str] = []
        stop = threading.Event()

        def flood() -> None:
            with Client(system.endpoint, token=loud_token, tenant="loud", project="p") as loud:
                while not stop.is_set():
                    try:
                        served.append(loud.get_project("p").name)
                    except ApiError as err:
                        refusals.append(err)

        threads = [threading.Thread(target=flood) for _ in range(4)]
        for thread in threads:
            thread.start()
        try:
            wait_until(lambda: refusals, timeout=30, message="the flooding tenant to be limited",
                       seen=lambda: f"{len(served)} calls served, {len(refusals)} refused; "
                                    f"{sum(t.is_alive() for t in threads)} of {len(threads)} flooders running")
            with Client(system.endpoint, token=quiet_token, tenant="quiet", project="p") as quiet:
                answered = [quiet.get_project("p").name for _ in range(15)]  # within its own burst
        finally:
            stop.set()
            for thread in threads:
                thread.join(30)
    assert answered == ["tenants/quiet/projects/p"] * 15
    first = refusals[0]
    assert (first.code, first.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED")
    assert first.retry_delay_s is not None and 0 < first.retry_delay_s <= 1
    assert first.metadata["subject"] == "loud-bot"


RATE = 20


def _flood(endpoint: str, token: str, stop: threading.Event, admitted: list[tuple[str, float]]) -> None:
    """One well-behaved client: calls as fast as it can, waiting the retry delay it is
    told when refused."""
    with Client(endpoint, token=token, tenant="loud", project="p", own_connection=True) as client:
        while not stop.is_set():
            try:
                client.get_project("p")
                admitted.append((endpoint, time.monotonic()))
            except ApiError as err:
                stop.wait(err.retry_delay_s or 0.0)


def _admitted_rates(workers: dict[str, int], token: str, seconds: float = 7.0,
                    settle_s: float = 3.0) -> dict[str, float]:
    """Requests/s let through per endpoint, with ``workers[endpoint]`` clients on each,
    once ``settle_s`` have passed (the shares follow demand within a few seconds)."""
    stop = threading.Event()
    admitted: list[tuple[str, float]] = []
    threads = [threading.Thread(target=_flood, args=(endpoint, token, stop, admitted))
               for endpoint, n in workers.items() for _ in range(n)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    try:
        stop.wait(seconds)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    return {endpoint: sum(1 for e, t in admitted if e == endpoint and t >= started + settle_s) / (seconds - settle_s)
            for endpoint in workers}


def test_a_callers_limit_holds_across_frontends() -> None:
    """One caller on two frontends (each on its own address) gets about the rate in
    total, not twice it; a frontend that sees less of it still gets a fair part; on
    one frontend alone it gets all of it there."""
    with LocalSystem(hosts=1, frontends=1, latency="zero", metrics=False,
                     frontend_args=("--rate-limit", str(RATE), "--rate-burst", str(RATE))) as system:
        a, b = system.endpoint, f"127.0.0.1:{free_port()}"
        system.add_frontend("frontend-b", b)
        with system.client(ensure_project=False) as admin:
            admin.create_tenant("loud")
            admin.create_project("p", tenant="loud")
            token = admin.create_token("loud-bot", [("tenant-admin", "loud", "")]).bearer_token
        even = _admitted_rates({a: 2, b: 2}, token)
        uneven = _admitted_rates({a: 1, b: 3}, token)
        alone = _admitted_rates({b: 2}, token)
    # Each frontend alone would let RATE/s through: 2 x RATE together without sharing.
    assert sum(even.values()) <= 1.5 * RATE, f"{even} through two frontends"
    assert sum(uneven.values()) <= 1.5 * RATE, f"{uneven} through two frontends"
    assert uneven[a] >= 0.3 * RATE, f"{uneven}: the frontend with one client of four starved"
    assert alone[b] >= 0.6 * RATE, f"{alone} through the only frontend used"
