"""vSphere faults as Quanta driver errors: the one table.

Every fault a vSphere call raises leaves the driver as a
:class:`~agents.drivers.protocol.DriverError` made by :func:`to_driver_error`, whose
class, reason and ``transient`` flag come from :data:`FAULTS`. The first row whose
fault class the raised fault is an instance of wins, so specific faults come before
their bases; a row naming an ``op`` applies only to faults of that operation (the
same fault can mean different things: a wrong power state for a reconfigure means
"power-cycle it", for a power-on "try again"). Network-level errors (refused, reset, TLS, timeouts) are a host that
cannot be reached: :class:`HostUnavailable`.
"""

from __future__ import annotations

import http.client
import socket
import ssl
from dataclasses import dataclass

from pyVmomi import vim, vmodl

from agents.drivers.protocol import (
    CapacityExceeded,
    DriverError,
    GuestUnavailable,
    HostUnavailable,
    ImageNotFound,
    OperationFailed,
    PowerCycleRequired,
    VmNotFound,
)


@dataclass(frozen=True, slots=True)
class FaultRule:
    fault: type[BaseException]
    error: type[DriverError]
    reason: str
    transient: bool
    op: str = ""  # "": any operation


def _rule(fault, error, reason=None, transient=None, op="") -> FaultRule:
    return FaultRule(fault, error, reason or error.reason, error.transient if transient is None else transient, op)


FAULTS: tuple[FaultRule, ...] = (
    # Out of room on the host or its datastore: the scheduler's view was stale.
    _rule(vim.fault.InsufficientResourcesFault, CapacityExceeded),
    _rule(vim.fault.NoDiskSpace, CapacityExceeded),
    # The change cannot be made while the VM runs: power it off first.
    _rule(vim.fault.CpuHotPlugNotSupported, PowerCycleRequired),
    _rule(vim.fault.MemoryHotPlugNotSupported, PowerCycleRequired),
    _rule(vim.fault.InvalidPowerState, PowerCycleRequired, op="reconfigure"),
    # The guest cannot be asked (no tools running, not up): power off hard instead.
    _rule(vim.fault.ToolsUnavailable, GuestUnavailable),
    _rule(vim.fault.GuestOperationsUnavailable, GuestUnavailable),
    _rule(vim.fault.InvalidPowerState, GuestUnavailable, op="shutdown_guest"),
    _rule(vim.fault.InvalidState, GuestUnavailable, op="shutdown_guest"),
    # Persistent disks: a file another VM holds open is a disk in use; a file that
    # appeared or vanished between the driver's look and its ReconfigVM is looked at again.
    _rule(vim.fault.FileLocked, OperationFailed, "DiskInUse", op="delete_disk"),
    _rule(vim.fault.FileLocked, OperationFailed, "DiskInUse", transient=True, op="attach_disk"),
    _rule(vim.fault.ResourceInUse, OperationFailed, "DiskInUse", op="delete_disk"),
    _rule(vim.fault.FileAlreadyExists, OperationFailed, "FileAlreadyExists", transient=True, op="attach_disk"),
    _rule(vim.fault.FileNotFound, OperationFailed, "FileNotFound", transient=True, op="attach_disk"),
    # Busy or mid-change: the same call later may well succeed.
    _rule(vim.fault.InvalidPowerState, OperationFailed, "InvalidPowerState", transient=True),
    _rule(vim.fault.InvalidHostState, HostUnavailable, "HostNotReady"),
    _rule(vim.fault.TaskInProgress, OperationFailed, "TaskInProgress", transient=True),
    _rule(vim.fault.ConcurrentAccess, OperationFailed, "ConcurrentAccess", transient=True),
    _rule(vim.fault.ResourceInUse, OperationFailed, "ResourceInUse", transient=True),
    _rule(vim.fault.InvalidState, OperationFailed, "InvalidState", transient=True),
    _rule(vim.fault.Timedout, OperationFailed, "Timedout", transient=True),
    _rule(vmodl.fault.RequestCanceled, OperationFailed, "RequestCanceled", transient=True),
    _rule(vmodl.fault.HostCommunication, HostUnavailable),
    _rule(vmodl.fault.SystemError, OperationFailed, "SystemError", transient=True),
    # A session that expired despite a re-login, or credentials that are wrong.
    _rule(vim.fault.NotAuthenticated, HostUnavailable, "NotAuthenticated"),
    _rule(vim.fault.InvalidLogin, OperationFailed, "InvalidLogin"),
    _rule(vim.fault.NoPermission, OperationFailed, "PermissionDenied"),
    # Gone: the VM (or an object it needs) was removed under us.
    _rule(vmodl.fault.ManagedObjectNotFound, VmNotFound),
    _rule(vim.fault.FileNotFound, ImageNotFound),
    _rule(vim.fault.NotFound, ImageNotFound),
    # Bad input or an operation this host cannot do: retrying will not help.
    _rule(vim.fault.SnapshotFault, OperationFailed, "SnapshotFault"),
    _rule(vim.fault.DuplicateName, OperationFailed, "DuplicateName"),
    _rule(vim.fault.AlreadyExists, OperationFailed, "AlreadyExists"),
    _rule(vim.fault.InvalidName, OperationFailed, "InvalidName"),
    _rule(vim.fault.VmConfigFault, OperationFailed, "InvalidVmConfig"),
    _rule(vim.fault.InvalidDatastore, OperationFailed, "InvalidDatastore"),
    _rule(vim.fault.FileFault, OperationFailed, "FileFault"),
    _rule(vmodl.fault.NotSupported, OperationFailed, "NotSupported"),
    _rule(vmodl.fault.NotImplemented, OperationFailed, "NotSupported"),
    _rule(vmodl.fault.MethodNotFound, OperationFailed, "NotSupported"),  # e.g. InstantClone on vcsim or ESXi
    _rule(vmodl.fault.InvalidArgument, OperationFailed, "InvalidArgument"),
    _rule(vmodl.fault.InvalidRequest, OperationFailed, "InvalidRequest"),
    _rule(vim.fault.VimFault, OperationFailed, "VimFault"),
    _rule(vmodl.MethodFault, OperationFailed, "MethodFault"),
    # The wire: nobody answered, or the answer was cut off.
    _rule(ConnectionError, HostUnavailable),
    _rule(socket.timeout, HostUnavailable),
    _rule(ssl.SSLError, HostUnavailable, "TlsError", transient=False),
    _rule(http.client.HTTPException, HostUnavailable),
    _rule(OSError, HostUnavailable),
)


