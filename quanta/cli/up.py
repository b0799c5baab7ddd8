"""quanta up: the whole system on this machine (etcd, API frontends, scheduler,
an agent with simulated hosts) until Ctrl-C."""

from __future__ import annotations

import argparse
import json
import pathlib
import signal
import sys
import time

from quanta.client import local_state_path
from quanta.local import LocalSystem


def _write_state(path: pathlib.Path, system: LocalSystem) -> None:
    """Tell the CLI, the SDK and SREs where everything is."""
    pids = {name: process.pid for name, process in system.processes.items()}
    if system.etcd and system.etcd.process:
        pids["etcd"] = system.etcd.process.pid
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)  # it holds the admin token
    path.chmod(0o600)
    path.write_text(json.dumps({
        "endpoint": system.endpoint, "etcd": system.etcd_endpoint, "logs": str(system.log_dir), "pids": pids,
        "admin_token": system.admin_token,
        "metrics": {name: f"127.0.0.1:{port}" for name, port in system.metrics_ports.items()},
        **({"prometheus": system.prometheus.url} if system.prometheus else {}),
    }, indent=2))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="quanta up", description=__doc__)
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
    parser.add_argument("--etcd", default="", help="use this etcd instead of starting one")
    parser.add_argument("--data-dir", default=None, help="keep state and logs here (default: a temp dir)")
    parser.add_argument("--prometheus", action="store_true",
                        help="also run Prometheus (the 'prometheus' binary) scraping every process")
    return parser


def main(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)

    system = LocalSystem(hosts=args.hosts, frontends=args.frontends, schedulers=args.schedulers,
                         shards=args.shards or max(4, 2 * args.schedulers), port=args.port, latency=args.latency,
                         etcd_endpoint=args.etcd or None, data_dir=args.data_dir, prometheus=args.prometheus)
    stopping = False

    def on_signal(_signum, _frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    state_path = local_state_path()
    schedulers = "scheduler" if args.schedulers == 1 else f"{args.schedulers} schedulers"
    print(f"starting etcd, {args.frontends} frontends, {schedulers} and an agent of {args.hosts} hosts ...",
          flush=True)
    try:
        system.start()
        _write_state(state_path, system)
        prometheus_line = f"\n  prometheus:   {system.prometheus.url}" if system.prometheus else ""
        print(f"""
Quanta is up.
  API (gRPC):   {system.endpoint}    ({args.frontends} frontends share this port)
  etcd:         {system.etcd_endpoint}
  hosts:        {args.hosts} simulated ({args.latency} latency)
  metrics:      {", ".join(f"{n}=:{p}" for n, p in system.metrics_ports.items())}
  logs:         {system.log_dir}{prometheus_line}

Admin token (system-admin, 30 days; the CLI and SDK on this machine use it by default):
  {system.admin_token}

Try:  quanta vm create web-1 --flavor small --image ubuntu --wait
      quanta vm watch
      quanta tenant create acme --quota vms=10,vcpus=8
Press Ctrl-C to stop.""", flush=True)
        restart_at: dict[str, float] = {}
        started_at = {name: time.monotonic() for name in system.processes}
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
                    _write_state(state_path, system)
            time.sleep(0.2)
    except (TimeoutError, RuntimeError, FileNotFoundError) as err:
        print(f"quanta up: {err}", file=sys.stderr)
        sys.exit(1)
    finally:
        print("stopping ...", flush=True)
        system.cleanup()
        try:
            if json.loads(state_path.read_text()).get("endpoint") == system.endpoint:
                state_path.unlink()
        except (OSError, ValueError):
            pass
        print("stopped.", flush=True)
