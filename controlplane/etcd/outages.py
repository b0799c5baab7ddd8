"""Riding out etcd outages in the loops that must not end with one.

A list + watch loop (a scheduler's host view, its shard queue, an agent's
bindings) that meets etcd unreachable — a read that gave up after its retries, a
request to a member that hung until its deadline — lists again after a pause
instead of ending its process. Only the process's lease decides when an outage
has lasted too long (lease.py): it is lost after a TTL without etcd, and the
holder stops.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import grpc

from controlplane.etcd.client import Compacted, EtcdError

log = logging.getLogger(__name__)

#: What a retry may cure: no member reachable or none with a leader; a deadline passed.
TRANSIENT_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


def is_transient(err: BaseException) -> bool:
    """True for an etcd failure that says etcd is unreachable, not that the request was wrong."""
    return isinstance(err, EtcdError) and not isinstance(err, Compacted) and err.code in TRANSIENT_CODES


async def ride_out(cycle: Callable[[], Awaitable[None]], what: str, *, max_pause_s: float = 2.0) -> None:
    """Run ``cycle`` (a list + watch loop) until it returns; when it raises a transient
    etcd error, run it again (so: list again) after a pause that grows to ``max_pause_s``.
    Any other exception ends this with it. May run forever; cancel it to stop."""
    pause = 0.1
    while True:
        try:
            await cycle()
            return
        except EtcdError as err:
            if not is_transient(err):
                raise
            log.warning("etcd unreachable; listing again", extra={"loop": what, "error": str(err),
                                                                   "pause_s": pause})
        await asyncio.sleep(pause)
        pause = min(pause * 2, max_pause_s)
