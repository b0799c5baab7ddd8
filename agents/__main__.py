"""``quanta agent``: run the agent for one host or many simulated hosts.

With ``--driver esxi`` it runs the hosts of one ESXi host or vCenter
(``--esxi-url``); the password comes from the environment variable
QUANTA_ESXI_PASSWORD, never from the command line.

Drivers report a host's raw capacity; ``--vcpu-overcommit``, ``--memory-overcommit``
and ``--disk-overcommit`` are the one overcommit setting, registered with every
host of the agent and applied once, by placement (``quanta host get`` shows the
raw capacity, the ratios and the allocatable capacity that results).

Bootstrap data (cloud-init user data, an Ignition config) is cleared from the VM and
from etcd once the guest reports that it bootstrapped; a guest that cannot report
(an image without the report, or ``--silent-images`` on sim) has it cleared once it
has run with an address for ``--bootstrap-clear-after`` seconds (default 600).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
from collections.abc import Coroutine

from agents.drivers.factory import (
    DEFAULT_NETWORK,
    DEFAULT_NETWORK_NAME,
    LATENCY_HELP,
    SimConfig,
    SimLatency,
    build_sim_drivers,
    esxi_config,
    esxi_drivers,
    sim_latency,
)
from agents.drivers.protocol import HostCapacity
from agents.reconciler import DEFAULT_BOOTSTRAP_CLEAR_AFTER_S
from agents.service import AgentConfig, run_agent
from controlplane.models import DEFAULT_DATASTORE_CLASS, Overcommit
from controlplane.process import add_common_args, run_process

log = logging.getLogger(__name__)

#: Deprecated flags that set the overcommit setting: (old flag, new flag), attribute names derived.
_ALIASES = (("--esxi-cpu-ratio", "--vcpu-overcommit"), ("--esxi-memory-ratio", "--memory-overcommit"),
            ("--esxi-disk-ratio", "--disk-overcommit"))
#: vCPUs booked per hardware thread when --vcpu-overcommit is not given with --driver esxi
#: (what the esxi driver used to multiply its capacity by).
ESXI_VCPU_OVERCOMMIT = 4.0


def _latency(spec: str) -> SimLatency:
    try:
        return sim_latency(spec)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _datastore_class(text: str) -> tuple[str, str]:
    """``CLASS=DATASTORE`` as a pair (the esxi config checks the names)."""
    cls, sep, ds = text.partition("=")
    if not sep or not cls.strip() or not ds.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: expected CLASS=DATASTORE")
    return cls.strip(), ds.strip()


def _ratio(text: str) -> float:
    try:
        ratio = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a ratio such as 4 or 1.5, got {text!r}") from None
    if not (math.isfinite(ratio) and ratio > 0):
        raise argparse.ArgumentTypeError(f"a ratio must be > 0, got {text!r}")
    return ratio


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"seconds must be >= 0, got {text!r}")
    return value


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def overcommit_from(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[Overcommit, list[str]]:
    """The overcommit setting the flags give, and a warning per deprecated flag used
    (each sets what its new flag sets; both given and different is an error)."""
    warnings, ratios = [], {}
    for old_flag, new_flag in _ALIASES:
        old, new = getattr(args, _dest(old_flag)), getattr(args, _dest(new_flag))
        if old is not None:
            if new is not None and new != old:
                parser.error(f"{old_flag} {old:g} contradicts {new_flag} {new:g}; give only {new_flag}")
            warnings.append(f"{old_flag} is deprecated and will be removed: use {new_flag} "
                            "(drivers report raw capacity; overcommit applies once, in placement)")
            new = old
        ratios[new_flag] = new
    vcpus = ratios["--vcpu-overcommit"]
    if vcpus is None:
        vcpus = ESXI_VCPU_OVERCOMMIT if args.driver == "esxi" else 1.0
    memory, disk = ratios["--memory-overcommit"], ratios["--disk-overcommit"]
    return Overcommit(vcpus, 1.0 if memory is None else memory, 1.0 if disk is None else disk), warnings


async def _warned(warnings: list[str], main: Coroutine) -> None:
    for warning in warnings:  # logged here, where the process's logging is set up
        log.warning(warning)
    await main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="quanta agent", description=__doc__)
    add_common_args(parser)
    parser.add_argument("--driver", choices=("sim", "esxi"), default="sim")
    parser.add_argument("--hosts", type=int, default=10, help="sim: number of simulated hosts")
    parser.add_argument("--host-prefix", default="sim", help="sim: host ids are PREFIX-00000, ...")
    parser.add_argument("--host-vcpus", type=int, default=128, help="sim: each host's raw vCPUs")
    parser.add_argument("--host-memory-mib", type=int, default=512 * 1024)
    parser.add_argument("--host-disk-gib", type=int, default=20_000)
    over = parser.add_argument_group(
        "overcommit (placement books up to raw capacity x ratio; `quanta host get` shows both)")
    over.add_argument("--vcpu-overcommit", type=_ratio, default=None,
                      help=f"vCPUs booked per raw vCPU (hardware thread on esxi); default "
                           f"{ESXI_VCPU_OVERCOMMIT:g} with --driver esxi, else 1")
    over.add_argument("--memory-overcommit", type=_ratio, default=None, help="default 1")
    over.add_argument("--disk-overcommit", type=_ratio, default=None, help="default 1")
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
    esxi.add_argument("--esxi-datastore-class", type=_datastore_class, action="append", default=[],
                      metavar="CLASS=DATASTORE",
                      help="persistent disks of CLASS live on DATASTORE (repeatable); hosts that mount it "
                           "get the label datastore.quanta.io/CLASS=true")
    esxi.add_argument("--esxi-image-prefix", default="quanta-image-",
                      help="image NAME is the template VM PREFIX+NAME, with a snapshot")
    esxi.add_argument("--esxi-clone-mode", choices=("auto", "instant", "linked", "full"), default="auto")
    esxi.add_argument("--esxi-threads", type=int, default=16, help="concurrent vSphere calls")
    for old_flag, new_flag in _ALIASES:
        esxi.add_argument(old_flag, type=_ratio, default=None, help=f"deprecated: use {new_flag}")
    parser.add_argument("--network", default=DEFAULT_NETWORK,
                        help="sim: CIDR the simulated guests' addresses come from (the lowest free one)")
    parser.add_argument("--network-name", default=DEFAULT_NETWORK_NAME, help="sim: name of that network")
    parser.add_argument("--networks", default=None,
                        help="sim: comma-separated network backings (port groups) every host reaches "
                             "(default: the --network-name)")
    parser.add_argument("--datastore-classes", default=DEFAULT_DATASTORE_CLASS,
                        help="sim: comma-separated datastore classes every host reaches "
                             "(labels datastore.quanta.io/CLASS=true)")
    parser.add_argument("--sim-datastore-dir", default=None,
                        help="sim: directory of the simulated shared datastore (persistent disks); give every "
                             "sim agent of a system the same one (default: STATE_DIR/datastore)")
    parser.add_argument("--silent-images", default="",
                        help="sim: comma-separated images whose guests never report that they bootstrapped")
    parser.add_argument("--bootstrap-clear-after", type=_seconds, default=DEFAULT_BOOTSTRAP_CLEAR_AFTER_S,
                        metavar="SECONDS",
                        help="clear the bootstrap data of a guest that has not reported that it bootstrapped "
                             "once it has run with an address this long (default %(default)g)")
    parser.add_argument("--workers", type=int, default=256, help="concurrent reconciles in this process")
    parser.add_argument("--per-host-concurrency", type=int, default=8)
    parser.add_argument("--lease-ttl", type=int, default=10, help="heartbeat lease TTL, seconds")
    parser.add_argument("--shutdown-grace", type=float, default=20.0,
                        help="on SIGTERM/SIGINT, seconds that in-flight host operations get to finish "
                             "(a second signal stops at once)")
    return parser


def _names(text: str) -> tuple[str, ...]:
    """A comma-separated list, each name stripped, empty ones dropped."""
    return tuple(name.strip() for name in text.split(",") if name.strip())


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    overcommit, warnings = overcommit_from(parser, args)
    if args.driver == "esxi":
        _run_esxi(parser, args, overcommit, warnings)
        return
    sim = SimConfig(
        hosts=args.hosts, host_prefix=args.host_prefix,
        capacity=HostCapacity(args.host_vcpus, args.host_memory_mib, args.host_disk_gib), overcommit=overcommit,
        latency=args.latency,
        state_dir=args.state_dir, fault_rate=args.fault_rate, seed=args.seed,
        images=tuple(i.strip() for i in args.images.split(",") if i.strip()) if args.images is not None else None,
        zones=tuple(z.strip() for z in args.zones.split(",") if z.strip()),
        network=args.network, network_name=args.network_name,
        silent_images=tuple(i.strip() for i in args.silent_images.split(",") if i.strip()),
        networks=_names(args.networks) if args.networks is not None else None,
        datastore_classes=_names(args.datastore_classes), datastore_dir=args.sim_datastore_dir,
    )
    try:
        _hypervisor, drivers = build_sim_drivers(sim)
    except ValueError as err:  # a bad --network
        parser.error(str(err))
    config = AgentConfig(etcd=args.etcd, root=args.root, name=args.name or args.host_prefix,
                         driver=args.driver, lease_ttl=args.lease_ttl, workers=args.workers,
                         per_host_concurrency=args.per_host_concurrency, shutdown_grace_s=args.shutdown_grace,
                         overcommit=overcommit, bootstrap_clear_after_s=args.bootstrap_clear_after)
    run_process("agent", args, _warned(warnings, run_agent(config, drivers)))


def _run_esxi(parser: argparse.ArgumentParser, args: argparse.Namespace, overcommit: Overcommit,
              warnings: list[str]) -> None:
    if not args.esxi_url:
        parser.error("--driver esxi needs --esxi-url")
    try:
        esxi = esxi_config(
            url=args.esxi_url, user=args.esxi_user, password=os.environ.get("QUANTA_ESXI_PASSWORD", ""),
            verify_tls=not args.esxi_insecure, ca_file=args.esxi_ca_file, hosts=tuple(args.esxi_host),
            host_id_prefix=args.esxi_host_id_prefix, datastore=args.esxi_datastore,
            datastore_classes=tuple(args.esxi_datastore_class), image_prefix=args.esxi_image_prefix,
            clone_mode=args.esxi_clone_mode, threads=args.esxi_threads)
    except ValueError as err:
        parser.error(str(err))
    config = AgentConfig(etcd=args.etcd, root=args.root, name=args.name or f"esxi-{args.esxi_host_id_prefix}agent",
                         driver="esxi", lease_ttl=args.lease_ttl, workers=args.workers,
                         per_host_concurrency=args.per_host_concurrency, shutdown_grace_s=args.shutdown_grace,
                         overcommit=overcommit, bootstrap_clear_after_s=args.bootstrap_clear_after)

    async def run() -> None:
        async with esxi_drivers(esxi) as drivers:
            await run_agent(config, drivers)

    run_process("agent", args, _warned(warnings, run()))


if __name__ == "__main__":
    main()
