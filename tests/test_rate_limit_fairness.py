"""Per-caller rate limits on real frontends: one tenant flooding the API is refused
with RESOURCE_EXHAUSTED and a retry delay, while another tenant's calls go through;
and a caller's limit holds across frontends."""

from __future__ import annotations

import threading
import time

import grpc

from controlplane.api.errors import ApiError
from controlplane.etcd.server import free_port
from controlplane.local import LocalSystem
from controlplane.sdk import Client
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
        stop = threading.Event()

        def flood() -> None:
            with Client(system.endpoint, token=loud_token, tenant="loud", project="p") as loud:
                while not stop.is_set():
                    try:
                        loud.get_project("p")
                    except ApiError as err:
                        refusals.append(err)

        threads = [threading.Thread(target=flood) for _ in range(4)]
        for thread in threads:
            thread.start()
        try:
            wait_until(lambda: refusals, timeout=30, message="the flooding tenant to be limited")
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


def _flood(endpoint: str, token: str, stop: threading.Event, admitted: list[float]) -> None:
    with Client(endpoint, token=token, tenant="loud", project="p", own_connection=True) as client:
        while not stop.is_set():
            try:
                client.get_project("p")
                admitted.append(time.monotonic())
            except ApiError:
                pass


def _admitted_rate(endpoints: list[str], token: str, seconds: float = 8.0, settle_s: float = 4.0) -> float:
    """Requests/s let through, with 3 callers per endpoint flooding, once ``settle_s``
    have passed (the shares follow demand within about a second)."""
    stop = threading.Event()
    admitted: list[float] = []
    threads = [threading.Thread(target=_flood, args=(endpoint, token, stop, admitted))
               for endpoint in endpoints for _ in range(3)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    try:
        stop.wait(seconds)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    return sum(1 for t in admitted if t >= started + settle_s) / (seconds - settle_s)


def test_a_callers_limit_holds_across_frontends() -> None:
    """One caller flooding two frontends (each on its own address) gets about the
    rate in total, not twice it; flooding one of them alone, it gets all of it there."""
    with LocalSystem(hosts=1, frontends=1, latency="zero", metrics=False,
                     frontend_args=("--rate-limit", str(RATE), "--rate-burst", str(RATE))) as system:
        second = f"127.0.0.1:{free_port()}"
        system.add_frontend("frontend-b", second)
        with system.client(ensure_project=False) as admin:
            admin.create_tenant("loud")
            admin.create_project("p", tenant="loud")
            token = admin.create_token("loud-bot", [("tenant-admin", "loud", "")]).bearer_token
        both = _admitted_rate([system.endpoint, second], token)
        one = _admitted_rate([second], token)
    # Each frontend alone would let RATE/s through: 2 x RATE together without sharing.
    assert both <= 1.5 * RATE, f"{both:.1f}/s through two frontends"
    assert one >= 0.6 * RATE, f"{one:.1f}/s through the only frontend used"
