"""The simulated hypervisor against the HostDriver contract, and its own promises."""

from __future__ import annotations

import asyncio
import collections
import ipaddress
from collections.abc import Coroutine
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents import netconfig
from agents.drivers.protocol import (
    Address,
    BootstrapFormat,
    BootstrapPayload,
    CapacityExceeded,
    DriverError,
    GuestUnavailable,
    HostCapacity,
    HostDriver,
    HostUnavailable,
    ImageNotFound,
    NicRequest,
    OperationFailed,
    PowerCycleRequired,
    PowerState,
    VmInfo,
    VmNotFound,
    VmRequest,
)
from agents.drivers.sim import AddressPool, SimHost, SimHypervisor, SimLatency, read_journal

CAP = HostCapacity(vcpus=8, memory_mib=8192, disk_gib=100, labels={"zone": "a"})


def req(uid: str = "vm-1", vcpus: int = 2, memory_mib: int = 2048, disk_gib: int = 20) -> VmRequest:
    return VmRequest(uid, f"tenants/t/projects/p/vms/{uid}", "ubuntu", vcpus, memory_mib, disk_gib)


def creates_per_uid(state_dir: Any) -> collections.Counter[str]:
    return collections.Counter(r["vm_uid"] for r in read_journal(state_dir) if r["op"] == "create")


class Gate:
    """A sleep stand-in that parks each caller until the test opens the gate."""

    def __init__(self) -> None:
        self.opened = asyncio.Event()
        self.parked = 0
        self.changed = asyncio.Condition()

    async def __call__(self, delay: float) -> None:
        async with self.changed:
            self.parked += 1
            self.changed.notify_all()
        await self.opened.wait()

    async def until_parked(self, n: int) -> None:
        async with self.changed:
            await self.changed.wait_for(lambda: self.parked >= n)


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout=5))


def test_sim_host_is_a_host_driver() -> None:
    host = SimHypervisor(None).add_host("h1", CAP)
    assert isinstance(host, HostDriver)
    assert host.host_id == "h1"
    assert run(host.capacity()) == CAP


@pytest.mark.parametrize(
    "cls, reason, transient",
    [
        (VmNotFound, "VmNotFound", False),
        (CapacityExceeded, "CapacityExceeded", False),
        (ImageNotFound, "ImageNotFound", False),
        (HostUnavailable, "HostUnavailable", True),
        (OperationFailed, "OperationFailed", False),
    ],
)
def test_driver_error_defaults(cls: type[DriverError], reason: str, transient: bool) -> None:
    e = cls("boom")
    assert isinstance(e, DriverError)
    assert (str(e), e.reason, e.transient) == ("boom", reason, transient)


def test_operation_failed_transient_and_reason_configurable() -> None:
    e = OperationFailed("x", transient=True, reason="TaskTimedOut")
    assert (e.transient, e.reason) == (True, "TaskTimedOut")


def test_host_capacity_labels_are_copied() -> None:
    labels = {"zone": "a"}
    cap = HostCapacity(1, 1, 1, labels)
    labels["zone"] = "b"
    assert cap.labels == {"zone": "a"}
    assert HostCapacity(1, 1, 1).labels == {}
    assert hash(cap) == hash(HostCapacity(1, 1, 1, {"zone": "z"}))


def test_create_is_idempotent(tmp_path: Any) -> None:
    async def main() -> None:
        hv = SimHypervisor(tmp_path)
        host = hv.add_host("h1", CAP)
        first = await host.create_vm(req())
        assert first == VmInfo("vm-1", PowerState.OFF)
        await host.power_on("vm-1")
        again = await host.create_vm(req())
        assert again == VmInfo("vm-1", PowerState.ON)  # the existing VM, as it is
        assert await host.list_vms() == [again]
        assert host.used() == HostCapacity(2, 2048, 20)
        hv.close()

    run(main())
    assert creates_per_uid(tmp_path) == {"vm-1": 1}


