"""The hypervisor driver contract: what a host agent may ask of a host.

A driver speaks for exactly one host. VMs are named by Quanta's stable ``vm_uid``:
the driver tags each VM it makes with that id and finds VMs by it, so that an agent
that restarts (or retries a call whose answer it never saw) adopts the VM it already
made instead of making a second one. Hypervisor ids (MoRefs, paths) never leave a
driver.

Every method may raise :class:`DriverError`; ``transient`` on the error says whether
retrying the same call later may succeed. Calls for different VMs may run
concurrently; a driver must stay correct when they do (and when calls for the same VM
overlap, though agents avoid that).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

#: The longest VmRequest.record a driver must keep.
MAX_RECORD_CHARS = 16 * 1024


class BootstrapFormat(enum.Enum):
    CLOUD_INIT = "cloud-init"
    IGNITION = "ignition"


@dataclass(frozen=True, slots=True)
class BootstrapPayload:
    """Bootstrap data for a VM's guest: handed to the driver at create only, and
    secret: a driver never logs it, never puts it in ``VmRequest.record``, a journal or
    any name, and removes it from the VM on :meth:`HostDriver.clear_bootstrap`.

    ``user_data``: cloud-init user data, or an Ignition config (``format``);
    ``metadata``: instance metadata as JSON (cloud-init's meta-data)."""

    format: BootstrapFormat
    user_data: bytes = field(repr=False)
    metadata: bytes = field(default=b"", repr=False)


@dataclass(frozen=True, slots=True)
class Address:
    """An address the guest reports on one of its NICs."""

    ip: str
    mac: str = ""
    network: str = ""
    family: int = 4  # 4 or 6


@dataclass(frozen=True, slots=True)
class NicRequest:
    """A NIC to give a VM: on the port group ``backing``, with the MAC ``mac`` (chosen
    and claimed on the backing by the control plane; "" for a VM made before that: the
    driver derives one from the VM's uid, ``agents.netconfig.mac``); with ``ip``
    (static modes) the guest is told its address, prefix, gateway and DNS servers
    (cloud-init network config in its metadata; on ESXi the guestinfo metadata), else
    it uses DHCP."""

    backing: str
    ip: str = ""
    prefix_length: int = 0
    gateway: str = ""
    dns_servers: tuple[str, ...] = ()
    mac: str = ""


@dataclass(frozen=True, slots=True)
class DiskRequest:
    """A persistent data disk: ``uid`` is its identity on the datastore of its
    ``datastore_class`` (made there, empty, at its first attach; found by uid after)."""

    uid: str
    size_gib: int
    datastore_class: str


@dataclass(frozen=True, slots=True)
class VmRequest:
    """What an agent asks a host to make."""

    vm_uid: str
    """Quanta's stable VM id; the driver tags the VM with it and finds it by it."""
    name: str
    """``tenants/t/projects/p/vms/v``, for display only (not unique over time)."""
    image: str
    vcpus: int
    memory_mib: int
    disk_gib: int
    record: str = ""
    """Opaque text (at most :data:`MAX_RECORD_CHARS`) the driver keeps with the VM and
    returns as ``VmInfo.record``: the control plane's record of what the VM is (its
    spec as made), by which a VM found on a host that the store does not know can be
    adopted (controlplane/store/orphans.py)."""
    bootstrap: BootstrapPayload | None = field(default=None, repr=False, compare=False)
    """Delivered to the guest with the VM (ESXi: guestinfo keys), never kept elsewhere."""
    nics: tuple[NicRequest, ...] = ()
    """In order; empty: one NIC on the host's default network (DHCP)."""
    disks: tuple[DiskRequest, ...] = ()
    """Persistent disks to attach after the root disk, in order (each made if absent)."""


class PowerState(enum.Enum):
    ON = "on"
    OFF = "off"


@dataclass(frozen=True, slots=True)
class VmInfo:
    """What a driver observes of one VM; deliberately without hypervisor ids."""

    vm_uid: str
    power: PowerState
    # As the VM was made (VmRequest.name and .record; "" when it was made without):
    # what it is, not how it is, so not part of equality.
    name: str = field(default="", compare=False)
    record: str = field(default="", compare=False)
    # How the VM is now (0: unknown to the driver).
    vcpus: int = field(default=0, compare=False)
    memory_mib: int = field(default=0, compare=False)
    disk_gib: int = field(default=0, compare=False)
    """The root (first) disk's size in whole GiB, rounded down (0: unknown, or under 1 GiB)."""
    # What the guest reports: its addresses (first = primary), and whether it has
    # reported that it bootstrapped (guestinfo.quanta.bootstrap=done on ESXi).
    addresses: tuple[Address, ...] = field(default=(), compare=False)
    bootstrapped: bool = field(default=False, compare=False)
    # Whether bootstrap data is still on the VM (delivered, not cleared).
    bootstrap_present: bool = field(default=False, compare=False)
    # The port groups of its NICs, in order, and the uids of the persistent disks
    # attached to it (not the root disk), in order.
    networks: tuple[str, ...] = field(default=(), compare=False)
    disks: tuple[str, ...] = field(default=(), compare=False)


@dataclass(frozen=True, slots=True)
class HostCapacity:
    """A host's raw total resources (not what is free) and its labels.

    Raw: hardware threads, physical memory, datastore size, never multiplied by an
    overcommit ratio. Overcommit is the agent's setting, applied once, by placement
    (``controlplane.models.Overcommit``)."""

    vcpus: int
    memory_mib: int
    disk_gib: int
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    """Among them "datastore.quanta.io/{class}" = "true" for each datastore class the
    host reaches (controlplane.models.datastore_label)."""
    networks: frozenset[str] = frozenset()
    """The port groups (network backings) the host reaches."""

    def __post_init__(self) -> None:
        # A private copy, so that a caller mutating its dict cannot change a frozen value.
        object.__setattr__(self, "labels", dict(self.labels))


class DriverError(Exception):
    """A driver call failed.

    ``reason`` is an UpperCamelCase word fit for a status condition or an
    ``ErrorInfo.reason`` (e.g. ``"CapacityExceeded"``); ``transient`` says whether
    retrying the same call later may succeed. Subclasses fix both defaults; either
    may be overridden per instance.
    """

    reason: str = "DriverError"
    transient: bool = False

    def __init__(self, message: str = "", *, reason: str | None = None, transient: bool | None = None):
        super().__init__(message)
        self.reason = reason if reason is not None else type(self).reason
        self.transient = transient if transient is not None else type(self).transient


class VmNotFound(DriverError):
    """No VM with the given ``vm_uid`` exists on the host."""

    reason = "VmNotFound"
    transient = False


class CapacityExceeded(DriverError):
    """The host has too little free vCPU, memory or disk for the request."""

    reason = "CapacityExceeded"
    transient = False


class ImageNotFound(DriverError):
    """The requested image does not exist on the host."""

    reason = "ImageNotFound"
    transient = False


class HostUnavailable(DriverError):
    """The host cannot be reached or is not answering; retry later."""

    reason = "HostUnavailable"
    transient = True


class PowerCycleRequired(DriverError):
    """The change cannot be made while the VM runs (e.g. removing vCPUs, or a host
    without hot-add): power it off, make the change, power it on."""

    reason = "PowerCycleRequired"
    transient = False


class GuestUnavailable(DriverError):
    """The guest cannot be asked (no guest tools running, or the guest is not up):
    a soft shutdown is not possible now; power off hard instead."""

    reason = "GuestUnavailable"
    transient = False


class OperationFailed(DriverError):
    """The hypervisor reported a failure; ``transient`` (default False) is set by the driver."""

    reason = "OperationFailed"
    transient = False


@runtime_checkable
class HostDriver(Protocol):
    """One hypervisor host, as a host agent sees it.

    All methods are coroutines and may raise :class:`DriverError` (``transient`` set
    when a retry may help, e.g. :class:`HostUnavailable`) in addition to what each
    states below.
    """

    host_id: str

    async def capacity(self) -> HostCapacity:
        """The host's raw total capacity (see :class:`HostCapacity`) and labels. Read-only."""
        ...

    async def list_vms(self) -> list[VmInfo]:
        """Every VM on the host that carries a Quanta id (others are ignored), with the
        name and record it was made with. Read-only."""
        ...

    async def get_vm(self, vm_uid: str) -> VmInfo | None:
        """The VM tagged ``vm_uid``, or None when there is none. Read-only."""
        ...

    async def create_vm(self, request: VmRequest) -> VmInfo:
        """Make the VM, powered off, and return it.

        Idempotent: if a VM tagged ``request.vm_uid`` exists (or is being made), that
        VM is returned (in whatever power state it is) and no second one is made. A
        call that is cancelled or fails leaves no VM behind, unless the error says the
        effect may have applied (a transient error after a timeout): retry to find out.
        Raises CapacityExceeded, ImageNotFound.
        """
        ...

    async def power_on(self, vm_uid: str) -> None:
        """Power the VM on. Idempotent (on stays on). Raises VmNotFound if it is absent."""
        ...

    async def power_off(self, vm_uid: str) -> None:
        """Power the VM off (hard). Idempotent (off stays off). Raises VmNotFound if absent."""
        ...

    async def shutdown_guest(self, vm_uid: str) -> None:
        """Ask the guest OS to shut down (soft) and return without waiting for it: the
        VM powers off when the guest is done (``watch`` tells). Idempotent (an off VM
        stays off). Raises VmNotFound if absent, GuestUnavailable when the guest cannot
        be asked (then power it off hard)."""
        ...

    async def reconfigure(self, vm_uid: str, *, vcpus: int, memory_mib: int, disk_gib: int | None = None) -> None:
        """Set the VM's vCPUs and memory and, with ``disk_gib``, grow its root (first)
        disk to that many GiB.

        A disk only grows: a ``disk_gib`` below the disk's size raises OperationFailed
        (reason ``InvalidArgument``, permanent) before anything changes; its size again
        changes nothing. Growing a disk needs no power cycle (ESXi extends a running
        VM's disk hot); the guest grows its partition and file system itself (e.g.
        cloud-init's growpart, on its next boot). ``VmInfo.disk_gib`` reports the size.
        A host that cannot grow this disk at all (ESXi: a linked clone's disk, which has
        a parent) raises OperationFailed (reason ``NotSupported``, permanent).

        Idempotent (the same values again change nothing). Raises VmNotFound if the VM
        is absent, CapacityExceeded if the host lacks room for the increase, and
        PowerCycleRequired when the VM is on and the change cannot be made while it
        runs (the caller powers it off, reconfigures, powers it on).
        """
        ...

    async def clear_bootstrap(self, vm_uid: str) -> None:
        """Blank the VM's bootstrap data (the keys its guest read it from), whatever its
        power state; afterwards ``VmInfo.bootstrap_present`` is False. Idempotent.
        Raises VmNotFound if absent."""
        ...

    def watch(self, notify: Callable[[str], None]) -> None:
        """Have ``notify(vm_uid)`` called, on the event loop, whenever a VM's observed
        state changes by something other than a call of this driver returning: power
        (e.g. a guest shutdown completing, a stop outside Quanta), addresses, the
        guest's bootstrap report. ``notify`` must not block; it is called with the
        uid only (read the rest with ``get_vm``). Replaces an earlier ``notify``."""
        ...

    async def attach_disk(self, vm_uid: str, disk: DiskRequest) -> None:
        """Attach the persistent disk (made, empty, on a datastore of its class if no
        disk of that uid exists there yet), whatever the VM's power state (hot).
        Idempotent: attached already changes nothing. Raises VmNotFound if the VM is
        absent; OperationFailed (reason ``DatastoreUnreachable``, permanent) when the
        host reaches no datastore of the class; OperationFailed (reason ``DiskInUse``,
        transient: its holder may be letting go) while another VM has it attached (a
        VM of the same uid on another host, moved here, takes it over); CapacityExceeded
        when the datastore has no room for a new disk."""
        ...

    async def detach_disk(self, vm_uid: str, disk_uid: str) -> None:
        """Detach the persistent disk from the VM, keeping its data. Idempotent: a disk
        not attached (or a VM that is absent) is fine."""
        ...

    async def delete_disk(self, disk_uid: str, datastore_class: str) -> None:
        """Destroy a persistent disk that no VM of this host has attached, and its data.
        Idempotent: an absent disk is fine. Raises OperationFailed (reason ``DiskInUse``,
        permanent) while a VM has it attached."""
        ...

    async def destroy_vm(self, vm_uid: str) -> None:
        """Destroy the VM, whatever its power state, but not its persistent disks: they
        are detached first and kept (``delete_disk`` destroys one). Idempotent: an
        absent VM is fine."""
        ...
