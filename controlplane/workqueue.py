"""A work queue for asyncio controllers, after client-go's ``util/workqueue``.

Watch handlers only :meth:`~WorkQueue.add` keys; workers loop::

    while True:
        key = await queue.get()          # raises QueueShutDown when the queue stops
        try:
            ok = await reconcile(key)
        finally:
            queue.done(key)
        if ok:
            queue.forget(key)
        else:
            queue.add_rate_limited(key)  # retry with per-key exponential backoff

Guarantees: a key waits in the queue at most once however often it is added; a key
is never handed to two workers at once; a key added while a worker holds it is
handed out again after that worker calls :meth:`~WorkQueue.done`, so the latest
change is always reconciled. Waiting keys come out in FIFO order, those added in the
background (``add(key, background=True)``: a periodic resync's) after the other
waiting keys, but for one in every BACKGROUND_SHARE handed out while both wait (so
they are never starved). The queue belongs to one event loop and is not thread-safe.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

#: While both kinds of keys wait, every this-many-th key handed out is a background one.
BACKGROUND_SHARE = 16


class QueueShutDown(Exception):
    """The queue was shut down; workers should return."""


class WorkQueue(Generic[K]):
    """De-duplicating FIFO of keys, each processed by at most one worker at a time,
    with a second FIFO for keys added in the background (handed out when no other
    key waits, and as one in every BACKGROUND_SHARE when others do).

    ``base_delay_s`` and ``max_delay_s`` shape :meth:`add_rate_limited`: the n-th
    consecutive retry of a key waits ``base_delay_s * 2**(n-1)``, at most
    ``max_delay_s``.
    """

    def __init__(self, *, base_delay_s: float = 0.005, max_delay_s: float = 60.0):
        self._queue: deque[K] = deque()  # waiting keys, in order
        # Waiting background keys, in order, as (sequence number, key): an entry whose
        # number is not its key's in _waiting_background is stale (the key moved up) and
        # is skipped; the deque is compacted when most of it is stale.
        self._background: deque[tuple[int, K]] = deque()
        self._waiting_background: dict[K, int] = {}
        self._sequence = 0
        self._since_background = 0  # keys handed out from _queue since the last background one
        # Keys that need processing (waiting, or re-added while processing) → whether in
        # the background (every add since they became dirty was a background one).
        self._dirty: dict[K, bool] = {}
        self._processing: set[K] = set()
        self._getters: deque[asyncio.Future[None]] = deque()
        self._timers: dict[K, asyncio.TimerHandle] = {}
        self._requeues: dict[K, int] = {}
        self._base_delay_s = base_delay_s
        self._max_delay_s = max_delay_s
        self._shut_down = False

    def __len__(self) -> int:
        """Keys waiting to be handed out (not those being processed or delayed)."""
        return len(self._queue) + len(self._waiting_background)

    def in_flight(self) -> int:
        """Keys handed out and not yet done."""
        return len(self._processing)

    @property
    def shutting_down(self) -> bool:
        return self._shut_down

    def add(self, key: K, *, background: bool = False) -> None:
        """Mark ``key`` as needing processing. Never blocks; idempotent while it waits.

        If the key is being processed it is handed out again after :meth:`done`.
        ``background``: it waits behind the keys added without it (a periodic
        resync's keys, so that new work goes first; see the class doc); added again
        without it while it waits (or is being processed), it moves to the end of the
        other keys. Ignored after :meth:`shutdown`.
        """
        if self._shut_down:
            return
        if key in self._dirty:
            if not background and self._dirty[key]:
                self._dirty[key] = False
                if self._waiting_background.pop(key, None) is not None:  # waiting: move it up
                    self._queue.append(key)
                    self._compact_background()
            return
        self._dirty[key] = background
        if key not in self._processing:
            self._enqueue(key, background)
            self._wake_one()

    def _compact_background(self) -> None:
        """Drop the stale entries of the background deque once they are most of it
        (keys that move up while the background lane waits would pile them up)."""
        if len(self._background) > 2 * len(self._waiting_background) + 64:
            self._background = deque(entry for entry in self._background
                                     if self._waiting_background.get(entry[1]) == entry[0])

    def _enqueue(self, key: K, background: bool) -> None:
        if background:
            self._sequence += 1
            self._background.append((self._sequence, key))
            self._waiting_background[key] = self._sequence
        else:
            self._queue.append(key)

    def add_after(self, key: K, delay_s: float) -> None:
        """:meth:`add` ``key`` once ``delay_s`` seconds have passed. Never blocks.

        A key has at most one pending delay: adding it again with an earlier due
        time moves the timer earlier, with a later one changes nothing. Must be
        called from the queue's event loop; ignored after :meth:`shutdown`.
        """
        if self._shut_down:
            return
        if delay_s <= 0:
            self.add(key)
            return
        loop = asyncio.get_running_loop()
        due = loop.time() + delay_s
        timer = self._timers.get(key)
        if timer is not None:
            if timer.when() <= due:
                return
            timer.cancel()
        self._timers[key] = loop.call_at(due, self._fire, key)

    def _fire(self, key: K) -> None:
        del self._timers[key]
        self.add(key)

    def add_rate_limited(self, key: K) -> None:
        """:meth:`add_after` with this key's next backoff delay (see the class doc)."""
        n = self._requeues.get(key, 0)
        self._requeues[key] = n + 1
        self.add_after(key, min(self._base_delay_s * 2.0 ** min(n, 62), self._max_delay_s))

    def forget(self, key: K) -> None:
        """Reset ``key``'s backoff (call after it was processed successfully)."""
        self._requeues.pop(key, None)

    def num_requeues(self, key: K) -> int:
        """How many times ``key`` went through :meth:`add_rate_limited` since the last forget."""
        return self._requeues.get(key, 0)

    async def get(self) -> K:
        """Wait for a key and hand it out; the caller must call :meth:`done` with it.

        Raises QueueShutDown once the queue is shut down, even if keys still wait.
        Cancellation-safe: a cancelled get takes no key.
        """
        await self._wait_nonempty()
        return self._take()

    async def get_batch(self, max_n: int) -> list[K]:
        """Wait for at least one key, then take up to ``max_n`` waiting keys at once.

        Does not wait for more keys once it has one. The caller must call
        :meth:`done` for each key. Raises QueueShutDown like :meth:`get`.
        """
        if max_n < 1:
            raise ValueError("max_n must be >= 1")
        await self._wait_nonempty()
        batch = [self._take() for _ in range(min(max_n, len(self)))]
        if len(self):
            self._wake_one()  # what this batch left is for other getters
        return batch

    def done(self, key: K) -> None:
        """Finish processing ``key``; re-queue it if it was added meanwhile.

        Raises ValueError if ``key`` was not handed out (or is already done).
        """
        try:
            self._processing.remove(key)
        except KeyError:
            raise ValueError(f"done({key!r}): key is not being processed") from None
        if key in self._dirty and not self._shut_down:
            self._enqueue(key, self._dirty[key])
            self._wake_one()

    def shutdown(self) -> None:
        """Stop the queue: every waiting and future get raises QueueShutDown,
        adds are ignored and pending delays are dropped. Idempotent.

        Keys already handed out stay in flight until their :meth:`done`.
        """
        self._shut_down = True
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        while self._getters:
            getter = self._getters.popleft()
            if not getter.done():
                getter.set_result(None)

    def _take(self) -> K:
        """The next waiting key (there is one): the oldest of the others, else (or every
        BACKGROUND_SHARE-th time) of the background ones."""
        if self._queue and not (self._waiting_background and self._since_background >= BACKGROUND_SHARE - 1):
            key = self._queue.popleft()
            self._since_background += 1
        else:
            sequence, key = self._background.popleft()
            while self._waiting_background.get(key) != sequence:  # stale: the key moved up
                sequence, key = self._background.popleft()
            del self._waiting_background[key]
            self._since_background = 0
        del self._dirty[key]
        self._processing.add(key)
        return key

    async def _wait_nonempty(self) -> None:
        while True:
            if self._shut_down:
                raise QueueShutDown
            if len(self):
                return
            getter = asyncio.get_running_loop().create_future()
            self._getters.append(getter)
            try:
                await getter
            except asyncio.CancelledError:
                getter.cancel()
                try:
                    self._getters.remove(getter)
                except ValueError:
                    pass
                # If we were woken just before being cancelled, pass the wake-up on.
                if len(self) and not getter.cancelled():
                    self._wake_one()
                raise

    def _wake_one(self) -> None:
        while self._getters:
            getter = self._getters.popleft()
            if not getter.done():
                getter.set_result(None)
                return
