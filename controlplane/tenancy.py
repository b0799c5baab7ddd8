"""Tenancy models: quota limits and usage, tenants and projects (frozen, protobuf at
the edges: ``to_record``/``from_record`` convert the etcd records in
``controlplane.gen.quanta.store.v1.tenancy_pb2``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from controlplane.gen.quanta.store.v1 import tenancy_pb2 as trec
from controlplane.models import Resources

DIMENSIONS = ("vms", "vcpus", "memory_mib", "disk_gib", "data_disks", "data_disk_gib")
#: The headroom of a dimension without a limit (int64's largest: any amount fits).
UNLIMITED = 2**63 - 1


@dataclass(frozen=True, slots=True)
class Usage:
    """Amounts per quota dimension; also used for deltas (negative on release)."""

    vms: int = 0
    vcpus: int = 0
    memory_mib: int = 0
    disk_gib: int = 0  # VMs' root disks (their flavors')
    data_disks: int = 0  # persistent disks (DiskService), from create to delete
    data_disk_gib: int = 0

    @classmethod
    def of_vm(cls, resources: Resources, count: int = 1) -> Usage:
        """What VMs hold: never a persistent disk (those are charged by the disk store)."""
        return cls(count, resources.vcpus * count, resources.memory_mib * count, resources.disk_gib * count)

    @classmethod
    def of_disk(cls, size_gib: int, count: int = 1) -> Usage:
        """What persistent disks of ``size_gib`` hold."""
        return cls(data_disks=count, data_disk_gib=size_gib * count)

    def __add__(self, other: Usage) -> Usage:
        return Usage(*(getattr(self, d) + getattr(other, d) for d in DIMENSIONS))

    def __sub__(self, other: Usage) -> Usage:
        return Usage(*(getattr(self, d) - getattr(other, d) for d in DIMENSIONS))

    def __neg__(self) -> Usage:
        return Usage(*(-getattr(self, d) for d in DIMENSIONS))

    @property
    def grows(self) -> bool:
        """True when any dimension increases (only growth is checked against limits)."""
        return any(getattr(self, d) > 0 for d in DIMENSIONS)

    def to_record(self) -> trec.Usage:
        return trec.Usage(**{d: getattr(self, d) for d in DIMENSIONS})

    @classmethod
    def from_record(cls, m: trec.Usage) -> Usage:
        return cls(*(getattr(m, d) for d in DIMENSIONS))

    def to_bytes(self) -> bytes:
        return self.to_record().SerializeToString()

    @classmethod
    def from_bytes(cls, data: bytes) -> Usage:
        return cls.from_record(trec.Usage.FromString(data))


@dataclass(frozen=True, slots=True)
class Limits:
    """Upper bounds per dimension; None is unlimited."""

    vms: int | None = None
    vcpus: int | None = None
    memory_mib: int | None = None
    disk_gib: int | None = None
    data_disks: int | None = None
    data_disk_gib: int | None = None

    def exceeded(self, usage: Usage) -> list[str]:
        """The dimensions in which ``usage`` is over these limits."""
        return [d for d in DIMENSIONS if getattr(self, d) is not None and getattr(usage, d) > getattr(self, d)]

    def as_usage(self) -> Usage:
        """The limits as amounts (unlimited counts as 0): what a project takes of its
        tenant's ticket."""
        return Usage(*(getattr(self, d) or 0 for d in DIMENSIONS))

    def headroom(self, usage: Usage) -> Usage:
        """What may still be used on top of ``usage`` per dimension (negative: over by
        that much); :data:`UNLIMITED` where there is no limit."""
        return Usage(*(UNLIMITED if getattr(self, d) is None else getattr(self, d) - getattr(usage, d)
                       for d in DIMENSIONS))

    def limited(self) -> list[str]:
        return [d for d in DIMENSIONS if getattr(self, d) is not None]

    def to_record(self) -> trec.Limits:
        return trec.Limits(**{d: getattr(self, d) for d in DIMENSIONS if getattr(self, d) is not None})

    @classmethod
    def from_record(cls, m: trec.Limits) -> Limits:
        return cls(*(getattr(m, d) if m.HasField(d) else None for d in DIMENSIONS))


