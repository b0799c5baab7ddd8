"""What every Quanta process shares: common flags, logging, metrics endpoint,
event loop and signal handling.

Configuration comes from flags, with environment variables as defaults
(QUANTA_ETCD, QUANTA_ROOT, QUANTA_LOG_FORMAT), so the same image runs every
component in compose files and Kubernetes manifests.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Coroutine

from prometheus_client import Info, start_http_server

from controlplane.logcontext import ContextFilter, JsonFormatter

BUILD_INFO = Info("quanta_build", "Build information of this process.")

log = logging.getLogger(__name__)


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--etcd", default=os.environ.get("QUANTA_ETCD", "http://127.0.0.1:2379"),
                        help="etcd endpoints, comma separated (env QUANTA_ETCD)")
    parser.add_argument("--root", default=os.environ.get("QUANTA_ROOT", "/quanta"),
                        help="etcd key prefix of this Quanta system (env QUANTA_ROOT)")
    parser.add_argument("--metrics-port", type=int, default=int(os.environ.get("QUANTA_METRICS_PORT", "0")),
                        help="serve Prometheus /metrics on this port (0: off)")
    parser.add_argument("--metrics-host", default="127.0.0.1", help="address of the metrics endpoint")
    parser.add_argument("--log-format", choices=("text", "json"),
                        default=os.environ.get("QUANTA_LOG_FORMAT", "text"))
    parser.add_argument("--log-level", default=os.environ.get("QUANTA_LOG_LEVEL", "INFO"))
    parser.add_argument("--name", default="", help="this process's name (default: host-pid)")


def setup_logging(fmt: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def run_process(component: str, args: argparse.Namespace, main: Coroutine) -> None:
    """Run ``main`` until it returns or SIGINT/SIGTERM cancels it; exit 1 if it failed."""
    setup_logging(args.log_format, args.log_level)
    from importlib.metadata import PackageNotFoundError, version

    try:
        BUILD_INFO.info({"version": version("quanta"), "component": component})
    except PackageNotFoundError:
        BUILD_INFO.info({"version": "dev", "component": component})
    if args.metrics_port:
        start_http_server(args.metrics_port, addr=args.metrics_host)
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        code = runner.run(_until_signal(component, main))
    sys.exit(code)


async def _until_signal(component: str, main: Coroutine) -> int:
    task = asyncio.ensure_future(main)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    log.info("%s started", component, extra={"pid": os.getpid()})
    try:
        await task
    except asyncio.CancelledError:
        log.info("%s stopped", component)
        return 0
    except Exception:
        log.exception("%s failed", component)
        return 1
    return 0
