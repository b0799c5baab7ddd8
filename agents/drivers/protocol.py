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
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

#: The longest VmRequest.record a driver must keep.
MAX_RECORD_CHARS = 16 * 1024


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

    async def reconfigure(self, vm_uid: str, *, vcpus: int, memory_mib: int) -> None:
        """Set the VM's vCPUs and memory, whatever its power state.

        Idempotent (the same values again change nothing). Raises VmNotFound if the VM
        is absent, CapacityExceeded if the host lacks room for the increase; a host
        that cannot change a running VM raises a permanent OperationFailed.
        """
        ...

    async def destroy_vm(self, vm_uid: str) -> None:
        """Destroy the VM, whatever its power state. Idempotent: an absent VM is fine."""
        ...
