"""Helpers for server-streaming methods, and the one rule every ``Watch`` follows
(DESIGN.md, API conventions):

- it starts from a ``resource_version``: 0 means now (:func:`start_revision`); a
  version newer than the store's is OUT_OF_RANGE ``RESOURCE_VERSION_TOO_NEW``, like
  one compacted away (``RESOURCE_VERSION_EXPIRED``): the client lists again;
- each event carries the revision of the change it reports;
- bookmarks carry the revision up to which every change was sent, so they advance
  with the events (and with etcd's progress notifications) while the stream is quiet
  (:func:`watch_with_bookmarks`);

so a client resuming from the last version it saw gets every later change once.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import TypeVar

from google.protobuf.message import Message

from controlplane.api import errors

T = TypeVar("T")
M = TypeVar("M", bound=Message)

#: At most about this many bytes of events in one message of a batched watch
#: (WatchVmBatches): well under the 4 MiB a gRPC client accepts by default.
MAX_BATCH_BYTES = 1 << 20

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


def by_size(messages: Sequence[M], limit: int, key: Callable[[M], object] = id) -> Iterator[list[M]]:
    """``messages`` in order, cut into consecutive non-empty runs whose serialized
    sizes add up to at most ``limit`` (a message larger than ``limit`` is a run of its
    own), and not between two neighbours with the same ``key`` unless their group is
    larger than ``limit`` (a watch: the events of one revision stay in one message, so
    a client that resumes after the last version it saw misses none of that revision's).
    Nothing for no messages; a single message is not measured."""
    if len(messages) <= 1:
        if messages:
            yield list(messages)
        return
    run: list[M] = []
    size = 0
    for _, group in itertools.groupby(messages, key):
        members = list(group)
        weights = [m.ByteSize() for m in members]
        total = sum(weights)
        if run and size + total > limit:
            yield run
            run, size = [], 0
        if total <= limit:
            run.extend(members)
            size += total
            continue
        for member, weight in zip(members, weights, strict=True):  # a group over the limit: cut by size
            if run and size + weight > limit:
                yield run
                run, size = [], 0
            run.append(member)
            size += weight
    if run:
        yield run


def too_new(requested: int, current: int) -> errors.ApiError:
    """OUT_OF_RANGE ``RESOURCE_VERSION_TOO_NEW``: ``requested`` is beyond the store's ``current`` revision."""
    return errors.out_of_range(
        f"resource_version {requested} is newer than the store's ({current}); list again and watch from the "
        "listing's resource_version", "RESOURCE_VERSION_TOO_NEW",
        metadata={"resource_version": str(requested), "current": str(current)})


def start_revision(requested: int, current: int) -> int:
    """Where a watch starts: after ``requested`` (a client's last seen version), or
    after ``current`` (the store's revision, read just now) when ``requested`` is 0.
    Raises :func:`too_new` when ``requested`` is beyond ``current``: watching from
    there would silently skip every change up to it. (``requested`` is range-checked
    beforehand by ``validation.validate_resource_version``.)"""
    if requested > current:
        raise too_new(requested, current)
    return requested or current
