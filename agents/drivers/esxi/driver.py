"""``EsxiHost``: the HostDriver for one ESXi host, over a shared :class:`Session`.

VMs are found by the Quanta id in their extraConfig (``quanta.vm_uid``), as the
session's watcher last saw them, so a restarted agent adopts what it made and
``list_vms`` shows every Quanta VM on the host (for orphan cleanup). Every vSphere
fault is mapped by :mod:`faults`; operations that fail with a transient fault are
retried here ``retries`` times with jittered exponential backoff before the error
reaches the agent. All operations are idempotent, which is what makes retrying safe.

Persistent disks are independent-persistent VMDKs, ``[ds] quanta-disks/{uid}.vmdk`` on
the datastore of their class (``EsxiConfig.datastore_classes``), attached and detached
with ReconfigVM (never with a file operation that destroys) and deleted through the
VirtualDiskManager: First Class Disks would need ``VirtualMachine.AttachDisk_Task``,
which vcsim lacks (docs/esxi.md). A VM is destroyed only after its persistent disks are
detached, so that their data outlives it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from pyVmomi import vim, vmodl

from agents.drivers.esxi import clone, guestinfo
from agents.drivers.esxi.config import EsxiConfig
from agents.drivers.esxi.faults import to_driver_error
from agents.drivers.esxi.images import ImageCache
from agents.drivers.esxi.session import (
    DISK_DIR,
    Datastore,
    HostInfo,
    Observed,
    Session,
    disk_bytes,
    disk_path,
    host_id_for,
    persistent_disks,
    root_disk,
)
from agents.drivers.protocol import (
    DiskRequest,
    DriverError,
    GuestUnavailable,
    HostCapacity,
    ImageNotFound,
    OperationFailed,
    PowerCycleRequired,
    PowerState,
    VmInfo,
    VmNotFound,
    VmRequest,
)
from controlplane.models import datastore_label

log = logging.getLogger(__name__)

T = TypeVar("T")
_STATE_WAIT_S = 3.0
_POWER = {"poweredOn": PowerState.ON}
# Faults after which a linked clone is worth retrying as a full clone (not capacity, not a missing image).
_SCSI_UNITS = tuple(u for u in range(16) if u != 7)  # 7 is the controller's own
_FALLBACK_REASONS = frozenset({"NotSupported", "SnapshotFault", "InvalidArgument", "InvalidRequest", "InvalidVmConfig",
                               "FileFault", "InvalidDatastore", "VimFault", "MethodFault"})


class EsxiHost:
    """One ESXi host; implements :class:`~agents.drivers.protocol.HostDriver`.

    Safe for many concurrent coroutines; calls naming the same uid are serialised
    by a per-uid lock, so a create and its retry cannot both clone.
    """

    def __init__(self, session: Session, host: HostInfo, images: ImageCache):
        self._session = session
        self._config = session.config
        self.host = host
        self.host_id = host_id_for(self._config.host_id_prefix, host.name)
        self._images = images
        self._locks: dict[str, asyncio.Lock] = {}
        self._notify: Callable[[str], None] | None = None
        self.datastore = self._pick_datastore()
        # What a NIC's backing shows as (Observed.nic_backings) -> the port group's name.
        self._network_names = {pg.backing_id: pg.name for pg in host.port_groups}

    def _pick_datastore(self) -> Datastore:
        stores = self.host.datastores
        if self._config.datastore:
            for ds in stores:
                if ds.name == self._config.datastore:
                    return ds
            raise OperationFailed(f"host {self.host.name}: no datastore {self._config.datastore!r}; "
                                  f"has {[ds.name for ds in stores]}")
        if not stores:
            raise OperationFailed(f"host {self.host.name} has no accessible datastore")
        return max(stores, key=lambda ds: ds.free)

    # --- helpers ----------------------------------------------------------------------

    async def _retrying(self, what: str, attempt: Callable[[], Awaitable[T]]) -> T:
        delay = self._config.retry_base_s
        for left in range(self._config.retries, -1, -1):
            try:
                return await attempt()
            except Exception as raw:
                err = to_driver_error(raw, f"{what} on {self.host_id}", op=what)
                if not err.transient or left == 0:
                    raise err from raw
                log.info("transient vSphere fault; retrying", extra={"host": self.host_id, "op": what,
                                                                      "reason": err.reason})
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay *= 2
        raise AssertionError("unreachable")

    def _lock(self, vm_uid: str) -> asyncio.Lock:
        lock = self._locks.get(vm_uid)
        if lock is None:
            lock = self._locks[vm_uid] = asyncio.Lock()
        return lock

    def _mine(self, vm: Observed) -> bool:
        return vm.host == self.host.moid

    def _observed(self, vm_uid: str) -> list[Observed]:
        s = self._session
        return [s.vms[m] for m in s.by_uid.get(vm_uid, ()) if self._mine(s.vms[m])]

    def _info(self, vm_uid: str) -> VmInfo | None:
        vms = self._observed(vm_uid)
        if not vms:
            return None
        on = [vm for vm in vms if vm.power == "poweredOn"]
        vm = on[0] if on else vms[0]
        # An off VM has no guest to report addresses, whatever the host still shows.
        return VmInfo(vm_uid, PowerState.ON if on else PowerState.OFF, vm.vm_name, vm.record, vcpus=vm.vcpus,
                      memory_mib=vm.memory_mib, disk_gib=vm.disk_bytes // 2**30,
                      addresses=vm.addresses if on else (), bootstrapped=vm.bootstrapped,
                      bootstrap_present=any(v.bootstrap_present for v in vms),
                      networks=tuple(self._network_names.get(b, b) for b in vm.nic_backings),
                      disks=vm.disk_uids)

    def _seen(self, vm_uid: str) -> VmInfo:
        """The VM of ``vm_uid`` once the watcher has shown it; raises OperationFailed
        (transient) if it is gone from the cache again."""
        info = self._info(vm_uid)
        if info is None:
            raise OperationFailed(f"VM {vm_uid} on {self.host_id} was seen, then lost", transient=True)
        return info

    async def _synced(self) -> None:
        await self._session.synced.wait()

    # --- HostDriver -------------------------------------------------------------------

    async def capacity(self) -> HostCapacity:
        """Raw: hardware threads, physical memory and the VM datastore's size (the agent's
        overcommit setting applies on top, in placement)."""
        h = self.host
        labels = {"hypervisor": "esxi", "esxi.version": h.version, "esxi.datastore": self.datastore.name,
                  "esxi.api": self._session.api_type}
        mounted = {ds.name for ds in h.datastores}
        labels.update({datastore_label(cls): "true" for cls, ds in self._config.datastore_classes if ds in mounted})
        return HostCapacity(
            vcpus=h.threads,
            memory_mib=h.memory_bytes // 2**20,
            disk_gib=self.datastore.capacity // 2**30,
            labels=labels,
            networks=frozenset(h.networks))

    def inventory(self) -> dict[str, list[str]]:
        """The host's datastores and networks as discovered at start (names)."""
        return {"datastores": [ds.name for ds in self.host.datastores], "networks": list(self.host.networks)}

    async def list_vms(self) -> list[VmInfo]:
        await self._synced()
        return [info for uid in list(self._session.by_uid) if (info := self._info(uid)) is not None]

    async def get_vm(self, vm_uid: str) -> VmInfo | None:
        await self._synced()
        async with self._lock(vm_uid):
            return self._info(vm_uid)

    async def create_vm(self, request: VmRequest) -> VmInfo:
        await self._synced()
        async with self._lock(request.vm_uid):
            for disk in request.disks:
                await self._refuse_held(request.vm_uid, disk.uid)
            info = self._info(request.vm_uid)
            if info is None:
                attempts = 0

                async def attempt() -> VmInfo:
                    nonlocal attempts
                    attempts += 1
                    return await self._create(request, retry=attempts > 1)
                info = await self._retrying("create", attempt)
            # A VM found again (a retried create) gets the disks an earlier attempt did not attach.
            for disk in request.disks:
                if disk.uid not in info.disks:
                    await self._retrying("attach_disk", functools.partial(self._attach, request.vm_uid, disk))
            return self._seen(request.vm_uid) if request.disks else info

    async def _create(self, request: VmRequest, *, retry: bool = False) -> VmInfo:
        info = self._info(request.vm_uid)
        if info is not None:  # an earlier attempt applied after all
            return info
        if retry and await self._session.call(self._session.find_vm, self.host.vm_folder, clone.vm_name(request)):
            # The failed attempt made the VM (its answer was lost, or the watcher lags):
            # never clone twice; adopt it once the watcher shows it.
            if await self._session.wait_for(lambda: self._info(request.vm_uid) is not None, _STATE_WAIT_S):
                return self._seen(request.vm_uid)
            raise OperationFailed(f"VM {request.vm_uid} exists on {self.host_id} but is not seen yet",
                                  transient=True)
        image = await self._images.get(request.image, self.host, self.datastore)
        try:
            mo = await self._make(request, image)
        except vim.fault.DuplicateName:
            # A VM of this uid exists that the watcher has not shown yet (made by an
            # attempt whose answer was lost): adopt it.
            if await self._session.wait_for(lambda: self._info(request.vm_uid) is not None, _STATE_WAIT_S):
                return self._seen(request.vm_uid)
            raise
        try:
            await self._fit_hardware(mo, request)
            for disk in request.disks:
                await self._attach_to(mo, request.vm_uid, disk)
        except Exception:
            await self._destroy_mo(mo)
            raise
        if not await self._session.wait_for(lambda: self._shows_made(request), _STATE_WAIT_S):
            # The watcher missed it (seen with vcsim under load): read it once, directly.
            await self._session.refresh(mo)
            if not self._shows_made(request):
                raise OperationFailed(f"VM {request.vm_uid} made on {self.host_id} but not seen", transient=True)
            log.warning("watcher missed a new VM; read it directly", extra={"host": self.host_id})
        return self._seen(request.vm_uid)

    def _shows_made(self, request: VmRequest) -> bool:
        """Whether the watcher shows the VM, with the NICs asked for: a clone is seen
        before its clone spec's device changes are (vcsim; a vCenter too), with its
        image's NIC."""
        info = self._info(request.vm_uid)
        return info is not None and (not request.nics or info.networks == tuple(n.backing for n in request.nics))

    async def _make(self, request: VmRequest, image: clone.ImageRef):
        """Make the VM by the first way that works; its VirtualMachine object. Raises the vSphere fault."""
        s, mode, ds = self._session, self._config.clone_mode, self.datastore
        if mode == "instant" and request.nics:
            raise OperationFailed("an instant clone keeps its parent's NICs: a VM with NICs of its own needs "
                                  "clone mode auto, linked or full", reason="NotSupported")
        if mode == "instant" or (mode == "auto" and s.is_vcenter and image.powered_on and not request.nics):
            try:
                return await s.run_task(image.mo.InstantClone_Task, clone.instant_clone_spec(request, self.host, ds))
            except (vim.fault.VimFault, vmodl.MethodFault) as fault:
                if mode == "instant" or not _falls_back(fault):
                    raise
                log.info("instant clone failed; trying a linked clone",
                         extra={"host": self.host_id, "reason": type(fault).__name__})
        if mode in ("auto", "linked") and image.snapshot is not None:
            try:
                if s.is_vcenter:
                    spec = clone.clone_spec(request, image, self.host, ds, linked=True)
                    return await s.run_task(image.mo.CloneVM_Task, self.host.vm_folder, clone.vm_name(request), spec)
                config = clone.linked_create_spec(request, image, ds, self.host)
                return await s.run_task(self.host.vm_folder.CreateVM_Task, config, self.host.pool, self.host.mo)
            except (vim.fault.VimFault, vmodl.MethodFault) as fault:
                if mode == "linked" or not _falls_back(fault):
                    raise
                log.info("linked clone failed; trying a full clone",
                         extra={"host": self.host_id, "reason": type(fault).__name__})
        elif mode == "linked":
            raise ImageNotFound(f"image {image.name!r} has no snapshot to link clones to")
        spec = clone.clone_spec(request, image, self.host, ds, linked=False)
        return await s.run_task(image.mo.CloneVM_Task, self.host.vm_folder, clone.vm_name(request), spec)

    async def _fit_hardware(self, mo, request: VmRequest) -> None:
        # Clones may keep the image's CPU and memory (vcsim always does): set them if so.
        cpus, memory = await self._session.call(_hardware, mo)
        if (cpus, memory) != (request.vcpus, request.memory_mib):
            spec = vim.vm.ConfigSpec(numCPUs=request.vcpus, memoryMB=request.memory_mib)
            await self._session.run_task(mo.ReconfigVM_Task, spec)

    async def reconfigure(self, vm_uid: str, *, vcpus: int, memory_mib: int, disk_gib: int | None = None) -> None:
        """Set the VM's vCPUs and memory, and grow its root disk (the VirtualDisk of the
        lowest key) to ``disk_gib`` GiB, in one ReconfigVM (the disk by a device edit of
        its capacityInKB and capacityInBytes). Idempotent. Raises VmNotFound;
        OperationFailed InvalidArgument (before any call) for a ``disk_gib`` below the
        disk's size, or a VM without a disk; OperationFailed NotSupported for a disk
        with a parent (a linked clone's delta disk: vSphere never extends those); and
        PowerCycleRequired (before any call) when the VM is on and the change is not
        one vSphere makes hot: any decrease, or an increase without CPU / memory
        hot-add enabled on the VM; a host that refuses anyway (InvalidPowerState,
        *HotPlugNotSupported) raises it too. A disk grows hot (vSphere extends a running
        VM's SCSI, SATA or NVMe disk; an IDE disk or one with snapshots it refuses, a
        permanent OperationFailed). Returns once the watcher shows the values."""
        await self._synced()
        want_bytes = disk_gib * 2**30 if disk_gib is not None else 0
        async with self._lock(vm_uid):
            for vm in self._require(vm_uid):
                if want_bytes and want_bytes < vm.disk_bytes:
                    raise OperationFailed(f"VM {vm_uid} on {self.host_id}: a disk only grows "
                                          f"({vm.disk_bytes / 2**30:g} GiB -> {disk_gib} GiB)",
                                          reason="InvalidArgument")
                if vm.power == "poweredOn" and (why := cold_only(vm, vcpus, memory_mib)):
                    raise PowerCycleRequired(f"VM {vm_uid} on {self.host_id}: {why} while it runs")

            async def attempt() -> None:
                for vm in self._require(vm_uid):
                    grow = want_bytes > vm.disk_bytes
                    if (vm.vcpus, vm.memory_mib) == (vcpus, memory_mib) and not grow:
                        continue
                    mo = self._session.vm_mo(vm.moid)
                    spec = vim.vm.ConfigSpec(numCPUs=vcpus, memoryMB=memory_mib)
                    if grow:
                        spec.deviceChange = [await self._disk_growth(mo, vm_uid, want_bytes)]
                    await self._session.run_task(mo.ReconfigVM_Task, spec)

                    def fitted(v: Observed = vm) -> bool:
                        return (v.vcpus, v.memory_mib) == (vcpus, memory_mib) and v.disk_bytes >= want_bytes
                    await self._settle(vm, fitted)
            await self._retrying("reconfigure", attempt)

    async def _disk_growth(self, mo, vm_uid: str, want_bytes: int):
        """The device edit that grows the VM's root disk to ``want_bytes``, from its
        devices as the host reports them now (the watcher keeps only the disk's size)."""
        props = await self._session.call(self._session.retrieve, mo, ["config.hardware.device"])
        disk = root_disk(props.get("config.hardware.device") or ())
        if disk is None:
            raise OperationFailed(f"VM {vm_uid} on {self.host_id} has no disk to grow", reason="InvalidArgument")
        if getattr(disk.backing, "parent", None) is not None:
            raise OperationFailed(f"VM {vm_uid} on {self.host_id}: its disk has a parent (a linked clone); "
                                  "vSphere cannot grow it", reason="NotSupported")
        if want_bytes < disk_bytes(disk):
            raise OperationFailed(f"VM {vm_uid} on {self.host_id}: a disk only grows", reason="InvalidArgument")
        disk.capacityInKB, disk.capacityInBytes = want_bytes // 1024, want_bytes
        return vim.vm.device.VirtualDeviceSpec(operation="edit", device=disk)

    async def _settle(self, vm: Observed, done: Callable[[], bool]) -> None:
        """Wait until the watcher shows what a call of ours did; read the VM directly if
        it does not within a few seconds (vcsim, a lagging watcher)."""
        if not await self._session.wait_for(lambda: done() or vm.moid not in self._session.vms, _STATE_WAIT_S):
            await self._session.refresh(self._session.vm_mo(vm.moid))

    async def hardware(self, vm_uid: str) -> tuple[int, int]:
        """(vCPUs, memory MiB) as the host reports them now. Raises VmNotFound."""
        await self._synced()
        vm = self._require(vm_uid)[0]
        try:
            return await self._session.call(_hardware, self._session.vm_mo(vm.moid))
        except Exception as err:
            raise to_driver_error(err, f"read {vm_uid}") from err

    def _require(self, vm_uid: str) -> list[Observed]:
        vms = self._observed(vm_uid)
        if not vms:
            raise VmNotFound(f"host {self.host_id}: no VM {vm_uid}")
        return vms

    async def power_on(self, vm_uid: str) -> None:
        await self._set_power(vm_uid, "poweredOn")

    async def power_off(self, vm_uid: str) -> None:
        await self._set_power(vm_uid, "poweredOff")

    async def _set_power(self, vm_uid: str, want: str) -> None:
        await self._synced()
        async with self._lock(vm_uid):
            async def attempt() -> None:
                for vm in self._require(vm_uid):
                    if vm.power == want:
                        continue
                    mo = self._session.vm_mo(vm.moid)
                    start = mo.PowerOnVM_Task if want == "poweredOn" else mo.PowerOffVM_Task
                    try:
                        await (self._session.run_task(start, None) if want == "poweredOn"
                               else self._session.run_task(start))
                    except vim.fault.InvalidPowerState:
                        pass  # already there (our cache was behind); confirmed below
                    def settled(v: Observed = vm) -> bool:
                        return v.power == want or v.moid not in self._session.vms

                    if not await self._session.wait_for(settled, _STATE_WAIT_S):
                        raise OperationFailed(f"VM {vm_uid} not {want} after its task", transient=True)
            await self._retrying("power_on" if want == "poweredOn" else "power_off", attempt)

    async def shutdown_guest(self, vm_uid: str) -> None:
        """``ShutdownGuest`` (not a task: returns once the guest was asked; the VM
        powers off when the guest is done, which ``watch`` reports). An off VM stays
        off (no call). Raises VmNotFound; GuestUnavailable when the guest's tools are
        not running (as the watcher last saw them, or as vSphere answers:
        ToolsUnavailable, InvalidPowerState of a suspended VM...)."""
        await self._synced()
        async with self._lock(vm_uid):
            async def attempt() -> None:
                for vm in self._require(vm_uid):
                    if vm.power == "poweredOff":
                        continue
                    if vm.tools and vm.tools != "guestToolsRunning":
                        raise GuestUnavailable(f"VM {vm_uid} on {self.host_id}: guest tools {vm.tools}")
                    try:
                        await self._session.call(self._session.vm_mo(vm.moid).ShutdownGuest)
                    except vim.fault.InvalidPowerState:
                        # Off already (our cache was behind)? Then done; else the guest cannot be asked.
                        await self._session.refresh(self._session.vm_mo(vm.moid))
                        if vm.power != "poweredOff":
                            raise
            await self._retrying("shutdown_guest", attempt)

    async def clear_bootstrap(self, vm_uid: str) -> None:
        """Blank every bootstrap key (guestinfo.py: data and encoding keys of both
        formats) with one ``ReconfigVM_Task`` per VM still carrying any; vSphere removes
        a key set to "". Metadata with a network config is set again to what the guest
        needs on its next boot (instance id, host name, network config:
        ``guestinfo.kept_metadata``), read from the VM just before. Idempotent (a VM
        without user data or an Ignition config gets no call). Returns once the watcher
        shows them gone. Raises VmNotFound."""
        await self._synced()
        async with self._lock(vm_uid):
            async def attempt() -> None:
                for vm in self._require(vm_uid):
                    if not vm.bootstrap_present:
                        continue
                    mo = self._session.vm_mo(vm.moid)
                    props = await self._session.call(self._session.retrieve, mo, ["config.extraConfig"])
                    kept = guestinfo.kept_metadata({o.key: o.value for o in props.get("config.extraConfig") or ()})
                    del props
                    spec = vim.vm.ConfigSpec(extraConfig=guestinfo.clear_options(kept))
                    await self._session.run_task(mo.ReconfigVM_Task, spec)
                    def cleared(v: Observed = vm) -> bool:
                        return not v.bootstrap_present
                    await self._settle(vm, cleared)
            await self._retrying("clear_bootstrap", attempt)

    def watch(self, notify: Callable[[str], None]) -> None:
        """Call ``notify(uid)`` on the event loop when the watcher sees a VM of this
        host change power, addresses, bootstrap report or presence (also when a call
        of this driver made the change). Replaces an earlier ``notify``."""
        if self._notify is None:
            self._session.listeners.append(self._changed)
        self._notify = notify

    def _changed(self, vm: Observed) -> None:
        if self._notify is not None and self._mine(vm):
            try:
                self._notify(vm.uid)
            except Exception:  # noqa: BLE001 - a listener's bug must not stop the watcher
                log.exception("watch notify failed", extra={"host": self.host_id})

    # --- persistent disks -------------------------------------------------------------

    def _disk_datastore(self, datastore_class: str) -> Datastore:
        """The datastore of a class on this host; OperationFailed DatastoreUnreachable if none."""
        name = self._config.datastore_for(datastore_class)
        for ds in self.host.datastores:
            if name and ds.name == name:
                return ds
        why = f"datastore {name!r} is not mounted" if name else "the class has no datastore (--esxi-datastore-class)"
        raise OperationFailed(f"host {self.host_id}: no datastore of class {datastore_class!r}: {why}",
                              reason="DatastoreUnreachable")

    async def attach_disk(self, vm_uid: str, disk: DiskRequest) -> None:
        """Attach ``[ds] quanta-disks/{uid}.vmdk`` (made, thin, when the file does not
        exist yet) as an independent-persistent disk on a free unit of the VM's first
        SCSI controller, hot or cold, with one ReconfigVM. Idempotent (attached
        already: no call). Raises VmNotFound; OperationFailed DatastoreUnreachable
        (before any call); OperationFailed DiskInUse (transient, before any call) while
        another VM this session sees has it attached, or when the host finds its file
        locked (a VM of a host this session does not see runs with it); OperationFailed
        NoDiskSlot when the VM has no SCSI controller with a free unit; CapacityExceeded
        (NoDiskSpace). Returns once the watcher shows the disk."""
        await self._synced()
        async with self._lock(vm_uid):
            self._disk_datastore(disk.datastore_class)
            self._require(vm_uid)
            await self._refuse_held(vm_uid, disk.uid)
            await self._retrying("attach_disk", functools.partial(self._attach, vm_uid, disk))

    async def _refuse_held(self, vm_uid: str, disk_uid: str) -> None:
        """OperationFailed DiskInUse (transient: the holder may be letting go) while a VM
        other than ``vm_uid`` (on any host this session sees) has the disk attached:
        vSphere itself refuses a second attach only where the file is locked, by a
        running VM, so a powered-off VM could otherwise take a disk another VM has. A
        holder the cache shows is read again first (another agent's session may just
        have detached the disk or destroyed the VM, and the watcher lag behind)."""
        s = self._session
        holders = []
        for moid in [m for m, vm in s.vms.items() if disk_uid in vm.disk_uids and vm.uid != vm_uid]:
            try:
                await s.refresh(s.vm_mo(moid))
            except vmodl.fault.ManagedObjectNotFound:
                continue  # destroyed since
            except Exception as raw:
                raise to_driver_error(raw, f"read the holder of disk {disk_uid} on {self.host_id}") from raw
            vm = s.vms.get(moid)
            if vm is not None and disk_uid in vm.disk_uids and vm.uid != vm_uid:
                holders.append(vm.uid or vm.name)
        if holders:
            raise OperationFailed(f"disk {disk_uid} is attached to {', '.join(sorted(holders))}",
                                  reason="DiskInUse", transient=True)

    async def _attach(self, vm_uid: str, disk: DiskRequest) -> None:
        for vm in self._require(vm_uid):
            if disk.uid in vm.disk_uids:
                continue
            await self._attach_to(self._session.vm_mo(vm.moid), vm_uid, disk)

            def attached(v: Observed = vm) -> bool:
                return disk.uid in v.disk_uids
            await self._settle(vm, attached)

    async def _attach_to(self, mo, vm_uid: str, disk: DiskRequest) -> None:
        """One ReconfigVM that adds the disk to the VM ``mo`` (raises the vSphere fault)."""
        ds = self._disk_datastore(disk.datastore_class)
        path = disk_path(ds.name, disk.uid)
        s = self._session
        props = await s.call(s.retrieve, mo, ["config.hardware.device"])
        devices = props.get("config.hardware.device") or ()
        if any(uid == disk.uid for _, uid in persistent_disks(devices)):
            return
        controller, unit = _free_scsi_unit(devices)
        if controller is None:
            raise OperationFailed(f"VM {vm_uid} on {self.host_id} has no SCSI controller with a free unit",
                                  reason="NoDiskSlot")
        exists = await s.call(self._disk_exists, path)
        if not exists:
            await s.call(self._make_disk_dir, ds.name)
        device = vim.vm.device.VirtualDisk(
            key=-1, controllerKey=controller.key, unitNumber=unit, capacityInKB=disk.size_gib * 2**20,
            backing=vim.vm.device.VirtualDisk.FlatVer2BackingInfo(
                fileName=path, diskMode="independent_persistent", thinProvisioned=True))
        change = vim.vm.device.VirtualDeviceSpec(operation="add", device=device)
        if not exists:
            change.fileOperation = vim.vm.device.VirtualDeviceSpec.FileOperation.create
        else:
            device.capacityInKB = 0  # an existing disk keeps its size
        log.info("attaching persistent disk", extra={"host": self.host_id, "vm": vm_uid, "disk": disk.uid,
                                                     "created": not exists})
        await s.run_task(mo.ReconfigVM_Task, vim.vm.ConfigSpec(deviceChange=[change]))

    def _disk_exists(self, path: str) -> bool:
        """Blocking: whether the VMDK at ``path`` exists (its uuid can be read)."""
        manager = self._session.disk_manager
        try:
            manager.QueryVirtualDiskUuid(path, self.host.datacenter)
            return True
        except vim.fault.FileNotFound:
            return False

    def _make_disk_dir(self, datastore: str) -> None:
        try:
            self._session.file_manager.MakeDirectory(f"[{datastore}] {DISK_DIR}", self.host.datacenter, True)
        except vim.fault.FileAlreadyExists:
            pass

    async def detach_disk(self, vm_uid: str, disk_uid: str) -> None:
        """Detach the disk with one ReconfigVM (device remove, no file operation: the
        VMDK stays). Idempotent: a disk not attached, or a VM that is absent, is fine.
        Returns once the watcher shows it gone."""
        await self._synced()
        async with self._lock(vm_uid):
            async def attempt() -> None:
                for vm in self._observed(vm_uid):
                    if disk_uid not in vm.disk_uids:
                        continue
                    await self._detach_from(self._session.vm_mo(vm.moid), {disk_uid})

                    def detached(v: Observed = vm) -> bool:
                        return disk_uid not in v.disk_uids
                    await self._settle(vm, detached)
            await self._retrying("detach_disk", attempt)

    async def _detach_from(self, mo, uids: set[str] | None = None) -> list[str]:
        """One ReconfigVM removing the persistent disks of ``uids`` (None: all) from the
        VM ``mo``, keeping their files; the uids removed."""
        props = await self._session.call(self._session.retrieve, mo, ["config.hardware.device"])
        found = [(d, uid) for d, uid in persistent_disks(props.get("config.hardware.device") or ())
                 if uids is None or uid in uids]
        if found:
            changes = [vim.vm.device.VirtualDeviceSpec(operation="remove", device=d) for d, _ in found]
            await self._session.run_task(mo.ReconfigVM_Task, vim.vm.ConfigSpec(deviceChange=changes))
        return [uid for _, uid in found]

    async def delete_disk(self, disk_uid: str, datastore_class: str) -> None:
        """Delete ``[ds] quanta-disks/{uid}.vmdk`` through the VirtualDiskManager.
        Idempotent (no file: done). Raises OperationFailed DiskInUse (before any call)
        while a VM this session sees has it attached, or when the host refuses a
        locked file; OperationFailed DatastoreUnreachable when the host does not
        mount the class's datastore."""
        await self._synced()
        ds = self._disk_datastore(datastore_class)
        holders = sorted(vm.uid or vm.name for vm in self._session.vms.values() if disk_uid in vm.disk_uids)
        if holders:
            raise OperationFailed(f"disk {disk_uid} is attached to {', '.join(holders)}", reason="DiskInUse")
        path = disk_path(ds.name, disk_uid)

        async def attempt() -> None:
            manager = self._session.disk_manager
            try:
                await self._session.run_task(manager.DeleteVirtualDisk_Task, path, self.host.datacenter)
            except vim.fault.FileNotFound:
                pass  # gone already: what we wanted
        await self._retrying("delete_disk", attempt)

    async def destroy_vm(self, vm_uid: str) -> None:
        """Power off, detach the persistent disks (kept), destroy. Idempotent."""
        await self._synced()
        async with self._lock(vm_uid):
            async def attempt() -> None:
                for vm in self._observed(vm_uid):
                    await self._destroy_mo(self._session.vm_mo(vm.moid))
                if not await self._session.wait_for(lambda: not self._observed(vm_uid), _STATE_WAIT_S):
                    raise OperationFailed(f"VM {vm_uid} still listed after Destroy_Task", transient=True)
            await self._retrying("destroy", attempt)

    async def _destroy_mo(self, mo) -> None:
        try:
            try:
                await self._session.run_task(mo.PowerOffVM_Task)
            except vim.fault.InvalidPowerState:
                pass  # off already
            # Destroy_Task deletes every disk the VM has, independent ones too.
            await self._detach_from(mo)
            await self._session.run_task(mo.Destroy_Task)
        except vmodl.fault.ManagedObjectNotFound:
            pass  # gone already: what we wanted


