"""Retention leases on a real etcd: a lease etcd no longer has is replaced, so
records (and the creates that carry them) do not fail until the window rotates."""

from __future__ import annotations

import asyncio

import pytest

from controlplane.etcd import EtcdClient, EtcdError, ops
from controlplane.store.retention import RetentionLeases


def test_a_lease_etcd_lost_is_replaced_by_the_next_record(etcd_endpoint: str, root: str) -> None:
    async def main() -> None:
        async with EtcdClient(etcd_endpoint) as client:
            leases = RetentionLeases(client, retention_s=3600)
            first = await leases.current()
            assert await leases.current() == first  # one lease per window
            await client.revoke(first)  # e.g. etcd restored from a backup without it
            with pytest.raises(EtcdError):
                await client.txn([], [ops.put(f"{root}/a".encode(), b"1", lease=first)])
            second = await leases.current()
            assert second != first
            await client.txn([], [ops.put(f"{root}/a".encode(), b"1", lease=second)])

    asyncio.run(asyncio.wait_for(main(), timeout=30))
