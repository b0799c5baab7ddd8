"""One HostDriver contract, run against every driver: ``sim`` and ``esxi`` on vcsim.

Each backend knows how to open a driver, reopen it as a restarted agent would (a
new SimHypervisor on the same journal; a new vSphere session) and make a slow one
(sim latency; vcsim method delays). A vcsim process serves one test module and is
stopped at its end, also on failure. VM ids are fresh per test so that tests can
share one simulator.

The guest-side methods (``shutdown_guest``, ``clear_bootstrap``, ``watch``,
addresses, PowerCycleRequired) need a guest: the sim's boots by itself; on vcsim,
tests/vcsim/main.go's simulated guest (``Vcsim(guest_boot_s=...)``) does, in VMs
cloned from an image with a NIC. ``guest_up`` waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from agents.drivers.factory import esxi_drivers
from agents.drivers.protocol import (
    BootstrapFormat,
    BootstrapPayload,
    HostCapacity,
    HostDriver,
    ImageNotFound,
    OperationFailed,
    PowerCycleRequired,
    PowerState,
    VmInfo,
    VmNotFound,
    VmRequest,
)
from agents.drivers.sim import SimHypervisor, SimLatency
from tests.vcsim import Vcsim

SLOW_CREATE_S = 0.3
SIM_IMAGES = ("ubuntu", "debian", "photon")  # the images a Quanta system is seeded with


def req(uid: str, vcpus: int = 1, memory_mib: int = 512, image: str = "ubuntu") -> VmRequest:
    return VmRequest(uid, f"tenants/t/projects/p/vms/{uid}", image, vcpus, memory_mib, 10)


def uids(n: int = 1) -> list[str]:
    return [uuid.uuid4().hex[:12] for _ in range(n)]


GUEST_S = 0.2  # boot and shutdown of a slow guest


class SimBackend:
    flat_image = "ubuntu"  # an image whose VMs have a disk of their own (growable)

    def __init__(self, state_dir: str):
        self.state_dir = state_dir

    @contextlib.asynccontextmanager
    async def driver(self, *, slow: bool = False, slow_guest: bool = False) -> AsyncIterator[HostDriver]:
        latency = SimLatency(create=SLOW_CREATE_S) if slow else SimLatency()
        if slow_guest:
            latency = replace(latency, boot=GUEST_S, shutdown=GUEST_S)
        hypervisor = SimHypervisor(self.state_dir, latency=latency, images=SIM_IMAGES)
        try:
            yield hypervisor.add_host("sim-0", HostCapacity(vcpus=512, memory_mib=1 << 20, disk_gib=100_000))
        finally:
            hypervisor.close()

    async def guest_up(self, driver: HostDriver, uid: str) -> VmInfo:
        """Wait until the powered-on VM's guest is up (has an address); the sim's boots by itself."""
        return await _until(driver, uid, lambda info: bool(info.addresses), "the guest up with an address")


class VcsimBackend:
    flat_image = "flat"  # no snapshot: its VMs are full clones (a linked clone's disk cannot grow)

    def __init__(self, fast: Vcsim, slow: Vcsim):
        self.fast, self.slow = fast, slow

    async def guest_up(self, driver: HostDriver, uid: str) -> VmInfo:
        """Wait until the powered-on VM's simulated guest is up (tools running, an address)."""
        return await _until(driver, uid, lambda info: bool(info.addresses), "the guest up with an address")

    @contextlib.asynccontextmanager
    async def driver(self, *, slow: bool = False, slow_guest: bool = False) -> AsyncIterator[HostDriver]:
        vcsim = self.slow if slow else self.fast
        async with esxi_drivers(vcsim.config()) as drivers:
            (driver,) = drivers.values()
            yield driver


@pytest.fixture(scope="module")
def vcsims():
    started: list[Vcsim] = []
    try:
        for delays in ({}, {"CreateVM_Task": int(SLOW_CREATE_S * 1000)}):
            # vcsim's ShutdownGuest is instant: only the boot of its guest is slow.
            vcsim = Vcsim(mode="esx", method_delay=delays, guest_boot_s=GUEST_S)
            started.append(vcsim)
            vcsim.start()
            vcsim.make_image("ubuntu", nic=True)
            vcsim.make_image("flat", snapshot=False)
        yield started
    finally:
        for vcsim in started:
            vcsim.cleanup()


