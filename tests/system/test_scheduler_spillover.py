"""Spill-over, as this design has it: every shard sees every host (hosts are not split
among shards; placement samples, so a shard's cost does not grow with them), so a
VM whose shard's owner process has no "own" hosts with room is still placed on
whatever host has room. Checked with real processes: 2 schedulers, 4 shards, and
room on only one of 3 hosts (the others in maintenance)."""

from __future__ import annotations

import asyncio

from controlplane.etcd import EtcdClient
from controlplane.models import VmSpec
from controlplane.store.keys import Keys
from quanta.local import LocalSystem
from tests.conftest import seen_in, wait_until


def test_vms_of_every_shard_land_on_the_one_host_with_room() -> None:
    with LocalSystem(hosts=3, schedulers=2, shards=4, latency="zero", metrics=False) as system, \
            system.client(project="spill") as client:
        hosts = sorted(h.name.split("/", 1)[1] for h in client.list_hosts())
        for host in hosts[1:]:
            client.set_maintenance(host)
        for i in range(16):
            client.create_vm(f"s-{i:02d}", flavor="small", image="ubuntu")
        wait_until(lambda: all(vm.state == vm.RUNNING for vm in client.list_vms()) and
                   len(list(client.list_vms())) == 16, timeout=60, message="all 16 VMs RUNNING",
                   seen=seen_in(system, client))
        assert {vm.host for vm in client.list_vms()} == {hosts[0]}

        async def shards_of() -> set[int]:
            keys = Keys(system.root)
            async with EtcdClient(system.etcd_endpoint) as etcd:
                kvs, _rev = await etcd.range_prefix(keys.vms_prefix("default", "spill"))
            return {VmSpec.from_bytes(kv.value).shard for kv in kvs if kv.key.endswith(b"/spec")}

        shards = asyncio.run(shards_of())
        assert len(shards) >= 2, f"all 16 VMs hashed to shards {shards}: the test shows nothing"
