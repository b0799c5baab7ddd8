"""Outage bookkeeping (controlplane.etcd.reachability) and which etcd failures are
transient (controlplane.etcd.outages): pure, no etcd."""

from __future__ import annotations

import grpc
import pytest
from prometheus_client import REGISTRY

from controlplane.etcd.client import Compacted, EtcdError, _never_sent
from controlplane.etcd.outages import is_transient
from controlplane.etcd.reachability import Reachability


def _sample(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def test_an_outage_is_counted_once_from_its_first_failure_to_the_next_answer() -> None:
    now = [100.0]
    reach = Reachability(clock=lambda: now[0])
    seconds, outages = _sample("quanta_etcd_unreachable_seconds_total"), _sample("quanta_etcd_outages_total")
    assert reach.ok and _sample("quanta_etcd_reachable") == 1
    assert reach.reachable() == 0.0  # no outage: nothing to end

    reach.unreachable("range: UNAVAILABLE")
    now[0] += 2.0
    reach.unreachable("watch: UNAVAILABLE")  # the same outage: its start stays
    assert not reach.ok and _sample("quanta_etcd_reachable") == 0
    now[0] += 1.5
    assert reach.reachable() == pytest.approx(3.5)
    assert reach.ok and _sample("quanta_etcd_reachable") == 1
    assert _sample("quanta_etcd_unreachable_seconds_total") == pytest.approx(seconds + 3.5)
    assert _sample("quanta_etcd_outages_total") == outages + 1


@pytest.mark.parametrize("error, transient", [
    (EtcdError("no leader", grpc.StatusCode.UNAVAILABLE), True),
    (EtcdError("deadline", grpc.StatusCode.DEADLINE_EXCEEDED), True),
    (EtcdError("too many ops", grpc.StatusCode.INVALID_ARGUMENT), False),
    (EtcdError("watch canceled"), False),
    (Compacted(42), False),  # re-list, not wait
    (RuntimeError("not etcd"), False),
])
def test_only_an_unreachable_etcd_is_transient(error: BaseException, transient: bool) -> None:
    assert is_transient(error) is transient


def test_a_keepalive_that_dies_of_the_unforeseen_loses_its_lease_loudly() -> None:
    import asyncio

    from controlplane.etcd.lease import Lease

    class Broken:  # grants a lease, then fails in a way nobody foresaw
        async def grant(self, ttl: int) -> tuple[int, int]:
            return 1, ttl

        def keepalive_stream(self):
            raise RuntimeError("something nobody foresaw")

    async def main() -> bool:
        lease = await Lease(Broken(), 10).grant()  # type: ignore[arg-type]
        await asyncio.wait_for(lease.lost.wait(), 5)
        return lease.lost.is_set()

    assert asyncio.run(main())


@pytest.mark.parametrize(("code", "details", "never_sent"), [
    (grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:2379: "
     "Failed to connect to remote host: Connection refused", True),
    (grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses; last error: UNKNOWN: tcp handshaker shutdown",
     True),
    (grpc.StatusCode.UNAVAILABLE, "connections to all backends failing; last error: UNKNOWN: ipv4:127.0.0.1:2379: "
     "Failed to connect to remote host: Connection refused", True),  # round_robin, several endpoints
    (grpc.StatusCode.UNAVAILABLE, "etcdserver: request timed out", False),  # etcd had it: it may apply
    (grpc.StatusCode.UNAVAILABLE, "Socket closed", False),  # sent, then the connection broke
    (grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", False),
])
def test_only_a_request_no_connection_took_counts_as_never_sent(code, details: str, never_sent: bool) -> None:
    """Writes are sent again only when gRPC had no connection to send them on."""
    err = grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)
    assert _never_sent(err) is never_sent