@pytest.mark.parametrize(
    "existing, request_, fits",
    [
        ([], req(vcpus=8, memory_mib=8192, disk_gib=100), True),  # exactly full
        ([], req(vcpus=9), False),
        ([], req(memory_mib=8193), False),
        ([], req(disk_gib=101), False),
        ([req("a", 6, 1024, 10)], req(vcpus=2), True),
        ([req("a", 6, 1024, 10)], req(vcpus=3), False),
        ([req("a", 1, 7000, 10)], req(memory_mib=2000), False),
        ([req("a", 1, 1024, 90)], req(disk_gib=11), False),
    ],
)
def test_capacity_enforced_on_create(existing: list[VmRequest], request_: VmRequest, fits: bool) -> None:
    async def main() -> None:
        host = SimHypervisor(None).add_host("h1", CAP)
        for r in existing:
            await host.create_vm(r)
        if fits:
            await host.create_vm(request_)
            assert await host.get_vm(request_.vm_uid) is not None
        else:
            with pytest.raises(CapacityExceeded) as e:
                await host.create_vm(request_)
            assert (e.value.reason, e.value.transient) == ("CapacityExceeded", False)
            assert await host.get_vm(request_.vm_uid) is None

    run(main())


def test_destroy_frees_capacity_and_is_idempotent(tmp_path: Any) -> None:
    async def main() -> None:
        hv = SimHypervisor(tmp_path)
        host = hv.add_host("h1", CAP)
        await host.destroy_vm("never-made")
        await host.create_vm(req("a", vcpus=8))
        await host.power_on("a")
        await host.destroy_vm("a")
        await host.destroy_vm("a")
        assert await host.get_vm("a") is None
        assert host.used() == HostCapacity(0, 0, 0)
        await host.create_vm(req("b", vcpus=8))
        hv.close()

    run(main())
    assert [r["op"] for r in read_journal(tmp_path)] == ["create", "power_on", "booted", "destroy", "create"]


def test_power_is_idempotent_and_needs_the_vm(tmp_path: Any) -> None:
    async def main() -> None:
        hv = SimHypervisor(tmp_path)
        host = hv.add_host("h1", CAP)
        for op in (host.power_on, host.power_off):
            with pytest.raises(VmNotFound):
                await op("absent")
        await host.create_vm(req())
        await host.power_off("vm-1")  # already off: no change
        await host.power_on("vm-1")
        await host.power_on("vm-1")
        assert await host.get_vm("vm-1") == VmInfo("vm-1", PowerState.ON)
        await host.power_off("vm-1")
        assert await host.get_vm("vm-1") == VmInfo("vm-1", PowerState.OFF)
        hv.close()

    run(main())
    assert [r["op"] for r in read_journal(tmp_path)] == ["create", "power_on", "booted", "power_off"]


def test_concurrent_create_of_one_uid_makes_one_vm(tmp_path: Any) -> None:
    async def main() -> None:
        gate = Gate()
        hv = SimHypervisor(tmp_path, latency=SimLatency(create=1.0), sleep=gate)
        host = hv.add_host("h1", CAP)
        tasks = [asyncio.create_task(host.create_vm(req())) for _ in range(20)]
        await gate.until_parked(1)
        assert await host.list_vms() == []  # not made yet
        gate.opened.set()
        results = await asyncio.gather(*tasks)
        assert results == [VmInfo("vm-1", PowerState.OFF)] * 20
        assert gate.parked == 1
        assert len(host) == 1 and host.used() == HostCapacity(2, 2048, 20)
        hv.close()

    run(main())
    assert creates_per_uid(tmp_path) == {"vm-1": 1}


def test_concurrent_creates_cannot_overbook() -> None:
    async def main() -> None:
        gate = Gate()
        host = SimHypervisor(None, latency=SimLatency(create=1.0), sleep=gate).add_host("h1", CAP)
        tasks = [asyncio.create_task(host.create_vm(req(f"vm-{i}", vcpus=3))) for i in range(5)]
        await gate.until_parked(2)
        gate.opened.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert sum(isinstance(r, VmInfo) for r in results) == 2  # 8 vCPUs hold two 3-vCPU VMs
        assert sum(isinstance(r, CapacityExceeded) for r in results) == 3
        assert len(host) == 2

    run(main())


