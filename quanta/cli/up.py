"""quanta up: the whole system on this machine (etcd, API frontends, scheduler,
an agent with simulated hosts) until Ctrl-C.

Each system has a name (``--name``, default ``local``): its state file
(``$XDG_STATE_HOME/quanta/NAME.json``) and a CLI context of that name, made
current unless another context is; both are removed when it stops, and other
systems' are left alone, so several can run side by side."""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import time

from controlplane.etcd.server import EtcdCluster
from quanta import config
from quanta.errors import ConfigError
from quanta.local import LocalSystem


def _state(name: str, system: LocalSystem) -> dict:
    """What the CLI, the SDK and SREs need to find everything."""
    pids = {proc: process.pid for proc, process in system.processes.items()}
    if isinstance(system.etcd, EtcdCluster):
        members = system.etcd.members
    else:
        members = [system.etcd] if system.etcd else []
    for i, member in enumerate(members):
        if member.process:
            pids["etcd" if len(members) == 1 else f"etcd-{i}"] = member.process.pid
    return {
        "name": name, "pid": os.getpid(),
        "endpoint": system.endpoint, "etcd": system.etcd_endpoint, "logs": str(system.log_dir), "pids": pids,
        "admin_token": system.admin_token,
        "metrics": {proc: f"127.0.0.1:{port}" for proc, port in system.metrics_ports.items()},
        **({"prometheus": system.prometheus.url} if system.prometheus else {}),
    }


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_free(name: str) -> None:
    """Raise ConfigError if ``name`` is taken: a running ``quanta up`` of that name, or
    a context of that name that no ``quanta up`` made (it would be overwritten)."""
    running = config.local_state(name)
    if running and running.get("pid") != os.getpid() and _alive(running.get("pid")):
        raise ConfigError(f"a system named {name!r} is running (API {running.get('endpoint')}, "
                          f"pid {running.get('pid')}); stop it, or start another with --name OTHER", "NAME_TAKEN")
    existing = config.load_config().contexts.get(name)
    if existing is not None and existing.system != name:
        raise ConfigError(f"context {name!r} exists and was not made by `quanta up`; start with --name OTHER, "
                          f"or remove it with `quanta context delete {name}`", "NAME_TAKEN")


def add_context(name: str, system: LocalSystem) -> tuple[str, bool]:
    """Add (or refresh) the context ``name`` for ``system``; make it current if no
    existing context is. Returns the current context and whether it is this one."""
    context = config.Context(name=name, endpoint=system.endpoint, token=system.admin_token, system=name)
    with config.editing_config() as box:
        cfg = box[0].with_context(context)
        if not cfg.current or cfg.current not in cfg.contexts:
            cfg = dataclasses.replace(cfg, current=name)
        box[0] = cfg
    return cfg.current, cfg.current == name


def remove_context(name: str, endpoint: str) -> None:
    """Remove the context ``name`` if it is still this system's (same endpoint);
    every other context, and the current one if it is another, stay as they are."""
    with config.editing_config() as box:
        mine = box[0].contexts.get(name)
        if mine is not None and mine.system == name and mine.endpoint == endpoint:
            box[0] = box[0].without_context(name)


def remove_state(name: str) -> None:
    """Remove ``name``'s state file if this process wrote it."""
    running = config.local_state(name)
    if running and running.get("pid") == os.getpid():
        try:
            config.local_state_path(name).unlink()
        except OSError:
            pass


def zone_names(text: str) -> tuple[str, ...]:
    """``--zones``: ``3`` → zone-1, zone-2, zone-3; ``a,b`` → a, b."""
    if text.strip().isdigit():
        count = int(text)
        if not 1 <= count <= 100:
            raise argparse.ArgumentTypeError("give 1 to 100 zones")
        return tuple(f"zone-{i}" for i in range(1, count + 1))
    names = tuple(z.strip() for z in text.split(",") if z.strip())
    if not names:
        raise argparse.ArgumentTypeError("give a count or comma-separated zone names")
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="quanta up", description=__doc__)
    parser.add_argument("--name", default=config.DEFAULT_SYSTEM,
                        help="the system's name: its CLI context and state file (default: local); "
                             "systems of different names run side by side")
    parser.add_argument("--hosts", type=int, default=10, help="simulated hosts (default 10)")
    parser.add_argument("--frontends", type=int, default=2, help="API frontends sharing the port (default 2)")
    parser.add_argument("--schedulers", type=int, default=1,
                        help="scheduler processes; they share the shards fairly and take over a dead one's "
                             "(default 1; see `quanta scheduler shards`)")
    parser.add_argument("--shards", type=int, default=None,
                        help="scheduler shards for a new system (default: twice the schedulers, at least 4)")
    parser.add_argument("--port", type=int, default=0, help="API port (default: a free one)")
    parser.add_argument("--latency", default="realistic",
                        help='simulated host latency: "realistic" (create 0.3 s, power on 0.1 s), "zero", '
                             'or per operation, e.g. "create=1.5,power_on=0.5"')
    parser.add_argument("--etcd", default="", help="use this etcd instead of starting one (endpoints, comma "
                        "separated)")
    parser.add_argument("--etcd-members", type=int, choices=(1, 3, 5), default=1,
                        help="members of the etcd started here: 1, or a cluster of 3 or 5 on loopback that "
                             "rides out the loss of a minority (default 1)")
    parser.add_argument("--zones", type=zone_names, default=(), metavar="N|A,B,...",
                        help="availability zones for the simulated hosts, given to them round robin (host label "
                             "topology.quanta.io/zone, for --anti-affinity-scope ZONE): a count (3: zone-1, "
                             "zone-2, zone-3) or names; default none")
    parser.add_argument("--data-dir", default=None, help="keep state and logs here (default: a temp dir)")
    parser.add_argument("--prometheus", action="store_true",
                        help="also run Prometheus (the 'prometheus' binary) scraping every process")
    return parser


