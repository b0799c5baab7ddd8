"""Builds the drivers an agent runs. The only module that knows every driver."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agents.drivers.protocol import HostCapacity, HostDriver
from agents.drivers.sim import DEFAULT_NETWORK, DEFAULT_NETWORK_NAME, SimHypervisor, SimLatency
from agents.drivers.sim_datastore import SimDatastore
from controlplane.models import (
    DEFAULT_DATASTORE_CLASS,
    IMAGE_LABEL_PREFIX,
    NO_OVERCOMMIT,
    ZONE_LABEL,
    Overcommit,
    datastore_label,
)

if TYPE_CHECKING:
    from agents.drivers.esxi import EsxiConfig


@dataclass(frozen=True, slots=True)
class SimConfig:
    hosts: int = 10
    host_prefix: str = "sim"
    first_index: int = 0
    capacity: HostCapacity = HostCapacity(vcpus=128, memory_mib=512 * 1024, disk_gib=20_000)
    """Each host's raw capacity."""
    overcommit: Overcommit = NO_OVERCOMMIT
    """The agent's overcommit setting: the simulated hosts take VMs up to capacity times it."""
    latency: SimLatency = SimLatency()
    state_dir: str | None = None
    seed: int = 0
    fault_rate: float = 0.0
    images: tuple[str, ...] | None = None
    """Images the simulated hosts have (others fail with ImageNotFound); None: any image.
    Given, each host reports them as labels ``image.quanta.io/<image>=true``."""
    zones: tuple[str, ...] = ()
    """Availability zones the hosts are spread over, round robin by index (label
    ``topology.quanta.io/zone``); empty: hosts have no zone."""
    network: str = DEFAULT_NETWORK
    """CIDR the simulated guests' addresses come from (unique among this agent's VMs)."""
    network_name: str = DEFAULT_NETWORK_NAME
    silent_images: tuple[str, ...] = ()
    """Images whose guests cannot report that they bootstrapped."""
    networks: tuple[str, ...] | None = None
    """The network backings (port groups) every host reaches; None: ``network_name``."""
    datastore_classes: tuple[str, ...] = (DEFAULT_DATASTORE_CLASS,)
    """The datastore classes every host reaches (label ``datastore.quanta.io/{class}``)."""
    datastore_dir: str | None = None
    """The sim datastore (persistent disks) shared by the sim agents of one system;
    None: ``<state_dir>/datastore`` (in memory without a state_dir)."""


LATENCY_MODELS = ("zero", "realistic")
LATENCY_HELP = ('"zero", "realistic" (create 0.3 s, power on 0.1 s, power off 0.05 s, reconfigure 0.1 s, '
                'destroy 0.1 s, guest boot 1 s, guest shutdown 0.5 s), '
                'or seconds per operation, e.g. "create=0.5,power_on=0.2,boot=2,shutdown=1" (others 0)')


def sim_latency(spec: str) -> SimLatency:
    """Parse a sim latency: a named model ("zero" for benchmarks, "realistic" for
    quanta up) or per-operation seconds "create=0.5,power_on=0.2". Raises ValueError."""
    if spec == "zero":
        return SimLatency()
    if spec == "realistic":
        return SimLatency.realistic()
    seconds: dict[str, float] = {}
    for item in spec.split(","):
        op, sep, value = item.partition("=")
        op = op.strip()
        if not sep or op not in SimLatency.__dataclass_fields__:
            raise ValueError(f"bad latency {item!r}: use {LATENCY_HELP}")
        try:
            seconds[op] = float(value)
        except ValueError:
            raise ValueError(f"bad latency {item!r}: {value!r} is not a number of seconds") from None
    return SimLatency(**seconds)


def sim_host_ids(config: SimConfig) -> list[str]:
    """Zero-padded, so one agent's hosts are a contiguous etcd key range."""
    return [f"{config.host_prefix}-{i:05d}" for i in range(config.first_index, config.first_index + config.hosts)]


def build_sim_drivers(config: SimConfig) -> tuple[SimHypervisor, dict[str, HostDriver]]:
    datastore = SimDatastore(config.datastore_dir) if config.datastore_dir else None
    hypervisor = SimHypervisor(config.state_dir, latency=config.latency, seed=config.seed,
                               fault_rate=config.fault_rate, images=config.images, network=config.network,
                               network_name=config.network_name, silent_images=config.silent_images,
                               datastore=datastore)
    drivers: dict[str, HostDriver] = {
        host: hypervisor.add_host(host, sim_host_capacity(config, config.first_index + i), config.overcommit)
        for i, host in enumerate(sim_host_ids(config))
    }
    return hypervisor, drivers


def sim_host_capacity(config: SimConfig, index: int) -> HostCapacity:
    """The capacity, labels and networks of sim host number ``index``: its zone, images,
    datastore classes and network backings."""
    labels = dict(config.capacity.labels)
    if config.zones:
        labels[ZONE_LABEL] = config.zones[index % len(config.zones)]
    for image in config.images or ():
        labels[IMAGE_LABEL_PREFIX + image] = "true"
    for datastore_class in config.datastore_classes:
        labels[datastore_label(datastore_class)] = "true"
    networks = frozenset((config.network_name,) if config.networks is None else config.networks)
    if labels == config.capacity.labels and networks == config.capacity.networks:
        return config.capacity
    return HostCapacity(config.capacity.vcpus, config.capacity.memory_mib, config.capacity.disk_gib, labels,
                        networks)


def esxi_config(**settings) -> EsxiConfig:
    """An EsxiConfig (see agents/drivers/esxi/config.py for the settings). Raises ValueError."""
    from agents.drivers.esxi import EsxiConfig

    return EsxiConfig(**settings)


@contextlib.asynccontextmanager
async def esxi_drivers(config: EsxiConfig) -> AsyncIterator[dict[str, HostDriver]]:
    """Connect to one ESXi host or vCenter and yield a driver per host it runs; the
    session closes on exit. Raises DriverError if it cannot connect. (pyvmomi is
    imported only here, so a sim agent does not need it.)"""
    from agents.drivers.esxi import open_esxi

    session, drivers = await open_esxi(config)
    try:
        yield dict(drivers)
    finally:
        await session.close()
