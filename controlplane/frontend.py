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
from google.protobuf import descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from controlplane.api.audit_service import AuditService
from controlplane.api.authn import AuditInterceptor, AuthInterceptor
from controlplane.api.catalog_service import FlavorService, ImageService
from controlplane.api.decoding import DecodeInterceptor
from controlplane.api.disk_service import DiskService
from controlplane.api.host_service import HostService
from controlplane.api.interceptors import default_interceptors, initialise_request_metrics
from controlplane.api.network_service import NetworkService
from controlplane.api.project_service import ProjectService
from controlplane.api.quota_service import QuotaService
from controlplane.api.reflection import enable_server_reflection
from controlplane.api.tenant_service import TenantService
from controlplane.api.token_service import TokenService
from controlplane.api.vm_service import VmService
from controlplane.auth.ratelimit import RateLimiter
from controlplane.auth.rateshare import RateShares
from controlplane.auth.revocations import RevocationList
from controlplane.auth.tokens import load_authority
from controlplane.etcd import EtcdClient
from controlplane.gen.quanta.v1 import (
    auth_pb2,
    auth_pb2_grpc,
    catalog_pb2,
    catalog_pb2_grpc,
    disk_pb2,
    disk_pb2_grpc,
    host_pb2,
    host_pb2_grpc,
    network_pb2,
    network_pb2_grpc,
    tenancy_pb2,
    tenancy_pb2_grpc,
    vm_pb2,
    vm_pb2_grpc,
)
from controlplane.process import add_common_args, run_process
from controlplane.store.audit import DEFAULT_AUDIT_RETENTION_S, AuditLog
from controlplane.store.catalog import Catalog, seed_defaults
from controlplane.store.cluster import ensure_cluster_config
from controlplane.store.disks import DiskStore
from controlplane.store.hosts import HostStore
from controlplane.store.keys import Keys
from controlplane.store.ledger import UsageLedger
from controlplane.store.networks import NetworkStore
from controlplane.store.orphans import OrphanStore
from controlplane.store.records import KeyedRecords
from controlplane.store.retention import DEFAULT_RETENTION_S, RetentionLeases
from controlplane.store.tenancy import TenancyStore, ensure_project
from controlplane.store.vms import VmStore

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class FrontendConfig:
    etcd: str
    listen: str = "127.0.0.1:7000"
    #: Addresses of this frontend alone, served besides ``listen`` (which several
    #: frontends may share): a client balancing calls (gRPC round_robin) over these
    #: spreads calls, where SO_REUSEPORT on ``listen`` spreads only connections.
    also_listen: tuple[str, ...] = ()
    root: str = "/quanta"
    shards: int | None = None  # proposed if the system has no shard count yet
    bookmark_s: float = 10.0
    request_retention_s: int = DEFAULT_RETENTION_S
    audit_retention_s: int = DEFAULT_AUDIT_RETENTION_S
    rate_limit: float = 1000.0  # requests/s per caller identity; 0: unlimited
    rate_burst: float = 2000.0
    tls_cert: str = ""
    tls_key: str = ""


def _server_credentials(config: FrontendConfig) -> grpc.ServerCredentials | None:
    if not (config.tls_cert or config.tls_key):
        return None
    if not (config.tls_cert and config.tls_key):
        raise SystemExit("--tls-cert and --tls-key go together")
    with open(config.tls_key, "rb") as key, open(config.tls_cert, "rb") as cert:
        return grpc.ssl_server_credentials([(key.read(), cert.read())])


