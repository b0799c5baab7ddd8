"""A lease kept alive in the background, whose loss is loud.

Usage::

    async with Lease(client, ttl=10) as lease:
        await client.put(key, value, lease=lease.id)
        await lease.lost.wait()   # set when the lease expired or was revoked

``lost`` is set (and never cleared) when etcd says the lease is gone, or when no
keepalive succeeded for a whole TTL: from then on nothing the lease guarded may
be trusted, and the holder must stop the work it guarded.

An etcd outage shorter than that is ridden out: a keepalive that fails or gets
no answer within a third of the TTL is retried on a new stream (which the
client's round robin puts on another member when there are several) until the
TTL, counted from the last answer, has passed. etcd itself does not expire a
lease while it has no leader, and a new leader gives every lease a fresh TTL.
"""

from __future__ import annotations

import asyncio
import logging
import time

import grpc

from controlplane.etcd.client import EtcdClient, EtcdError
from controlplane.gen.etcd.v3 import rpc_pb2 as pb

log = logging.getLogger(__name__)


class LeaseLost(Exception):
    """The lease expired or was revoked; the work it guarded must stop."""


class Lease:
    def __init__(self, client: EtcdClient, ttl: int):
        self._client = client
        self.ttl = ttl
        self.id = 0
        self.lost = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._expires_at = 0.0

    async def grant(self) -> Lease:
        self.id, self.ttl = await self._client.grant(self.ttl)
        self._expires_at = time.monotonic() + self.ttl
        self._task = asyncio.create_task(self._keepalive(), name=f"lease-{self.id:x}")
        self._task.add_done_callback(self._ended)
        return self

    async def __aenter__(self) -> Lease:
        return await self.grant()

    async def __aexit__(self, *exc) -> None:
        await self.revoke()

    async def revoke(self) -> None:
        """Stop keeping the lease alive and revoke it (its keys go at once)."""
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self.id and not self.lost.is_set():
            try:
                await self._client.revoke(self.id)
            except EtcdError as err:
                log.warning("lease revoke failed; it will expire", extra={"lease": self.id, "error": str(err)})
        self.lost.set()

    def _ended(self, task: asyncio.Task) -> None:
        """A keepalive that died of anything unforeseen loses the lease loudly (its
        holder stops what it guarded) rather than letting etcd expire it unnoticed."""
        if not task.cancelled() and task.exception() is not None and not self.lost.is_set():
            log.error("lease lost: its keepalive failed", extra={"lease": self.id}, exc_info=task.exception())
            self.lost.set()

    async def _keepalive(self) -> None:
        interval = max(self.ttl / 3.0, 0.2)
        while not self.lost.is_set():
            stream = self._client.keepalive_stream()
            try:
                while True:
                    sent = time.monotonic()
                    await stream.write(pb.LeaseKeepAliveRequest(ID=self.id))
                    # Not wait_for: on 3.11 it can swallow a cancel (revoke) that races the read.
                    # No answer within a third of the TTL: a stuck member; retry on a new stream.
                    async with asyncio.timeout(max(min(self._expires_at - sent, interval), 0.1)):
                        response = await stream.read()
                    if response is grpc.aio.EOF:
                        raise EtcdError("keepalive stream closed", grpc.StatusCode.UNAVAILABLE)
                    self._client.reachability.reachable()
                    if response.TTL <= 0:
                        log.error("lease expired", extra={"lease": self.id})
                        self.lost.set()
                        return
                    self._expires_at = sent + response.TTL
                    await asyncio.sleep(interval)
            except (TimeoutError, grpc.aio.AioRpcError, EtcdError, asyncio.InvalidStateError) as err:
                # (InvalidStateError: a write to a stream the server already ended.)
                self._client.reachability.unreachable(f"lease keepalive: {type(err).__name__}: {err}")
                if time.monotonic() >= self._expires_at:
                    log.error("lease lost: no keepalive within its TTL", extra={"lease": self.id})
                    self.lost.set()
                    return
                log.warning("lease keepalive failed, retrying", extra={
                    "lease": self.id, "error": str(err), "expires_in_s": round(self._expires_at - time.monotonic(), 3)})
                await asyncio.sleep(min(0.5, interval))
            finally:
                stream.cancel()
