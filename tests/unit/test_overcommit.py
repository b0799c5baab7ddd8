"""Overcommit: one setting per resource (the agent's, in the host's registration),
applied once (``Overcommit.allocatable``) to the raw capacity drivers report."""

from __future__ import annotations

import asyncio
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.__main__ import ESXI_VCPU_OVERCOMMIT, build_parser, overcommit_from
from agents.drivers.factory import SimConfig, build_sim_drivers
from agents.drivers.protocol import CapacityExceeded, HostCapacity, VmRequest
from controlplane.gen.quanta.store.v1 import records_pb2 as rec
from controlplane.models import NO_OVERCOMMIT, HostAllocation, HostRegistration, Overcommit, Resources
from controlplane.placement import HostView, PlacementRequest, place
from controlplane.store.hosts import HostRecord
from scheduler.hostsync import snapshot_of

CAP = Resources(16, 65536, 1000)


@pytest.mark.parametrize(("overcommit", "want"), [
    (NO_OVERCOMMIT, Resources(16, 65536, 1000)),
    (Overcommit(vcpus=4), Resources(64, 65536, 1000)),
    (Overcommit(vcpus=1.5, memory=1.25), Resources(24, 81920, 1000)),
    (Overcommit(disk=1.15), Resources(16, 65536, 1150)),  # 1000 × 1.15 is 1149.9999999999998 in floats
    (Overcommit(vcpus=0.5, memory=0.9), Resources(8, 58982, 1000)),  # below 1 keeps part of the host back
])
def test_allocatable_is_capacity_times_the_ratios(overcommit: Overcommit, want: Resources) -> None:
    assert overcommit.allocatable(CAP) == want


@pytest.mark.parametrize("bad", [0, -2, math.nan, math.inf, "4"])
def test_a_ratio_must_be_a_positive_number(bad) -> None:
    with pytest.raises(ValueError, match="overcommit must be a number > 0"):
        Overcommit(vcpus=bad)


def test_the_registration_stores_raw_capacity_and_the_setting() -> None:
    reg = HostRegistration("h1", "esxi", CAP, {"hypervisor": "esxi"}, overcommit=Overcommit(4, 1.5, 2))
    back = HostRegistration.from_bytes(reg.to_bytes())
    assert back == reg
    assert (back.capacity, back.allocatable) == (CAP, Resources(64, 98304, 2000))


def test_a_registration_without_the_setting_is_not_overcommitted() -> None:
    """Agents older than the setting wrote capacity their driver had multiplied already
    (and no ratios): read as it is, it is not multiplied a second time."""
    old = rec.HostRegistration(host="h1", driver="esxi", vcpus=64, memory_mib=65536, disk_gib=1000)
    reg = HostRegistration.from_bytes(old.SerializeToString())
    assert (reg.overcommit, reg.allocatable) == (NO_OVERCOMMIT, Resources(64, 65536, 1000))
    broken = rec.HostRegistration(host="h1", vcpus=8, vcpu_overcommit=-3, memory_overcommit=math.nan)
    assert HostRegistration.from_bytes(broken.SerializeToString()).overcommit == NO_OVERCOMMIT


def _placeable_vcpus(reg: HostRegistration) -> int:
    """How many 1-vCPU VMs placement puts on the host, one after the other."""
    view = HostView([snapshot_of(HostRecord(reg.host, reg, HostAllocation(), alloc_revision=1, revision=1))])
    rng, placed = random.Random(0), 0
    while (chosen := place(PlacementRequest(f"k{placed}", f"u{placed}", Resources(1, 1, 1)), view, rng=rng).host_id):
        view.assume(chosen, Resources(1, 1, 1))
        placed += 1
    return placed


