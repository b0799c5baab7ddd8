"""The cluster-wide settings every process must agree on (today: the scheduler
shard count, which decides the queue a frontend puts a VM in).

Stored once in etcd; a flag can only propose the first value, so a frontend and
a scheduler started with different ``--shards`` cannot strand VMs in a queue no
shard owns.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from controlplane.etcd import EtcdClient, ops
from controlplane.gen.quanta.store.v1 import records_pb2 as rec
from controlplane.store.keys import Keys

log = logging.getLogger(__name__)

DEFAULT_SHARDS = 1


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    shards: int


async def ensure_cluster_config(client: EtcdClient, keys: Keys, *, shards: int | None = None) -> ClusterConfig:
    """The stored config; stores ``shards`` (or the default) first if there is none.

    Idempotent and safe to race: creation is guarded by the key's absence. A
    ``shards`` that differs from the stored value is ignored with a warning.
    """
    if shards is not None and shards < 1:
        raise ValueError("shards must be >= 1")
    key = keys.cluster_config()
    proposed = rec.ClusterConfig(shards=shards or DEFAULT_SHARDS)
    result = await client.txn([ops.absent(key)], [ops.put(key, proposed.SerializeToString())], [ops.get(key)])
    if result.succeeded:
        return ClusterConfig(proposed.shards)
    stored = rec.ClusterConfig.FromString(result.kvs(0)[0].value)
    if shards is not None and shards != stored.shards:
        log.warning("--shards %d ignored: this system has %d shards (changing it is not supported yet)",
                    shards, stored.shards)
    return ClusterConfig(stored.shards)


async def read_cluster_config(client: EtcdClient, keys: Keys) -> ClusterConfig | None:
    """The stored config, or None if no process has stored one yet. Read-only."""
    kv = await client.get(keys.cluster_config())
    return ClusterConfig(rec.ClusterConfig.FromString(kv.value).shards) if kv else None