@pytest.fixture(params=["sim", "vcsim"])
def backend(request, tmp_path):
    if request.param == "sim":
        return SimBackend(str(tmp_path / "sim"))
    return VcsimBackend(*request.getfixturevalue("vcsims"))


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


async def _until(driver: HostDriver, uid: str, check, what: str, timeout: float = 20.0) -> VmInfo:
    """Poll ``get_vm`` until ``check(info)`` (tests only: agents never poll)."""
    deadline = time.monotonic() + timeout
    while True:
        info = await driver.get_vm(uid)
        if info is not None and check(info):
            return info
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last seen: {info}")
        await asyncio.sleep(0.02)


def test_create_makes_one_vm_powered_off(backend):
    async def body():
        (uid,) = uids()
        async with backend.driver() as driver:
            assert await driver.get_vm(uid) is None
            info = await driver.create_vm(req(uid))
            assert info == VmInfo(uid, PowerState.OFF)
            assert await driver.get_vm(uid) == info
            assert [vm for vm in await driver.list_vms() if vm.vm_uid == uid] == [info]
    run(body())


def test_create_is_idempotent_also_when_concurrent(backend):
    async def body():
        (uid,) = uids()
        async with backend.driver() as driver:
            results = await asyncio.gather(*(driver.create_vm(req(uid)) for _ in range(4)))
            assert set(results) == {VmInfo(uid, PowerState.OFF)}
            assert await driver.create_vm(req(uid)) == VmInfo(uid, PowerState.OFF)
            assert [vm.vm_uid for vm in await driver.list_vms()].count(uid) == 1
    run(body())


def test_power_on_and_off_are_idempotent(backend):
    async def body():
        (uid,) = uids()
        async with backend.driver() as driver:
            await driver.create_vm(req(uid))
            for _ in range(2):
                await driver.power_on(uid)
                assert await driver.get_vm(uid) == VmInfo(uid, PowerState.ON)
            for _ in range(2):
                await driver.power_off(uid)
                assert await driver.get_vm(uid) == VmInfo(uid, PowerState.OFF)
    run(body())


def test_power_and_missing_vms_raise_vm_not_found(backend):
    async def body():
        (uid,) = uids()
        async with backend.driver() as driver:
            for op in (driver.power_on, driver.power_off):
                with pytest.raises(VmNotFound) as caught:
                    await op(uid)
                assert caught.value.reason == "VmNotFound" and not caught.value.transient
    run(body())


def test_destroy_removes_a_running_vm_and_is_idempotent(backend):
    async def body():
        keep, gone = uids(2)
        async with backend.driver() as driver:
            for uid in (keep, gone):
                await driver.create_vm(req(uid))
                await driver.power_on(uid)
            await driver.destroy_vm(gone)
            await driver.destroy_vm(gone)
            assert await driver.get_vm(gone) is None
            assert await driver.get_vm(keep) == VmInfo(keep, PowerState.ON)
            listed = {vm.vm_uid for vm in await driver.list_vms()}
            assert keep in listed and gone not in listed
    run(body())


def test_a_restarted_driver_adopts_vms_instead_of_making_them_again(backend):
    async def body():
        on, off = uids(2)
        async with backend.driver() as driver:
            await driver.create_vm(req(on))
            await driver.power_on(on)
            await driver.create_vm(req(off))
        async with backend.driver() as driver:  # a new agent process, same hypervisor
            assert await driver.get_vm(on) == VmInfo(on, PowerState.ON)
            assert await driver.create_vm(req(on)) == VmInfo(on, PowerState.ON)
            assert await driver.create_vm(req(off)) == VmInfo(off, PowerState.OFF)
            listed = [vm.vm_uid for vm in await driver.list_vms()]
            assert listed.count(on) == 1 and listed.count(off) == 1
    run(body())


def test_orphans_are_listed_and_cleaned_up_after_a_restart(backend):
    async def body():
        wanted, orphan_a, orphan_b = uids(3)
        async with backend.driver() as driver:
            for uid in (wanted, orphan_a, orphan_b):
                await driver.create_vm(req(uid))
            await driver.power_on(orphan_a)
        async with backend.driver() as driver:
            # What the agent's resync does: destroy every listed VM no binding wants.
            mine = {wanted, orphan_a, orphan_b}
            for vm in await driver.list_vms():
                if vm.vm_uid in mine and vm.vm_uid != wanted:
                    await driver.destroy_vm(vm.vm_uid)
            listed = {vm.vm_uid for vm in await driver.list_vms()} & mine
            assert listed == {wanted}
    run(body())


