"""WorkQueue: de-duplication, one worker per key, re-queue on done, delays, shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.workqueue import BACKGROUND_SHARE, QueueShutDown, WorkQueue


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout=5))


def drain(q: WorkQueue[str]) -> list[str]:
    """Take every waiting key without suspending (and mark each done)."""
    out = []
    while len(q):
        out += drain_n(q, 1)
    return out


def drain_n(q: WorkQueue[str], n: int) -> list[str]:
    """Take ``n`` waiting keys without suspending (and mark each done)."""
    out = []
    for _ in range(n):
        coro = q.get()
        with pytest.raises(StopIteration) as stop:
            coro.send(None)
        out.append(stop.value.value)
        q.done(out[-1])
    return out


@pytest.mark.parametrize(
    "adds, expected",
    [
        (["a", "b", "c"], ["a", "b", "c"]),  # FIFO
        (["a", "a", "a"], ["a"]),  # a waiting key is queued once
        (["a", "b", "a", "c", "b"], ["a", "b", "c"]),  # first add keeps its place
        ([1, 2, 1], [1, 2]),
    ],
)
def test_add_dedups_and_keeps_fifo(adds: list[Any], expected: list[Any]) -> None:
    q: WorkQueue[Any] = WorkQueue()
    for key in adds:
        q.add(key)
    assert len(q) == len(expected)
    assert drain(q) == expected


def test_background_keys_wait_behind_the_others_and_move_up_when_added_plainly() -> None:
    q: WorkQueue[str] = WorkQueue()
    for key in ("r1", "r2", "r3"):
        q.add(key, background=True)
    q.add("new-1")
    q.add("r2")  # also wanted now: it leaves the background
    q.add("new-2", background=False)
    q.add("new-1", background=True)  # already waiting in front: stays there
    assert len(q) == 5
    assert drain(q) == ["new-1", "r2", "new-2", "r1", "r3"] and len(q) == 0


def test_a_key_that_left_the_background_is_handed_out_once_when_it_is_back() -> None:
    q: WorkQueue[str] = WorkQueue()
    for key in ("r1", "r2", "r3"):
        q.add(key, background=True)
    q.add("r2")  # moves up; its background entry stays behind, stale
    first = drain_n(q, 1)
    q.add("r2", background=True)  # back in the background while that stale entry waits
    assert len(q) == 3
    assert first + drain(q) == ["r2", "r1", "r3", "r2"]  # in the order added to the background
    assert len(q) == 0


def test_background_keys_get_one_turn_in_every_share_while_others_wait() -> None:
    q: WorkQueue[str] = WorkQueue()
    plain = [f"p{i}" for i in range(20)]
    q.add("b0", background=True)
    q.add("b1", background=True)
    for key in plain:
        q.add(key)
    share = BACKGROUND_SHARE - 1
    assert drain(q) == [*plain[:share], "b0", *plain[share:], "b1"]


def test_stale_background_entries_do_not_pile_up() -> None:
    q: WorkQueue[str] = WorkQueue()
    q.add("r1", background=True)
    taken = []
    for _ in range(1000):  # r2 goes to the background and moves up at once: one stale entry each time
        q.add("r2", background=True)
        q.add("r2")
        taken += drain_n(q, 1)
    taken += drain(q)
    # r1 in its background turn (r2's adds then merge once: it already waits), r2 otherwise.
    assert taken.count("r1") == 1 and taken.count("r2") == 999 and len(q) == 0
    assert len(q._background) <= 65, "compacted, not 1,000 stale entries"


def test_key_added_while_processing_is_requeued_after_done() -> None:
    async def main() -> None:
        q: WorkQueue[str] = WorkQueue()
        q.add("a")
        q.add("b")
        assert await q.get() == "a"
        q.add("a")
        q.add("a")
        assert len(q) == 1 and q.in_flight() == 1  # "a" waits for done, not in the queue
        assert await q.get() == "b"
        q.done("b")
        assert len(q) == 0
        q.done("a")
        assert len(q) == 1
        assert await q.get() == "a"
        q.done("a")
        assert (len(q), q.in_flight()) == (0, 0)

    run(main())


def test_done_of_a_key_not_handed_out_raises() -> None:
    q: WorkQueue[str] = WorkQueue()
    q.add("a")
    with pytest.raises(ValueError):
        q.done("a")


def test_get_waits_for_add() -> None:
    async def main() -> None:
        q: WorkQueue[str] = WorkQueue()
        getter = asyncio.create_task(q.get())
        await asyncio.sleep(0)
        assert not getter.done()
        q.add("x")
        assert await getter == "x"

    run(main())


def test_cancelled_get_takes_no_key() -> None:
    async def main() -> None:
        q: WorkQueue[str] = WorkQueue()
        first = asyncio.create_task(q.get())
        second = asyncio.create_task(q.get())
        await asyncio.sleep(0)  # both now wait
        q.add("x")  # wakes `first`...
        first.cancel()  # ...which is cancelled before it runs: the wake-up passes on
        assert await second == "x"
        with pytest.raises(asyncio.CancelledError):
            await first
        assert q.in_flight() == 1

    run(main())


@pytest.mark.parametrize(
    "waiting, max_n, expected",
    [
        (["a"], 10, ["a"]),
        (["a", "b", "c"], 2, ["a", "b"]),
        (["a", "b", "c"], 3, ["a", "b", "c"]),
    ],
)
def test_get_batch(waiting: list[str], max_n: int, expected: list[str]) -> None:
    async def main() -> None:
        q: WorkQueue[str] = WorkQueue()
        for key in waiting:
            q.add(key)
        assert await q.get_batch(max_n) == expected
        assert q.in_flight() == len(expected)
        assert len(q) == len(waiting) - len(expected)

    run(main())


def test_get_batch_waits_for_one_then_not_longer() -> None:
    async def main() -> None:
        q: WorkQueue[str] = WorkQueue()
        batch = asyncio.create_task(q.get_batch(5))
        await asyncio.sleep(0)
        q.add("a")
        q.add("b")
        assert await batch == ["a", "b"]  # both were waiting when it ran
        with pytest.raises(ValueError):
            await q.get_batch(0)

    run(main())


def test_shutdown_wakes_getters_and_ignores_adds() -> None:
    async def main() -> None:
        q: WorkQueue[str] = WorkQueue()
        getters = [asyncio.create_task(q.get()), asyncio.create_task(q.get_batch(3))]
        await asyncio.sleep(0)
        q.add_after("later", 60)
        q.shutdown()
        for getter in getters:
            with pytest.raises(QueueShutDown):
                await getter
        q.add("a")
        q.add_after("b", 0.001)
        assert len(q) == 0 and q.shutting_down
        with pytest.raises(QueueShutDown):
            await q.get()
        q.shutdown()

    run(main())


def test_add_after_delivers_once_and_keeps_the_earliest_due_time() -> None:
    async def main() -> None:
        q: WorkQueue[str] = WorkQueue()
        q.add_after("k", 3600)
        q.add_after("k", 0.01)  # earlier: replaces the hour-long timer
        q.add_after("k", 1800)  # later: changes nothing
        q.add_after("now", 0)  # no delay: added at once
        assert len(q) == 1
        assert await q.get() == "now"
        assert await q.get() == "k"  # waits on the timer, not on a poll
        q.done("k")
        q.done("now")
        q.shutdown()
        with pytest.raises(QueueShutDown):
            await q.get()

    run(main())


def test_rate_limited_backoff_grows_and_forget_resets() -> None:
    async def main() -> None:
        q: WorkQueue[str] = WorkQueue(base_delay_s=0.001, max_delay_s=0.004)
        delays = []
        loop = asyncio.get_running_loop()
        for _ in range(4):
            q.add_rate_limited("k")
            delays.append(round(q._timers["k"].when() - loop.time(), 3))
            assert await q.get() == "k"
            q.done("k")
        assert delays == [0.001, 0.002, 0.004, 0.004]
        assert q.num_requeues("k") == 4
        q.forget("k")
        assert q.num_requeues("k") == 0

    run(main())


# One step of a scenario: ("add", key) or ("yield", n) for the producer; workers
# draw how many times to yield while holding a key and whether to take batches.
steps = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.sampled_from("abcde")),
        st.tuples(st.just("background"), st.sampled_from("abcde")),
        st.tuples(st.just("yield"), st.integers(0, 3)),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(
    steps=steps,
    n_workers=st.integers(1, 4),
    holds=st.lists(st.integers(0, 3), min_size=1, max_size=8),
    batch=st.integers(1, 3),
)
def test_property_one_worker_per_key_and_every_add_processed(
    steps: list[tuple[str, Any]], n_workers: int, holds: list[int], batch: int
) -> None:
    """No key is held by two workers at once; after every add of a key, that key is
    processed (starts) later; and no key is processed without an add since its last
    start."""

    async def main() -> None:
        q: WorkQueue[str] = WorkQueue()
        clock = 0
        events: list[tuple[int, str, str]] = []  # (time, "add" | "start", key)
        held: set[str] = set()
        idle = asyncio.Condition()

        async def worker(w: int) -> None:
            nonlocal clock
            i = 0
            while True:
                try:
                    keys = await (q.get_batch(batch) if w % 2 else q.get())
                except QueueShutDown:
                    return
                keys = keys if isinstance(keys, list) else [keys]
                for key in keys:
                    assert key not in held, f"{key} handed out twice at once"
                    held.add(key)
                    clock += 1
                    events.append((clock, "start", key))
                for _ in range(holds[i % len(holds)]):
                    await asyncio.sleep(0)  # let others run while this key is held
                i += 1
                for key in keys:
                    held.discard(key)
                    q.done(key)
                async with idle:
                    idle.notify_all()

        workers = [asyncio.create_task(worker(w)) for w in range(n_workers)]
        for op, arg in steps:
            if op in ("add", "background"):
                clock += 1
                events.append((clock, "add", arg))
                q.add(arg, background=op == "background")
            else:
                for _ in range(arg):
                    await asyncio.sleep(0)
        async with idle:
            await idle.wait_for(lambda: len(q) == 0 and q.in_flight() == 0)
        q.shutdown()
        await asyncio.gather(*workers)

        for key in "abcde":
            timeline = [(t, kind) for t, kind, k in events if k == key]
            starts = [t for t, kind in timeline if kind == "start"]
            adds = [t for t, kind in timeline if kind == "add"]
            for t in adds:
                assert any(s > t for s in starts), f"add of {key} at {t} never processed"
            previous = 0
            for s in starts:
                assert any(previous < t < s for t in adds), f"{key} started at {s} without an add"
                previous = s

    run(main())