@settings(max_examples=40, deadline=None)
@given(vcpus=st.integers(1, 64), ratio=st.sampled_from([1, 1.5, 2, 4, 8]))
def test_the_ratio_is_applied_once(vcpus: int, ratio: float) -> None:
    """A host registered with raw capacity C and ratio r is placeable up to C × r, never C × r × r."""
    reg = HostRegistration("h1", "sim", Resources(vcpus, 10**6, 10**6), overcommit=Overcommit(vcpus=ratio))
    stored = HostRegistration.from_bytes(reg.to_bytes())
    assert stored.capacity.vcpus == vcpus  # raw, as the driver reported it
    assert _placeable_vcpus(stored) == math.floor(vcpus * ratio)


def test_a_sim_host_reports_raw_capacity_and_takes_what_placement_books() -> None:
    """The sim hypervisor runs the overcommitted VMs placement books, and no more."""
    config = SimConfig(hosts=1, capacity=HostCapacity(4, 8192, 100), overcommit=Overcommit(vcpus=2))
    _hypervisor, drivers = build_sim_drivers(config)
    (host,) = drivers.values()

    async def body() -> None:
        cap = await host.capacity()
        assert (cap.vcpus, cap.memory_mib, cap.disk_gib) == (4, 8192, 100)
        for i in range(8):
            await host.create_vm(VmRequest(f"vm-{i}", f"vm-{i}", "ubuntu", 1, 512, 1))
        with pytest.raises(CapacityExceeded):
            await host.create_vm(VmRequest("vm-8", "vm-8", "ubuntu", 1, 512, 1))

    asyncio.run(asyncio.wait_for(body(), 5))


def _agent_overcommit(argv: list[str]) -> Overcommit:
    """The overcommit ``quanta agent argv`` registers its hosts with (warnings checked apart)."""
    parser = build_parser()
    return overcommit_from(parser, parser.parse_args(["--etcd", "http://127.0.0.1:1", *argv]))[0]


def test_agent_flags_set_the_one_setting() -> None:
    assert _agent_overcommit([]) == NO_OVERCOMMIT
    assert _agent_overcommit(["--vcpu-overcommit", "4", "--memory-overcommit", "1.5"]) == \
        Overcommit(4, 1.5, 1)
    # The esxi driver's old ratio flags are deprecated aliases of the same setting.
    assert _agent_overcommit(["--esxi-cpu-ratio", "8", "--esxi-disk-ratio", "2"]) == \
        Overcommit(8, 1, 2)
    assert _agent_overcommit(["--esxi-cpu-ratio", "8", "--vcpu-overcommit", "8"]) == Overcommit(8)


def test_deprecated_flags_are_warned_about() -> None:
    parser = build_parser()
    args = parser.parse_args(["--esxi-memory-ratio", "2", "--vcpu-overcommit", "3"])
    overcommit, warnings = overcommit_from(parser, args)
    assert overcommit == Overcommit(3, 2, 1)
    assert warnings == ["--esxi-memory-ratio is deprecated and will be removed: use --memory-overcommit "
                        "(drivers report raw capacity; overcommit applies once, in placement)"]
    assert overcommit_from(parser, parser.parse_args(["--vcpu-overcommit", "3"]))[1] == []


def test_contradicting_alias_and_bad_ratio_are_refused(capsys) -> None:
    for argv in (["--esxi-cpu-ratio", "8", "--vcpu-overcommit", "4"], ["--vcpu-overcommit", "0"],
                 ["--memory-overcommit", "lots"]):
        with pytest.raises(SystemExit) as exit_:
            _agent_overcommit(argv)
        assert exit_.value.code == 2, argv
    err = capsys.readouterr().err
    assert "--esxi-cpu-ratio 8 contradicts --vcpu-overcommit 4" in err
    assert "a ratio must be > 0" in err and "expected a ratio" in err


def test_esxi_agents_keep_their_vcpu_default() -> None:
    """The esxi driver used to multiply threads by 4 by default; the setting keeps that default."""
    esxi = ["--driver", "esxi", "--esxi-url", "https://127.0.0.1:1/sdk"]
    assert _agent_overcommit(esxi) == Overcommit(vcpus=ESXI_VCPU_OVERCOMMIT) == Overcommit(4)
    assert _agent_overcommit([*esxi, "--vcpu-overcommit", "1"]) == NO_OVERCOMMIT