def test_a_vm_keeps_the_name_and_record_it_was_made_with_across_a_restart(backend):
    """What lets an agent adopt a VM its store forgot (controlplane/store/orphans.py)."""
    async def body():
        (uid,) = uids()
        record = "CgF0EgFwGgN2bS0x" * 40  # opaque text, as long as a spec with some labels
        async with backend.driver() as driver:
            made = await driver.create_vm(replace(req(uid), record=record))
            assert (made.name, made.record) == (f"tenants/t/projects/p/vms/{uid}", record)
        async with backend.driver() as driver:
            (found,) = [vm for vm in await driver.list_vms() if vm.vm_uid == uid]
            assert (found.name, found.record) == (f"tenants/t/projects/p/vms/{uid}", record)
            assert (await driver.get_vm(uid)).record == record
    run(body())


def test_latency_of_the_host_shows_in_create(backend):
    async def body():
        (uid,) = uids()
        async with backend.driver(slow=True) as driver:
            started = time.perf_counter()
            await driver.create_vm(req(uid))
            slow = time.perf_counter() - started
            started = time.perf_counter()
            await driver.power_on(uid)
            fast = time.perf_counter() - started
        assert slow >= SLOW_CREATE_S
        assert fast < SLOW_CREATE_S
    run(body())


def test_capacity_is_positive_and_stable(backend):
    async def body():
        async with backend.driver() as driver:
            first = await driver.capacity()
            assert first.vcpus > 0 and first.memory_mib > 0 and first.disk_gib > 0
            assert await driver.capacity() == first
    run(body())


def test_reconfigure_sets_cpu_and_memory_idempotently(backend):
    async def body():
        (uid,) = uids()
        async with backend.driver() as driver:
            await driver.create_vm(req(uid, vcpus=2, memory_mib=1024))
            # hardware() is each driver's own read of what the host reports (not in the Protocol).
            assert await driver.hardware(uid) == (2, 1024)
            for _ in range(2):
                await driver.reconfigure(uid, vcpus=4, memory_mib=2048)
                assert await driver.hardware(uid) == (4, 2048)
            await driver.reconfigure(uid, vcpus=1, memory_mib=512)  # shrinking, while off
            assert await driver.hardware(uid) == (1, 512)
            await driver.power_on(uid)
            assert await driver.get_vm(uid) == VmInfo(uid, PowerState.ON)
        async with backend.driver() as driver:  # the change outlives the agent
            assert await driver.hardware(uid) == (1, 512)
            (absent,) = uids()
            with pytest.raises(VmNotFound) as caught:
                await driver.reconfigure(absent, vcpus=1, memory_mib=512)
            assert not caught.value.transient
    run(body())


def test_an_unknown_image_raises_image_not_found_and_leaves_no_vm(backend):
    async def body():
        (uid,) = uids()
        async with backend.driver() as driver:
            with pytest.raises(ImageNotFound) as caught:
                await driver.create_vm(req(uid, image="no-such-image"))
            assert (caught.value.reason, caught.value.transient) == ("ImageNotFound", False)
            assert await driver.get_vm(uid) is None
            assert uid not in {vm.vm_uid for vm in await driver.list_vms()}
    run(body())


def test_shrinking_a_running_vm_requires_a_power_cycle(backend):
    async def body():
        (uid,) = uids()
        async with backend.driver() as driver:
            await driver.create_vm(req(uid, vcpus=2, memory_mib=1024))
            await driver.power_on(uid)
            for vcpus, memory_mib in ((1, 1024), (2, 512)):
                with pytest.raises(PowerCycleRequired) as caught:
                    await driver.reconfigure(uid, vcpus=vcpus, memory_mib=memory_mib)
                assert (caught.value.reason, caught.value.transient) == ("PowerCycleRequired", False)
                assert await driver.hardware(uid) == (2, 1024)
            # Growing may be hot (sim) or need a cycle too (a VM without hot-add): never half-made.
            try:
                await driver.reconfigure(uid, vcpus=3, memory_mib=2048)
                assert await driver.hardware(uid) == (3, 2048)
            except PowerCycleRequired:
                assert await driver.hardware(uid) == (2, 1024)
            await driver.power_off(uid)
            await driver.reconfigure(uid, vcpus=1, memory_mib=512)
            info = await driver.get_vm(uid)
            assert (info.vcpus, info.memory_mib) in ((1, 512), (0, 0))  # 0: the driver does not say
            assert await driver.hardware(uid) == (1, 512)
    run(body())


