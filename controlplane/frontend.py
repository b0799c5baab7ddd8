"""``quanta frontend``: a stateless gRPC API frontend.

Any number may run behind one address: with SO_REUSEPORT (the default on
Linux) several frontends on one host can even share one port. A frontend keeps
nothing but caches rebuilt from etcd, so killing one loses nothing it
acknowledged.
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from controlplane.api.host_service import HostService
from controlplane.api.interceptors import default_interceptors
from controlplane.api.vm_service import VmService
from controlplane.etcd import EtcdClient
from controlplane.gen.quanta.v1 import host_pb2, host_pb2_grpc, vm_pb2, vm_pb2_grpc
from controlplane.process import add_common_args, run_process
from controlplane.store.catalog import Catalog, seed_defaults
from controlplane.store.cluster import ensure_cluster_config
from controlplane.store.hosts import HostStore
from controlplane.store.keys import Keys
from controlplane.store.requests import DEFAULT_RETENTION_S, RequestLeases
from controlplane.store.vms import VmStore

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class FrontendConfig:
    etcd: str
    listen: str = "127.0.0.1:7000"
    root: str = "/quanta"
    shards: int | None = None  # proposed if the system has no shard count yet
    bookmark_s: float = 10.0
    request_retention_s: int = DEFAULT_RETENTION_S


async def serve(config: FrontendConfig) -> None:
    """Serve until cancelled, then drain in-flight calls for a few seconds."""
    keys = Keys(config.root)
    client = EtcdClient(config.etcd)
    catalog = Catalog(client, keys)
    server = grpc.aio.server(
        interceptors=default_interceptors(),
        options=[
            ("grpc.so_reuseport", 1),
            ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
        ],
    )
    health_servicer = health.aio.HealthServicer()
    try:
        await client.wait_ready()
        await seed_defaults(client, keys)
        cluster = await ensure_cluster_config(client, keys, shards=config.shards)
        await catalog.start()
        vms = VmStore(client, keys, RequestLeases(client, config.request_retention_s))
        vm_pb2_grpc.add_VmServiceServicer_to_server(
            VmService(vms, catalog, shards=cluster.shards, bookmark_s=config.bookmark_s), server)
        host_pb2_grpc.add_HostServiceServicer_to_server(
            HostService(HostStore(client, keys), bookmark_s=config.bookmark_s), server)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        services = (
            vm_pb2.DESCRIPTOR.services_by_name["VmService"].full_name,
            host_pb2.DESCRIPTOR.services_by_name["HostService"].full_name,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        )
        reflection.enable_server_reflection(services, server)
        port = server.add_insecure_port(config.listen)
        if port == 0:
            raise RuntimeError(f"cannot listen on {config.listen}")
        await server.start()
        for name in ("", *services[:2]):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("frontend serving", extra={"listen": config.listen, "pid": os.getpid()})
        await server.wait_for_termination()
    finally:
        await health_servicer.enter_graceful_shutdown()
        await server.stop(grace=5)
        await catalog.stop()
        await client.close()


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="quanta frontend", description=__doc__)
    add_common_args(parser)
    parser.add_argument("--listen", default=os.environ.get("QUANTA_LISTEN", "127.0.0.1:7000"),
                        help="host:port to serve gRPC on (env QUANTA_LISTEN)")
    parser.add_argument("--shards", type=int, default=_env_int("QUANTA_SHARDS"),
                        help="scheduler shard count, if this system has none stored yet (default 1)")
    parser.add_argument("--bookmark-interval", type=float, default=10.0, metavar="SECONDS",
                        help="a quiet watch stream gets a BOOKMARK this often (default 10)")
    parser.add_argument("--request-retention", type=int, default=DEFAULT_RETENTION_S, metavar="SECONDS",
                        help="how long a create's request_id is remembered (default 24 h)")
    args = parser.parse_args(argv)
    run_process("frontend", args, serve(FrontendConfig(etcd=args.etcd, listen=args.listen, root=args.root,
                                                      shards=args.shards, bookmark_s=args.bookmark_interval,
                                                      request_retention_s=args.request_retention)))


if __name__ == "__main__":
    main()
