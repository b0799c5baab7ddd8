"""Shards spread over scheduler processes: the pure fair-share plan (table-driven
and Hypothesis), and ShardManagers on a real etcd joining, leaving and dying."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Coroutine
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.etcd import EtcdClient, Lease
from controlplane.store.keys import Keys
from controlplane.store.shards import ShardDirectory, ShardLock
from scheduler.balance import plan, quota
from scheduler.service import ShardManager
from tests.conftest import async_wait_until, describe_tasks

PROPS = settings(max_examples=200, deadline=None)


def run(coro: Coroutine[Any, Any, Any], timeout: float = 60.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout=timeout))


# --- pure plan -------------------------------------------------------------------------


@pytest.mark.parametrize(("shards", "members", "expected"), [
    (1, ["a"], {"a": 1}),
    (4, ["a"], {"a": 4}),
    (4, ["a", "b"], {"a": 2, "b": 2}),
    (7, ["a", "b", "c"], {"a": 3, "b": 2, "c": 2}),  # the oldest (lowest id) get the extra
    (2, ["a", "b", "c"], {"a": 1, "b": 1, "c": 0}),
    (6, ["c", "a", "b"], {"a": 2, "b": 2, "c": 2}),  # order of the input does not matter
])
def test_quota_table(shards: int, members: list[str], expected: dict[str, int]) -> None:
    assert {m: quota(members, m, shards) for m in members} == expected


def test_quota_counts_me_before_my_key_shows_up() -> None:
    assert quota(["a"], "b", 4) == 2


@pytest.mark.parametrize(("owners", "me", "release", "acquire_count"), [
    ({}, "a", 0, 2),  # 4 shards, members a and b: a takes 2 free ones
    ({0: "a", 1: "a", 2: "a", 3: "a"}, "a", 2, 0),  # b joined: a gives 2 up
    ({0: "a", 1: "a", 2: "a", 3: "a"}, "b", 0, 0),  # b waits for them: none free
    ({0: "a", 1: "a", 2: "b"}, "b", 0, 1),
    ({0: "a", 1: "a", 2: "b", 3: "b"}, "a", 0, 0),  # balanced: nothing to do
    ({0: "dead", 1: "dead"}, "a", 0, 2),  # a dead owner's shards are not free until its key goes
])
def test_plan_table(owners: dict[int, str], me: str, release: int, acquire_count: int) -> None:
    step = plan(4, ["a", "b"], owners, me)
    assert len(step.release) == release
    assert len(step.acquire) == acquire_count
    assert set(step.release) <= {s for s, o in owners.items() if o == me}
    assert not set(step.acquire) & set(owners)


@PROPS
@given(shards=st.integers(1, 64), members=st.sets(st.text("abcdef", min_size=1, max_size=3), min_size=1, max_size=9))
def test_quotas_add_up_and_differ_by_at_most_one(shards: int, members: set[str]) -> None:
    quotas = [quota(members, m, shards) for m in members]
    assert sum(quotas) == shards
    assert max(quotas) - min(quotas) <= 1
    assert max(quotas) == -(-shards // len(members))  # ceil(S / N)


@PROPS
@given(shards=st.integers(1, 32), members=st.lists(st.text("abcdef", min_size=1, max_size=2), min_size=1,
                                                    max_size=6, unique=True), data=st.data())
def test_replaying_plans_converges_to_a_fair_disjoint_cover(shards: int, members: list[str], data) -> None:
    """Whatever the start (any owner per shard, in any order of turns), letting the
    members act on their plans, one at a time, ends with every shard owned once and
    each member at its quota."""
    owners = {s: o for s in range(shards)
              if (o := data.draw(st.sampled_from([None, *members]), label=f"owner-{s}")) is not None}
    for _ in range(4 * shards + 4 * len(members)):
        me = data.draw(st.sampled_from(members), label="turn")
        step = plan(shards, members, owners, me)
        for s in step.release:
            del owners[s]
        for s in step.acquire:
            owners[s] = me
    # A round in fixed order settles whatever the random turns left.
    for _ in range(2):
        for me in members:
            step = plan(shards, members, owners, me)
            for s in step.release:
                del owners[s]
            for s in step.acquire:
                owners[s] = me
    assert sorted(owners) == list(range(shards))
    assert Counter(owners.values()) == Counter({m: quota(members, m, shards) for m in members
                                                if quota(members, m, shards)})


# --- managers on a real etcd -----------------------------------------------------------


class Process:
    """One scheduler process's membership, with shards that just wait to be stopped."""

    def __init__(self, client: EtcdClient, keys: Keys, shards: int, name: str):
        self.client, self.keys, self.shards, self.name = client, keys, shards, name
        self.lease: Lease | None = None
        self.manager: ShardManager | None = None
        self.task: asyncio.Task | None = None

    async def start(self) -> Process:
        self.lease = await Lease(self.client, ttl=2).grant()

        async def run_shard(lock: ShardLock) -> None:
            await asyncio.Event().wait()

        self.manager = ShardManager(self.client, self.keys, self.shards, self.lease, self.name, run_shard,
                                    resync_s=1.0)
        self.task = asyncio.create_task(self.manager.run())
        return self

    async def leave(self) -> None:
        """Stop as on SIGTERM: shards stop, the lease is revoked (its keys go at once)."""
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.lease.revoke()

    async def crash(self) -> None:
        """Stop without a word: nothing is revoked, the keys wait for the lease TTL."""
        self.lease._task.cancel()  # no more keepalives, as if the process froze
        self.task.cancel()
        await asyncio.gather(self.task, self.lease._task, return_exceptions=True)