def test_cancelled_create_leaves_nothing(tmp_path: Any) -> None:
    async def main() -> None:
        gate = Gate()
        hv = SimHypervisor(tmp_path, latency=SimLatency(create=1.0), sleep=gate)
        host = hv.add_host("h1", CAP)
        task = asyncio.create_task(host.create_vm(req(vcpus=8)))
        waiter = asyncio.create_task(host.get_vm("vm-1"))  # waits for the in-flight create
        await gate.until_parked(1)
        assert host.used().vcpus == 8  # reserved while in flight
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await waiter is None
        assert len(host) == 0 and host.used() == HostCapacity(0, 0, 0)
        gate.opened.set()
        assert await host.create_vm(req(vcpus=8)) == VmInfo("vm-1", PowerState.OFF)
        hv.close()

    run(main())
    assert creates_per_uid(tmp_path) == {"vm-1": 1}


def test_journal_replay_adopts_vms(tmp_path: Any) -> None:
    async def first_life() -> None:
        hv = SimHypervisor(tmp_path)
        h1, h2 = hv.add_host("h1", CAP), hv.add_host("h2", CAP)
        for uid in ("a", "b", "c"):
            await h1.create_vm(req(uid))
        await h2.create_vm(req("d"))
        await h1.power_on("a")
        await h1.power_on("c")
        await h1.power_off("c")
        await h1.destroy_vm("b")
        hv.close()

    async def second_life() -> None:
        hv = SimHypervisor(tmp_path)
        h1, h2 = hv.add_host("h1", CAP), hv.add_host("h2", CAP)
        assert sorted(await h1.list_vms(), key=lambda v: v.vm_uid) == [
            VmInfo("a", PowerState.ON),
            VmInfo("c", PowerState.OFF),
        ]
        assert await h2.list_vms() == [VmInfo("d", PowerState.OFF)]
        assert h1.used() == HostCapacity(4, 4096, 40)  # adopted VMs hold capacity
        assert await h1.create_vm(req("a")) == VmInfo("a", PowerState.ON)  # adopted, not duplicated
        assert (hv.total_vms(), hv.vm_counts()) == (3, {"h1": 2, "h2": 1})
        hv.close()

    run(first_life())
    run(second_life())
    assert creates_per_uid(tmp_path) == {"a": 1, "b": 1, "c": 1, "d": 1}


def test_torn_journal_tail_is_dropped(tmp_path: Any) -> None:
    async def make(uid: str) -> None:
        hv = SimHypervisor(tmp_path)
        await hv.add_host("h1", CAP).create_vm(req(uid))
        hv.close()

    run(make("a"))
    with open(tmp_path / "journal.jsonl", "ab") as f:
        f.write(b'{"host":"h1","op":"cre')  # a write cut short by a crash
    assert creates_per_uid(tmp_path) == {"a": 1}
    run(make("b"))
    assert creates_per_uid(tmp_path) == {"a": 1, "b": 1}


def test_in_memory_mode_writes_nothing(tmp_path: Any) -> None:
    async def main() -> None:
        host = SimHypervisor(None).add_host("h1", CAP)
        await host.create_vm(req())

    run(main())
    assert list(tmp_path.iterdir()) == []


def test_injected_faults_strike_in_order() -> None:
    async def main() -> None:
        host = SimHypervisor(None).add_host("h1", CAP)
        host.inject_fault("create", ImageNotFound("no such image"), count=2)
        host.inject_fault("create", HostUnavailable("gone"))
        for expected in (ImageNotFound, ImageNotFound, HostUnavailable):
            with pytest.raises(expected):
                await host.create_vm(req())
        assert len(host) == 0
        await host.create_vm(req())
        host.inject_fault("list_vms", HostUnavailable())
        with pytest.raises(HostUnavailable) as e:
            await host.list_vms()
        assert e.value.transient
        assert len(await host.list_vms()) == 1

    run(main())


def test_fault_after_effect_applies_then_raises() -> None:
    async def main() -> None:
        host = SimHypervisor(None).add_host("h1", CAP)
        host.inject_fault("create", OperationFailed("task timed out", transient=True), after_effect=True)
        with pytest.raises(OperationFailed):
            await host.create_vm(req())
        assert await host.get_vm("vm-1") == VmInfo("vm-1", PowerState.OFF)  # the retry finds it
        assert await host.create_vm(req()) == VmInfo("vm-1", PowerState.OFF)
        assert len(host) == 1

    run(main())