def test_reconfigure_grows_the_disk_hot_and_never_shrinks_it(backend):
    async def body():
        (uid,) = uids()
        async with backend.driver() as driver:
            made = await driver.create_vm(req(uid, image=backend.flat_image))
            # The disk as made: the request's (sim), or the image's (ESXi; 0 if under 1 GiB).
            assert made.disk_gib in (10, 1, 0)
            grown = max(made.disk_gib, 10) + 2
            await driver.power_on(uid)
            for _ in range(2):  # hot, and idempotent
                await driver.reconfigure(uid, vcpus=1, memory_mib=512, disk_gib=grown)
                info = await driver.get_vm(uid)
                assert (info.power, info.disk_gib, info.vcpus, info.memory_mib) == (PowerState.ON, grown, 1, 512)
            for smaller in (grown - 1, made.disk_gib or 1):
                with pytest.raises(OperationFailed) as caught:
                    await driver.reconfigure(uid, vcpus=1, memory_mib=512, disk_gib=smaller)
                assert (caught.value.reason, caught.value.transient) == ("InvalidArgument", False)
                assert (await driver.get_vm(uid)).disk_gib == grown
            # Without disk_gib the disk is left as it is.
            await driver.power_off(uid)
            await driver.reconfigure(uid, vcpus=2, memory_mib=1024)
            assert (await driver.get_vm(uid)).disk_gib == grown
        async with backend.driver() as driver:  # the growth outlives the agent
            assert (await driver.get_vm(uid)).disk_gib == grown
    run(body())


def test_a_running_guest_reports_an_address_unique_on_its_network(backend):
    async def body():
        a, b = uids(2)
        async with backend.driver() as driver:
            for uid in (a, b):
                await driver.create_vm(req(uid))
                assert (await driver.get_vm(uid)).addresses == ()  # off: no guest
                await driver.power_on(uid)
            first, second = [(await backend.guest_up(driver, uid)).addresses[0] for uid in (a, b)]
            assert first.ip and second.ip and first.ip != second.ip
            assert first.mac and first.mac != second.mac and first.family in (4, 6)
            await driver.power_off(b)
            assert (await driver.get_vm(b)).addresses == ()
    run(body())


def test_shutdown_guest_powers_the_vm_off_and_watch_tells(backend):
    async def body():
        (uid,) = uids()
        told: list[str] = []
        async with backend.driver(slow_guest=True) as driver:
            driver.watch(told.append)
            await driver.create_vm(req(uid))
            await driver.power_on(uid)
            await backend.guest_up(driver, uid)
            told.clear()
            await driver.shutdown_guest(uid)  # returns without waiting for the guest
            await driver.shutdown_guest(uid)  # idempotent
            await _until(driver, uid, lambda info: info.power is PowerState.OFF, "the guest shut down")
            assert uid in told, "watch did not tell of the guest's shutdown"
            await driver.shutdown_guest(uid)  # off stays off
            assert (await driver.get_vm(uid)).power is PowerState.OFF
            (absent,) = uids()
            with pytest.raises(VmNotFound):
                await driver.shutdown_guest(absent)
    run(body())


def test_watch_tells_when_a_guest_comes_up(backend):
    async def body():
        (uid,) = uids()
        told: list[str] = []
        async with backend.driver(slow_guest=True) as driver:
            driver.watch(told.append)
            await driver.create_vm(req(uid))
            await driver.power_on(uid)
            await backend.guest_up(driver, uid)
            deadline = time.monotonic() + 10
            while uid not in told and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            assert uid in told
    run(body())


def test_clear_bootstrap_blanks_the_data_and_is_idempotent(backend):
    async def body():
        (uid,) = uids()
        payload = BootstrapPayload(BootstrapFormat.CLOUD_INIT, b"#cloud-config\nhostname: x\n", b'{"instance-id":"i"}')
        async with backend.driver() as driver:
            await driver.create_vm(replace(req(uid), bootstrap=payload))
            assert (await driver.get_vm(uid)).bootstrap_present
            await driver.power_on(uid)
            for _ in range(2):
                await driver.clear_bootstrap(uid)
                assert not (await driver.get_vm(uid)).bootstrap_present
            (absent,) = uids()
            with pytest.raises(VmNotFound):
                await driver.clear_bootstrap(absent)
        async with backend.driver() as driver:  # blanked for good
            assert not (await driver.get_vm(uid)).bootstrap_present
    run(body())
