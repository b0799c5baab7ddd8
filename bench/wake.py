"""What one capacity change costs a scheduler shard with VMs waiting (no host fits
them), at a given fleet size. Pure placement code, no etcd.

    python bench/wake.py                       # 1,000 and 10,000 hosts x 100 and 1,000 waiting VMs
    python bench/wake.py --hosts 10000 --waiting 5000

A full fleet: every host's vCPUs are allocated, and the waiting VMs need 1 vCPU.
When one host frees capacity (a VM deleted), the shard re-examines its waiting VMs:

- ``re-place all``: a placement per waiting VM (what the shard did before session 3:
  each walks the whole fleet, since no host fits until it reaches the freed one);
- ``admit``: the waiting VMs checked against the changed host only, oldest first,
  each taking its room there (``admit``); only the admitted ones are placed.

Prints the CPU milliseconds per wake for each, the median of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from controlplane.placement import (  # noqa: E402
    HostSnapshot,
    HostView,
    PlacementRequest,
    Resources,
    admit,
    place,
)

CAPACITY = Resources(128, 512 * 1024, 4000)


def _full_fleet(hosts: int) -> HostView:
    view = HostView()
    for i in range(hosts):
        view.upsert(HostSnapshot(f"h-{i:05d}", True, CAPACITY, Resources(128, 1024, 10), vm_count=128,
                                 alloc_revision=1))
    return view


def _cpu_ms(work) -> float:
    started = time.process_time()
    work()
    return (time.process_time() - started) * 1000


def run(hosts: int, waiting: int, repeat: int) -> tuple[float, float]:
    view = _full_fleet(hosts)
    requests = [PlacementRequest(f"vm-{i}", f"uid-{i}", Resources(1, 1024, 10)) for i in range(waiting)]
    freed = view.get("h-00000")
    rng = random.Random(1)
    # One host freed one vCPU: exactly one waiting VM fits, the others are turned away again.
    view.upsert(HostSnapshot(freed.host_id, True, CAPACITY, Resources(127, 1024, 10), vm_count=127,
                             alloc_revision=2))
    changed = [view.get(freed.host_id)]

    def replace_all() -> None:
        for request in requests:
            place(request, view, rng=rng)

    def check_changed() -> None:
        for i in admit(enumerate(requests), changed):
            place(requests[i], view, rng=rng)

    old = statistics.median(_cpu_ms(replace_all) for _ in range(repeat))
    new = statistics.median(_cpu_ms(check_changed) for _ in range(repeat))
    return old, new


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--waiting", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    for hosts in args.hosts:
        for waiting in args.waiting:
            old, new = run(hosts, waiting, args.repeat)
            print(f"hosts={hosts:>6} waiting={waiting:>5}: re-place all {old:9.1f} ms CPU per wake, "
                  f"admit {new:7.1f} ms ({old / max(new, 0.001):,.0f}x less)", flush=True)


if __name__ == "__main__":
    main()
