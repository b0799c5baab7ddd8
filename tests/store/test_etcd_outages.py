"""etcd outages against the client and its leases (DESIGN.md: every process rides
out an etcd outage shorter than its lease TTL, and fails over between endpoints).

Each test starts an etcd of its own (the session's is shared by other tests) and
takes it away: SIGKILL + restart on the same data (a crash), SIGSTOP (a member
that hangs: its connections stay open and answer nothing), a leader election.
"""

from __future__ import annotations

import asyncio
import collections
import signal
import time

import grpc
import pytest
from prometheus_client import REGISTRY

from controlplane.etcd import EtcdClient, EtcdError, Lease
from controlplane.etcd.server import EtcdCluster, EtcdServer
from tests.conftest import async_wait_until, describe_tasks, running


def _outages() -> float:
    return REGISTRY.get_sample_value("quanta_etcd_outages_total") or 0.0


async def _connected_again(client: EtcdClient, timeout: float = 10.0) -> None:
    """Wait until ``client`` reaches etcd again after a restart.

    A restarted etcd answers its health check while this client's channel may still
    be in its reconnect backoff (capped at 1 s, with jitter, in client.py): its calls
    fail UNAVAILABLE until then, and a client with a 1 s timeout can spend all of one
    read's retries inside that backoff."""
    errors: list[str] = []

    async def reads() -> bool:
        try:
            await client.get(b"/outage/probe")
        except EtcdError as err:
            if err.code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise
            errors[:] = [str(err)]
            return False
        return True
    await async_wait_until(reads, timeout=timeout, interval=0.1, message="the client reads from etcd again",
                           seen=lambda: errors)


async def _renewed_after(client: EtcdClient, lease: Lease, moment: float, ttl: int) -> None:
    """Wait until etcd holds the lease with a TTL renewed after ``moment`` (monotonic)."""
    left: list[float] = []
    await _connected_again(client)

    async def renewed() -> bool:
        remaining = await client.time_to_live(lease.id)
        left[:] = [remaining]
        return remaining > 0 and time.monotonic() + remaining > moment + ttl / 2
    await async_wait_until(renewed, timeout=ttl, interval=0.2, message=f"lease {lease.id:x} renewed by etcd",
                           seen=lambda: f"TTL left {left} s, lost {lease.lost.is_set()}")


@pytest.mark.parametrize("fault", ["crash", "hang"])
def test_lease_rides_out_an_outage_shorter_than_its_ttl(tmp_path, fault: str) -> None:
    """3 s without etcd against a 10 s lease: not lost, its key kept, renewed after,
    and the outage counted."""
    ttl = 10

    async def main(server: EtcdServer) -> None:
        async with EtcdClient(server.endpoint, timeout=1.0) as client:
            lease = await Lease(client, ttl).grant()
            await client.put(b"/outage/key", b"v", lease=lease.id)
            outages = _outages()
            if fault == "crash":
                server.kill(signal.SIGKILL)
            else:
                server.process.send_signal(signal.SIGSTOP)
            try:
                started = time.monotonic()
                with pytest.raises(EtcdError) as refused:  # what a request meets meanwhile
                    await client.get(b"/outage/key")
                assert refused.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
                assert not client.reachability.ok
                await asyncio.sleep(3 - (time.monotonic() - started))  # the outage itself: 3 s in all
            finally:
                if fault == "crash":
                    await asyncio.to_thread(server.restart)
                else:
                    server.process.send_signal(signal.SIGCONT)
            back = time.monotonic()
            assert not lease.lost.is_set(), "a 3 s outage lost a 10 s lease"
            await _renewed_after(client, lease, back, ttl)
            assert not lease.lost.is_set()
            assert (await client.get(b"/outage/key")).lease == lease.id
            assert _outages() > outages, "the outage was not reported"
            assert client.reachability.ok
            await lease.revoke()

    with EtcdServer(str(tmp_path / "etcd")) as server:
        asyncio.run(main(server))


def test_lease_is_lost_when_the_outage_outlasts_its_ttl(tmp_path) -> None:
    """No keepalive answered for a whole TTL: lost (within about the TTL), even
    though etcd never said so."""
    ttl = 2

    async def main(server: EtcdServer) -> None:
        async with EtcdClient(server.endpoint) as client:
            lease = await Lease(client, ttl).grant()
            server.process.send_signal(signal.SIGSTOP)
            try:
                stopped = time.monotonic()
                await async_wait_until(lease.lost.is_set, timeout=ttl + 3, message="the lease declared lost",
                                       seen=lambda: f"not lost after {time.monotonic() - stopped:.1f} s")
                lasted = time.monotonic() - stopped
            finally:
                server.process.send_signal(signal.SIGCONT)
            # Counted from the last answered keepalive (at most a third of the TTL before the stop).
            assert ttl * 2 / 3 - 0.1 <= lasted <= ttl + 1.0, lasted
            assert not client.reachability.ok

    with EtcdServer(str(tmp_path / "etcd")) as server:
        asyncio.run(main(server))


