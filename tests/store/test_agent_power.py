"""The host agent's power, resize, address and bootstrap reconciling, against a real
etcd, with the agent (and its sim hypervisor) in this process so that tests can
play the guest and the world outside Quanta (``SimHost.stop_outside``,
``ignore_shutdown``). Desired state is set with the store, as the frontends do."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import time
import uuid
from collections.abc import AsyncIterator, Coroutine
from dataclasses import replace
from typing import Any

import pytest

from agents.drivers.protocol import HostCapacity, PowerState
from agents.drivers.sim import SimHost, SimHypervisor, SimLatency, Sleep, read_journal
from agents.reconciler import CLEAR_BOOTSTRAP_METHOD
from agents.service import Agent, AgentConfig
from controlplane.etcd import EtcdClient
from controlplane.models import (
    Binding,
    BootstrapFormat,
    BootstrapState,
    Power,
    PowerOffMode,
    PowerPolicy,
    Resources,
    VmRef,
    VmSpec,
    VmState,
    VmStatus,
    now_ns,
)
from controlplane.store import bootstrap
from controlplane.store.audit import AuditLog
from controlplane.store.bootstrap import BootstrapData
from controlplane.store.keys import Keys, shard_of
from controlplane.store.networks import NetworkView
from controlplane.store.scheduling import HostBind, SchedulingStore
from controlplane.store.vms import VmStore
from tests.conftest import async_wait_until, make_projects, running

HOST = "sim-00000"
ZERO = SimLatency()
SMALL = Resources(1, 1024, 10)
TENANT, PROJECT = "acme", "web"


def run(coro: Coroutine[Any, Any, Any], timeout: float = 60.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout=timeout))


@pytest.fixture(autouse=True)
def _project(etcd_endpoint: str, root: str) -> None:
    make_projects(etcd_endpoint, root, TENANT, PROJECT, backings=["cp"])  # test_agent_disks' network


def make_spec(vm_id: str, **fields: Any) -> VmSpec:
    uid = uuid.uuid4().hex
    return VmSpec(VmRef(TENANT, PROJECT, vm_id), uid, "small", fields.pop("image", "ubuntu"),
                  fields.pop("resources", SMALL), create_time_ns=now_ns(), shard=shard_of(uid, 1), **fields)


@dataclasses.dataclass
class World:
    client: EtcdClient
    keys: Keys
    vms: VmStore
    host: SimHost
    agent: Agent
    state_dir: str

    async def create(self, spec: VmSpec, data: BootstrapData | None = None,
                     disk_revisions: dict[str, int] | None = None,
                     networks: dict[str, NetworkView] | None = None) -> VmSpec:
        """Create ``spec`` (with its bootstrap data; its disks' records read at
        ``disk_revisions``; its NICs on ``networks``, by full name, as read) and bind
        it to the host, as a scheduler would."""
        also = [bootstrap.put_op(self.keys, spec.ref, data)] if data is not None else []
        await self.vms.create(spec, also=also, disk_revisions=disk_revisions, networks=networks)
        sched = SchedulingStore(self.client, self.keys)
        (queued,) = [q for q in (await sched.list_queue(spec.shard))[0] if q.spec.ref == spec.ref]
        current, _ = await sched.read_current([HOST], [])
        allocation, revision = current[HOST]
        result = await sched.bind(None, [HostBind(HOST, revision, allocation.plus(spec.resources), [queued])])
        assert result.committed == [True]
        return spec

    async def status(self, spec: VmSpec) -> VmStatus:
        return (await self.vms.get(spec.ref)).status

    async def until(self, spec: VmSpec, check, message: str, timeout: float = 20.0) -> VmStatus:
        async def ok():
            status = await self.status(spec)
            return status if check(status) else None

        async def seen():
            s = await self.status(spec)
            info = await self.host.get_vm(spec.uid)
            return f"{s.state.name} {[(c.type, c.status, c.reason) for c in s.conditions]}; driver: {info}"

        return await async_wait_until(ok, timeout=timeout, message=message, seen=seen)

    async def change(self, spec: VmSpec, **fields: Any) -> VmSpec:
        update = await self.vms.update_spec(spec.ref, lambda s: replace(s, **fields))
        return update.record.spec

    def journal(self, uid: str) -> list[dict]:
        return [r for r in read_journal(self.state_dir) if r["vm_uid"] == uid]


def condition(status: VmStatus, ctype: str) -> tuple[str, str] | None:
    for c in status.conditions:
        if c.type == ctype:
            return c.status, c.reason
    return None


def running_with_address(status: VmStatus) -> bool:
    return status.state == VmState.RUNNING and condition(status, "AddressAssigned") == ("True", "AddressReported")


@contextlib.asynccontextmanager
async def world(etcd_endpoint: str, root: str, state_dir: str, *, latency: SimLatency = ZERO,
                clear_after_s: float = 600.0, silent_images: tuple[str, ...] = (),
                sleep: Sleep = asyncio.sleep) -> AsyncIterator[World]:
    hv = SimHypervisor(state_dir, latency=latency, silent_images=silent_images, sleep=sleep)
    host = hv.add_host(HOST, HostCapacity(64, 256 * 1024, 10_000))
    keys = Keys(root)
    try:
        async with EtcdClient(etcd_endpoint) as client:
            agent = Agent(AgentConfig(etcd=etcd_endpoint, root=root, name="test-agent", lease_ttl=5,
                                      bootstrap_clear_after_s=clear_after_s), client, {HOST: host})
            async with running(agent.run()) as tasks:
                await async_wait_until(lambda: client.get(keys.host_alloc(HOST)), message="host registered",
                                       seen=lambda: [t for t in tasks if t.done()])
                yield World(client, keys, VmStore(client, keys), host, agent, state_dir)
    finally:
        hv.close()


def stopping(spec_fields: dict) -> dict:
    return {"power": Power.OFF, "power_time_ns": now_ns(), **spec_fields}


def test_a_soft_stop_waits_for_the_guest(etcd_endpoint: str, root: str, tmp_path) -> None:
    async def main() -> None:
        async with world(etcd_endpoint, root, str(tmp_path), latency=SimLatency(shutdown=0.3)) as w:
            spec = await w.create(make_spec("soft"))
            await w.until(spec, running_with_address, "RUNNING with an address")
            spec = await w.change(spec, **stopping({"power_off_mode": PowerOffMode.SOFT, "power_off_grace_s": 30}))
            status = await w.until(spec, lambda s: s.state == VmState.STOPPED, "STOPPED")
            assert condition(status, "Stopped") == ("True", "StoppedByRequest")
            assert condition(status, "AddressAssigned") is None and status.addresses == ()
            assert status.power_time_ns == spec.power_time_ns
            ops = [(r["op"], r.get("by")) for r in w.journal(spec.uid)]
            assert ("shutdown_guest", None) in ops and ops[-1] == ("power_off", "guest")  # not hard

    run(main())


def test_a_guest_that_ignores_the_shutdown_is_powered_off_hard_after_the_grace(etcd_endpoint, root, tmp_path):
    async def main() -> None:
        async with world(etcd_endpoint, root, str(tmp_path)) as w:
            spec = await w.create(make_spec("deaf"))
            await w.until(spec, running_with_address, "RUNNING with an address")
            w.host.ignore_shutdown(spec.uid)
            asked = time.monotonic()
            spec = await w.change(spec, **stopping({"power_off_grace_s": 4}))
            await async_wait_until(lambda: any(r["op"] == "shutdown_guest" for r in w.journal(spec.uid)),
                                   message="the guest asked to shut down", seen=lambda: w.journal(spec.uid))
            assert (await w.status(spec)).state == VmState.RUNNING  # within its grace
            status = await w.until(spec, lambda s: s.state == VmState.STOPPED, "STOPPED after the grace")
            assert time.monotonic() - asked >= 3.5  # (the deadline counts from the request's time)
            assert condition(status, "Stopped") == ("True", "StoppedByRequest")
            assert [(r["op"], r.get("by")) for r in w.journal(spec.uid)][-1] == ("power_off", None)  # hard

    run(main())


def test_a_hard_stop_forces_a_soft_stop_the_guest_ignores(etcd_endpoint, root, tmp_path) -> None:
    async def main() -> None:
        async with world(etcd_endpoint, root, str(tmp_path)) as w:
            spec = await w.create(make_spec("stuck"))
            await w.until(spec, running_with_address, "RUNNING with an address")
            w.host.ignore_shutdown(spec.uid)
            soft = await w.vms.update_spec(spec.ref, lambda s: s.stopped(PowerOffMode.SOFT, 600, now_ns()))
            spec = soft.record.spec
            await async_wait_until(lambda: any(r["op"] == "shutdown_guest" for r in w.journal(spec.uid)),
                                   message="the guest asked to shut down", seen=lambda: w.journal(spec.uid))
            assert (await w.status(spec)).state == VmState.RUNNING  # and would be for 600 s
            # What StopVm(HARD) writes: the same stop, HARD; a second one writes nothing.
            hard = await w.vms.update_spec(spec.ref, lambda s: s.stopped(PowerOffMode.HARD, 0, now_ns()))
            assert hard.changed and hard.record.spec == replace(spec, power_off_mode=PowerOffMode.HARD)
            again = await w.vms.update_spec(spec.ref, lambda s: s.stopped(PowerOffMode.HARD, 0, now_ns()))
            softer = await w.vms.update_spec(spec.ref, lambda s: s.stopped(PowerOffMode.SOFT, 5, now_ns()))
            assert not again.changed and not softer.changed
            status = await w.until(spec, lambda s: s.state == VmState.STOPPED, "STOPPED at once", timeout=15)
            assert condition(status, "Stopped") == ("True", "StoppedByRequest")
            assert status.power_time_ns == spec.power_time_ns
            assert [(r["op"], r.get("by")) for r in w.journal(spec.uid)][-1] == ("power_off", None)  # hard

    run(main())


def test_a_hard_stop_does_not_ask_the_guest(etcd_endpoint, root, tmp_path) -> None:
    async def main() -> None:
        async with world(etcd_endpoint, root, str(tmp_path), latency=SimLatency(shutdown=30)) as w:
            spec = await w.create(make_spec("hard"))
            await w.until(spec, running_with_address, "RUNNING")
            spec = await w.change(spec, **stopping({"power_off_mode": PowerOffMode.HARD}))
            status = await w.until(spec, lambda s: s.state == VmState.STOPPED, "STOPPED")
            assert condition(status, "Stopped") == ("True", "StoppedByRequest")
            ops = [r["op"] for r in w.journal(spec.uid)]
            assert "shutdown_guest" not in ops and ops[-1] == "power_off"
            # And a start powers it on again.
            spec = await w.change(spec, power=Power.ON, power_time_ns=now_ns())
            status = await w.until(spec, running_with_address, "RUNNING again")
            assert condition(status, "Stopped") is None

    run(main())


def test_a_vm_created_stopped_is_made_but_not_powered_on(etcd_endpoint, root, tmp_path) -> None:
    async def main() -> None:
        async with world(etcd_endpoint, root, str(tmp_path)) as w:
            spec = await w.create(make_spec("cold", power=Power.OFF))
            status = await w.until(spec, lambda s: s.state == VmState.STOPPED, "STOPPED")
            assert condition(status, "Stopped") == ("True", "CreatedStopped")
            assert [r["op"] for r in w.journal(spec.uid)] == ["create"]

    run(main())


def test_a_restart_is_applied_once_also_across_an_agent_restart(etcd_endpoint, root, tmp_path) -> None:
    async def main() -> tuple[VmSpec, int]:
        async with world(etcd_endpoint, root, str(tmp_path)) as w:
            spec = await w.create(make_spec("again"))
            await w.until(spec, running_with_address, "RUNNING")
            spec = await w.change(spec, restarts=1, power_time_ns=now_ns(), power_off_mode=PowerOffMode.SOFT)
            # The restart is on record (restarts 1, RUNNING, PowerCycle) before the VM goes
            # off: done once the condition is gone again.
            status = await w.until(spec, lambda s: s.restarts == 1 and s.state == VmState.RUNNING and not any(
                c.type == "PowerCycle" for c in s.conditions), "restarted")
            assert status.power_time_ns == spec.power_time_ns
            ops = [(r["op"], r.get("by")) for r in w.journal(spec.uid)]
            assert ops.count(("power_on", None)) == 2 and ("power_off", "guest") in ops
            await w.until(spec, running_with_address, "an address after the restart")
            return spec, len(w.journal(spec.uid))

    spec, journaled = run(main())

    async def second_life() -> None:
        async with world(etcd_endpoint, root, str(tmp_path)) as w:
            key = (HOST, spec.ref)
            await async_wait_until(lambda: key in w.agent.reconciler.applied and w.agent.reconciler.applied[key].last,
                                   message="the new agent reconciled the VM",
                                   seen=lambda: w.agent.reconciler.applied.get(key))
            assert w.agent.reconciler.applied[key].restarts == 1
            assert len(w.journal(spec.uid)) == journaled, "the restart was repeated"
            assert (await w.status(spec)).restarts == 1

    run(second_life())


class Gate:
    """The sim's latency, held while closed: a test decides when an operation completes."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.open.set()
        self.waiting = 0

    async def sleep(self, _seconds: float) -> None:
        self.waiting += 1
        try:
            await self.open.wait()
        finally:
            self.waiting -= 1


