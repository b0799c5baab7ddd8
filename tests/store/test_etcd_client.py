"""The thin etcd client against a real etcd: paging, txn compares, nested txns,
watch history and compaction, leases, prefix_end, and error mapping."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from types import SimpleNamespace
from typing import Any

import grpc
import pytest

from controlplane.etcd import Compacted, EtcdClient, EtcdError, Lease, WatchEvent, ops, prefix_end
from controlplane.etcd.server import ETCD_MAX_TXN_OPS
from controlplane.store.keys import Keys
from controlplane.store.scheduling import SchedulingStore
from tests.conftest import async_wait_until


def run(coro: Coroutine[Any, Any, Any], timeout: float = 20.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout=timeout))


def k(root: str, name: str) -> bytes:
    return f"{root}/{name}".encode()


async def collect_events(watch: AsyncIterator, until: Callable[[list[WatchEvent]], bool],
                         timeout: float = 5.0) -> list[WatchEvent]:
    """Events from ``watch`` until ``until(events)`` holds; closes the watch."""
    events: list[WatchEvent] = []

    async def consume() -> None:
        async for batch in watch:
            events.extend(batch.events)
            if until(events):
                return

    async with contextlib.aclosing(watch):
        try:
            await asyncio.wait_for(consume(), timeout)
        except TimeoutError:
            got = [("DELETE " if e.is_delete else "PUT ") + e.kv.key.decode(errors="replace") for e in events]
            raise AssertionError(f"timed out after {timeout}s waiting for the watch's events; "
                                 f"last seen: {len(got)} events {got[-10:]}") from None
    return events


# --- prefix_end ------------------------------------------------------------------------

@pytest.mark.parametrize(
    "prefix, end",
    [
        (b"a", b"b"),
        (b"/quanta/", b"/quanta0"),
        (b"ab\xff", b"ac"),
        (b"ab\xff\xff", b"ac"),
        (b"a\xfe", b"a\xff"),
        (b"\xff", b"\0"),  # no key is greater: the whole key space from here
        (b"\xff\xff", b"\0"),
        (b"", b"\0"),
    ],
)
def test_prefix_end(prefix: bytes, end: bytes) -> None:
    assert prefix_end(prefix) == end


# --- range -----------------------------------------------------------------------------

def test_range_limit_reports_more_and_count(etcd_endpoint: str, root: str) -> None:
    async def main() -> None:
        async with EtcdClient(etcd_endpoint) as client:
            for i in range(5):
                await client.put(k(root, f"k{i}"), str(i).encode())
            prefix = f"{root}/".encode()
            page = await client.range(prefix, prefix_end(prefix), limit=2)
            assert [kv.key for kv in page.kvs] == [k(root, "k0"), k(root, "k1")]
            assert page.more is True
            assert page.count == 5
            whole = await client.range(prefix, prefix_end(prefix), limit=5)
            assert len(whole.kvs) == 5 and whole.more is False
            counted = await client.range(prefix, prefix_end(prefix), count_only=True)
            assert counted.count == 5 and counted.kvs == []
            assert await client.get(k(root, "absent")) is None
            got = await client.get(k(root, "k3"))
            assert got is not None and got.value == b"3" and got.version == 1

    run(main())


class _WritesBetweenPages(EtcdClient):
    """Puts new keys (inside the range being paged) after the first page is read."""

    def __init__(self, endpoint: str, extra: list[bytes]):
        super().__init__(endpoint)
        self.extra = extra
        self.pages = 0

    async def range(self, *args, **kwargs):
        result = await super().range(*args, **kwargs)
        self.pages += 1
        if self.pages == 1:
            for key in self.extra:
                await self.put(key, b"late")
        return result


def test_range_all_pages_at_one_revision(etcd_endpoint: str, root: str) -> None:
    async def main() -> None:
        prefix = f"{root}/p/".encode()
        # Keys that sort among and after the pages still to come.
        late = [prefix + b"k0005x", prefix + b"k9999"]
        async with _WritesBetweenPages(etcd_endpoint, late) as client:
            await client.txn([], [ops.put(prefix + f"k{i:04d}".encode(), f"{i}".encode()) for i in range(25)])
            kvs, revision = await client.range_all(prefix, prefix_end(prefix), page_size=10)
            assert client.pages == 3  # 10 + 10 + 5
            assert [kv.key for kv in kvs] == [prefix + f"k{i:04d}".encode() for i in range(25)]
            assert all(kv.mod_revision <= revision for kv in kvs)
            # The late keys exist now, but after the snapshot the pages were read at.
            now, now_revision = await client.range_prefix(prefix)
            assert len(now) == 27 and now_revision > revision
            # And paging at an explicit past revision gives that past.
            again, at = await client.range_all(prefix, prefix_end(prefix), page_size=7, revision=revision)
            assert at == revision and [kv.key for kv in again] == [kv.key for kv in kvs]

    run(main())


# --- txn -------------------------------------------------------------------------------

def test_txn_compares_pick_success_or_failure(etcd_endpoint: str, root: str) -> None:
    async def main() -> None:
        async with EtcdClient(etcd_endpoint) as client:
            key, other = k(root, "key"), k(root, "other")

            result = await client.txn([ops.absent(key)], [ops.put(key, b"v1")], [ops.get(key)])
            assert result.succeeded
            created = result.revision
            # absent now fails; the failure branch reads what is there.
            result = await client.txn([ops.absent(key)], [ops.put(key, b"x")], [ops.get(key)])
            assert not result.succeeded
            assert [(kv.key, kv.value, kv.mod_revision) for kv in result.kvs(0)] == [(key, b"v1", created)]
            assert result.revision == created  # a failed txn with only reads writes nothing

            assert (await client.txn([ops.present(key)], [])).succeeded
            assert not (await client.txn([ops.present(other)], [])).succeeded

            assert (await client.txn([ops.value_is(key, b"v1")], [])).succeeded
            assert not (await client.txn([ops.value_is(key, b"v2")], [])).succeeded
            assert not (await client.txn([ops.value_is(other, b"")], [])).succeeded

            # mod_revision compare-and-swap: the right revision wins once, a stale one loses.
            result = await client.txn([ops.mod_revision_is(key, created)], [ops.put(key, b"v2")])
            assert result.succeeded
            updated = result.revision
            result = await client.txn([ops.mod_revision_is(key, created)], [ops.put(key, b"stale")],
                                      [ops.put(other, b"lost")])
            assert not result.succeeded
            assert (await client.get(key)).value == b"v2"
            assert (await client.get(other)).value == b"lost"  # failure ops do run
            assert (await client.get(key)).mod_revision == updated
            assert (await client.txn([ops.mod_revision_is(other, 0)], [])).succeeded is False
            assert (await client.txn([ops.mod_revision_is(k(root, "nothing"), 0)], [])).succeeded

            # create_revision stays while mod_revision moves.
            assert (await client.txn([ops.create_revision_is(key, created)], [])).succeeded
            # Every compare must hold.
            assert not (await client.txn([ops.present(key), ops.present(k(root, "nothing"))], [])).succeeded

    run(main())


def test_nested_txns_succeed_or_fail_independently(etcd_endpoint: str, root: str) -> None:
    async def main() -> None:
        async with EtcdClient(etcd_endpoint) as client:
            a, b, c, guard = k(root, "a"), k(root, "b"), k(root, "c"), k(root, "guard")
            await client.put(b, b"taken")
            await client.put(guard, b"mine")
            result = await client.txn([ops.value_is(guard, b"mine")], [
                ops.txn([ops.absent(a)], [ops.put(a, b"1")]),
                ops.txn([ops.absent(b)], [ops.put(b, b"2")], [ops.get(b)]),
                ops.txn([ops.absent(c)], [ops.put(c, b"3")]),
            ])
            assert result.succeeded
            assert [result.nested(i).succeeded for i in range(3)] == [True, False, True]
            # The failed nested txn ran its own failure branch.
            failed = result.nested(1)
            assert failed.revision == result.revision
            assert [kv.value for kv in failed.responses[0].response_range.kvs] == [b"taken"]
            assert (await client.get(a)).value == b"1"
            assert (await client.get(b)).value == b"taken"
            assert (await client.get(c)).value == b"3"
            assert (await client.get(a)).mod_revision == (await client.get(c)).mod_revision == result.revision

            # When the outer compare fails, no nested txn runs at all.
            d = k(root, "d")
            result = await client.txn([ops.value_is(guard, b"someone else")],
                                      [ops.txn([ops.absent(d)], [ops.put(d, b"4")])])
            assert not result.succeeded
            assert await client.get(d) is None

    run(main())


# --- watch -----------------------------------------------------------------------------

def test_watch_from_past_revision_replays_history_in_order(etcd_endpoint: str, root: str) -> None:
    async def main() -> None:
        async with EtcdClient(etcd_endpoint) as client:
            a, b = k(root, "w/a"), k(root, "w/b")
            r1 = await client.put(a, b"a1")
            r2 = await client.put(b, b"b1")
            r3 = await client.put(a, b"a2")
            assert await client.delete(b) == 1
            r4 = (await client.range(b, count_only=True)).revision  # the delete's revision
            prefix = f"{root}/w/".encode()
            events = await collect_events(
                client.watch(prefix, prefix_end(prefix), start_revision=r1, prev_kv=True),
                until=lambda evs: len(evs) >= 4,
            )
            assert [(e.is_delete, e.kv.key, e.kv.value) for e in events] == [
                (False, a, b"a1"), (False, b, b"b1"), (False, a, b"a2"), (True, b, b""),
            ]
            assert [e.kv.mod_revision for e in events] == [r1, r2, r3, r4]
            deleted = events[3]
            assert deleted.prev_kv is not None
            assert (deleted.prev_kv.key, deleted.prev_kv.value, deleted.prev_kv.mod_revision) == (b, b"b1", r2)
            assert events[2].prev_kv is not None and events[2].prev_kv.value == b"a1"
            assert events[0].prev_kv is None  # a created key has no previous value

            # Starting later skips what came before; new events follow the history.
            watch = client.watch(prefix, prefix_end(prefix), start_revision=r3)
            consumer = asyncio.ensure_future(collect_events(watch, until=lambda evs: len(evs) >= 3))
            r5 = await client.put(b, b"b2")
            tail = await consumer
            assert [(e.kv.key, e.kv.mod_revision) for e in tail] == [(a, r3), (b, r4), (b, r5)]

    run(main())


def test_watch_below_compaction_raises_compacted(etcd_endpoint: str, root: str) -> None:
    async def main() -> None:
        async with EtcdClient(etcd_endpoint) as client:
            key = k(root, "c")
            first = await client.put(key, b"1")
            await client.put(key, b"2")
            latest = await client.put(key, b"3")
            # Compacting the shared etcd at our own latest write only removes history
            # older than this test; later tests watch from revisions after it.
            await client.compact(latest)
            with pytest.raises(Compacted) as raised:
                await collect_events(client.watch(key, start_revision=first), until=lambda evs: True)
            assert raised.value.compact_revision >= latest
            # The compacted revision is also gone for reads ...
            with pytest.raises(Compacted):
                await client.range(key, revision=first)
            # ... while the compaction point itself can still be watched.
            events = await collect_events(client.watch(key, start_revision=latest), until=lambda evs: True)
            assert [e.kv.value for e in events] == [b"3"]

    run(main())


# --- leases ----------------------------------------------------------------------------

def test_lease_revoke_removes_its_keys(etcd_endpoint: str, root: str) -> None:
    async def main() -> None:
        async with EtcdClient(etcd_endpoint) as client:
            lease = await Lease(client, ttl=10).grant()
            await client.put(k(root, "l1"), b"x", lease=lease.id)
            await client.put(k(root, "l2"), b"y", lease=lease.id)
            await client.put(k(root, "kept"), b"z")
            assert (await client.get(k(root, "l1"))).lease == lease.id
            await lease.revoke()
            assert lease.lost.is_set()
            assert await client.get(k(root, "l1")) is None
            assert await client.get(k(root, "l2")) is None
            assert (await client.get(k(root, "kept"))).value == b"z"
            await lease.revoke()  # idempotent
            await client.revoke(lease.id)  # an unknown lease is fine too

    run(main())


def test_lease_keepalive_outlives_ttl(etcd_endpoint: str, root: str) -> None:
    async def main() -> None:
        async with EtcdClient(etcd_endpoint) as client:
            async with Lease(client, ttl=2) as lease:
                assert lease.ttl == 2
                key = k(root, "alive")
                await client.put(key, b"x", lease=lease.id)
                # Without keepalives the key would vanish after ~ttl; poll that it
                # stays for 2.5 TTLs.
                started = time.monotonic()
                checks = 0
                while time.monotonic() - started < lease.ttl * 2.5:
                    kv = await client.get(key)
                    assert kv is not None, f"key expired after {time.monotonic() - started:.1f}s"
                    assert not lease.lost.is_set()
                    checks += 1
                    await asyncio.sleep(0.1)
                assert checks > 10
            assert lease.lost.is_set()
            assert await client.get(key) is None

    run(main())


def test_lease_lost_when_revoked_behind_its_back(etcd_endpoint: str, root: str) -> None:
    async def main() -> None:
        async with EtcdClient(etcd_endpoint) as client:
            lease = await Lease(client, ttl=2).grant()
            try:
                await client.put(k(root, "held"), b"x", lease=lease.id)
                await client.revoke(lease.id)
                await async_wait_until(lease.lost.is_set, timeout=lease.ttl + 1,
                                       message="the revoked lease noticed lost",
                                       seen=lambda: f"lease.lost not set; keepalive task {lease._task}")
                assert await client.get(k(root, "held")) is None
            finally:
                await lease.revoke()

    run(main())


# --- errors ----------------------------------------------------------------------------

def test_unreachable_endpoint_raises_unavailable_quickly() -> None:
    async def main() -> None:
        async with EtcdClient("127.0.0.1:1", timeout=1.0) as client:
            started = time.monotonic()
            with pytest.raises(EtcdError) as raised:
                await client.put(b"/x", b"y")  # never sent: tried again, but only until its deadline
            assert raised.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
            # Reads retry UNAVAILABLE, but only until the call's deadline.
            with pytest.raises(EtcdError) as raised:
                await client.get(b"/x")
            assert raised.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
            assert time.monotonic() - started < 4.0

    run(main())


# --- nested transactions within etcd's --max-txn-ops ----------------------------------------

def test_chunks_of_nested_txns_leave_room_for_the_nested_ops(etcd_endpoint: str, root: str) -> None:
    """etcd counts a parent's ops and a nested txn's ops together; chunks at exactly
    max_txn_ops nested txns were refused ("too many operations in txn request")."""
    async def main() -> None:
        async with EtcdClient(etcd_endpoint, max_txn_ops=ETCD_MAX_TXN_OPS) as client:
            nested = [ops.txn([ops.absent(k(root, f"n{i}"))], [ops.put(k(root, f"n{i}"), b"v")])
                      for i in range(ETCD_MAX_TXN_OPS + 10)]
            responses = await client.txn_chunked(nested)
            assert len(responses) == len(nested) and all(r.response_txn.succeeded for r in responses)
            kvs, _revision = await client.range_prefix(k(root, "n"))
            assert len(kvs) == len(nested)

    run(main())


@pytest.mark.parametrize("limit", [8, 128, 4096])
def test_a_full_bind_fits_the_limit(limit: int) -> None:
    """The largest bind (every host group full) stays within etcd's budget for nested
    txns: host groups + the largest group's ops <= max_txn_ops."""
    hosts, per_host = SchedulingStore(SimpleNamespace(max_txn_ops=limit), Keys("/x")).bind_limits()
    group_ops = max(2 + 2 * per_host, 1 + 4 * per_host)  # compares; writes (incl. a zone count per VM)
    assert hosts >= 1 and per_host >= 1 and hosts + group_ops <= limit