def cold_only(vm: Observed, vcpus: int, memory_mib: int) -> str:
    """Why changing ``vm`` to ``vcpus``/``memory_mib`` needs it powered off ("" if it
    can be done while it runs): vSphere adds CPUs and memory hot only where the VM
    has hot-add enabled, and never removes them hot. Unknown hardware (not reported
    yet): "" (the host's answer decides). Pure."""
    if not vm.vcpus or not vm.memory_mib:
        return ""
    if vcpus < vm.vcpus:
        return f"cannot remove vCPUs ({vm.vcpus} -> {vcpus})"
    if vcpus > vm.vcpus and not vm.cpu_hot_add:
        return f"cannot add vCPUs ({vm.vcpus} -> {vcpus}) without CPU hot-add"
    if memory_mib < vm.memory_mib:
        return f"cannot remove memory ({vm.memory_mib} -> {memory_mib} MiB)"
    if memory_mib > vm.memory_mib and not vm.memory_hot_add:
        return f"cannot add memory ({vm.memory_mib} -> {memory_mib} MiB) without memory hot-add"
    return ""


def _free_scsi_unit(devices) -> tuple:
    """(the first SCSI controller with a free unit, that unit), or (None, -1). Pure."""
    for controller in sorted((d for d in devices if isinstance(d, vim.vm.device.VirtualSCSIController)),
                             key=lambda d: d.key):
        used = {d.unitNumber for d in devices if d.controllerKey == controller.key}
        for unit in _SCSI_UNITS:
            if unit not in used:
                return controller, unit
    return None, -1


def _falls_back(fault: BaseException) -> bool:
    return to_driver_error(fault).reason in _FALLBACK_REASONS


def _hardware(mo) -> tuple[int, int]:
    hardware = mo.config.hardware
    return hardware.numCPU, hardware.memoryMB


async def open_esxi(config: EsxiConfig) -> tuple[Session, dict[str, EsxiHost]]:
    """Connect to the endpoint and make a driver per host it manages (``config.hosts``
    if given). Raises DriverError if it cannot connect or a named host is absent."""
    session = await Session.open(config)
    try:
        hosts = await session.discover_hosts()
        if config.hosts:
            missing = set(config.hosts) - {h.name for h in hosts}
            if missing:
                raise OperationFailed(f"{config.url} has no host(s) {sorted(missing)}; "
                                      f"has {sorted(h.name for h in hosts)}")
            hosts = [h for h in hosts if h.name in config.hosts]
        images = ImageCache(session)
        drivers = {}
        for info in hosts:
            driver = EsxiHost(session, info, images)
            drivers[driver.host_id] = driver
        await session.synced.wait()
        return session, drivers
    except BaseException:
        await session.close()
        raise


__all__ = ["DriverError", "EsxiHost", "open_esxi"]
