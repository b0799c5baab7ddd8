"""``quanta agent``: run the agent for one host or many simulated hosts.

With ``--driver esxi`` it runs the hosts of one ESXi host or vCenter
(``--esxi-url``); the password comes from the environment variable
QUANTA_ESXI_PASSWORD, never from the command line.
"""

from __future__ import annotations

import argparse
import os

from agents.drivers.factory import (
    LATENCY_HELP,
    SimConfig,
    SimLatency,
    build_sim_drivers,
    esxi_config,
    esxi_drivers,
    sim_latency,
)
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
    parser.add_argument("--driver", choices=("sim", "esxi"), default="sim")
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
    parser.add_argument("--zones", default="",
                        help="sim: comma-separated availability zones, given to the hosts round robin "
                             "(label topology.quanta.io/zone)")
    parser.add_argument("--images", default=None,
                        help="sim: the images the hosts have, comma separated, e.g. ubuntu,debian,photon "
                             "(others fail with ImageNotFound); default: any image")
    esxi = parser.add_argument_group("esxi driver (password in $QUANTA_ESXI_PASSWORD)")
    esxi.add_argument("--esxi-url", help="https://HOST[:PORT]/sdk of an ESXi host or vCenter")
    esxi.add_argument("--esxi-user", default="root")
    esxi.add_argument("--esxi-ca-file", default=None, help="CA bundle to verify the server certificate with")
    esxi.add_argument("--esxi-insecure", action="store_true", help="do not verify the server certificate")
    esxi.add_argument("--esxi-host", action="append", default=[],
                      help="HostSystem name to run (repeatable); default: every host of the endpoint")
    esxi.add_argument("--esxi-host-id-prefix", default="", help="Quanta host id = PREFIX + host name")
    esxi.add_argument("--esxi-datastore", default="", help="datastore for new VMs (default: most free space)")
    esxi.add_argument("--esxi-image-prefix", default="quanta-image-",
                      help="image NAME is the template VM PREFIX+NAME, with a snapshot")
    esxi.add_argument("--esxi-clone-mode", choices=("auto", "instant", "linked", "full"), default="auto")
    esxi.add_argument("--esxi-threads", type=int, default=16, help="concurrent vSphere calls")
    esxi.add_argument("--esxi-cpu-ratio", type=float, default=4.0, help="vCPUs offered per hardware thread")
    esxi.add_argument("--esxi-memory-ratio", type=float, default=1.0)
    esxi.add_argument("--esxi-disk-ratio", type=float, default=1.0)
    parser.add_argument("--workers", type=int, default=256, help="concurrent reconciles in this process")
    parser.add_argument("--per-host-concurrency", type=int, default=8)
    parser.add_argument("--lease-ttl", type=int, default=10, help="heartbeat lease TTL, seconds")
    parser.add_argument("--shutdown-grace", type=float, default=20.0,
                        help="on SIGTERM/SIGINT, seconds that in-flight host operations get to finish "
                             "(a second signal stops at once)")
    args = parser.parse_args(argv)
    if args.driver == "esxi":
        _run_esxi(parser, args)
        return
    sim = SimConfig(
        hosts=args.hosts, host_prefix=args.host_prefix,
        capacity=HostCapacity(args.host_vcpus, args.host_memory_mib, args.host_disk_gib),
        latency=args.latency,
        state_dir=args.state_dir, fault_rate=args.fault_rate, seed=args.seed,
        images=tuple(i.strip() for i in args.images.split(",") if i.strip()) if args.images is not None else None,
        zones=tuple(z.strip() for z in args.zones.split(",") if z.strip()),
    )
    _hypervisor, drivers = build_sim_drivers(sim)
    config = AgentConfig(etcd=args.etcd, root=args.root, name=args.name or args.host_prefix,
                         driver=args.driver, lease_ttl=args.lease_ttl, workers=args.workers,
                         per_host_concurrency=args.per_host_concurrency, shutdown_grace_s=args.shutdown_grace)
    run_process("agent", args, run_agent(config, drivers))


def _run_esxi(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not args.esxi_url:
        parser.error("--driver esxi needs --esxi-url")
    try:
        esxi = esxi_config(
            url=args.esxi_url, user=args.esxi_user, password=os.environ.get("QUANTA_ESXI_PASSWORD", ""),
            verify_tls=not args.esxi_insecure, ca_file=args.esxi_ca_file, hosts=tuple(args.esxi_host),
            host_id_prefix=args.esxi_host_id_prefix, datastore=args.esxi_datastore,
            image_prefix=args.esxi_image_prefix, clone_mode=args.esxi_clone_mode, threads=args.esxi_threads,
            cpu_allocation_ratio=args.esxi_cpu_ratio, memory_allocation_ratio=args.esxi_memory_ratio,
            disk_allocation_ratio=args.esxi_disk_ratio)
    except ValueError as err:
        parser.error(str(err))
    config = AgentConfig(etcd=args.etcd, root=args.root, name=args.name or f"esxi-{args.esxi_host_id_prefix}agent",
                         driver="esxi", lease_ttl=args.lease_ttl, workers=args.workers,
                         per_host_concurrency=args.per_host_concurrency, shutdown_grace_s=args.shutdown_grace)

    async def run() -> None:
        async with esxi_drivers(esxi) as drivers:
            await run_agent(config, drivers)

    run_process("agent", args, run())


if __name__ == "__main__":
    main()