class HeldWrites:
    """Stands in for the StatusWriter's store once the test holds status writes: what
    the agent writes then never lands (as when it dies first). Not etcd: the store
    object of this agent's writer only."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self.held: list = []

    async def write_statuses(self, updates):
        self.held.extend(updates)
        await asyncio.Event().wait()  # until the agent is cancelled
        return await self._store.write_statuses(updates)


def test_an_agent_killed_after_a_restarts_power_on_does_not_restart_again(etcd_endpoint, root, tmp_path):
    gate = Gate()

    async def first_life() -> tuple[VmSpec, list]:
        async with world(etcd_endpoint, root, str(tmp_path), latency=SimLatency(power_on=0.01),
                         sleep=gate.sleep) as w:
            spec = await w.create(make_spec("once"))
            await w.until(spec, running_with_address, "RUNNING")
            gate.open.clear()
            spec = await w.change(spec, restarts=1, power_time_ns=now_ns(), power_off_mode=PowerOffMode.HARD)
            status = await w.until(spec, lambda s: s.state == VmState.STOPPED, "off within the restart, on record")
            assert condition(status, "PowerCycle") == ("True", "Restart") and status.restarts == 1
            await async_wait_until(lambda: gate.waiting == 1, message="the power-on under way",
                                   seen=lambda: w.journal(spec.uid))
            # The power-on completes; the status saying so never lands.
            held = w.agent.statuses._store = HeldWrites(w.agent.statuses._store)
            gate.open.set()
            await async_wait_until(lambda: any(u.ref == spec.ref for u in held.held),
                                   message="the status after the power-on held", seen=lambda: held.held)
            assert (await w.host.get_vm(spec.uid)).power is PowerState.ON
            status = await w.status(spec)
            assert status.state == VmState.STOPPED and condition(status, "PowerCycle") == ("True", "Restart")
            return spec, w.journal(spec.uid)

    spec, journal = run(first_life())
    assert [r["op"] for r in journal].count("power_on") == 2

    async def second_life() -> None:
        async with world(etcd_endpoint, root, str(tmp_path)) as w:
            status = await w.until(spec, lambda s: s.state == VmState.RUNNING and not condition(s, "PowerCycle"),
                                   "RUNNING, the restart finished")
            assert status.restarts == 1 and condition(status, "Stopped") is None
            ops = [r["op"] for r in w.journal(spec.uid)]
            assert ops.count("power_on") == 2 and ops.count("power_off") == 1, f"restarted again: {ops}"

    run(second_life())


def test_a_stop_outside_quanta_is_reported_and_respected_unless_keep_running(etcd_endpoint, root, tmp_path):
    async def main() -> None:
        async with world(etcd_endpoint, root, str(tmp_path)) as w:
            kept = await w.create(make_spec("kept"))
            revived = await w.create(make_spec("revived", power_policy=PowerPolicy.KEEP_RUNNING))
            for spec in (kept, revived):
                await w.until(spec, running_with_address, f"{spec.ref.vm_id} RUNNING")
                w.host.stop_outside(spec.uid)
            status = await w.until(kept, lambda s: s.state == VmState.STOPPED, "STOPPED")
            assert condition(status, "Stopped") == ("True", "StoppedOutsideQuanta")
            assert (await w.host.get_vm(kept.uid)).power is PowerState.OFF
            # The KEEP_RUNNING VM is powered on again.
            await async_wait_until(lambda: [r["op"] for r in w.journal(revived.uid)].count("power_on") == 2,
                                   message="the KEEP_RUNNING VM powered on again",
                                   seen=lambda: w.journal(revived.uid))
            await w.until(revived, running_with_address, "the KEEP_RUNNING VM RUNNING")
            # A resync does not power the kept one on either; a start does.
            w.agent._queue.add((HOST, kept.ref))
            await async_wait_until(lambda: not w.agent._queue.in_flight() and not len(w.agent._queue),
                                   message="the queue drained",
                                   seen=lambda: (w.agent._queue.in_flight(), len(w.agent._queue)))
            assert [r["op"] for r in w.journal(kept.uid)].count("power_on") == 1
            kept = await w.change(kept, power=Power.ON, power_time_ns=now_ns())
            await w.until(kept, running_with_address, "started")

    run(main())


def test_a_resize_that_needs_a_power_cycle_gets_one(etcd_endpoint, root, tmp_path) -> None:
    async def main() -> None:
        async with world(etcd_endpoint, root, str(tmp_path)) as w:
            spec = await w.create(make_spec("big", resources=Resources(2, 2048, 10)))
            await w.until(spec, running_with_address, "RUNNING")
            # What a resize by the frontend writes into the binding (its charging is not this test's).
            key = w.keys.binding(HOST, spec.ref)
            kv = await w.client.get(key)
            binding = Binding.from_bytes(kv.value)
            smaller = replace(binding.spec, resources=Resources(1, 1024, 10))
            await w.client.put(key, replace(binding, spec=smaller).to_bytes())
            await async_wait_until(
                lambda: _is(w.host.hardware(spec.uid), (1, 1024)), message="shrunk",
                seen=lambda: w.host.hardware(spec.uid))
            await async_wait_until(lambda: _on(w.host, spec.uid), message="powered on again",
                                   seen=lambda: w.journal(spec.uid))
            ops = [(r["op"], r.get("by")) for r in w.journal(spec.uid)]
            assert ("shutdown_guest", None) in ops and ops.count(("power_on", None)) == 2
            await w.until(spec, running_with_address, "RUNNING after the resize")

    run(main())


def test_a_resize_that_grows_the_disk_grows_it_hot(etcd_endpoint, root, tmp_path) -> None:
    async def main() -> None:
        async with world(etcd_endpoint, root, str(tmp_path)) as w:
            spec = await w.create(make_spec("roomy", resources=Resources(1, 1024, 10)))
            await w.until(spec, running_with_address, "RUNNING")
            key = w.keys.binding(HOST, spec.ref)
            binding = Binding.from_bytes((await w.client.get(key)).value)
            grown = replace(binding.spec, resources=Resources(1, 1024, 30))  # the disk alone grows
            await w.client.put(key, replace(binding, spec=grown).to_bytes())
            revision = (await w.client.get(key)).mod_revision
            status = await w.until(spec, lambda s: s.observed_revision >= revision, "the resize made true")
            assert status.state == VmState.RUNNING and condition(status, "PowerCycle") is None
            assert (await w.host.get_vm(spec.uid)).disk_gib == 30
            ops = [(r["op"], r.get("disk_gib")) for r in w.journal(spec.uid) if r["op"] != "booted"]
            assert ops == [("create", 10), ("power_on", None), ("reconfigure", 30)], "grown hot, no power cycle"

    run(main())


async def _is(value, want) -> bool:
    return (await value) == want


async def _on(host: SimHost, uid: str) -> bool:
    info = await host.get_vm(uid)
    return info is not None and info.power is PowerState.ON


SECRET = b"#cloud-config\npassword: s3cr3t-" + uuid.uuid4().hex.encode()


def test_bootstrap_data_is_delivered_then_cleared_everywhere(etcd_endpoint, root, tmp_path) -> None:
    async def main() -> None:
        async with world(etcd_endpoint, root, str(tmp_path), latency=SimLatency(boot=0.5)) as w:
            base = make_spec("boot")
            data = BootstrapData(base.uid, BootstrapFormat.CLOUD_INIT, SECRET, b'{"instance-id":"x"}')
            spec = await w.create(replace(base, bootstrap=data.summary()), data)
            status = await w.until(spec, lambda s: s.bootstrap == BootstrapState.DELIVERED, "DELIVERED")
            assert condition(status, "Bootstrapped") == ("False", "WaitingForGuest")
            assert w.host.bootstrap_payload(spec.uid).user_data == SECRET  # what the guest reads
            status = await w.until(spec, lambda s: s.bootstrap == BootstrapState.CLEARED, "CLEARED")
            assert condition(status, "Bootstrapped") == ("True", "BootstrapCleared")
            assert await w.client.get(w.keys.bootstrap(spec.ref)) is None
            assert w.host.bootstrap_payload(spec.uid) is None
            info = await w.host.get_vm(spec.uid)
            assert info.bootstrapped and not info.bootstrap_present
            entries, _, _ = await AuditLog(w.client, w.keys).list(TENANT)
            (entry,) = [e.record for e in entries if e.record.method == CLEAR_BOOTSTRAP_METHOD]
            assert (entry.resource, entry.subject) == (spec.ref.name, "agent/test-agent")
            assert "reported" in entry.message and SECRET.decode() not in str(entry)
        journal = (tmp_path / "journal.jsonl").read_bytes()
        assert SECRET not in journal and b"s3cr3t" not in journal

    run(main())


def test_a_guest_that_cannot_report_is_cleared_after_running_with_an_address(etcd_endpoint, root, tmp_path):
    async def main() -> None:
        async with world(etcd_endpoint, root, str(tmp_path), clear_after_s=1.0, silent_images=("mute",)) as w:
            base = make_spec("mute", image="mute")
            data = BootstrapData(base.uid, BootstrapFormat.IGNITION, SECRET)
            spec = await w.create(replace(base, bootstrap=data.summary()), data)
            status = await w.until(spec, running_with_address, "RUNNING with an address")
            assert status.bootstrap == BootstrapState.DELIVERED  # the guest says nothing
            addressed = time.monotonic()
            status = await w.until(spec, lambda s: s.bootstrap == BootstrapState.CLEARED, "CLEARED")
            assert time.monotonic() - addressed >= 0.5
            assert not (await w.host.get_vm(spec.uid)).bootstrapped
            assert await w.client.get(w.keys.bootstrap(spec.ref)) is None
            entries, _, _ = await AuditLog(w.client, w.keys).list(TENANT)
            (entry,) = [e.record for e in entries if e.record.method == CLEAR_BOOTSTRAP_METHOD]
            assert "ran with an address" in entry.message

    run(main())


def test_addresses_are_unique_across_many_vms(etcd_endpoint, root, tmp_path) -> None:
    async def main() -> None:
        async with world(etcd_endpoint, root, str(tmp_path)) as w:
            specs = [await w.create(make_spec(f"n-{i:02d}")) for i in range(40)]
            statuses = [await w.until(s, running_with_address, f"{s.ref.vm_id} with an address") for s in specs]
            ips = [s.addresses[0].ip for s in statuses]
            assert len(set(ips)) == len(ips)
            macs = {s.addresses[0].mac for s in statuses}
            assert len(macs) == len(ips) and all(m.startswith("00:50:56:") for m in macs)
            assert all(ipaddress.ip_address(ip) in ipaddress.ip_network("10.80.0.0/16") for ip in ips)

    run(main())


def test_an_agent_killed_after_blanking_the_bootstrap_data_clears_it_after_its_restart(etcd_endpoint, root, tmp_path):
    """At zero boot latency the guest reports within the converge that made the VM: the
    agent blanks the data on the VM, and is killed before the status (RUNNING, CLEARED,
    with the key's deletion and the audit record in its txn) lands. etcd still says
    STORED and the VM has nothing left to report: the next agent clears it all the same."""
    async def first_life() -> VmSpec:
        async with world(etcd_endpoint, root, str(tmp_path)) as w:
            held = w.agent.statuses._store = HeldWrites(w.agent.statuses._store)
            base = make_spec("blanked")
            data = BootstrapData(base.uid, BootstrapFormat.CLOUD_INIT, SECRET)
            spec = await w.create(replace(base, bootstrap=data.summary()), data)
            key = (HOST, spec.ref)
            await async_wait_until(
                lambda: any(r["op"] == "clear_bootstrap" for r in w.journal(spec.uid))
                and w.agent.reconciler.applied[key].bootstrap == BootstrapState.CLEARED,
                message="blanked on the VM, CLEARED in the agent's memory",
                seen=lambda: (w.journal(spec.uid), w.agent.reconciler.applied.get(key)))
            info = await w.host.get_vm(spec.uid)
            assert info.bootstrapped and not info.bootstrap_present
            assert held.held  # the statuses never land
            assert (await w.status(spec)).bootstrap == BootstrapState.STORED
            assert await w.client.get(w.keys.bootstrap(spec.ref)) is not None
            return spec

    spec = run(first_life())

    async def second_life() -> None:
        async with world(etcd_endpoint, root, str(tmp_path)) as w:
            status = await w.until(spec, lambda s: s.bootstrap == BootstrapState.CLEARED, "CLEARED after the restart")
            assert condition(status, "Bootstrapped") == ("True", "BootstrapCleared")
            assert await w.client.get(w.keys.bootstrap(spec.ref)) is None
            entries, _, _ = await AuditLog(w.client, w.keys).list(TENANT)
            # Exactly one: the first agent's record was in the txn that never landed.
            (entry,) = [e.record for e in entries
                        if e.record.method == CLEAR_BOOTSTRAP_METHOD and e.record.resource == spec.ref.name]
            assert "reported that it bootstrapped" in entry.message
            assert [r["op"] for r in w.journal(spec.uid)].count("clear_bootstrap") == 1  # (a no-op the 2nd time)

    run(second_life())