def test_lease_fails_over_from_a_hung_member_and_rides_out_elections(tmp_path) -> None:
    """Three members, the client given the two followers: each in turn hangs (SIGSTOP)
    for longer than the lease's TTL, so one of them holds the keepalive stream; then
    the leader crashes and comes back (an election). The keepalive moves to a member
    that answers, and the lease lives on. (A stream left waiting on the hung member
    lost the lease.) The leader is not hung here: etcd before 3.5.3 could renew a
    lease on a leader resuming from a pause without the real leader knowing."""
    ttl = 6  # room for an election (1-2 s here) after a keepalive that waited a third of the TTL

    async def main(cluster: EtcdCluster) -> None:
        leader = cluster.leader()
        followers = [m for i, m in enumerate(cluster.members) if i != leader]
        async with EtcdClient(",".join(m.endpoint for m in followers)) as client:
            lease = await Lease(client, ttl).grant()
            await client.put(b"/outage/key", b"v", lease=lease.id)
            for member in followers:
                member.process.send_signal(signal.SIGSTOP)
                try:
                    await asyncio.sleep(ttl + 1)  # the hang itself: longer than the TTL
                    assert not lease.lost.is_set(), f"lease lost while {member.name} hung"
                finally:
                    member.process.send_signal(signal.SIGCONT)
            cluster.members[leader].kill(signal.SIGKILL)
            await asyncio.to_thread(cluster.leader)  # the election
            await asyncio.to_thread(cluster.restart, leader)
            await _renewed_after(client, lease, time.monotonic(), ttl)
            assert not lease.lost.is_set()
            assert (await client.get(b"/outage/key")).lease == lease.id
            await lease.revoke()

    with EtcdCluster(3, str(tmp_path / "etcd")) as cluster:
        asyncio.run(main(cluster))


@pytest.mark.parametrize("fault", ["crash", "no-quorum"])
def test_watches_resume_after_an_outage(tmp_path, fault: str) -> None:
    """Many watches through an outage (etcd crashes and restarts; or two of three
    members stop): none ends, each delivers what was written after, once. (A watch
    whose reopened stream the server ended before its first message was sent raised
    INTERNAL, and the scheduler and agents exited.)"""
    watches = 100

    async def main(etcd: EtcdServer | EtcdCluster) -> None:
        async with EtcdClient(etcd.endpoint) as client:
            revision = await client.put(b"/watched/before", b"0")
            seen: list[list[bytes]] = [[] for _ in range(watches)]

            async def consume(i: int) -> None:
                async for batch in client.watch(b"/watched/", b"/watched0", start_revision=revision + 1):
                    seen[i].extend(event.kv.key for event in batch.events)

            async with running(*(consume(i) for i in range(watches))) as tasks:
                await client.put(b"/watched/a", b"1")
                await async_wait_until(lambda: all(s == [b"/watched/a"] for s in seen), timeout=10,
                                       message="every watch saw the first put",
                                       seen=lambda: f"{collections.Counter(map(tuple, seen))}; {describe_tasks(tasks)}")
                if isinstance(etcd, EtcdServer):
                    etcd.kill(signal.SIGKILL)
                    await asyncio.sleep(3)  # the outage itself
                    await asyncio.to_thread(etcd.restart)
                else:
                    down = [etcd.leader(), *(i for i in range(3) if i != etcd.leader())][:2]
                    for i in down:
                        await asyncio.to_thread(etcd.members[i].stop)
                    await asyncio.sleep(3)  # the outage itself
                    await asyncio.to_thread(etcd.restart, *down)
                # A write at once: while the channel is still in its reconnect backoff the
                # request is never sent, and sent again once it connects (client.py).
                await client.put(b"/watched/b", b"2")
                await async_wait_until(lambda: all(s == [b"/watched/a", b"/watched/b"] for s in seen),
                                       timeout=20, message="every watch saw the put after the outage",
                                       seen=lambda: f"{collections.Counter(map(tuple, seen))}; {describe_tasks(tasks)}")
                ended = [t for t in tasks if t.done()]
                assert not ended, f"{len(ended)} watches ended: {ended[0].exception()!r}"

    etcd = EtcdServer(str(tmp_path / "etcd")) if fault == "crash" else EtcdCluster(3, str(tmp_path / "etcd"))
    with etcd:
        asyncio.run(main(etcd))


