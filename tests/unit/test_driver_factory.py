"""The driver factory: latency specs and simulated host ids."""

from __future__ import annotations

import pytest

from agents.drivers.factory import SimConfig, build_sim_drivers, sim_host_ids, sim_latency
from agents.drivers.sim import SimLatency


@pytest.mark.parametrize("spec, expected", [
    ("zero", SimLatency()),
    ("realistic", SimLatency(create=0.3, power_on=0.1, power_off=0.05, reconfigure=0.1, destroy=0.1, boot=1.0,
                             shutdown=0.5)),
    ("create=1.5", SimLatency(create=1.5)),
    ("create=0.5, power_on=0.2,destroy=0", SimLatency(create=0.5, power_on=0.2)),
])
def test_latency_specs(spec, expected):
    assert sim_latency(spec) == expected


@pytest.mark.parametrize("spec, message", [
    ("fast", "bad latency 'fast'"),
    ("create=soon", "not a number"),
    ("reboot=1", "bad latency 'reboot=1'"),
    ("create=-1", ">= 0"),
])
def test_bad_latency_specs_say_why(spec, message):
    with pytest.raises(ValueError, match=message):
        sim_latency(spec)


def test_host_ids_are_contiguous_and_each_gets_a_driver():
    config = SimConfig(hosts=3, host_prefix="rack1", first_index=8)
    assert sim_host_ids(config) == ["rack1-00008", "rack1-00009", "rack1-00010"]
    _hypervisor, drivers = build_sim_drivers(config)
    assert sorted(drivers) == sim_host_ids(config) == sorted(sim_host_ids(config))
    assert all(driver.host_id == host for host, driver in drivers.items())


def test_sim_hosts_reach_the_default_network_and_datastore_class_unless_told_otherwise() -> None:
    from agents.drivers.factory import SimConfig, sim_host_capacity
    from controlplane.models import datastore_label

    default = sim_host_capacity(SimConfig(), 0)
    assert default.networks == frozenset({"VM Network"})
    assert default.labels[datastore_label("standard")] == "true"
    told = sim_host_capacity(SimConfig(networks=("cp", "workers"), datastore_classes=("fast",)), 0)
    assert told.networks == frozenset({"cp", "workers"})
    assert datastore_label("standard") not in told.labels and told.labels[datastore_label("fast")] == "true"
