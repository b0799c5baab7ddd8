"""``quanta agent``: run the agent for one host or many simulated hosts."""

from __future__ import annotations

import argparse

from agents.drivers.factory import LATENCY_HELP, SimConfig, SimLatency, build_sim_drivers, sim_latency
from agents.drivers.protocol import HostCapacity
from agents.service import AgentConfig, run_agent
from controlplane.process import add_common_args, run_process


def _latency(spec: str) -> SimLatency:
    try:
        return sim_latency(spec)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="quanta agent", description=__doc__)
    add_common_args(parser)
    parser.add_argument("--driver", choices=("sim",), default="sim")
    parser.add_argument("--hosts", type=int, default=10, help="sim: number of simulated hosts")
    parser.add_argument("--host-prefix", default="sim", help="sim: host ids are PREFIX-00000, ...")
    parser.add_argument("--host-vcpus", type=int, default=128)
    parser.add_argument("--host-memory-mib", type=int, default=512 * 1024)
    parser.add_argument("--host-disk-gib", type=int, default=20_000)
    parser.add_argument("--latency", type=_latency, default=SimLatency(), help=f"sim: {LATENCY_HELP}")
    parser.add_argument("--state-dir", default=None,
                        help="sim: where the simulated hypervisor keeps its state across restarts")
    parser.add_argument("--fault-rate", type=float, default=0.0,
                        help="sim: probability of a transient fault per mutating call (for testing)")
    parser.add_argument("--seed", type=int, default=0, help="sim: seed of the fault generator")
    parser.add_argument("--workers", type=int, default=256, help="concurrent reconciles in this process")
    parser.add_argument("--per-host-concurrency", type=int, default=8)
    parser.add_argument("--lease-ttl", type=int, default=10, help="heartbeat lease TTL, seconds")
    args = parser.parse_args(argv)
    sim = SimConfig(
        hosts=args.hosts, host_prefix=args.host_prefix,
        capacity=HostCapacity(args.host_vcpus, args.host_memory_mib, args.host_disk_gib),
        latency=args.latency,
        state_dir=args.state_dir, fault_rate=args.fault_rate, seed=args.seed,
    )
    _hypervisor, drivers = build_sim_drivers(sim)
    config = AgentConfig(etcd=args.etcd, root=args.root, name=args.name or args.host_prefix,
                         driver=args.driver, lease_ttl=args.lease_ttl, workers=args.workers,
                         per_host_concurrency=args.per_host_concurrency)
    run_process("agent", args, run_agent(config, drivers))


if __name__ == "__main__":
    main()
