"""The whole system on one machine, as real processes: an etcd (unless one is
given; one member or a cluster of ``etcd_members``), frontends sharing one port,
scheduler processes and a sim agent. Every component is given every etcd member.

Used by ``quanta up`` and by the integration tests, which kill and restart its
processes. Every process runs on loopback, on free ports, with its log in
``log_dir``; ``stop()`` ends every process this object started.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from controlplane.api.errors import ApiError
from controlplane.auth.bootstrap import bootstrap_admin_token
from controlplane.etcd.server import (
    ETCD_MAX_REQUEST_BYTES,
    ETCD_MAX_TXN_OPS,
    EtcdCluster,
    EtcdServer,
    free_port,
    terminate,
)
from quanta.config import DEFAULT_TENANT

if TYPE_CHECKING:
    from quanta.prometheus import PrometheusServer

log = logging.getLogger(__name__)


@dataclass
class ManagedProcess:
    name: str
    argv: list[str]
    log_path: pathlib.Path
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None
    restarts: int = 0

    def start(self) -> None:
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                self.argv, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, **self.env}, start_new_session=True,
            )

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def returncode(self) -> int | None:
        """The exit status; None while running or before the first start."""
        return self.process.returncode if self.process else None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` and wait for the process to end (SIGKILL: a crash)."""
        process = self.process
        if process is not None and process.poll() is None:
            process.send_signal(sig)
            process.wait(30)

    def stop(self, timeout: float = 10.0) -> None:
        terminate(self.process, timeout)


def _serving(endpoint: str) -> bool:
    """Whether the gRPC server at ``endpoint`` answers its health check with SERVING."""
    try:
        with grpc.insecure_channel(endpoint) as channel:
            # typeshed's HealthStub declares none of the methods the generated __init__ sets.
            stub = health_pb2_grpc.HealthStub(channel)
            response = stub.Check(health_pb2.HealthCheckRequest(), timeout=2)  # type: ignore[attr-defined]
    except grpc.RpcError:
        return False
    return response.status == health_pb2.HealthCheckResponse.SERVING


#: The network backings every simulated host reaches (``--networks``): the sim's own
#: network and two for an installer's control plane and workers (examples/cluster.py).
SIM_NETWORKS = ("VM Network", "cp", "workers")


def sim_network(agent: int) -> str:
    """The address range sim agent process ``agent`` hands its guests: a /16 of 10.0.0.0/8
    each (10.80.0.0/16 for the first), so that the agents of one system never hand out
    one address twice."""
    return f"10.{(80 + agent) % 256}.0.0/16"