@pytest.mark.parametrize("op, count", [("nonsense", 1), ("create", 0)])
def test_inject_fault_rejects_bad_arguments(op: str, count: int) -> None:
    host = SimHypervisor(None).add_host("h1", CAP)
    with pytest.raises(ValueError):
        host.inject_fault(op, HostUnavailable(), count)


def fault_pattern(seed: int, fault_rate: float) -> list[str]:
    async def main() -> list[str]:
        host = SimHypervisor(None, seed=seed, fault_rate=fault_rate).add_host("h1", CAP)
        outcome = []
        for i in range(40):
            try:
                await host.create_vm(req(f"vm-{i % 3}", vcpus=1, memory_mib=1, disk_gib=1))
                await host.power_on(f"vm-{i % 3}")
                await host.destroy_vm(f"vm-{i % 3}")
                outcome.append("ok")
            except OperationFailed as e:
                assert e.transient
                outcome.append("fault")
        return outcome

    return run(main())


def test_random_faults_are_seeded_and_transient() -> None:
    assert fault_pattern(7, 0.2) == fault_pattern(7, 0.2)
    assert "fault" in fault_pattern(7, 0.2) and "ok" in fault_pattern(7, 0.2)
    assert fault_pattern(7, 0.0) == ["ok"] * 40
    assert fault_pattern(7, 1.0) == ["fault"] * 40


def test_zero_latency_never_suspends() -> None:
    """Each call completes on its first step: no sleep, no await that yields."""

    def sleep(delay: float) -> Any:
        raise AssertionError("zero latency must not sleep")

    def complete(coro: Coroutine[Any, Any, Any]) -> Any:
        with pytest.raises(StopIteration) as stop:
            coro.send(None)
        return stop.value.value

    host = SimHypervisor(None, sleep=sleep).add_host("h1", CAP)
    assert complete(host.create_vm(req())) == VmInfo("vm-1", PowerState.OFF)
    assert complete(host.power_on("vm-1")) is None
    assert complete(host.power_off("vm-1")) is None
    assert complete(host.get_vm("vm-1")) == VmInfo("vm-1", PowerState.OFF)
    assert complete(host.list_vms()) == [VmInfo("vm-1", PowerState.OFF)]
    assert complete(host.destroy_vm("vm-1")) is None


def test_realistic_latency_and_validation() -> None:
    assert SimLatency.realistic() == SimLatency(create=0.3, power_on=0.1, power_off=0.05, reconfigure=0.1,
                                                destroy=0.1, boot=1.0, shutdown=0.5)
    with pytest.raises(ValueError):
        SimLatency(create=-1)
    with pytest.raises(ValueError):
        SimHypervisor(None, fault_rate=1.5)


def test_many_hosts_and_counts() -> None:
    async def main() -> None:
        hv = SimHypervisor(None)
        hosts: list[SimHost] = [hv.add_host(f"h{i}", CAP) for i in range(50)]
        await asyncio.gather(*(h.create_vm(req(f"{h.host_id}-{j}", 1, 1, 1)) for h in hosts for j in range(3)))
        assert hv.total_vms() == 150
        assert set(hv.vm_counts().values()) == {3}
        assert set(hv.hosts) == {f"h{i}" for i in range(50)}
        with pytest.raises(ValueError):
            hv.add_host("h0", CAP)

    run(main())


def test_reconfigure_is_held_to_capacity_and_journaled(tmp_path: Any) -> None:
    async def first_life() -> None:
        hv = SimHypervisor(tmp_path)
        host = hv.add_host("h1", CAP)
        await host.create_vm(req("a", vcpus=2, memory_mib=2048))
        await host.create_vm(req("b", vcpus=2, memory_mib=2048))
        await host.reconfigure("a", vcpus=6, memory_mib=6144)  # exactly full
        assert host.used() == HostCapacity(8, 8192, 40)
        for vcpus, memory_mib in ((7, 6144), (6, 6145)):
            with pytest.raises(CapacityExceeded):
                await host.reconfigure("a", vcpus=vcpus, memory_mib=memory_mib)
        assert host.used() == HostCapacity(8, 8192, 40) and await host.hardware("a") == (6, 6144)
        await host.reconfigure("a", vcpus=1, memory_mib=512)  # shrinking frees room
        await host.reconfigure("a", vcpus=1, memory_mib=512)  # idempotent: no second record
        assert host.used() == HostCapacity(3, 2560, 40)
        hv.close()

    run(first_life())
    assert [r["op"] for r in read_journal(tmp_path)].count("reconfigure") == 2
    hv = SimHypervisor(tmp_path)
    host = hv.add_host("h1", CAP)
    assert run(host.hardware("a")) == (1, 512)
    assert host.used() == HostCapacity(3, 2560, 40)
    with pytest.raises(VmNotFound):
        run(host.reconfigure("absent", vcpus=1, memory_mib=512))
    hv.close()


