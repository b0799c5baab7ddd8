"""Helpers for server-streaming methods."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TypeVar

T = TypeVar("T")

_END = object()


async def watch_with_bookmarks(source: AsyncIterator[T], idle_s: float) -> AsyncIterator[T | None]:
    """Yield what ``source`` yields, and None whenever it was silent for ``idle_s``
    (the caller sends a bookmark then). The source runs in its own task, so an
    idle timeout never cancels it mid-item; its exceptions are re-raised here.
    """
    queue: asyncio.Queue = asyncio.Queue(maxsize=64)

    async def pump() -> None:
        try:
            async for item in source:
                await queue.put(item)
        except Exception as err:  # noqa: BLE001 - handed to the consumer and re-raised there
            await queue.put(err)
            return
        await queue.put(_END)

    task = asyncio.create_task(pump())
    try:
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), idle_s)
            except TimeoutError:
                yield None
                continue
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