def test_list_and_watch_loops_outlive_a_read_that_gave_up(tmp_path) -> None:
    """A list + watch loop (a scheduler's host view, as a shard taken over mid-outage
    starts one) whose listing gives up while etcd is down (its client's reads retry
    for 1 s; the outage lasts 3) lists again once etcd is back instead of ending, and
    with it the scheduler."""
    from controlplane.models import HostRegistration, Resources
    from controlplane.placement import HostView
    from controlplane.store.hostagent import AgentStore
    from controlplane.store.hosts import HostStore
    from controlplane.store.keys import Keys
    from scheduler.hostsync import HostSync

    async def main(server: EtcdServer) -> None:
        keys = Keys("/outage")
        async with EtcdClient(server.endpoint) as writer, EtcdClient(server.endpoint, timeout=1.0) as reader:
            lease = await Lease(writer, 30).grant()
            agents = AgentStore(writer, keys)
            await agents.register([HostRegistration("h1", "sim", Resources(8, 8192, 100))], lease.id)
            server.kill(signal.SIGKILL)
            sync = HostSync(HostStore(reader, keys), HostView())
            async with running(sync.run()) as (task,):
                await async_wait_until(lambda: not reader.reachability.ok, timeout=10, message="the outage seen",
                                       seen=lambda: describe_tasks([task]))
                await asyncio.sleep(3)  # the outage itself; the listing gives up meanwhile
                assert not task.done(), f"the host view ended: {task.exception()!r}"
                await asyncio.to_thread(server.restart)
                await agents.register([HostRegistration("h2", "sim", Resources(8, 8192, 100))], lease.id)
                await async_wait_until(lambda: sync.view.get("h1") and sync.view.get("h2"), timeout=15,
                                       message="h1 and h2 in the view after the outage",
                                       seen=lambda: f"view {sorted(h.host_id for h in sync.view)}; "
                                                    f"{describe_tasks([task])}")
                assert not task.done()

    with EtcdServer(str(tmp_path / "etcd")) as server:
        asyncio.run(main(server))


def test_a_watch_on_a_hung_member_moves_to_one_that_answers(tmp_path) -> None:
    """Three members; each in turn hangs (SIGSTOP): a watch whose stream it holds
    hears nothing, probes it with a progress request, gets no answer and reopens on
    a member that answers, so what is written meanwhile arrives while the member
    still hangs. (The watch waited for the member to come back.)"""
    async def main(cluster: EtcdCluster) -> None:
        # The writer gives up on the hung member within a second and tries again.
        async with EtcdClient(cluster.endpoint, timeout=1.0) as writer, EtcdClient(cluster.endpoint) as client:
            client.watch_idle_s, client.watch_probe_s = 1.0, 1.0
            revision = await writer.put(b"/hung/0", b"0")
            seen: list[bytes] = []

            async def consume() -> None:
                async for batch in client.watch(b"/hung/", b"/hung0", start_revision=revision + 1):
                    seen.extend(event.kv.key for event in batch.events)

            async with running(consume()) as (task,):
                for i, member in enumerate(cluster.members):
                    await asyncio.to_thread(cluster.leader)  # a whole cluster before each hang
                    member.process.send_signal(signal.SIGSTOP)
                    try:
                        key = f"/hung/{i + 1}".encode()
                        await async_wait_until(lambda key=key: _put_if_quorum(writer, key), timeout=15,
                                               message=f"a put while {member.name} hangs",
                                               seen=lambda: f"writer reachable: {writer.reachability.ok}")
                        await async_wait_until(lambda key=key: key in seen, timeout=10,
                                               message=f"the watch to deliver {key!r} while {member.name} hangs",
                                               seen=lambda: f"delivered {sorted(seen)}")
                    finally:
                        member.process.send_signal(signal.SIGCONT)
                assert not task.done()
                # (A put that timed out on the hung member may apply when it resumes: a repeat.)
                assert list(dict.fromkeys(seen)) == [f"/hung/{i + 1}".encode() for i in range(3)]

    with EtcdCluster(3, str(tmp_path / "etcd")) as cluster:
        asyncio.run(main(cluster))


async def _put_if_quorum(client: EtcdClient, key: bytes) -> bool:
    """Put ``key`` unless this put fails (the hung member was the leader: an election)."""
    try:
        await client.put(key, b"v")
    except EtcdError:
        return False
    return True


def test_a_write_sent_while_no_endpoint_answers_goes_through_once_one_is_back(tmp_path) -> None:
    """Two endpoints (round_robin), neither answering: a put is never sent (gRPC has no
    connection: "connections to all backends failing"), so the client sends it again
    until its deadline, and it applies once etcd is back."""
    async def main(server: EtcdServer) -> None:
        async with EtcdClient([server.endpoint, "127.0.0.1:1"], timeout=60.0) as client:
            await client.put(b"/back/before", b"0")
            server.kill(signal.SIGKILL)
            put = asyncio.create_task(client.put(b"/back/after", b"1"))
            await async_wait_until(lambda: not client.reachability.ok or put.done(), timeout=30,
                                   message="the put to meet the outage",
                                   seen=lambda: f"reachable {client.reachability.ok}, put done {put.done()}")
            assert not put.done(), f"the put ended while etcd was down: {put.exception()!r}"
            await asyncio.to_thread(server.restart)
            revision = await asyncio.wait_for(put, 60)
            got = await client.get(b"/back/after")
            assert got is not None and got.value == b"1" and got.mod_revision == revision

    with EtcdServer(str(tmp_path / "etcd")) as server:
        asyncio.run(main(server))
