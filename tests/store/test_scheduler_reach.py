"""A scheduler on real etcd places a VM with NICs and persistent disks only on a host
that reaches all its network backings and datastore classes: it waits, saying why,
until such a host registers (or a host's registration gains what it lacked)."""

from __future__ import annotations

from dataclasses import replace

from controlplane.etcd import EtcdClient, ops
from controlplane.models import (
    Binding,
    DiskRef,
    HostAllocation,
    HostRegistration,
    Nic,
    Resources,
    VmStatus,
    datastore_label,
    now_ns,
)
from controlplane.store.keys import Keys
from scheduler.service import SchedulerConfig, run_scheduler
from scheduler.simulate import make_specs, queue_specs
from tests.conftest import async_wait_until, describe_tasks, running
from tests.store.test_scheduler_constraints import run

CAP = Resources(16, 65536, 1000)
STANDARD = {datastore_label("standard"): "true"}


async def register(client: EtcdClient, keys: Keys, host: str, networks: set[str], labels: dict[str, str]) -> None:
    reg = HostRegistration(host, "sim", CAP, labels, agent="test", register_time_ns=now_ns(),
                           networks=frozenset(networks))
    await client.txn([], [ops.put(keys.host_reg(host), reg.to_bytes()),
                          ops.put(keys.host_alloc(host), HostAllocation().to_bytes())])


def test_a_vm_waits_for_a_host_reaching_its_network_and_datastore_then_binds_there(etcd_endpoint, root) -> None:
    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client:
            await register(client, keys, "h-0", {"VM Network"}, STANDARD)
            await register(client, keys, "h-1", {"cp"}, {})
            (spec,) = make_specs(1, 1, Resources(1, 1024, 10))
            nic = Nic("tenants/sim/projects/sim/networks/w", "net-uid", "workers")
            disk = DiskRef("data", "disk-uid", 5)
            spec = replace(spec, nics=(nic,), disks=(disk,))
            (cp_only,) = make_specs(1, 1, Resources(1, 1024, 10), project="other")
            cp_only = replace(cp_only, nics=(Nic("tenants/sim/projects/other/networks/cp", "cp-uid", "cp"),))
            await queue_specs(client, keys, [spec, cp_only])

            async def binding(ref) -> Binding | None:
                kvs, _ = await client.range_prefix(keys.bindings_prefix())
                return next((b for b in map(Binding.from_bytes, (kv.value for kv in kvs)) if b.spec.ref == ref),
                            None)

            async def message(expected: str) -> str | None:
                kv = await client.get(keys.vm_status(spec.ref))
                got = VmStatus.from_bytes(kv.value).message if kv is not None else ""
                return got if got == expected else None

            async with running(run_scheduler(SchedulerConfig(etcd=etcd_endpoint, root=root, shards=1, lease_ttl=5,
                                                             name="sched"))) as tasks:
                async def seen() -> str:
                    kv = await client.get(keys.vm_status(spec.ref))
                    status = VmStatus.from_bytes(kv.value).message if kv is not None else "no status"
                    return f"status {status!r}; bound {await binding(spec.ref)}; {describe_tasks(tasks)}"

                # Only h-1 reaches "cp".
                on_cp = await async_wait_until(lambda: binding(cp_only.ref), timeout=30,
                                               message="the cp VM bound", seen=seen)
                assert on_cp.host == "h-1"
                await async_wait_until(lambda: message("0/2 hosts fit: 2 NetworkUnreachable"), timeout=30,
                                       message="the reason it waits", seen=seen)
                # Hosts on "workers" that reach no datastore of its disk's class: it waits on
                # (only a host that may take it wakes it, so its reason is not written again).
                await register(client, keys, "h-2", {"workers"}, {})
                await register(client, keys, "h-3", {"workers", "cp"}, {})
                # h-2 reaches the datastore now: the only host that fits.
                await register(client, keys, "h-2", {"workers"}, STANDARD)
                bound = await async_wait_until(lambda: binding(spec.ref), timeout=30, message="the VM bound",
                                               seen=seen)
                assert bound.host == "h-2"
                assert bound.spec.nics == (nic,) and bound.spec.disks == (disk,)

    run(main())


def test_a_host_gaining_a_network_wakes_the_vm_waiting_for_it(etcd_endpoint, root) -> None:
    async def main() -> None:
        keys = Keys(root)
        async with EtcdClient(etcd_endpoint) as client:
            await register(client, keys, "h-0", {"VM Network"}, STANDARD)
            (spec,) = make_specs(1, 1, Resources(1, 1024, 10))
            spec = replace(spec, nics=(Nic("tenants/sim/projects/sim/networks/w", "net-uid", "workers"),))
            await queue_specs(client, keys, [spec])

            async def status() -> str | None:
                kv = await client.get(keys.vm_status(spec.ref))
                return VmStatus.from_bytes(kv.value).message if kv is not None else None

            async def bound() -> Binding | None:
                kv = await client.get(keys.binding("h-0", spec.ref))
                return Binding.from_bytes(kv.value) if kv is not None else None

            async with running(run_scheduler(SchedulerConfig(etcd=etcd_endpoint, root=root, shards=1, lease_ttl=5,
                                                             name="sched"))) as tasks:
                async def seen() -> str:
                    return f"status {await status()!r}; {describe_tasks(tasks)}"

                await async_wait_until(lambda: _is(status, "0/1 hosts fit: 1 NetworkUnreachable"), timeout=30,
                                       message="waiting for a network", seen=seen)
                # The same host, re-registered reaching "workers" too (same labels, same capacity).
                await register(client, keys, "h-0", {"VM Network", "workers"}, STANDARD)
                await async_wait_until(bound, timeout=30, message="bound once the host reaches it", seen=seen)

    run(main())


async def _is(read, expected: str) -> str | None:
    got = await read()
    return got if got == expected else None