@dataclass(frozen=True, slots=True)
class Tenant:
    tenant_id: str
    display_name: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    quota: Limits = Limits()
    allocated: Usage = Usage()
    create_time_ns: int = 0
    update_time_ns: int = 0
    #: The backings its networks may map to, as granted (see controlplane.backings).
    network_backings: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return f"tenants/{self.tenant_id}"

    def to_bytes(self) -> bytes:
        return trec.TenantRecord(
            tenant_id=self.tenant_id, display_name=self.display_name, labels=dict(self.labels),
            quota=self.quota.to_record(), allocated=self.allocated.to_record(),
            create_time_ns=self.create_time_ns, update_time_ns=self.update_time_ns,
            network_backings=list(self.network_backings),
        ).SerializeToString()

    @classmethod
    def from_bytes(cls, data: bytes) -> Tenant:
        m = trec.TenantRecord.FromString(data)
        return cls(m.tenant_id, m.display_name, dict(m.labels), Limits.from_record(m.quota),
                   Usage.from_record(m.allocated), m.create_time_ns, m.update_time_ns, tuple(m.network_backings))

    def with_(self, **changes) -> Tenant:
        return replace(self, **changes)


@dataclass(frozen=True, slots=True)
class Project:
    tenant_id: str
    project_id: str
    display_name: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    quota: Limits = Limits()
    create_time_ns: int = 0
    update_time_ns: int = 0
    delete_time_ns: int = 0  # non-zero: being deleted, takes no new VMs

    @property
    def name(self) -> str:
        return f"tenants/{self.tenant_id}/projects/{self.project_id}"

    @property
    def deleting(self) -> bool:
        return self.delete_time_ns != 0

    def to_bytes(self) -> bytes:
        return trec.ProjectRecord(
            tenant_id=self.tenant_id, project_id=self.project_id, display_name=self.display_name,
            labels=dict(self.labels), quota=self.quota.to_record(), create_time_ns=self.create_time_ns,
            update_time_ns=self.update_time_ns, delete_time_ns=self.delete_time_ns,
        ).SerializeToString()

    @classmethod
    def from_bytes(cls, data: bytes) -> Project:
        m = trec.ProjectRecord.FromString(data)
        return cls(m.tenant_id, m.project_id, m.display_name, dict(m.labels), Limits.from_record(m.quota),
                   m.create_time_ns, m.update_time_ns, m.delete_time_ns)

    def with_(self, **changes) -> Project:
        return replace(self, **changes)


def ticket_problems(ticket: Limits, allocated: Usage, old: Limits, new: Limits) -> list[tuple[str, str]]:
    """Why a project's limits may not change from ``old`` to ``new`` under a tenant
    ``ticket`` of which ``allocated`` is given to projects (``old`` included): every
    dimension the ticket limits must be limited in the project, and the projects'
    limits must stay within the ticket. (field, description) pairs; empty when fine."""
    problems = [(f"quota.{d}", "must not be negative") for d in DIMENSIONS
                if getattr(new, d) is not None and getattr(new, d) < 0]
    after = allocated - old.as_usage() + new.as_usage()
    for d in DIMENSIONS:
        cap = getattr(ticket, d)
        if cap is None:
            continue
        if getattr(new, d) is None:
            problems.append((f"quota.{d}", f"required: the tenant's ticket limits {d} to {cap}"))
        elif getattr(after, d) > cap:
            free = cap - (getattr(allocated, d) - (getattr(old, d) or 0))
            problems.append((f"quota.{d}", f"{getattr(new, d)} exceeds what the tenant's ticket has left ({free})"))
    return problems


