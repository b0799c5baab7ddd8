"""What each VM leaves in etcd: keys and bytes per VM by kind, etcd's RSS and db size.

    python bench/footprint.py --vms 30000 --hosts 100 --batch 100

Starts a LocalSystem (sim, zero latency; hosts big enough for every VM), creates
``--vms`` VMs with ``bench/e2e.py`` (``--batch`` VMs per CreateVms call), then reads
every key back and prints, per key kind, the keys and bytes (key + value) per VM, and
etcd's resident memory (``/proc/<pid>/status`` VmRSS) and db file size per VM. The
live keys are what the store layer writes; RSS and the db file also hold the kept
revisions, etcd's index and whatever its watchers buffer.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import pathlib
import subprocess
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from bench.procfs import memory_kib  # noqa: E402
from bench.teardown import exit_on_sigterm  # noqa: E402
from controlplane.etcd import EtcdClient  # noqa: E402
from quanta.local import LocalSystem  # noqa: E402


async def by_kind(endpoint: str) -> tuple[collections.Counter, collections.Counter, int]:
    async with EtcdClient(endpoint) as client:
        kvs, revision = await client.range_prefix(b"/")
    size: collections.Counter = collections.Counter()
    count: collections.Counter = collections.Counter()
    for kv in kvs:
        parts = kv.key.decode().split("/")
        kind = parts[3] if len(parts) > 3 else parts[-1]
        if kind == "vms":
            kind += "/" + parts[-1]
        size[kind] += len(kv.key) + len(kv.value)
        count[kind] += 1
    return size, count, revision


def _metrics(endpoint: str) -> dict[str, float]:
    """etcd's own Prometheus metrics (unlabelled series, summed over labels)."""
    import urllib.request

    text = urllib.request.urlopen(endpoint.split(",")[0] + "/metrics", timeout=10).read().decode()
    out: dict[str, float] = collections.defaultdict(float)
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name.split("{", 1)[0]] += float(value)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vms", type=int, default=30000)
    p.add_argument("--hosts", type=int, default=100)
    p.add_argument("--batch", type=int, default=100, help="VMs per CreateVms call (1: single creates)")
    args = p.parse_args()
    exit_on_sigterm()
    per_host = -(-args.vms // args.hosts)
    system = LocalSystem(hosts=args.hosts, host_vcpus=max(128, per_host), host_memory_mib=max(512, per_host) * 1024,
                         frontends=2, latency="zero", metrics=False)
    system.start(timeout=120)
    try:
        bench = [sys.executable, str(pathlib.Path(__file__).with_name("e2e.py")), "--endpoint", system.endpoint,
                 "--token", system.admin_token, "--vms", str(args.vms), "--timeout", "1800"]
        if args.batch > 1:
            bench += ["--batch", str(args.batch)]
        run = subprocess.run(bench, capture_output=True, text=True)
        print("\n".join(line for line in run.stdout.splitlines() if line.startswith(("RUNNING", "not RUNNING"))))
        size, count, revision = asyncio.run(by_kind(system.etcd_endpoint))
        total = sum(size.values())
        print(f"revision {revision}, keys {sum(count.values())}, bytes {total} = {total / args.vms:.0f} per VM")
        for kind, n in size.most_common():
            print(f"  {kind:20s} {count[kind]:9d} keys {n:11d} B {n / args.vms:8.1f} B/VM")
        rss_kib = memory_kib(system.etcd.process.pid, "VmRSS") or 0
        db = pathlib.Path(system.etcd.data_dir, "member", "member", "snap", "db")
        db_size = db.stat().st_size if db.exists() else 0
        print(f"etcd RSS {rss_kib / 1024:.0f} MiB = {rss_kib * 1024 / args.vms:.0f} B/VM; "
              f"db file {db_size / 2**20:.0f} MiB = {db_size / args.vms:.0f} B/VM")
        # Where etcd's memory is: its Go heap (raft log, index, watchers) against the
        # rest (mostly the db file's mmap), and the bytes clients sent it in all.
        metrics = _metrics(system.etcd_endpoint)
        for name in ("go_memstats_heap_inuse_bytes", "go_memstats_heap_alloc_bytes",
                     "etcd_network_client_grpc_received_bytes_total"):
            if name in metrics:
                print(f"  {name} {metrics[name] / 2**20:.0f} MiB = {metrics[name] / args.vms:.0f} B/VM")
        return run.returncode
    finally:
        system.cleanup()


if __name__ == "__main__":
    sys.exit(main())
