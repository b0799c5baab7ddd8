"""Builds the drivers an agent runs. The only module that knows every driver."""

from __future__ import annotations

from dataclasses import dataclass

from agents.drivers.protocol import HostCapacity, HostDriver
from agents.drivers.sim import SimHypervisor, SimLatency


@dataclass(frozen=True, slots=True)
class SimConfig:
    hosts: int = 10
    host_prefix: str = "sim"
    first_index: int = 0
    capacity: HostCapacity = HostCapacity(vcpus=128, memory_mib=512 * 1024, disk_gib=20_000)
    latency: SimLatency = SimLatency()
    state_dir: str | None = None
    seed: int = 0
    fault_rate: float = 0.0


LATENCY_MODELS = ("zero", "realistic")


def sim_latency(model: str) -> SimLatency:
    """A named sim latency model: "zero" (benchmarks) or "realistic" (quanta up)."""
    if model not in LATENCY_MODELS:
        raise ValueError(f"unknown latency model {model!r}; choose from {LATENCY_MODELS}")
    return SimLatency.realistic() if model == "realistic" else SimLatency()


def sim_host_ids(config: SimConfig) -> list[str]:
    """Zero-padded, so one agent's hosts are a contiguous etcd key range."""
    return [f"{config.host_prefix}-{i:05d}" for i in range(config.first_index, config.first_index + config.hosts)]


def build_sim_drivers(config: SimConfig) -> tuple[SimHypervisor, dict[str, HostDriver]]:
    hypervisor = SimHypervisor(config.state_dir, latency=config.latency, seed=config.seed,
                               fault_rate=config.fault_rate)
    drivers: dict[str, HostDriver] = {
        host: hypervisor.add_host(host, config.capacity) for host in sim_host_ids(config)
    }
    return hypervisor, drivers