class LocalSystem:
    def __init__(
        self,
        *,
        hosts: int = 10,
        frontends: int = 2,
        schedulers: int = 1,
        shards: int = 1,
        latency: str = "realistic",
        etcd_endpoint: str | None = None,
        root: str = "/quanta",
        data_dir: str | None = None,
        port: int = 0,
        lease_ttl: int = 10,
        host_vcpus: int = 128,
        host_memory_mib: int = 512 * 1024,
        metrics: bool = True,
        fault_rate: float = 0.0,
        bookmark_interval_s: float = 10.0,
        agents: list[list[str]] | None = None,
        agent_env: dict[str, str] | None = None,
        prometheus: bool = False,
        frontend_args: tuple[str, ...] = (),
        scheduler_args: tuple[str, ...] = (),
        sim_agents: int = 1,
        etcd_members: int = 1,
        zones: Sequence[str] = (),
        sim_agent_args: tuple[str, ...] = (),
        etcd_args: tuple[str, ...] = (),
        etcd_env: dict[str, str] | None = None,
        network_backings: Sequence[str] = SIM_NETWORKS,
    ):
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if not data_dir:
            self._tmp = tempfile.TemporaryDirectory(prefix="quanta-")
            data_dir = self._tmp.name
        self.data_dir = pathlib.Path(data_dir)
        self.log_dir = self.data_dir / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.hosts = hosts
        self.frontends = frontends
        self.schedulers = schedulers
        self.shards = shards
        self.latency = latency
        self.root = root
        self.port = port
        self.lease_ttl = lease_ttl
        self.host_vcpus = host_vcpus
        self.host_memory_mib = host_memory_mib
        self.metrics = metrics
        self.fault_rate = fault_rate
        self.bookmark_interval_s = bookmark_interval_s
        #: Agents to run instead of the sim one: one argument list each (e.g. --driver esxi ...).
        self.agents = agents
        self.agent_env = agent_env or {}
        self.with_prometheus = prometheus
        self.frontend_args = tuple(frontend_args)
        #: Each frontend's own address (besides the shared :attr:`endpoint`), in order.
        self.frontend_endpoints: list[str] = []
        self.scheduler_args = tuple(scheduler_args)
        #: Sim agent processes sharing the ``hosts``: agent-0 runs sim-00000..., agent-i
        #: (i > 0) runs sim{i}-00000... with its journal in sim_state_dir(i).
        self.sim_agents = max(1, sim_agents)
        #: Availability zones given to the simulated hosts round robin (host label
        #: topology.quanta.io/zone), for zone anti-affinity; none by default.
        self.zones = tuple(zones)
        #: More arguments for each sim agent (e.g. its guest's simulated boot latency).
        self.sim_agent_args = tuple(sim_agent_args)
        #: More flags and environment for the etcd started here (a single member),
        #: e.g. ``("--snapshot-count", "10000")`` and ``{"GOGC": "50"}`` for a big run.
        self.etcd_args = tuple(etcd_args)
        self.etcd_env = dict(etcd_env or {})
        #: The network backings granted to the default tenant once the system serves,
        #: and to the tenants :meth:`client` makes (as a system admin grants them):
        #: by default those the simulated hosts reach, so networks on them just work.
        self.network_backings = tuple(network_backings)
        self.prometheus: PrometheusServer | None = None  # once started
        #: Members of the etcd started here (1: an EtcdServer; more: an EtcdCluster).
        self.etcd_members = etcd_members
        self.etcd: EtcdServer | EtcdCluster | None = None
        self.etcd_endpoint = etcd_endpoint or ""
        self.admin_token = ""
        self.processes: dict[str, ManagedProcess] = {}
        self.metrics_ports: dict[str, int] = {}

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def balanced_target(self) -> str:
        """A gRPC target naming every frontend's own address (``ipv4:a,b``): a channel
        to it with the ``round_robin`` policy spreads calls over the frontends, where
        :attr:`endpoint` (one port shared by SO_REUSEPORT) spreads connections."""
        return "ipv4:" + ",".join(self.frontend_endpoints)

    def client(self, *, token: str | None = None, ensure_project: bool = True, **kwargs):
        """An SDK client for this system's API, as the admin unless ``token`` is given.
        With ``ensure_project`` (and the admin), the client's tenant and project are
        made first if absent (unlimited), so tests can name any project."""
        from quanta.client import Client

        client = Client(self.endpoint, token=token or self.admin_token, **kwargs)
        if ensure_project and token is None:
            for create in (lambda: client.create_tenant(client.tenant, network_backings=self.network_backings),
                           lambda: client.create_project(client.project)):
                try:
                    create()
                except ApiError as err:
                    if err.code is not grpc.StatusCode.ALREADY_EXISTS:
                        client.close()
                        raise
        return client

    def _common(self, name: str) -> list[str]:
        args = ["--etcd", self.etcd_endpoint, "--root", self.root, "--name", name, "--log-format", "json"]
        if self.metrics:
            self.metrics_ports[name] = self.metrics_ports.get(name) or free_port()
            args += ["--metrics-port", str(self.metrics_ports[name])]
        return args

    def _add(self, name: str, module: str, args: list[str]) -> ManagedProcess:
        env = {"QUANTA_ETCD_MAX_TXN_OPS": str(ETCD_MAX_TXN_OPS),
               "QUANTA_ETCD_MAX_REQUEST_BYTES": str(ETCD_MAX_REQUEST_BYTES)} if self.etcd else {}
        process = ManagedProcess(name, [sys.executable, "-m", module, *self._common(name), *args],
                                 self.log_dir / f"{name}.log", env)
        self.processes[name] = process
        return process

    def add_frontend(self, name: str, listen: str) -> ManagedProcess:
        """Start one more frontend of this system on an address of its own (to reach
        one frontend in particular), with the same ``frontend_args``; stopped with
        the rest. Returns once it serves."""
        process = self._add(name, "controlplane.frontend", ["--listen", listen, *self.frontend_args])
        process.start()
        deadline = time.monotonic() + 60
        while True:
            if not process.alive:
                raise RuntimeError(f"{name} exited; log in {process.log_path}")
            if _serving(listen):
                return process
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} did not serve within 60 s; log in {process.log_path}")
            time.sleep(0.1)

    @property
    def sim_datastore_dir(self) -> pathlib.Path:
        """The simulated shared datastore of every sim agent (persistent disks)."""
        return self.data_dir / "sim-datastore"

    def sim_state_dir(self, agent: int = 0) -> pathlib.Path:
        """Where sim agent ``agent`` keeps its simulated hosts' journal."""
        return self.data_dir / (f"sim{agent}" if agent else "sim")

    def start(self, timeout: float = 60.0) -> LocalSystem:
        """Start everything and wait until the API serves and every host registered."""
        try:
            if not self.etcd_endpoint:
                etcd_dir = str(self.data_dir / "etcd")
                self.etcd = (EtcdServer(etcd_dir, extra_args=self.etcd_args, env=self.etcd_env)
                             if self.etcd_members == 1
                             else EtcdCluster(self.etcd_members, etcd_dir)).start()
                self.etcd_endpoint = self.etcd.endpoint  # every member, comma separated
            self.port = self.port or free_port()
            self.admin_token = asyncio.run(bootstrap_admin_token(self.etcd_endpoint, self.root))
            for i in range(self.frontends):
                self.frontend_endpoints.append(f"127.0.0.1:{free_port()}")
                self._add(f"frontend-{i}", "controlplane.frontend",
                          ["--listen", self.endpoint, "--also-listen", self.frontend_endpoints[-1],
                           "--shards", str(self.shards),
                           "--bookmark-interval", str(self.bookmark_interval_s), *self.frontend_args])
            for i in range(self.schedulers):
                self._add(f"scheduler-{i}", "scheduler",
                          ["--shards", str(self.shards), "--lease-ttl", str(self.lease_ttl), *self.scheduler_args])
            for i, agent_args in enumerate(self.agents or ()):
                self._add(f"agent-{i}", "agents", ["--lease-ttl", str(self.lease_ttl), *agent_args]
                          ).env.update(self.agent_env)
            if not self.agents:
                for i in range(self.sim_agents):
                    hosts = self.hosts // self.sim_agents + (i < self.hosts % self.sim_agents)
                    self._add(f"agent-{i}", "agents", [
                        "--hosts", str(hosts), "--host-prefix", f"sim{i or ''}", "--latency", self.latency,
                        "--state-dir", str(self.sim_state_dir(i)), "--lease-ttl", str(self.lease_ttl),
                        "--host-vcpus", str(self.host_vcpus), "--host-memory-mib", str(self.host_memory_mib),
                        "--fault-rate", str(self.fault_rate),
                        # One network, a range of it per agent process: no two VMs share an address.
                        "--network", sim_network(i), "--networks", ",".join(SIM_NETWORKS),
                        # One datastore for all: a VM's disk follows it to another agent's host.
                        "--sim-datastore-dir", str(self.sim_datastore_dir),
                        *(("--zones", ",".join(self.zones)) if self.zones else ()), *self.sim_agent_args,
                    ])
            for process in self.processes.values():
                process.start()
            self.wait_ready(timeout)
            self._grant_backings()
            if self.with_prometheus:
                self._start_prometheus()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Block until every frontend answers health checks and all hosts are READY."""
        from quanta.client import Client

        deadline = time.monotonic() + timeout
        while True:
            dead = [p.name for p in self.processes.values() if not p.alive]
            if dead:
                raise RuntimeError(f"processes exited during start: {dead}; logs in {self.log_dir}")
            try:
                if _serving(self.endpoint):
                    with Client(self.endpoint, token=self.admin_token) as client:
                        ready = [h for h in client.list_hosts() if h.state == h.READY]
                    if len(ready) >= self.hosts:
                        return
            except Exception as err:  # noqa: BLE001 - an ApiError while starting: keep waiting
                log.debug("not ready yet: %s", err)
            if time.monotonic() > deadline:
                raise TimeoutError(f"system not ready within {timeout}s; logs in {self.log_dir}")
            time.sleep(0.1)

    def _grant_backings(self, tenant: str = DEFAULT_TENANT) -> None:
        """Grant ``tenant`` (made by every frontend at start) :attr:`network_backings`
        it lacks, as a system admin would, keeping what it has. Idempotent."""
        from quanta.client import Client

        with Client(self.endpoint, token=self.admin_token) as client:
            for _attempt in range(10):
                granted = client.get_tenant(tenant)
                missing = [b for b in self.network_backings if b not in granted.network_backings]
                if not missing:
                    return
                try:
                    client.update_tenant(tenant, network_backings=[*granted.network_backings, *missing],
                                         etag=granted.etag)
                    return
                except ApiError as err:
                    if err.code is not grpc.StatusCode.ABORTED:  # else the tenant changed meanwhile: again
                        raise
            raise RuntimeError(f"could not grant tenants/{tenant} its network backings: it kept changing")

    def _start_prometheus(self) -> None:
        """A Prometheus scraping every process here and etcd (``quanta up --prometheus``)."""
        from quanta.prometheus import PrometheusServer

        targets = {name: f"127.0.0.1:{port}" for name, port in self.metrics_ports.items()}
        if isinstance(self.etcd, EtcdCluster):
            targets.update({f"etcd-{i}": m.endpoint.removeprefix("http://") for i, m in enumerate(self.etcd.members)})
        elif self.etcd:
            targets["etcd"] = self.etcd.endpoint.removeprefix("http://")
        self.prometheus = PrometheusServer(self.data_dir / "prometheus")
        self.prometheus.start(targets)

    def stop(self) -> None:
        """Stop every process started here, then etcd; idempotent."""
        if self.prometheus:
            self.prometheus.stop()
        for process in reversed(list(self.processes.values())):
            process.stop()
        if self.etcd:
            self.etcd.stop()

    def restart(self, timeout: float = 60.0) -> None:
        """Start again, after :meth:`stop`, the etcd started here (same ports; its data
        dir as it is now, e.g. restored from a backup) and every process; returns once
        the system is ready."""
        if self.etcd:
            self.etcd.restart()
        for process in self.processes.values():
            process.start()
        self.wait_ready(timeout)

    def cleanup(self) -> None:
        self.stop()
        if self.etcd:
            self.etcd.cleanup()
        if self._tmp:
            self._tmp.cleanup()

    def __enter__(self) -> LocalSystem:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.cleanup()