def fault_message(fault: BaseException) -> str:
    """The fault's own words: vSphere puts them in ``msg`` or ``faultMessage``."""
    msg = getattr(fault, "msg", None)
    if not msg:
        messages = getattr(fault, "faultMessage", None) or []
        msg = "; ".join(m.message for m in messages if getattr(m, "message", None))
    if msg:
        return msg
    if isinstance(fault, vmodl.MethodFault):  # no words: name the fields that say what was wrong
        details = [f"{name}={getattr(fault, name)}" for name in _DETAIL_FIELDS if getattr(fault, name, None)]
        return ", ".join(details) or "(no message)"
    return str(fault) or type(fault).__name__


_DETAIL_FIELDS = ("method", "invalidProperty", "name", "obj", "receiver")


def rule_for(fault: BaseException, op: str = "") -> FaultRule | None:
    for rule in FAULTS:
        if isinstance(fault, rule.fault) and rule.op in ("", op):
            return rule
    return None


def to_driver_error(fault: BaseException, context: str = "", *, op: str = "") -> DriverError:
    """The DriverError for ``fault`` raised by operation ``op`` (a DriverError passes
    through unchanged).

    Raises nothing; a fault in no row (not a vSphere or network error) becomes a
    permanent OperationFailed, so a bug is reported on the VM rather than retried forever.
    """
    if isinstance(fault, DriverError):
        return fault
    rule = rule_for(fault, op)
    name = type(fault).__name__
    message = f"{context}: {name}: {fault_message(fault)}" if context else f"{name}: {fault_message(fault)}"
    if rule is None:
        return OperationFailed(message, reason="InternalError", transient=False)
    return rule.error(message, reason=rule.reason, transient=rule.transient)