def test_growth_is_reserved_while_a_slow_reconfigure_runs_and_released_if_cancelled() -> None:
    async def main() -> None:
        gate = Gate()
        host = SimHypervisor(None, latency=SimLatency(reconfigure=1.0), sleep=gate).add_host("h1", CAP)
        await host.create_vm(req("a", vcpus=2, memory_mib=1024))
        task = asyncio.create_task(host.reconfigure("a", vcpus=6, memory_mib=1024))
        await gate.until_parked(1)
        assert host.used().vcpus == 6
        with pytest.raises(CapacityExceeded):  # the growth in flight counts
            await host.create_vm(req("b", vcpus=4))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert host.used().vcpus == 2 and await host.hardware("a") == (2, 1024)

    run(main())


def test_a_host_with_an_image_set_makes_only_those_images() -> None:
    async def main() -> None:
        limited = SimHypervisor(None, images=("ubuntu",)).add_host("h1", CAP)
        with pytest.raises(ImageNotFound):
            await limited.create_vm(VmRequest("x", "x", "centos", 1, 512, 10))
        assert len(limited) == 0 and limited.used() == HostCapacity(0, 0, 0)
        assert await limited.create_vm(req("y")) == VmInfo("y", PowerState.OFF)
        anything = SimHypervisor(None).add_host("h1", CAP)  # the default: every image exists
        assert await anything.create_vm(VmRequest("x", "x", "centos", 1, 512, 10)) == VmInfo("x", PowerState.OFF)

    run(main())


# --- the simulated guest ----------------------------------------------------------------

PAYLOAD = BootstrapPayload(BootstrapFormat.CLOUD_INIT, b"#cloud-config\npassword: hunter2-secret\n", b'{"k":"v"}')


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 40)), max_size=120))
def test_the_address_pool_hands_out_the_lowest_free_address_never_twice(steps) -> None:
    pool = AddressPool("10.1.0.0/26")  # 61 usable host addresses (.2 - .62)
    held: list[str] = []
    for take, pick in steps:
        if take or not held:
            ip = pool.take()
            model_free = [o for o in range(2, 63) if str(ipaddress.ip_address("10.1.0.0") + o) not in held]
            if not model_free:
                assert ip == ""
                continue
            assert ip == str(ipaddress.ip_address("10.1.0.0") + model_free[0])  # the lowest free one
            assert ip not in held
            held.append(ip)
        else:
            pool.free(held.pop(pick % len(held)))
        assert len(pool) == len(held) == len(set(held))


def test_the_address_pool_reserves_replayed_addresses() -> None:
    pool = AddressPool("10.1.0.0/24")
    assert pool.reserve("10.1.0.5") and not pool.reserve("10.1.0.5") and not pool.reserve("10.2.0.1")
    assert [pool.take() for _ in range(4)] == ["10.1.0.2", "10.1.0.3", "10.1.0.4", "10.1.0.6"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 70), max_size=80), st.lists(st.integers(0, 70), max_size=80),
       st.integers(0, 10))
def test_replayed_addresses_reserved_at_once_in_any_order_leave_the_pool_as_one_by_one(
        first: list[int], then: list[int], taken_before: int) -> None:
    """reserve_all (a restart's replay, in whatever order the VMs come) answers as a
    model of the pool does one address at a time: a clash or an address outside the
    pool is refused; and take() goes on with the lowest free one."""
    def ip(offset: int) -> str:
        return str(ipaddress.ip_address("10.1.0.0") + offset)  # a /26: .2 - .62 are in the pool

    pool, model = AddressPool("10.1.0.0/26"), set(range(2, 2 + taken_before))
    assert [pool.take() for _ in range(taken_before)] == [ip(o) for o in sorted(model)]
    for batch in (first, then):
        expected = []
        for offset in batch:
            expected.append(2 <= offset <= 62 and offset not in model)
            if expected[-1]:
                model.add(offset)
        assert pool.reserve_all([ip(o) for o in batch]) == expected
    assert len(pool) == len(model)
    free = [ip(o) for o in range(2, 63) if o not in model]
    assert [pool.take() for _ in range(70)] == free + [""] * (70 - len(free))


