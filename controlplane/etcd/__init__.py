"""A thin asyncio etcd v3 client over our own grpc.aio stubs (see docs/etcd-client.md).

Only one etcd client may live in a process: the stubs register the etcd
``etcdserverpb``/``mvccpb`` protobuf symbols.
"""

from controlplane.etcd import ops
from controlplane.etcd.client import (
    Compacted,
    EtcdClient,
    EtcdError,
    KeyValue,
    RangeResult,
    TxnResult,
    WatchBatch,
    WatchEvent,
    prefix_end,
)
from controlplane.etcd.lease import Lease, LeaseLost

__all__ = [
    "Compacted",
    "EtcdClient",
    "EtcdError",
    "KeyValue",
    "Lease",
    "LeaseLost",
    "RangeResult",
    "TxnResult",
    "WatchBatch",
    "WatchEvent",
    "ops",
    "prefix_end",
]
