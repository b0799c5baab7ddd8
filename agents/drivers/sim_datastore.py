"""The simulated shared datastores: where the persistent disks of sim hosts live.

One per system, shared by every sim host of every sim agent process (as a SAN or
vSAN datastore is shared by the ESXi hosts that mount it): a directory holding one
small JSON file per disk uid (``{uid}.json``: size, datastore class, and the VM and
host it is attached to, if any), each written atomically (a temporary file renamed
over it). Read-modify-writes hold an exclusive ``flock`` on ``.lock`` in the
directory, so processes never interleave their changes of one disk. Without a
directory the datastore lives in this process's memory (unit tests).

Whether a host reaches a class is the host's business (its labels,
``datastore.quanta.io/{class}``); this module only keeps the disks.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace

from agents.drivers.protocol import OperationFailed

DISK_IN_USE = "DiskInUse"


@dataclass(frozen=True, slots=True)
class SimDisk:
    uid: str
    size_gib: int
    datastore_class: str
    vm_uid: str = ""  # attached to this VM ("" : detached)
    host: str = ""  # ... on this host


class SimDatastore:
    """The persistent disks of one system (see the module doc). Each method is one
    locked read-modify-write; none suspends (a few small file operations)."""

    def __init__(self, directory: str | os.PathLike[str] | None = None):
        self.directory = None if directory is None else os.fspath(directory)
        self._memory: dict[str, SimDisk] = {}
        if self.directory is not None:
            os.makedirs(self.directory, exist_ok=True)

    def get(self, uid: str) -> SimDisk | None:
        """The disk of ``uid``, or None."""
        with self._locked():
            return self._read(uid)

    def attach(self, uid: str, size_gib: int, datastore_class: str, vm_uid: str, host: str) -> SimDisk:
        """Attach the disk to ``vm_uid`` on ``host``, making it (empty) if absent.
        Idempotent; the same VM (uid) on another host takes it over (the VM was moved
        there). Raises OperationFailed (``DiskInUse``, transient: the other VM's host
        may be letting go of it) while another VM has it."""
        with self._locked():
            disk = self._read(uid)
            if disk is None:
                disk = SimDisk(uid, size_gib, datastore_class)
            _refuse_held(disk, vm_uid)
            if (disk.vm_uid, disk.host) != (vm_uid, host):
                disk = replace(disk, vm_uid=vm_uid, host=host)
                self._write(disk)
            return disk

    def check_attachable(self, uid: str, vm_uid: str) -> None:
        """Raise what :meth:`attach` would while another VM has the disk, changing nothing
        (a look before a VM is made for it: the attach itself decides)."""
        with self._locked():
            disk = self._read(uid)
        if disk is not None:
            _refuse_held(disk, vm_uid)

    def detach(self, uid: str, vm_uid: str, host: str) -> bool:
        """Let go of the disk if ``vm_uid`` on ``host`` has it (data kept); True if it
        did. Idempotent: a disk absent, detached or attached to another VM or host
        (the VM moved on) is left as it is."""
        with self._locked():
            disk = self._read(uid)
            if disk is None or (disk.vm_uid, disk.host) != (vm_uid, host):
                return False
            self._write(replace(disk, vm_uid="", host=""))
            return True

    def delete(self, uid: str) -> bool:
        """Destroy the disk and its data; True if it existed. Idempotent. Raises
        OperationFailed (``DiskInUse``, permanent) while a VM has it attached."""
        with self._locked():
            disk = self._read(uid)
            if disk is None:
                return False
            if disk.vm_uid:
                raise OperationFailed(f"disk {uid} is attached to VM {disk.vm_uid} on host {disk.host}",
                                      reason=DISK_IN_USE, transient=False)
            if self.directory is None:
                del self._memory[uid]
            else:
                os.unlink(self._path(uid))
            return True

    # --- storage ---------------------------------------------------------------------

    def _path(self, uid: str) -> str:
        assert self.directory is not None
        if not uid or "/" in uid or uid.startswith("."):
            raise OperationFailed(f"bad disk uid {uid!r}", reason="InvalidArgument")
        return os.path.join(self.directory, uid + ".json")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        if self.directory is None:
            yield
            return
        fd = os.open(os.path.join(self.directory, ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # (releases the lock)

    def _read(self, uid: str) -> SimDisk | None:
        if self.directory is None:
            return self._memory.get(uid)
        try:
            with open(self._path(uid), encoding="utf-8") as f:
                record = json.load(f)
        except FileNotFoundError:
            return None
        return SimDisk(**{k: record[k] for k in ("uid", "size_gib", "datastore_class", "vm_uid", "host")
                          if k in record})

    def _write(self, disk: SimDisk) -> None:
        if self.directory is None:
            self._memory[disk.uid] = disk
            return
        path = self._path(disk.uid)
        tmp = f"{path}.{os.getpid()}.tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(asdict(disk), f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as e:
            raise OperationFailed(f"sim datastore write failed: {e}", transient=True) from e


def _refuse_held(disk: SimDisk, vm_uid: str) -> None:
    if disk.vm_uid and disk.vm_uid != vm_uid:
        raise OperationFailed(f"disk {disk.uid} is attached to VM {disk.vm_uid} on host {disk.host}",
                              reason=DISK_IN_USE, transient=True)