def test_the_sim_reports_the_macs_the_guests_network_config_matches() -> None:
    """Each NIC's reported MAC is ``netconfig.nic_mac``'s (the one rule both drivers
    follow, and what the cloud-init network config names): the request's where it has
    one, else derived from the uid and the NIC's index, for every NIC, not only NIC 0."""
    def complete(coro: Coroutine[Any, Any, Any]) -> Any:
        with pytest.raises(StopIteration) as stop:
            coro.send(None)
        return stop.value.value

    nics = (NicRequest("pg-a", ip="10.1.0.10", prefix_length=24), NicRequest("pg-b", ip="10.2.0.10", prefix_length=24),
            NicRequest("pg-c", ip="10.3.0.10", prefix_length=24, mac="00:50:56:12:34:56"))
    host = SimHypervisor(None, sleep=lambda delay: None).add_host("h1", CAP)
    complete(host.create_vm(replace(req("vm-nics"), nics=nics)))
    complete(host.power_on("vm-nics"))
    reported = [a.mac for a in complete(host.get_vm("vm-nics")).addresses]
    expected = [netconfig.nic_mac("vm-nics", i, nic) for i, nic in enumerate(nics)]
    assert reported == expected == [netconfig.mac("vm-nics"), netconfig.mac("vm-nics", 1), "00:50:56:12:34:56"]
    config = netconfig.network_config("vm-nics", nics)
    assert config is not None
    configured = config["ethernets"]
    assert sorted(e["match"]["macaddress"] for e in configured.values()) == sorted(reported)


def test_a_guest_boots_reads_its_data_and_gets_an_address_at_zero_latency_without_suspending() -> None:
    def sleep(delay: float) -> Any:
        raise AssertionError("zero latency must not sleep")

    def complete(coro: Coroutine[Any, Any, Any]) -> Any:
        with pytest.raises(StopIteration) as stop:
            coro.send(None)
        return stop.value.value

    host = SimHypervisor(None, sleep=sleep).add_host("h1", CAP)
    complete(host.create_vm(replace(req(), bootstrap=PAYLOAD)))
    complete(host.power_on("vm-1"))
    info = complete(host.get_vm("vm-1"))
    assert info.bootstrapped and info.bootstrap_present and (info.vcpus, info.memory_mib) == (2, 2048)
    (address,) = info.addresses
    assert address == Address("10.80.0.2", address.mac, "VM Network", 4) and address.mac.startswith("00:50:56:")
    assert complete(host.shutdown_guest("vm-1")) is None
    assert complete(host.get_vm("vm-1")).power is PowerState.OFF
    assert complete(host.clear_bootstrap("vm-1")) is None
    assert not complete(host.get_vm("vm-1")).bootstrap_present and host.bootstrap_payload("vm-1") is None


def test_guest_changes_are_told_through_watch() -> None:
    async def main() -> None:
        host = SimHypervisor(None, latency=SimLatency(boot=0.05, shutdown=0.05)).add_host("h1", CAP)
        told: list[str] = []
        host.watch(told.append)
        await host.create_vm(req())
        with pytest.raises(VmNotFound):
            await host.shutdown_guest("absent")
        await host.power_on("vm-1")
        with pytest.raises(GuestUnavailable):  # still booting
            await host.shutdown_guest("vm-1")
        assert (await host.get_vm("vm-1")).addresses == () and told == []
        while not told:
            await asyncio.sleep(0.01)
        assert told == ["vm-1"] and (await host.get_vm("vm-1")).addresses
        await host.shutdown_guest("vm-1")
        assert (await host.get_vm("vm-1")).power is PowerState.ON  # the guest takes its time
        while len(told) < 2:
            await asyncio.sleep(0.01)
        assert (await host.get_vm("vm-1")).power is PowerState.OFF
        await host.shutdown_guest("vm-1")  # off: nothing to do
        # A stop from outside Quanta is told too; a deaf guest ignores shutdowns.
        await host.power_on("vm-1")
        while len(told) < 3:
            await asyncio.sleep(0.01)
        host.stop_outside("vm-1")
        assert told[-1] == "vm-1" and len(told) == 4 and (await host.get_vm("vm-1")).power is PowerState.OFF
        await host.power_on("vm-1")
        while len(told) < 5:
            await asyncio.sleep(0.01)
        host.ignore_shutdown("vm-1")
        await host.shutdown_guest("vm-1")
        await asyncio.sleep(0.2)
        assert (await host.get_vm("vm-1")).power is PowerState.ON and len(told) == 5

    run(main())


