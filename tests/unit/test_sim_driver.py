"""The simulated hypervisor against the HostDriver contract, and its own promises."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Coroutine
from typing import Any

import pytest

from agents.drivers.protocol import (
    CapacityExceeded,
    DriverError,
    HostCapacity,
    HostDriver,
    HostUnavailable,
    ImageNotFound,
    OperationFailed,
    PowerState,
    VmInfo,
    VmNotFound,
    VmRequest,
)
from agents.drivers.sim import SimHost, SimHypervisor, SimLatency, read_journal

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
