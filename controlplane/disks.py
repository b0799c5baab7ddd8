"""Persistent disk models (frozen; protobuf at the edges: ``to_bytes``/``from_bytes``
convert the etcd records DiskRecord and DiskAttachment of
``controlplane.gen.quanta.store.v1.records_pb2``), and the one rule for the state a
disk shows (:func:`disk_state`).

A disk is two keys beside each other (``Keys.disk`` and ``Keys.disk_attachment``):
its record (desired state, DiskService) and, while a VM has it, its attachment. The
state the API shows is derived from both, read at one revision.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from controlplane.gen.quanta.store.v1 import records_pb2 as rec
from controlplane.models import DEFAULT_DATASTORE_CLASS, DiskRef

#: Sizes a disk may have, GiB (DiskService).
MIN_DISK_GIB = 1
MAX_DISK_GIB = 65536
#: The most persistent disks one VM may have attached.
MAX_DISKS_PER_VM = 16


class DiskState(enum.IntEnum):
    """Values match quanta.v1.Disk.State."""

    AVAILABLE = 1
    ATTACHED = 2
    DETACHING = 3
    DELETING = 4


@dataclass(frozen=True, slots=True)
class DiskName:
    """Where a disk lives: ``tenants/{t}/projects/{p}/disks/{d}``."""

    tenant: str
    project: str
    disk_id: str

    @property
    def name(self) -> str:
        return f"tenants/{self.tenant}/projects/{self.project}/disks/{self.disk_id}"


@dataclass(frozen=True, slots=True)
class Disk:
    """A persistent disk's record. ``delete_time_ns`` non-zero: DELETING (its quota is
    released; an agent that reaches its class destroys the data once no VM has it)."""

    tenant: str
    project: str
    disk_id: str
    uid: str
    size_gib: int
    datastore_class: str = DEFAULT_DATASTORE_CLASS
    labels: Mapping[str, str] = field(default_factory=dict)
    description: str = ""
    create_time_ns: int = 0
    update_time_ns: int = 0
    delete_time_ns: int = 0
    request_id: str = ""

    @property
    def ref(self) -> DiskName:
        return DiskName(self.tenant, self.project, self.disk_id)

    @property
    def name(self) -> str:
        return self.ref.name

    @property
    def deleting(self) -> bool:
        return self.delete_time_ns != 0

    def attached_as(self) -> DiskRef:
        """What a VM's spec holds of this disk once attached."""
        return DiskRef(self.disk_id, self.uid, self.size_gib, self.datastore_class)

    def with_(self, **changes) -> Disk:
        return replace(self, **changes)

    def to_bytes(self) -> bytes:
        return rec.DiskRecord(
            tenant=self.tenant, project=self.project, disk_id=self.disk_id, uid=self.uid, labels=dict(self.labels),
            description=self.description, size_gib=self.size_gib, datastore_class=self.datastore_class,
            create_time_ns=self.create_time_ns, update_time_ns=self.update_time_ns,
            delete_time_ns=self.delete_time_ns, request_id=self.request_id,
        ).SerializeToString()

    @classmethod
    def from_bytes(cls, data: bytes) -> Disk:
        m = rec.DiskRecord.FromString(data)
        return cls(m.tenant, m.project, m.disk_id, m.uid, m.size_gib, m.datastore_class or DEFAULT_DATASTORE_CLASS,
                   dict(m.labels), m.description, m.create_time_ns, m.update_time_ns, m.delete_time_ns,
                   m.request_id)


@dataclass(frozen=True, slots=True)
class Attachment:
    """The disk is attached to ``vm`` (its full name; ``vm_uid`` tells a VM from a later
    one of the same name). ``detaching``: DetachDisk took it off the VM's spec and the
    VM's host has not let go of it yet."""

    vm: str
    vm_uid: str
    detaching: bool = False
    attach_time_ns: int = 0

    def to_bytes(self) -> bytes:
        return rec.DiskAttachment(vm=self.vm, vm_uid=self.vm_uid, detaching=self.detaching,
                                  attach_time_ns=self.attach_time_ns).SerializeToString()

    @classmethod
    def from_bytes(cls, data: bytes) -> Attachment:
        m = rec.DiskAttachment.FromString(data)
        return cls(m.vm, m.vm_uid, m.detaching, m.attach_time_ns)


def disk_state(disk: Disk, attachment: Attachment | None) -> DiskState:
    """The state a disk shows: DELETING once its deletion was asked (whatever its
    attachment), else ATTACHED or DETACHING by its attachment, else AVAILABLE."""
    if disk.deleting:
        return DiskState.DELETING
    if attachment is None:
        return DiskState.AVAILABLE
    return DiskState.DETACHING if attachment.detaching else DiskState.ATTACHED