def main(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    name = args.name
    try:
        config.check_name(name, "system")
        check_free(name)
    except ConfigError as err:
        print(f"quanta up: {err}", file=sys.stderr)
        sys.exit(1)

    system = LocalSystem(hosts=args.hosts, frontends=args.frontends, schedulers=args.schedulers,
                         shards=args.shards or max(4, 2 * args.schedulers), port=args.port, latency=args.latency,
                         etcd_endpoint=args.etcd or None, data_dir=args.data_dir, prometheus=args.prometheus,
                         etcd_members=args.etcd_members, zones=args.zones)
    stopping = False

    def on_signal(_signum, _frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    schedulers = "scheduler" if args.schedulers == 1 else f"{args.schedulers} schedulers"
    etcd = "etcd" if args.etcd_members == 1 else f"a {args.etcd_members}-member etcd"
    print(f"starting {etcd}, {args.frontends} frontends, {schedulers} and an agent of {args.hosts} hosts ...",
          flush=True)
    try:
        system.start()
        config.write_local_state(name, _state(name, system))
        current, is_current = add_context(name, system)
        using = (f"context {name!r} (current: the CLI and SDK on this machine use it by default)" if is_current else
                 f"context {name!r}; the current context stays {current!r}: `quanta context use {name}`, "
                 f"$QUANTA_CONTEXT={name} or --context {name} to use this one")
        prometheus_line = f"\n  prometheus:   {system.prometheus.url}" if system.prometheus else ""
        zones_text = f", in zones {', '.join(args.zones)}" if args.zones else ""
        print(f"""
Quanta is up.
  API (gRPC):   {system.endpoint}    ({args.frontends} frontends share this port)
  etcd:         {system.etcd_endpoint}
  hosts:        {args.hosts} simulated ({args.latency} latency){zones_text}
  metrics:      {", ".join(f"{n}=:{p}" for n, p in system.metrics_ports.items())}
  logs:         {system.log_dir}{prometheus_line}
  CLI:          {using}

Admin token (system-admin, 30 days; kept in the context {name!r}):
  {system.admin_token}

Try:  quanta vm create web-1 --flavor small --image ubuntu --wait
      quanta vm watch
      quanta tenant create acme --quota vms=10,vcpus=8
Press Ctrl-C to stop.""", flush=True)
        restart_at: dict[str, float] = {}
        started_at = {proc: time.monotonic() for proc in system.processes}
        while not stopping:
            now = time.monotonic()
            for process in system.processes.values():
                if process.alive and process.restarts and now - started_at[process.name] > 60:
                    process.restarts = 0  # a minute of health forgives earlier failures
                if process.alive or stopping:
                    continue
                # A component exits when it loses its lease; like a real supervisor,
                # restart it, backing off when it keeps failing.
                if process.name not in restart_at:
                    delay = min(30.0, 0.5 * 2 ** min(process.restarts, 6))
                    restart_at[process.name] = now + delay
                    print(f"{process.name} exited ({process.returncode}); restarting in {delay:.1f}s "
                          f"(log: {process.log_path})", flush=True)
                elif now >= restart_at[process.name]:
                    del restart_at[process.name]
                    process.restarts += 1
                    process.start()
                    started_at[process.name] = now
                    config.write_local_state(name, _state(name, system))
            time.sleep(0.2)
    except (TimeoutError, RuntimeError, FileNotFoundError, ConfigError) as err:
        print(f"quanta up: {err}", file=sys.stderr)
        sys.exit(1)
    finally:
        print("stopping ...", flush=True)
        system.cleanup()
        try:
            remove_context(name, system.endpoint)
        except ConfigError as err:  # a config file broken meanwhile: say so, stop anyway
            print(f"quanta up: could not remove context {name!r}: {err}", file=sys.stderr)
        remove_state(name)
        print("stopped.", flush=True)