async def serve(config: FrontendConfig) -> None:
    """Serve until cancelled, then drain in-flight calls for a few seconds."""
    keys = Keys(config.root)
    client = EtcdClient(config.etcd)
    catalog = Catalog(client, keys)
    revocations = RevocationList(client, keys)
    shares: RateShares | None = None
    audit = AuditLog(client, keys, retention_s=config.audit_retention_s)
    credentials = _server_credentials(config)
    health_servicer = health.aio.HealthServicer()
    server = None
    try:
        await client.wait_ready()
        await seed_defaults(client, keys)
        await ensure_project(client, keys)
        cluster = await ensure_cluster_config(client, keys, shards=config.shards)
        authority = await load_authority(client, keys)
        await catalog.start()
        await revocations.start()
        await audit.start()
        limiter = RateLimiter(config.rate_limit, config.rate_burst) if config.rate_limit > 0 else None
        if limiter is not None:
            shares = RateShares(client, keys, rate=config.rate_limit)
            await shares.start()
        server = grpc.aio.server(
            # Requests are parsed after authentication, before the audit (DecodeInterceptor).
            interceptors=[*default_interceptors(), AuthInterceptor(authority, revocations, limiter, shares),
                          DecodeInterceptor(), AuditInterceptor(audit)],
            options=[
                ("grpc.so_reuseport", 1),
                ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
                ("grpc.max_send_message_length", 64 * 1024 * 1024),
            ],
        )
        ledger = UsageLedger(client, keys)
        vms = VmStore(client, keys, RetentionLeases(client, config.request_retention_s), ledger)
        tenancy = TenancyStore(client, keys)
        records = KeyedRecords(client)
        disks = DiskStore(client, keys, vms.requests, ledger)
        networks = NetworkStore(client, keys, vms.requests)
        vm_pb2_grpc.add_VmServiceServicer_to_server(
            VmService(vms, catalog, shards=cluster.shards, bookmark_s=config.bookmark_s, disks=disks,
                      networks=networks), server)
        disk_pb2_grpc.add_DiskServiceServicer_to_server(DiskService(disks, bookmark_s=config.bookmark_s), server)
        network_pb2_grpc.add_NetworkServiceServicer_to_server(
            NetworkService(networks, bookmark_s=config.bookmark_s), server)
        host_pb2_grpc.add_HostServiceServicer_to_server(
            HostService(HostStore(client, keys), bookmark_s=config.bookmark_s,
                        orphans=OrphanStore(client, keys, ledger)), server)
        tenancy_pb2_grpc.add_TenantServiceServicer_to_server(TenantService(tenancy, vms, revocations), server)
        tenancy_pb2_grpc.add_ProjectServiceServicer_to_server(ProjectService(tenancy, vms), server)
        tenancy_pb2_grpc.add_QuotaServiceServicer_to_server(QuotaService(tenancy), server)
        catalog_pb2_grpc.add_FlavorServiceServicer_to_server(FlavorService(records, keys, catalog), server)
        catalog_pb2_grpc.add_ImageServiceServicer_to_server(ImageService(records, keys, catalog), server)
        auth_pb2_grpc.add_TokenServiceServicer_to_server(TokenService(client, keys, authority, revocations), server)
        auth_pb2_grpc.add_AuditServiceServicer_to_server(AuditService(audit, bookmark_s=config.bookmark_s), server)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        api_services = [
            module.DESCRIPTOR.services_by_name[name].full_name
            for module, names in ((vm_pb2, ("VmService",)), (disk_pb2, ("DiskService",)),
                                  (network_pb2, ("NetworkService",)), (host_pb2, ("HostService",)),
                                  (tenancy_pb2, ("TenantService", "ProjectService", "QuotaService")),
                                  (catalog_pb2, ("FlavorService", "ImageService")),
                                  (auth_pb2, ("TokenService", "AuditService")))
            for name in names
        ]
        initialise_request_metrics(method.name for name in api_services
                                   for method in descriptor_pool.Default().FindServiceByName(name).methods)
        # Reflection in v1 and v1alpha (what buf curl and grpcurl use to call the API).
        enable_server_reflection((*api_services, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name),
                                 server)
        for address in (config.listen, *config.also_listen):
            if credentials is not None:
                port = server.add_secure_port(address, credentials)
            else:
                port = server.add_insecure_port(address)
            if port == 0:
                raise RuntimeError(f"cannot listen on {address}")
        await server.start()
        for name in ("", *api_services):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("frontend serving", extra={"listen": config.listen, "also_listen": list(config.also_listen),
                                            "pid": os.getpid(), "tls": credentials is not None})
        await server.wait_for_termination()
    finally:
        await health_servicer.enter_graceful_shutdown()
        if server is not None:
            await server.stop(grace=5)
        await audit.stop()
        if shares is not None:
            await shares.stop()
        await revocations.stop()
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
    parser.add_argument("--also-listen", action="append", default=[], metavar="HOST:PORT",
                        help="another address to serve on, this frontend's alone (repeatable): clients that "
                             "balance calls over the frontends' own addresses (gRPC round_robin) spread calls "
                             "evenly, where a shared --listen spreads only connections")
    parser.add_argument("--shards", type=int, default=_env_int("QUANTA_SHARDS"),
                        help="scheduler shard count, if this system has none stored yet (default 1)")
    parser.add_argument("--bookmark-interval", type=float, default=10.0, metavar="SECONDS",
                        help="a quiet watch stream gets a BOOKMARK this often (default 10)")
    parser.add_argument("--request-retention", type=int, default=DEFAULT_RETENTION_S, metavar="SECONDS",
                        help="how long a create's request_id is remembered (default 24 h)")
    parser.add_argument("--audit-retention", type=int, default=DEFAULT_AUDIT_RETENTION_S, metavar="SECONDS",
                        help="how long audit records are kept (default 30 days)")
    parser.add_argument("--rate-limit", type=float, default=float(os.environ.get("QUANTA_RATE_LIMIT", 1000)),
                        metavar="PER_SECOND", help="requests per second per caller identity on this frontend; "
                        "0 disables (default 1000; env QUANTA_RATE_LIMIT)")
    parser.add_argument("--rate-burst", type=float, default=float(os.environ.get("QUANTA_RATE_BURST", 2000)),
                        help="burst size of the per-caller rate limit (default 2000; env QUANTA_RATE_BURST)")
    parser.add_argument("--tls-cert", default=os.environ.get("QUANTA_TLS_CERT", ""), metavar="PEM",
                        help="serve TLS with this certificate chain (with --tls-key; env QUANTA_TLS_CERT)")
    parser.add_argument("--tls-key", default=os.environ.get("QUANTA_TLS_KEY", ""), metavar="PEM",
                        help="the certificate's private key (env QUANTA_TLS_KEY)")
    args = parser.parse_args(argv)
    run_process("frontend", args, serve(FrontendConfig(
        etcd=args.etcd, listen=args.listen, also_listen=tuple(args.also_listen), root=args.root,
        shards=args.shards, bookmark_s=args.bookmark_interval,
        request_retention_s=args.request_retention, audit_retention_s=args.audit_retention,
        rate_limit=args.rate_limit, rate_burst=args.rate_burst, tls_cert=args.tls_cert, tls_key=args.tls_key)))


if __name__ == "__main__":
    main()