def test_shrinking_a_running_vm_needs_a_power_cycle_growing_does_not() -> None:
    async def main() -> None:
        host = SimHypervisor(None).add_host("h1", CAP)
        await host.create_vm(req(vcpus=2, memory_mib=2048))
        await host.power_on("vm-1")
        with pytest.raises(PowerCycleRequired):
            await host.reconfigure("vm-1", vcpus=1, memory_mib=2048)
        await host.reconfigure("vm-1", vcpus=3, memory_mib=4096)
        info = await host.get_vm("vm-1")
        assert (info.vcpus, info.memory_mib) == (3, 4096)
        await host.power_off("vm-1")
        await host.reconfigure("vm-1", vcpus=1, memory_mib=512)
        assert await host.hardware("vm-1") == (1, 512)

    run(main())


def test_guest_state_outlives_the_process_but_bootstrap_bytes_are_never_journaled(tmp_path: Any) -> None:
    async def first_life() -> tuple[str, str]:
        hv = SimHypervisor(tmp_path, latency=SimLatency(shutdown=30), silent_images=("mute",))
        host = hv.add_host("h1", CAP)
        await host.create_vm(replace(req("a"), bootstrap=PAYLOAD))
        await host.create_vm(replace(req("b", vcpus=1, memory_mib=1), bootstrap=PAYLOAD, image="mute"))
        await host.create_vm(req("c", vcpus=1, memory_mib=1))
        for uid in ("a", "b", "c"):
            await host.power_on(uid)
        await host.clear_bootstrap("a")
        await host.shutdown_guest("c")  # takes 30 s: still shutting down when the process dies
        ips = [(await host.get_vm(uid)).addresses[0].ip for uid in ("a", "b")]
        assert repr(PAYLOAD).count("hunter2") == 0 and "hunter2" not in repr(host.bootstrap_payload("b"))
        hv.close()
        return ips[0], ips[1]

    a_ip, b_ip = run(first_life())
    journal = (tmp_path / "journal.jsonl").read_bytes()
    assert b"hunter2" not in journal and b"cloud-config" not in journal
    assert b'"bootstrap_size"' in journal and b'"bootstrap_sha256"' in journal

    async def second_life() -> None:
        hv = SimHypervisor(tmp_path, latency=SimLatency(shutdown=0.05))
        host = hv.add_host("h1", CAP)
        told: list[str] = []
        host.watch(told.append)  # resumes the replayed guest's shutdown
        a, b = await host.get_vm("a"), await host.get_vm("b")
        assert (a.addresses[0].ip, b.addresses[0].ip) == (a_ip, b_ip)
        assert a.bootstrapped and not a.bootstrap_present
        assert not b.bootstrapped and b.bootstrap_present and host.bootstrap_payload("b") is None
        while not told:
            await asyncio.sleep(0.01)
        assert told == ["c"] and (await host.get_vm("c")).power is PowerState.OFF
        await host.create_vm(req("d", vcpus=1, memory_mib=1))
        await host.power_on("d")
        assert (await host.get_vm("d")).addresses[0].ip not in (a_ip, b_ip)
        await host.destroy_vm("a")
        await host.create_vm(req("e", vcpus=1, memory_mib=1))
        await host.power_on("e")
        assert (await host.get_vm("e")).addresses[0].ip == a_ip  # freed on destroy, the lowest free
        hv.close()

    run(second_life())
