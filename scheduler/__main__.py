"""``quanta scheduler``: run scheduler shards against etcd."""

from __future__ import annotations

import argparse

from controlplane.placement import POLICIES
from controlplane.process import add_common_args, run_process
from scheduler.service import SchedulerConfig, run_scheduler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="quanta scheduler", description=__doc__)
    add_common_args(parser)
    parser.add_argument("--shards", type=int, default=None,
                        help="total number of shards, if this system has none stored yet (default 1)")
    parser.add_argument("--lease-ttl", type=int, default=10, help="session lease TTL, seconds")
    parser.add_argument("--batch-size", type=int, default=256, help="VMs placed per bind round trip")
    parser.add_argument("--policy", choices=sorted(POLICIES), default="spread",
                        help="spread: least allocated host first; pack: fill hosts up (default spread)")
    parser.add_argument("--image-locality-weight", type=float, default=0.5,
                        help="weight of preferring hosts that hold the VM's image (label image.quanta.io/IMAGE=true) "
                             "next to the policy's score, which weighs 1 (0: off; default 0.5)")
    parser.add_argument("--host-dead-after", type=float, default=60.0,
                        help="seconds a host may miss its heartbeat before it is declared dead and its VMs "
                             "are placed again by restart policy (default 60)")
    args = parser.parse_args(argv)
    config = SchedulerConfig(etcd=args.etcd, root=args.root, shards=args.shards, lease_ttl=args.lease_ttl,
                             batch_size=args.batch_size, policy=args.policy,
                             image_locality_weight=args.image_locality_weight,
                             host_dead_after_s=args.host_dead_after,
                             **({"name": args.name} if args.name else {}))
    run_process("scheduler", args, run_scheduler(config))


if __name__ == "__main__":
    main()
