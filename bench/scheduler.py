"""Scheduler benchmark: placements per second and placement latency, without
frontends or agents.

    python bench/scheduler.py                            # 1, 2, 4 shards x 1,000 and 10,000 hosts
    python bench/scheduler.py --shards 2 --hosts 10000 --vms 20000 --json

For each (shards, hosts): a fresh key root on one etcd that the benchmark starts,
``hosts`` simulated hosts registered straight into etcd (128 vCPUs, 512 GiB each),
and one scheduler process's worth of work (``run_scheduler``: host list + watch, a
shard manager holding all ``shards``) running in this process. Then:

- burst: ``--vms`` 1-vCPU VMs queued at once (as frontends would, in 128-op txns);
  placements/s = VMs / time from the first queue write until the last bind commits;
- paced: ``--rate`` VMs/s for ``--seconds``, queued every 20 ms; placement latency
  = bind time (the SCHEDULED status's update_time) - queue time (the spec's
  create_time), p50 and p99, both on this machine's clock.

The scheduler shares the CPU with etcd and with the benchmark's own queue writes,
as it would on a 2-core machine running the whole system.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.teardown import exit_on_sigterm  # noqa: E402
from controlplane.etcd import EtcdClient  # noqa: E402
from controlplane.etcd.server import ETCD_MAX_TXN_OPS, EtcdServer  # noqa: E402
from controlplane.models import Resources, VmStatus  # noqa: E402
from controlplane.store.keys import Keys  # noqa: E402
from controlplane.store.shards import ShardDirectory  # noqa: E402
from scheduler import metrics  # noqa: E402
from scheduler.service import SchedulerConfig, run_scheduler  # noqa: E402
from scheduler.simulate import make_specs, queue_specs, seed_hosts  # noqa: E402

HOST = Resources(128, 512 * 1024, 10_000)
VM = Resources(1, 1024, 10)


def _binds() -> float:
    return metrics.BINDS._value.get()


async def _until(condition, timeout: float, what: str, interval: float = 0.005) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(interval)


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))] if ordered else float("nan")


async def run_case(endpoint: str, shards: int, hosts: int, vms: int, rate: int, seconds: float) -> dict:
    root = f"/bench-sched-{shards}-{hosts}-{os.getpid()}-{time.monotonic_ns()}"
    keys = Keys(root)
    async with EtcdClient(endpoint) as client:
        await seed_hosts(client, keys, hosts, HOST)
        task = asyncio.create_task(run_scheduler(SchedulerConfig(
            etcd=endpoint, root=root, shards=shards, lease_ttl=10, name="bench")))
        try:
            directory = ShardDirectory(client, keys)

            async def all_owned() -> bool:
                if task.done():
                    task.result()
                return len((await directory.snapshot()).owners) == shards

            await _until(all_owned, 60, "shards owned")
            # Warm-up: one VM per shard, so the host view is listed before timing starts.
            start = _binds()
            await queue_specs(client, keys, make_specs(4 * shards, shards, VM, project="warm"))

            async def bound(n: float, base: float):
                async def check() -> bool:
                    if task.done():
                        task.result()
                    return _binds() - base >= n
                return check

            await _until(await bound(4 * shards, start), 60, "warm-up placed")

            # Burst.
            specs = make_specs(vms, shards, VM, project="burst")
            base = _binds()
            t0 = time.perf_counter()
            await queue_specs(client, keys, specs)
            await _until(await bound(vms, base), 600, "burst placed")
            burst_s = time.perf_counter() - t0

            # Paced.
            per_tick = max(1, int(rate * 0.02))
            ticks = int(seconds / 0.02)
            paced: list = []
            base = _binds()
            next_at = time.perf_counter()
            for tick in range(ticks):
                batch = make_specs(per_tick, shards, VM, project=f"paced{tick}")
                await queue_specs(client, keys, batch)
                paced += batch
                next_at += 0.02
                await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            await _until(await bound(len(paced), base), 600, "paced placed")
            latencies = []
            for spec in paced:
                status = VmStatus.from_bytes((await client.get(keys.vm_status(spec.ref))).value)
                latencies.append((status.update_time_ns - spec.create_time_ns) / 1e9)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await client.delete(keys.base.encode(), (keys.base[:-1] + "0").encode())
    return {
        "shards": shards, "hosts": hosts, "burst_vms": vms, "burst_seconds": round(burst_s, 3),
        "placements_per_second": round(vms / burst_s), "paced_rate": rate, "paced_vms": len(paced),
        "latency_p50_ms": round(_percentile(latencies, 0.50) * 1000, 1),
        "latency_p99_ms": round(_percentile(latencies, 0.99) * 1000, 1),
    }


async def main_async(args: argparse.Namespace, endpoint: str) -> list[dict]:
    results = []
    for hosts in args.hosts:
        for shards in args.shards:
            result = await run_case(endpoint, shards, hosts, args.vms, args.rate, args.seconds)
            results.append(result)
            if not args.json:
                print(f"shards={shards} hosts={hosts:>6}: {result['placements_per_second']:>6} placements/s "
                      f"({args.vms} in {result['burst_seconds']} s); at {args.rate}/s placement latency "
                      f"p50 {result['latency_p50_ms']} ms, p99 {result['latency_p99_ms']} ms", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--hosts", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--vms", type=int, default=10000, help="VMs in the burst")
    parser.add_argument("--rate", type=int, default=1000, help="VMs/s in the paced run")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of the paced run")
    parser.add_argument("--etcd", default="", help="use this etcd instead of starting one")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("QUANTA_ETCD_MAX_TXN_OPS", str(ETCD_MAX_TXN_OPS))
    exit_on_sigterm()
    server = None if args.etcd else EtcdServer().start()
    try:
        results = asyncio.run(main_async(args, args.etcd or server.endpoint))
    finally:
        if server:
            server.cleanup()
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
