"""Long loops on an event loop that also keeps a lease alive.

A process's heartbeat (its lease keepalive) runs on the same event loop as its work.
A loop that never awaits anything that suspends — decoding a 500,000-key listing,
reconciling VMs whose driver answers without I/O (the sim driver at zero latency) —
holds the loop for as long as it runs; past the lease TTL the lease expires and the
process is declared dead while it works. Seen: an agent's periodic resync of 44,000
bindings under load held its loop for 30 s and lost its 30 s lease. Such loops go
through :func:`each` (or call :func:`pause` per item) so that other tasks run every
:data:`STEP` items.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

#: Items handled between two yields to the event loop: small enough that a step
#: takes milliseconds, large enough that yielding costs nothing measurable.
STEP = 1000


async def pause() -> None:
    """Let every other ready task run once (a heartbeat among them)."""
    await asyncio.sleep(0)


async def each(items: Iterable[T], step: int = STEP) -> AsyncIterator[T]:
    """``items`` one by one, yielding to the event loop every ``step`` of them."""
    for i, item in enumerate(items, 1):
        yield item
        if i % step == 0:
            await pause()


async def mapped(fn: Callable[[T], R], items: Iterable[T], step: int = STEP) -> list[R]:
    """``[fn(x) for x in items]``, yielding to the event loop every ``step`` items."""
    return [fn(item) async for item in each(items, step)]
