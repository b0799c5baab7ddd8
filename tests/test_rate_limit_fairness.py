"""Per-caller rate limits on a real frontend: one tenant flooding the API is refused
with RESOURCE_EXHAUSTED and a retry delay, while another tenant's calls go through."""

from __future__ import annotations

import threading

import grpc

from controlplane.api.errors import ApiError
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
