"""Makes one host's bound VMs true, one VM at a time per key.

``reconcile(host, ref)`` compares three things and acts:

- desired: the binding's copy of the spec (etcd): exists or deleted, power,
  restarts asked for, vCPUs, memory and disk, bootstrap data;
- observed: the driver's ``VmInfo`` (power, size, addresses, the guest's
  bootstrap report);
- applied: what this agent already did to the VM (:class:`Applied`, in memory:
  the power request and restarts applied, where the bootstrap data is, a power
  cycle under way). For a VM it finds made but has no memory of (an agent
  restart), it reads the VM's status from etcd once, and only when that matters:
  the spec has power, restart or bootstrap history, the VM is off while it should
  run (just created, stopped outside Quanta, or off within a power cycle?), or its
  size is not the spec's (a resize under way).

What it does, in order: create (handing the driver the bootstrap data, read from
etcd only for a VM that has some); a restart asked for and not applied (power off
soft or hard, then on); a resize (``reconfigure``, the root disk grown with it
when the resize grew it (:func:`_disk_growth`; a disk never shrinks, and grows
hot); a driver that raises PowerCycleRequired gets the VM off, resized and on
again); the desired power (a
stop not applied: soft, the guest's shutdown, then hard at ``power_time_ns +
grace``; a VM found off that should run is powered on when it was just made, a
start was asked for, a power cycle is under way or its policy is KEEP_RUNNING, else
reported STOPPED StoppedOutsideQuanta); clearing the bootstrap data once the guest reported that it
bootstrapped (or, for images that cannot, ran with an address for
``bootstrap_clear_after_s``): blanked on the VM, then its key deleted, the status
written and an audit record filed in one txn. It never polls: it waits for the
driver's ``watch`` (which re-enqueues the key) or for a deadline (``requeue_after``).

Power cycles (a restart; a resize the driver cannot apply hot) are on record
before they disrupt the VM: a status with the condition ``PowerCycle`` (True,
reason ``Restart`` or ``Resize``; for a restart, ``restarts`` already the value
applied) is written and awaited, not batched, before the VM goes off, and again,
STOPPED, once it is off within a restart; the next (batched) status clears it. An
agent that restarts and finds the condition finishes the cycle: it powers the VM
on if it is off and should run (never reports it StoppedOutsideQuanta), repeats a
restart's power-off only while the record says the VM has not been off (RUNNING),
and never begins the recorded restart again. So a restart is applied exactly once
across crashes at any point, and a resize's VM is never left off.

Idempotent: a VM the driver already has is adopted, never made twice; each step
is safe to redo after a crash at any point. Never runs twice at once for one VM
(the work queue guarantees it). Driver errors marked transient are retried with
backoff by the caller; permanent ones set ERROR.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from agents import metrics
from agents.disks import DiskKeeper
from agents.drivers.protocol import (
    BootstrapFormat as DriverBootstrapFormat,
)
from agents.drivers.protocol import (
    BootstrapPayload,
    DiskRequest,
    DriverError,
    GuestUnavailable,
    HostDriver,
    NicRequest,
    OperationFailed,
    PowerCycleRequired,
    PowerState,
    VmInfo,
    VmRequest,
)
from agents.orphans import OrphanKeeper
from agents.remover import Remover
from agents.status_writer import StatusWriter
from controlplane.etcd.ops import RequestOp
from controlplane.gen.quanta.store.v1 import tenancy_pb2 as trec
from controlplane.logcontext import bound
from controlplane.models import (
    DEFAULT_STOP_GRACE_S,
    Address,
    BootstrapFormat,
    BootstrapState,
    Condition,
    DiskRef,
    Nic,
    Power,
    PowerOffMode,
    PowerPolicy,
    VmRef,
    VmSpec,
    VmState,
    VmStatus,
    now_ns,
)
from controlplane.store.audit import AuditLog
from controlplane.store.bootstrap import BootstrapData
from controlplane.store.hostagent import AgentStore, BoundVm, StatusUpdate
from controlplane.store.orphans import spec_from_record, spec_record

log = logging.getLogger(__name__)

Key = tuple[str, VmRef]

#: Default of ``--bootstrap-clear-after``: how long a guest that cannot report its
#: bootstrap must have run with an address before its bootstrap data is cleared.
DEFAULT_BOOTSTRAP_CLEAR_AFTER_S = 600.0

# Condition types and reasons (the CLI and SDK rely on these names).
STOPPED = "Stopped"
STOPPED_BY_REQUEST = "StoppedByRequest"
STOPPED_OUTSIDE = "StoppedOutsideQuanta"
CREATED_STOPPED = "CreatedStopped"
ADDRESS_ASSIGNED = "AddressAssigned"
WAITING_FOR_ADDRESS = "WaitingForAddress"
ADDRESS_REPORTED = "AddressReported"
BOOTSTRAPPED = "Bootstrapped"
WAITING_FOR_GUEST = "WaitingForGuest"
BOOTSTRAP_CLEARED = "BootstrapCleared"
POWER_CYCLE = "PowerCycle"
RESTART = "Restart"
RESIZE = "Resize"

_STOPPED_MESSAGES = {
    STOPPED_BY_REQUEST: "stopped as requested",
    STOPPED_OUTSIDE: "found powered off without a stop request; left off (power policy KEEP_STOPPED)",
    CREATED_STOPPED: "created with power off",
}

_CYCLE_MESSAGES = {
    RESTART: "restarting: powered off, then on again",
    RESIZE: "the new size needs the VM off: powered off, resized, then on again",
}

#: The methods audit records of the agent name.
CLEAR_BOOTSTRAP_METHOD = "quanta.agent/ClearBootstrap"


async def _timed(op: str, call):
    started = time.perf_counter()
    result = "ok"
    try:
        return await call
    except DriverError as err:
        result = err.reason
        raise
    finally:
        metrics.DRIVER_SECONDS.labels(op, result).observe(time.perf_counter() - started)


@dataclass(slots=True)
class Applied:
    """What this agent did to one VM (of ``uid``), and what it last reported of it."""

    uid: str
    power_time_ns: int = 0  # the power request (VmSpec.power_time_ns) applied
    restarts: int = 0  # restarts applied
    bootstrap: BootstrapState = BootstrapState.STORED
    started: bool = False  # powered on by Quanta since it was made (off then means: stopped by someone)
    shutdown_asked: tuple = ()  # the stop, restart or resize for which the guest was asked to shut down
    resize_deadline_ns: int = 0  # a resize's power cycle: hard off after this
    cycle: str = ""  # a power cycle on record in etcd (RESTART, RESIZE): power on again when done
    cycle_off: bool = False  # ... and on record that the VM has been off within it (a restart's)
    address_since: float = 0.0  # monotonic: running with an address since (0: not)
    observed_revision: int = 0  # the binding revision whose desired state was made true
    last: tuple = ()  # the last status submitted, without times
    conditions: dict[str, Condition] = field(default_factory=dict)  # as last submitted, by type


def _payload(data: BootstrapData) -> BootstrapPayload:
    ignition = data.format == BootstrapFormat.IGNITION
    fmt = DriverBootstrapFormat.IGNITION if ignition else DriverBootstrapFormat.CLOUD_INIT
    return BootstrapPayload(fmt, data.user_data, data.metadata)


def nic_request(nic: Nic) -> NicRequest:
    """What the host needs of a NIC of the spec: its backing and MAC, and a static address."""
    if not nic.static:
        return NicRequest(nic.backing, mac=nic.mac)
    return NicRequest(nic.backing, nic.ip, nic.prefix_length, nic.gateway, nic.dns_servers, nic.mac)


def disk_request(disk: DiskRef) -> DiskRequest:
    return DiskRequest(disk.uid, disk.size_gib, disk.datastore_class)


def _disk_growth(spec: VmSpec, info: VmInfo) -> int | None:
    """The size to grow the VM's root disk to (the binding's), or None: only when a
    resize grew the disk, i.e. the binding asks for more than the VM has (as its driver
    reports it; 0: unknown, left alone) and more than the VM was made with (its record).
    A disk a driver made from an image smaller than the flavor is left as made (an ESXi
    linked clone's cannot grow); a disk never shrinks (the API refuses that resize)."""
    want = spec.resources.disk_gib
    if not info.disk_gib or info.disk_gib >= want:
        return None
    made = spec_from_record(info.record)
    if made is not None and made.resources.disk_gib >= want:
        return None
    return want


class Reconciler:
    def __init__(self, drivers: Mapping[str, HostDriver], statuses: StatusWriter, remover: Remover,
                 *, per_host_concurrency: int = 8, orphans: OrphanKeeper | None = None,
                 store: AgentStore | None = None, audit: AuditLog | None = None, agent: str = "agent",
                 requeue_after: Callable[[Key, float], None] | None = None,
                 bootstrap_clear_after_s: float = DEFAULT_BOOTSTRAP_CLEAR_AFTER_S, disks: DiskKeeper | None = None):
        self._drivers = drivers
        #: Decides the fate of a VM whose binding went without a deletion (None: keep it).
        self._orphans = orphans
        self._statuses = statuses
        self._remover = remover
        #: Reads a VM's status and bootstrap data (None: a VM with history is treated as new).
        self._store = store
        self._audit = audit
        self._agent = agent
        self._requeue_after = requeue_after
        self._clear_after_s = bootstrap_clear_after_s
        #: Which attachments of a VM are being detached (None: none ever are).
        self._disks = disks
        self.desired: dict[Key, BoundVm] = {}
        self._by_uid: dict[tuple[str, str], Key] = {}  # (host, uid) -> key, of ``desired``
        self._by_vm_uid: dict[str, Key] = {}  # uid -> key, of ``desired``
        #: VMs whose binding went away without a deletion (moved to another host):
        #: the next reconcile of their key hands them to the OrphanKeeper, which
        #: destroys them by their tombstone (or quarantines them without one).
        self.unbound: dict[Key, str] = {}
        #: What was done to each VM (see :class:`Applied`).
        self.applied: dict[Key, Applied] = {}
        self._host_slots = {host: asyncio.Semaphore(per_host_concurrency) for host in drivers}
        #: Reconciles in driver calls now.
        self.acting = 0
        self._stopping = False

    def stop(self) -> None:
        """Start no new host work: a reconcile not yet acting returns without acting
        (the VM stays desired in etcd for the next agent); those acting finish."""
        self._stopping = True

    def key_of(self, host: str, uid: str) -> Key | None:
        """The key of the VM ``uid`` bound to ``host``, if this agent wants it (for a
        driver's ``watch``)."""
        return self._by_uid.get((host, uid))

    def key_of_uid(self, uid: str) -> Key | None:
        """The key of the VM ``uid`` bound to some host of this agent, if any."""
        return self._by_vm_uid.get(uid)

    def set_desired(self, key: Key, vm: BoundVm) -> None:
        """The binding of ``key`` is now ``vm``."""
        old = self.desired.get(key)
        self.desired[key] = vm
        if old is not None and old.binding.spec.uid != vm.binding.spec.uid:
            self._by_uid.pop((key[0], old.binding.spec.uid), None)
            if self._by_vm_uid.get(old.binding.spec.uid) == key:
                del self._by_vm_uid[old.binding.spec.uid]
        self._by_uid[(key[0], vm.binding.spec.uid)] = key
        self._by_vm_uid[vm.binding.spec.uid] = key

    def unbind(self, key: Key) -> None:
        """The binding of ``key`` is gone. Unless it went because its VM was deleted
        (destroyed already), the VM was moved off this host: remember its uid so
        that reconcile releases it (destroyed only with a tombstone)."""
        vm = self.desired.pop(key, None)
        if vm is not None:
            self._by_uid.pop((key[0], vm.binding.spec.uid), None)
            if self._by_vm_uid.get(vm.binding.spec.uid) == key:
                del self._by_vm_uid[vm.binding.spec.uid]
        if vm is not None and not (vm.binding.deleting or vm.binding.evicting):
            self.unbound[key] = vm.binding.spec.uid

    # --- status ------------------------------------------------------------------------

    def _report(self, key: Key, vm: BoundVm, state: VmState, reason: str = "", message: str = "") -> None:
        """A status without agent conditions (CREATING, ERROR)."""
        applied = self._applied_for(key, vm)
        self._submit(key, vm, applied, state, reason=reason, message=message)

    def _submit(self, key: Key, vm: BoundVm, applied: Applied, state: VmState, *, info: VmInfo | None = None,
                stopped: str = "", reason: str = "", message: str = "", also: tuple[RequestOp, ...] = ()) -> None:
        """Queue the VM's status (batched), unless it is the one last submitted."""
        update = self._update(key, vm, applied, state, info=info, stopped=stopped, reason=reason, message=message,
                              also=also)
        if update is not None:
            self._statuses.submit(update)

    def _update(self, key: Key, vm: BoundVm, applied: Applied, state: VmState, *, info: VmInfo | None = None,
                stopped: str = "", reason: str = "", message: str = "", also: tuple[RequestOp, ...] = (),
                force: bool = False) -> StatusUpdate | None:
        """The VM's status as ``applied`` and ``info`` say (None: unchanged since the last
        one, unless ``force``); remembered in ``applied`` as the last one."""
        spec = vm.binding.spec
        wanted: list[tuple[str, str, str, str]] = []
        if applied.cycle:
            wanted.append((POWER_CYCLE, "True", applied.cycle, _CYCLE_MESSAGES.get(applied.cycle, "")))
        elif state == VmState.STOPPED:
            wanted.append((STOPPED, "True", stopped, _STOPPED_MESSAGES.get(stopped, "")))
        addresses: tuple[Address, ...] = ()
        if state == VmState.RUNNING and info is not None:
            addresses = tuple(Address(a.ip, a.mac, a.network, a.family) for a in info.addresses)
            wanted.append((ADDRESS_ASSIGNED, "True", ADDRESS_REPORTED, "") if addresses else
                          (ADDRESS_ASSIGNED, "False", WAITING_FOR_ADDRESS, "the guest has reported no address yet"))
        if spec.bootstrap is not None and state in (VmState.RUNNING, VmState.STOPPED):
            if applied.bootstrap == BootstrapState.DELIVERED:
                wanted.append((BOOTSTRAPPED, "False", WAITING_FOR_GUEST,
                               "the bootstrap data is on the VM; the guest has not reported that it bootstrapped"))
            elif applied.bootstrap == BootstrapState.CLEARED:
                wanted.append((BOOTSTRAPPED, "True", BOOTSTRAP_CLEARED,
                               "deleted from the store and blanked on the VM"))
        signature = (state, reason, message, addresses, tuple(wanted), applied.power_time_ns, applied.restarts,
                     applied.bootstrap, applied.observed_revision)
        if signature == applied.last and not also and not force:
            return None
        at = now_ns()
        conditions = []
        for ctype, cstatus, creason, cmessage in wanted:
            old = applied.conditions.get(ctype)
            same = old is not None and (old.status, old.reason) == (cstatus, creason)
            conditions.append(Condition(ctype, cstatus, creason, cmessage, old.time_ns if same and old else at))
        applied.conditions = {c.type: c for c in conditions}
        applied.last = signature
        host, ref = key
        return StatusUpdate(host, ref, vm.create_revision, VmStatus(
            state, host=host, reason=reason, message=message, update_time_ns=at,
            accepted_time_ns=spec.create_time_ns, addresses=addresses, conditions=tuple(conditions),
            power_time_ns=applied.power_time_ns, restarts=applied.restarts, bootstrap=applied.bootstrap,
            observed_revision=applied.observed_revision), also)

    async def _record_cycle(self, key: Key, vm: BoundVm, applied: Applied, info: VmInfo | None, cycle: str, *,
                            off: bool) -> None:
        """Put a power cycle on record before its next disruptive step: the status with
        the condition PowerCycle (reason ``cycle``), RUNNING (the VM has not been off
        within the cycle yet) or STOPPED (``off``: it has), written and awaited. Raises
        OperationFailed (transient) if the binding changed meanwhile (nothing recorded;
        the cycle is not begun)."""
        before = (applied.cycle, applied.cycle_off)
        applied.cycle, applied.cycle_off = cycle, off
        state = VmState.STOPPED if off else VmState.RUNNING
        update = self._update(key, vm, applied, state, info=None if off else info, force=True)
        assert update is not None
        if not await self._statuses.write(update):
            applied.cycle, applied.cycle_off = before
            applied.last = ()
            raise OperationFailed("the binding changed before the power cycle was on record; not begun",
                                  reason="BindingChanged", transient=True)
        log.info("power cycle on record", extra={"cycle": cycle, "off": off, "restarts": applied.restarts})

    def _applied_for(self, key: Key, vm: BoundVm) -> Applied:
        applied = self.applied.get(key)
        if applied is None or applied.uid != vm.binding.spec.uid:
            applied = self.applied[key] = Applied(vm.binding.spec.uid)
        return applied

    # --- reconcile ---------------------------------------------------------------------

    async def reconcile(self, key: Key) -> None:
        """Bring one VM to its desired state. Raises DriverError when a transient
        fault should be retried later."""
        host, ref = key
        vm = self.desired.get(key)
        if vm is None:
            self.applied.pop(key, None)
            uid = self.unbound.get(key)
            if uid is not None:
                with bound(vm=ref.name, host=host):
                    log.info("binding gone without a deletion; releasing the VM (destroyed only with a tombstone)")
                    if self._orphans is not None:
                        async with self._host_slots[host]:
                            await self._orphans.release(host, uid)
                self.unbound.pop(key, None)
            return
        self.unbound.pop(key, None)  # bound here again: adopt it, if it still exists
        driver = self._drivers[host]
        spec = vm.binding.spec
        with bound(vm=ref.name, host=host):
            async with self._host_slots[host]:
                if self._stopping:
                    return
                metrics.INFLIGHT.inc()
                self.acting += 1
                try:
                    if vm.binding.deleting or vm.binding.evicting:
                        # Evicting (a drain): destroyed here first; removing the binding then
                        # queues the VM again, so it never runs on two hosts at once.
                        await _timed("destroy", driver.destroy_vm(spec.uid))
                        await self._detached_all(spec)
                        self._statuses.discard(host, ref)
                        self._remover.submit(host, vm)
                        self.applied.pop(key, None)
                        return
                    try:
                        await self._converge(key, vm, driver)
                    except DriverError as err:
                        if err.transient:
                            raise
                        log.warning("VM failed", extra={"reason": err.reason, "error": str(err)})
                        metrics.VMS_FAILED.labels(err.reason).inc()
                        self._report(key, vm, VmState.ERROR, err.reason, str(err))
                finally:
                    metrics.INFLIGHT.dec()
                    self.acting -= 1

    async def _recall(self, key: Key, vm: BoundVm, info: VmInfo | None) -> Applied:
        """What was applied to a VM this agent has no memory of: nothing, for a VM not
        made yet or without history; else what its status in etcd says (one get)."""
        spec = vm.binding.spec
        applied = Applied(spec.uid)
        if info is None:
            return applied
        applied.started = info.power is PowerState.ON
        history = spec.power_time_ns or spec.restarts or spec.bootstrap is not None
        off_but_wanted = info.power is not PowerState.ON and spec.power == Power.ON
        resizing = bool(info.vcpus) and (info.vcpus, info.memory_mib) != (spec.resources.vcpus,
                                                                           spec.resources.memory_mib)
        if self._store is None or not (history or off_but_wanted or resizing):
            return applied
        status = await self._store.read_status(spec.ref)
        if status is None:
            return applied
        applied.power_time_ns, applied.restarts, applied.bootstrap = (status.power_time_ns, status.restarts,
                                                                      status.bootstrap)
        applied.observed_revision = status.observed_revision
        applied.started = applied.started or status.state in (VmState.RUNNING, VmState.STOPPED)
        applied.conditions = {c.type: c for c in status.conditions}  # (keeps their times)
        cycle = applied.conditions.get(POWER_CYCLE)
        if cycle is not None and cycle.status == "True" and cycle.reason in (RESTART, RESIZE):
            # A power cycle the last agent began: finished, not begun again.
            applied.cycle, applied.cycle_off = cycle.reason, status.state == VmState.STOPPED
            if cycle.reason == RESIZE:  # its guest's grace counts from when it was put on record
                applied.resize_deadline_ns = cycle.time_ns + DEFAULT_STOP_GRACE_S * 1_000_000_000
            log.info("finishing a power cycle begun before a restart",
                     extra={"cycle": cycle.reason, "off": applied.cycle_off, "restarts": applied.restarts})
        if spec.bootstrap is not None and applied.bootstrap != BootstrapState.CLEARED:
            # Made, and the status saying so not written before a crash: the data was
            # delivered (and maybe blanked on the VM already, the key's deletion lost
            # with the status). DELIVERED lets the clearing run (again): blanking and
            # deleting are idempotent.
            applied.bootstrap = BootstrapState.DELIVERED
        return applied

    async def _get(self, driver: HostDriver, uid: str) -> VmInfo:
        info = await _timed("get", driver.get_vm(uid))
        if info is None:
            # Gone from its host in the middle of a reconcile: retried (and made again).
            raise OperationFailed(f"VM {uid} vanished from its host", transient=True)
        return info

    async def _converge(self, key: Key, vm: BoundVm, driver: HostDriver) -> None:
        spec = vm.binding.spec
        info = await _timed("get", driver.get_vm(spec.uid))
        applied = self.applied.get(key)
        if applied is None or applied.uid != spec.uid:
            applied = self.applied[key] = await self._recall(key, vm, info)
        if info is None:
            info = await self._create(key, vm, driver, applied)
        info = await self._sync_disks(vm, driver, info)
        # A restart asked for and not applied: a power cycle, on record before the VM
        # goes off (with the restarts it applies: never begun twice).
        if spec.restarts > applied.restarts:
            before = (applied.restarts, applied.power_time_ns)
            applied.restarts, applied.power_time_ns = spec.restarts, spec.power_time_ns
            try:
                await self._record_cycle(key, vm, applied, info, RESTART, off=info.power is not PowerState.ON)
            except BaseException:
                # Not on record (or not known to be): not begun, so not applied; the retry begins it.
                applied.restarts, applied.power_time_ns = before
                raise
        if applied.cycle == RESTART:
            if not applied.cycle_off:
                token = ("power", spec.power_time_ns, spec.restarts)
                if not await self._off(key, driver, info, applied, token, spec.power_off_mode,
                                       spec.power_time_ns + spec.power_off_grace_s * 1_000_000_000):
                    return self._submit(key, vm, applied, VmState.RUNNING, info=info)
                await self._record_cycle(key, vm, applied, info, RESTART, off=True)
                info = await self._get(driver, spec.uid)
            if spec.power == Power.ON and info.power is not PowerState.ON:
                await self._on(driver, spec, applied)
                info = await self._get(driver, spec.uid)
            applied.cycle, applied.cycle_off = "", False
            log.info("VM restarted", extra={"restarts": applied.restarts})
        # A resize: the binding's size against the VM's.
        want = (spec.resources.vcpus, spec.resources.memory_mib)
        disk = _disk_growth(spec, info)
        if (info.vcpus and (info.vcpus, info.memory_mib) != want) or disk is not None:
            info = await self._resize(key, vm, driver, info, applied, disk)
            if info is None:
                return self._submit(key, vm, applied, VmState.RUNNING, info=await self._get(driver, spec.uid))
        # The desired power.
        stopped = ""
        requested = spec.power_time_ns > applied.power_time_ns
        if spec.power == Power.ON:
            if info.power is not PowerState.ON:
                if (not applied.started or requested or applied.cycle
                        or spec.power_policy == PowerPolicy.KEEP_RUNNING):
                    first = not applied.started
                    await self._on(driver, spec, applied)
                    info = await self._get(driver, spec.uid)
                    if first:
                        metrics.VMS_RUNNING.inc()
                        metrics.ACCEPTED_TO_RUNNING.observe(max(0.0, (now_ns() - spec.create_time_ns) / 1e9))
                else:
                    stopped = STOPPED_OUTSIDE
        elif info.power is PowerState.ON and requested:
            token = ("power", spec.power_time_ns, spec.restarts)
            if not await self._off(key, driver, info, applied, token, spec.power_off_mode,
                                   spec.power_time_ns + spec.power_off_grace_s * 1_000_000_000):
                return self._submit(key, vm, applied, VmState.RUNNING, info=info)
            info = await self._get(driver, spec.uid)
        if info.power is not PowerState.ON and not stopped:
            stopped = STOPPED_BY_REQUEST if spec.power_time_ns else CREATED_STOPPED
        applied.power_time_ns = spec.power_time_ns
        applied.cycle, applied.cycle_off = "", False  # (a resize's: done)
        state = VmState.RUNNING if info.power is PowerState.ON else VmState.STOPPED
        # Power, size and restarts are as this binding asks: its desired state is true.
        applied.observed_revision = max(applied.observed_revision, vm.mod_revision)
        also = await self._maybe_clear_bootstrap(key, vm, driver, info, applied)
        self._submit(key, vm, applied, state, info=info, stopped=stopped, also=also)

    async def _create(self, key: Key, vm: BoundVm, driver: HostDriver, applied: Applied) -> VmInfo:
        spec = vm.binding.spec
        self._report(key, vm, VmState.CREATING)
        payload = None
        if spec.bootstrap is not None and applied.bootstrap != BootstrapState.CLEARED and self._store is not None:
            data = await self._store.read_bootstrap(spec.ref, spec.uid)
            if data is None:  # deleted: the guest bootstrapped already (the VM is made again)
                applied.bootstrap = BootstrapState.CLEARED
            else:
                payload = _payload(data)
        info = await _timed("create", driver.create_vm(VmRequest(
            vm_uid=spec.uid, name=spec.ref.name, image=spec.image, vcpus=spec.resources.vcpus,
            memory_mib=spec.resources.memory_mib, disk_gib=spec.resources.disk_gib, record=spec_record(spec),
            bootstrap=payload, nics=tuple(nic_request(nic) for nic in spec.nics),
            disks=tuple(disk_request(disk) for disk in spec.disks))))
        if payload is not None:
            applied.bootstrap = BootstrapState.DELIVERED
        # A new VM: requests made before it existed are moot.
        applied.power_time_ns, applied.restarts, applied.started = spec.power_time_ns, spec.restarts, False
        return info

    async def _sync_disks(self, vm: BoundVm, driver: HostDriver, info: VmInfo) -> VmInfo:
        """Make the VM's persistent disks the spec's: detach those it has that the spec
        no longer lists (data kept), attach those it lacks; then delete the attachment
        keys marked detaching for this VM whose disks the spec no longer lists (the
        host let go of them: none but the spec's is attached now). Raises DriverError
        (a disk another VM still holds: transient), so the VM counts as reconciling
        (its binding revision not observed) until its disks match."""
        spec = vm.binding.spec
        wanted = {disk.uid for disk in spec.disks}
        changed = False
        for uid in info.disks:
            if uid not in wanted:
                await _timed("detach_disk", driver.detach_disk(spec.uid, uid))
                log.info("disk detached", extra={"disk_uid": uid})
                changed = True
        for disk in spec.disks:
            if disk.uid not in info.disks:
                await _timed("attach_disk", driver.attach_disk(spec.uid, disk_request(disk)))
                log.info("disk attached", extra={"disk": disk.disk_id, "disk_uid": disk.uid})
                changed = True
        if self._disks is not None:
            listed = {disk.disk_id for disk in spec.disks}
            for attachment in self._disks.detaching_of(spec.uid):
                if (attachment.tenant, attachment.project) == (spec.ref.tenant, spec.ref.project) \
                        and attachment.disk_id not in listed:
                    await self._disks.detach_done(attachment)
        return await self._get(driver, spec.uid) if changed else info

    async def _detached_all(self, spec: VmSpec) -> None:
        """The VM is destroyed (its driver detached its data disks first): the
        attachment keys marked detaching for it (a detach not reconciled before its
        deletion or eviction) are done."""
        if self._disks is None:
            return
        for attachment in self._disks.detaching_of(spec.uid):
            if (attachment.tenant, attachment.project) == (spec.ref.tenant, spec.ref.project):
                await self._disks.detach_done(attachment)

    async def _on(self, driver: HostDriver, spec: VmSpec, applied: Applied) -> None:
        await _timed("power_on", driver.power_on(spec.uid))
        applied.started = True
        applied.shutdown_asked = ()

    async def _off(self, key: Key, driver: HostDriver, info: VmInfo, applied: Applied, token: tuple,
                   mode: PowerOffMode, deadline_ns: int) -> bool:
        """Get the VM off: at once (HARD, past the deadline, or no guest to ask), or by
        asking its guest to shut down. True once off; False while the guest has until
        ``deadline_ns`` (the key comes back by the driver's watch or at the deadline)."""
        if info.power is not PowerState.ON:
            return True
        now = now_ns()
        if mode == PowerOffMode.HARD or now >= deadline_ns:
            await _timed("power_off", driver.power_off(info.vm_uid))
            return True
        if applied.shutdown_asked != token:
            try:
                await _timed("shutdown_guest", driver.shutdown_guest(info.vm_uid))
            except GuestUnavailable:
                log.info("guest cannot be asked to shut down; powering off hard")
                await _timed("power_off", driver.power_off(info.vm_uid))
                return True
            applied.shutdown_asked = token
            if (await self._get(driver, info.vm_uid)).power is not PowerState.ON:
                return True
        if self._requeue_after is not None:
            self._requeue_after(key, (deadline_ns - now) / 1e9)
        return False

    async def _resize(self, key: Key, vm: BoundVm, driver: HostDriver, info: VmInfo,
                      applied: Applied, disk_gib: int | None = None) -> VmInfo | None:
        """Make the VM the binding's size (its root disk grown to ``disk_gib``, if given:
        hot, never a reason to power-cycle); None while a power cycle it needs waits for
        the guest. The cycle is on record before the VM goes off; the caller powers it on."""
        spec = vm.binding.spec
        vcpus, memory_mib = spec.resources.vcpus, spec.resources.memory_mib
        try:
            await _timed("reconfigure", driver.reconfigure(spec.uid, vcpus=vcpus, memory_mib=memory_mib,
                                                           disk_gib=disk_gib))
        except PowerCycleRequired:
            if applied.cycle != RESIZE:
                applied.resize_deadline_ns = now_ns() + DEFAULT_STOP_GRACE_S * 1_000_000_000
                await self._record_cycle(key, vm, applied, info, RESIZE, off=False)
            token = ("resize", applied.resize_deadline_ns)
            if not await self._off(key, driver, info, applied, token, PowerOffMode.SOFT, applied.resize_deadline_ns):
                return None
            await _timed("reconfigure", driver.reconfigure(spec.uid, vcpus=vcpus, memory_mib=memory_mib,
                                                           disk_gib=disk_gib))
        applied.resize_deadline_ns = 0
        log.info("VM resized", extra={"vcpus": vcpus, "memory_mib": memory_mib, "disk_gib": disk_gib})
        return await self._get(driver, spec.uid)

    async def _maybe_clear_bootstrap(self, key: Key, vm: BoundVm, driver: HostDriver, info: VmInfo,
                                     applied: Applied) -> tuple[RequestOp, ...]:
        """Clear the VM's bootstrap data once its guest is done with it: blank it on the
        VM, then (returned, for the status txn) delete its key and file an audit record."""
        if applied.bootstrap != BootstrapState.DELIVERED or self._store is None:
            return ()
        running_with_address = info.power is PowerState.ON and bool(info.addresses)
        if running_with_address and not applied.address_since:
            applied.address_since = time.monotonic()
        elif not running_with_address:
            applied.address_since = 0.0
        if info.bootstrapped:
            why = "the guest reported that it bootstrapped"
        elif not info.bootstrap_present:
            why = "already blanked on the VM"  # by an agent that crashed before its etcd write
        elif applied.address_since:
            waited = time.monotonic() - applied.address_since
            if waited < self._clear_after_s:
                if self._requeue_after is not None:
                    self._requeue_after(key, self._clear_after_s - waited)
                return ()
            why = f"the guest ran with an address for {self._clear_after_s:g}s without reporting"
        else:
            return ()
        await _timed("clear_bootstrap", driver.clear_bootstrap(info.vm_uid))
        applied.bootstrap = BootstrapState.CLEARED
        ref = vm.binding.spec.ref
        also = [self._store.bootstrap_deleted(ref)]
        if self._audit is not None:
            also.append(await self._audit.put(trec.AuditRecord(
                time_ns=now_ns(), subject=f"agent/{self._agent}", method=CLEAR_BOOTSTRAP_METHOD, resource=ref.name,
                tenant=ref.tenant, code="OK",
                message=f"bootstrap data deleted from the store and blanked on the VM: {why}")))
        log.info("bootstrap data cleared", extra={"why": why})
        return tuple(also)
