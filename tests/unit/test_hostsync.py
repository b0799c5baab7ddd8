"""The scheduler's host view (scheduler.hostsync) fed batches of the one holds + hosts
watch, pure: a batch's holds are applied before its hosts, so an allocation holding
room for a plan whose hold arrives in the same batch (PlanVms' one txn) counts that
room as taken from the first moment; a hold ending wakes its hosts' waiting VMs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from controlplane.models import HeldRoom, Hold, HostAllocation, HostRegistration, PlannedVm, Resources
from controlplane.placement import HostView
from controlplane.store.hosts import HostRecord, HostsAndHolds, HostTable
from controlplane.store.keys import Keys
from scheduler.hostsync import HostSync

KEYS = Keys("/t")
CAP = Resources(8, 8192, 100)
VM = Resources(2, 2048, 10)
ROOM = HeldRoom(VM, 1, {"t/p/db": 1})
HOLD = Hold("t", "p", "B", (PlannedVm("db-0", "host-a", "small", VM),), 1)


def _record(allocation: HostAllocation, revision: int) -> HostRecord:
    return HostRecord("host-a", HostRegistration("host-a", "sim", CAP), allocation, revision, revision)


class Batches:
    """Stands in for HostStore: a listing of host-a (empty, no holds) at revision 1,
    then the batches put into ``queue``."""

    def __init__(self) -> None:
        self.keys = KEYS
        self.queue: asyncio.Queue[HostsAndHolds] = asyncio.Queue()

    async def snapshot_with_holds(self) -> tuple[HostTable, dict[str, Hold], int]:
        table = HostTable(KEYS)
        table.regs["host-a"] = (HostRegistration("host-a", "sim", CAP), 1)
        return table, {}, 1

    async def watch_with_holds(self, start_revision: int, table: HostTable) -> AsyncIterator[HostsAndHolds]:
        assert start_revision == 2
        while True:
            yield await self.queue.get()


def test_a_hold_and_its_allocation_in_one_batch_count_the_room_as_taken_from_the_first_moment() -> None:
    async def main() -> None:
        store = Batches()
        sync = HostSync(store, HostView())  # type: ignore[arg-type]
        seen: list[tuple[Resources, int, dict[str, int]] | None] = []
        woken: list[object] = []

        def on_records(hosts: list[str] | None) -> None:
            snapshot = sync.view.committed("host-a")
            if hosts is not None and snapshot is not None:
                seen.append((snapshot.allocated, snapshot.vm_count, dict(snapshot.groups)))

        sync.on_records.append(on_records)
        sync.on_capacity.append(woken.append)
        task = asyncio.create_task(sync.run())
        try:
            await asyncio.wait_for(sync.ready.wait(), 5)
            woken.clear()
            # PlanVms' txn at revision 2: the allocation with holds[B] listed before the
            # hold's key in the batch (hosts sort after holds, but the order must not matter).
            held = HostAllocation(holds={"B": ROOM})
            await store.queue.put(HostsAndHolds([("B", HOLD)], [_record(held, 2)], 2))
            while not seen:
                await asyncio.sleep(0)
            assert seen == [(VM, 1, {"t/p/db": 1})], "B's room counted as taken when the allocation arrived"
            assert sync.plans.keys() == {"B"}
            assert sync.allocation("host-a") == (held, 2), "the stored allocation kept apart, holds included"
            woken.clear()  # (a held group arriving wakes affine VMs: not what this test is about)
            # The hold's lease expires (its key alone goes): the room is free, its host woken.
            await store.queue.put(HostsAndHolds([("B", None)], [], 3))
            while not woken:
                await asyncio.sleep(0)
            assert woken == [["host-a"]]
            snapshot = sync.view.committed("host-a")
            assert snapshot is not None and (snapshot.allocated, snapshot.vm_count) == (Resources(), 0)
            assert sync.plans == {}
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())