async def _owners(client: EtcdClient, keys: Keys) -> dict[int, str]:
    table = await ShardDirectory(client, keys).snapshot()
    return {s: table.members.get(h.member, "?") for s, h in table.owners.items()}


def _balanced(owners: dict[int, str], running: dict[str, list[int]], shards: int) -> bool:
    if sorted(owners) != list(range(shards)):
        return False
    if {s: n for n, ss in running.items() for s in ss} != owners:
        return False  # etcd and the processes must agree on who runs what
    counts = [len(ss) for ss in running.values()]
    return max(counts) - min(counts) <= 1


def test_managers_spread_rebalance_on_join_and_take_over_from_the_dead(etcd_endpoint: str, root: str) -> None:
    shards = 7

    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client:
            procs: list[Process] = []
            try:
                for name in ("s-0", "s-1", "s-2"):
                    procs.append(await Process(client, keys, shards, name).start())

                async def settled() -> bool:
                    live = [p for p in procs if not p.task.done()]
                    owners = await _owners(client, keys)
                    return _balanced(owners, {p.name: p.manager.owned for p in live}, shards)

                async def seen() -> str:
                    running = {p.name: p.manager.owned for p in procs if not p.task.done()}
                    ended = [f"{p.name} ({describe_tasks([p.task])})" for p in procs if p.task.done()]
                    return f"etcd owners {await _owners(client, keys)}; processes run {running}; ended {ended}"

                await async_wait_until(settled, timeout=15, message="7 shards spread over 3 processes", seen=seen)
                assert sorted(len(p.manager.owned) for p in procs) == [2, 2, 3]

                procs.append(await Process(client, keys, shards, "s-3").start())  # a joiner gets its share
                await async_wait_until(settled, timeout=15, message="rebalanced onto a 4th process", seen=seen)
                assert sorted(len(p.manager.owned) for p in procs) == [1, 2, 2, 2]

                await procs[0].leave()
                await async_wait_until(settled, timeout=15, message="a leaver's shards taken over", seen=seen)
                assert sorted(len(p.manager.owned) for p in procs[1:]) == [2, 2, 3]

                await procs[1].crash()
                # Until its lease expires the dead process still holds its shards.
                assert any(o == "s-1" for o in (await _owners(client, keys)).values())
                await async_wait_until(settled, timeout=15, message="a dead process's shards taken over", seen=seen)
                assert sorted(len(p.manager.owned) for p in procs[2:]) == [3, 4]
            finally:
                for p in procs:
                    if p.task and not p.task.done():
                        await p.leave()

    run(main())
