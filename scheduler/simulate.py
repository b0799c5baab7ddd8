"""Write simulated hosts and queued VMs straight into etcd, for benchmarks and
tests that exercise the scheduler without frontends or agents.

Hosts are registered without a heartbeat lease (they never go missing) and
VMs are queued the way a frontend queues them (``queue/{shard}/...``), so the
scheduler processes see exactly what they would in a running system.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence

from controlplane.etcd import EtcdClient, ops
from controlplane.models import HostAllocation, HostRegistration, Resources, VmRef, VmSpec, now_ns
from controlplane.store.keys import Keys, shard_of


async def seed_hosts(client: EtcdClient, keys: Keys, count: int, capacity: Resources, *,
                     labels: Mapping[str, str] | None = None, prefix: str = "sim") -> list[str]:
    """Register ``count`` hosts with an empty allocation; returns their ids."""
    hosts = [f"{prefix}-{i:05d}" for i in range(count)]
    requests = []
    for host in hosts:
        reg = HostRegistration(host, "sim", capacity, dict(labels or {}), agent="simulate", register_time_ns=now_ns())
        requests += [ops.put(keys.host_reg(host), reg.to_bytes()),
                     ops.put(keys.host_alloc(host), HostAllocation().to_bytes())]
    await client.txn_chunked(requests)
    return hosts


def make_specs(count: int, shards: int, resources: Resources, *, project: str = "sim",
               anti_affinity_group: str = "", node_selector: Mapping[str, str] | None = None) -> list[VmSpec]:
    specs = []
    for i in range(count):
        uid = uuid.uuid4().hex
        specs.append(VmSpec(VmRef("sim", project, f"vm-{i:06d}"), uid, "sim", "sim", resources,
                            create_time_ns=now_ns(), shard=shard_of(uid, shards),
                            node_selector=dict(node_selector or {}), anti_affinity_group=anti_affinity_group))
    return specs


async def queue_specs(client: EtcdClient, keys: Keys, specs: Sequence[VmSpec]) -> int:
    """Queue the VMs for their shards (as a frontend's create would); returns the revision."""
    requests = [ops.put(keys.queue(s.shard, s.ref), s.to_bytes()) for s in specs]
    responses = await client.txn_chunked(requests)
    return max((r.response_put.header.revision for r in responses), default=0)
