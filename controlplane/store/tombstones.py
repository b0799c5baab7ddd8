"""Tombstones: the proof an agent needs before it destroys a VM its store does not know.

DESIGN: "Orphans need proof". A VM found on a host that no binding wants is
destroyed only when ``tombstones/{host}/{uid}`` exists; any other is quarantined
and reported (``controlplane/store/orphans.py``). So a store restored from an
older backup, which knows nothing of the VMs made since, destroys none of them.

Every transaction that takes a VM off a host carries its tombstone, so the proof
exists exactly when the binding is gone: ``bindings.unbind`` (the one builder of
unbinds: ``AgentStore.remove_destroyed`` after the agent destroyed a VM,
``LifecycleStore.move_off`` for a dead host's VMs) puts one per VM with
:func:`tombstone_put` (``moved`` when requeued, else ``deleted``); and
``OrphanStore.destroy`` puts one when an operator condemns a quarantined VM
(``destroyed``).

Tombstones live under retention leases (:data:`TOMBSTONE_RETENTION_S`), so they
need no cleanup. A host that comes back after its tombstones expired finds its
stale VMs quarantined, not destroyed: safe, and reported for an operator.
"""

from __future__ import annotations

from collections.abc import Sequence

from controlplane.etcd import EtcdClient, ops
from controlplane.etcd.ops import RequestOp
from controlplane.gen.quanta.store.v1 import records_pb2 as rec
from controlplane.models import now_ns
from controlplane.store.keys import Keys
from controlplane.store.retention import RetentionLeases

#: How long a tombstone lives at least (at most one retention window longer).
TOMBSTONE_RETENTION_S = 3 * 24 * 3600

DELETED = "deleted"
MOVED = "moved"
DESTROYED = "destroyed"

HostUid = tuple[str, str]


def tombstone_put(keys: Keys, host: str, uid: str, vm: str, reason: str, *, lease: int, at: int) -> RequestOp:
    """Pure: the put of the tombstone that proves ``uid`` (named ``vm``) left ``host``
    for ``reason``, under the retention ``lease``."""
    return ops.put(keys.tombstone(host, uid), rec.Tombstone(reason=reason, vm=vm, time_ns=at).SerializeToString(),
                   lease=lease)


class Tombstones:
    """Builds tombstone puts for other stores' transactions and reads them back.
    One per store object; shares nothing but the etcd client."""

    def __init__(self, client: EtcdClient, keys: Keys, leases: RetentionLeases | None = None):
        self._etcd = client
        self._keys = keys
        self._leases = leases or RetentionLeases(client, TOMBSTONE_RETENTION_S)

    async def put_ops(self, host: str, uid: str, vm: str, reason: str) -> list:
        """A put for a VM known only by uid and name (an orphan)."""
        return [tombstone_put(self._keys, host, uid, vm, reason, lease=await self.lease(), at=now_ns())]

    async def lease(self) -> int:
        """The retention lease tombstones are put under now (granted lazily, then cached
        for its window)."""
        return await self._leases.current()

    async def present(self, pairs: Sequence[HostUid]) -> dict[HostUid, str]:
        """The tombstones of ``pairs`` that exist now: (host, uid) → reason. One round
        trip (chunked by the txn limit); read-only."""
        if not pairs:
            return {}
        responses = await self._etcd.txn_chunked([ops.get(self._keys.tombstone(h, u)) for h, u in pairs])
        found: dict[HostUid, str] = {}
        for pair, response in zip(pairs, responses, strict=True):
            kvs = response.response_range.kvs
            if kvs:
                found[pair] = rec.Tombstone.FromString(kvs[0].value).reason
        return found
