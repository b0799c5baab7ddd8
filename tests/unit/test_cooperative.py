"""Long loops yield to the event loop, so that a heartbeat on the same loop runs."""

from __future__ import annotations

import asyncio

from controlplane import cooperative


async def _ticks_during(work) -> tuple[int, object]:
    """How often another task ran while ``work`` (a coroutine) ran, and its result."""
    ticks = 0
    done = False

    async def heartbeat() -> None:
        nonlocal ticks
        while not done:
            ticks += 1
            await asyncio.sleep(0)

    beat = asyncio.create_task(heartbeat())
    await asyncio.sleep(0)  # the heartbeat starts
    before = ticks
    result = await work
    done = True
    await beat
    return ticks - before, result


def test_mapping_ten_thousand_items_lets_other_tasks_run_every_step() -> None:
    ticks, result = asyncio.run(_ticks_during(cooperative.mapped(lambda x: x * 2, range(10_000))))
    assert result == [x * 2 for x in range(10_000)]
    assert ticks >= 10_000 // cooperative.STEP - 1, ticks


def test_a_plain_loop_starves_them_the_reason_for_this_module() -> None:
    async def plain() -> list[int]:
        return [x * 2 for x in range(10_000)]

    ticks, _ = asyncio.run(_ticks_during(plain()))
    assert ticks == 0


def test_each_keeps_order_and_every_item() -> None:
    async def collect() -> list[int]:
        return [x async for x in cooperative.each(range(2_500), step=7)]

    assert asyncio.run(collect()) == list(range(2_500))