def test_read_only_txns_timing_out_never_bring_etcd_down() -> None:
    """etcd 3.5.0-3.5.4 panics when a read-only txn's request ends while it is applied
    (etcd-io/etcd#14110); the client sends read-only txns as writes (a no-op delete in
    the failure branch), so a read that times out leaves etcd up. Its own etcd: the
    shared one must survive whatever this test finds."""
    from controlplane.etcd.server import EtcdServer

    server = EtcdServer().start()
    try:
        async def main() -> None:
            async with EtcdClient(server.endpoint) as client:
                prefix = b"/guard/"
                value = b"x" * 2048
                for start in range(0, 20_000, 100):
                    await client.txn([], [ops.put(prefix + b"%06d" % i, value) for i in range(start, start + 100)])
                reads = [ops.get(prefix, prefix_end(prefix)), ops.get(prefix + b"000001")]
                timed_out = 0
                for _ in range(30):
                    try:
                        await client.txn([], reads, timeout=0.002)
                    except EtcdError:
                        timed_out += 1
                assert timed_out, "no read timed out: the test did not exercise a cancelled read-only txn"
                # Unguarded results look the same: the guard's response is never shown.
                result = await client.txn([ops.present(prefix + b"none")], [], [ops.get(prefix + b"000001")])
                assert not result.succeeded and len(result.responses) == 1
                assert result.kvs(0)[0].value == value
                result = await client.txn([], [ops.get(prefix + b"000002")])
                assert result.succeeded and len(result.responses) == 1

        run(main(), timeout=120)
        assert server.alive, f"etcd exited; see {server.log_path}"
    finally:
        server.stop()
        server.cleanup()
