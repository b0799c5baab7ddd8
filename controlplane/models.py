"""Frozen domain models shared by the control plane, the scheduler and the agents.

Protobuf stays at the edges: ``from_proto``/``to_proto`` convert the etcd
records (``controlplane.gen.quanta.store.v1.records_pb2``); the API conversion is
in ``controlplane.api.convert``.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from controlplane.gen.quanta.store.v1 import records_pb2 as rec


def now_ns() -> int:
    return time.time_ns()


class VmState(enum.IntEnum):
    """Values match quanta.v1.Vm.State."""

    UNSPECIFIED = 0
    PENDING = 1
    SCHEDULED = 2
    CREATING = 3
    RUNNING = 4
    STOPPED = 5
    ERROR = 6
    DELETING = 7


class RestartPolicy(enum.IntEnum):
    """What happens to a running VM when its host is drained or declared dead.
    Stored values (quanta.store.v1.VmSpec.restart_policy); the API's enum is
    shifted by one (0 there is UNSPECIFIED = ALWAYS)."""

    ALWAYS = 0  # placed again on another host
    NEVER = 1  # deleted


class Scope(enum.IntEnum):
    """Where an (anti-)affinity constraint applies. Stored values
    (quanta.store.v1.VmSpec.*_scope); the API's enum is shifted by one."""

    HOST = 0
    ZONE = 1


#: The host label naming a host's availability zone (set by its agent).
ZONE_LABEL = "topology.quanta.io/zone"
#: Host label prefix an agent sets per image it holds locally: ``image.quanta.io/<image>=true``.
IMAGE_LABEL_PREFIX = "image.quanta.io/"


def zone_of(labels: Mapping[str, str]) -> str:
    """The zone a host's labels name, or "" (none, or not usable as a key segment)."""
    zone = labels.get(ZONE_LABEL, "")
    return zone if "/" not in zone else ""


@dataclass(frozen=True, slots=True)
class Resources:
    """An amount of compute resources. Fields may be negative: the same type
    carries deltas (a placement forgotten) and an over-committed host's free."""

    vcpus: int = 0
    memory_mib: int = 0
    disk_gib: int = 0

    def __add__(self, other: Resources) -> Resources:
        return Resources(self.vcpus + other.vcpus, self.memory_mib + other.memory_mib,
                         self.disk_gib + other.disk_gib)

    def __sub__(self, other: Resources) -> Resources:
        return Resources(self.vcpus - other.vcpus, self.memory_mib - other.memory_mib,
                         self.disk_gib - other.disk_gib)

    def __neg__(self) -> Resources:
        return Resources(-self.vcpus, -self.memory_mib, -self.disk_gib)

    def fits_within(self, other: Resources) -> bool:
        """True when every dimension is <= the same dimension of ``other``."""
        return (self.vcpus <= other.vcpus and self.memory_mib <= other.memory_mib
                and self.disk_gib <= other.disk_gib)


@dataclass(frozen=True, slots=True)
class Overcommit:
    """How far bookings on a host may exceed its raw capacity, per resource.

    The one overcommit setting: given to a host's agent (``quanta agent
    --vcpu-overcommit 4``), stored in the host's registration, and applied only by
    :meth:`allocatable`, which placement (and ``quanta host get``) uses. Drivers
    report raw capacity and never multiply it. Ratios are finite and > 0 (below 1
    keeps part of a host back); raises ValueError otherwise.
    """

    vcpus: float = 1.0
    memory: float = 1.0
    disk: float = 1.0

    def __post_init__(self) -> None:
        for name in ("vcpus", "memory", "disk"):
            ratio = getattr(self, name)
            if not (isinstance(ratio, (int, float)) and math.isfinite(ratio) and ratio > 0):
                raise ValueError(f"{name} overcommit must be a number > 0, got {ratio!r}")

    def allocatable(self, capacity: Resources) -> Resources:
        """``capacity`` (raw) times the ratios, rounded down: what may be booked."""
        return Resources(_times(capacity.vcpus, self.vcpus), _times(capacity.memory_mib, self.memory),
                         _times(capacity.disk_gib, self.disk))


def _times(amount: int, ratio: float) -> int:
    # Rounded to 6 places before the floor, so 100 × 1.15 is 115 and not 114.99999999999999.
    return math.floor(round(amount * ratio, 6))


#: No overcommit: allocatable equals capacity.
NO_OVERCOMMIT = Overcommit()


@dataclass(frozen=True, slots=True)
class VmRef:
    tenant: str
    project: str
    vm_id: str

    @property
    def name(self) -> str:
        return f"tenants/{self.tenant}/projects/{self.project}/vms/{self.vm_id}"

    @classmethod
    def from_name(cls, name: str) -> VmRef | None:
        """The ref a ``name`` stands for, or None if it is not shaped like one
        (no validation of the ids: this reads names the system wrote itself)."""
        parts = name.split("/")
        if len(parts) == 6 and parts[0] == "tenants" and parts[2] == "projects" and parts[4] == "vms":
            return cls(parts[1], parts[3], parts[5])
        return None


@dataclass(frozen=True, slots=True)
class VmSpec:
    """Desired state of a VM; written by frontends only."""

    ref: VmRef
    uid: str
    flavor: str
    image: str
    resources: Resources
    labels: Mapping[str, str] = field(default_factory=dict)
    request_id: str = ""
    create_time_ns: int = 0
    delete_time_ns: int = 0
    shard: int = 0
    node_selector: Mapping[str, str] = field(default_factory=dict)  # host labels it needs
    anti_affinity_group: str = ""  # no two VMs of one group on a host
    restart_policy: RestartPolicy = RestartPolicy.ALWAYS
    anti_affinity_scope: Scope = Scope.HOST  # ZONE: nor two zone-scoped VMs of the group in a zone
    affinity_group: str = ""  # only where a VM of this group runs
    affinity_scope: Scope = Scope.HOST

    @property
    def deleting(self) -> bool:
        return self.delete_time_ns != 0

    @property
    def host_group(self) -> str:
        """The anti-affinity group this VM counts in on its host's allocation ("" when
        none): ``{tenant}/{project}/{group}``, so tenants never block or see each other."""
        return f"{self.ref.tenant}/{self.ref.project}/{self.anti_affinity_group}" if self.anti_affinity_group else ""

    @property
    def host_affinity_group(self) -> str:
        """The host group count this VM must find on its host ("" when none or zone-scoped)."""
        if self.affinity_scope is not Scope.HOST or not self.affinity_group:
            return ""
        return f"{self.ref.tenant}/{self.ref.project}/{self.affinity_group}"

    @property
    def zone_group(self) -> str:
        """The zone group count this VM is part of ("" when not zone-scoped):
        ``{tenant}/{project}/{group}``, so projects never see each other's groups."""
        if self.anti_affinity_scope is not Scope.ZONE or not self.anti_affinity_group:
            return ""
        return f"{self.ref.tenant}/{self.ref.project}/{self.anti_affinity_group}"

    @property
    def zone_affinity_group(self) -> str:
        """The zone group count this VM must find in its zone ("" when none)."""
        if self.affinity_scope is not Scope.ZONE or not self.affinity_group:
            return ""
        return f"{self.ref.tenant}/{self.ref.project}/{self.affinity_group}"

    def to_proto(self) -> rec.VmSpec:
        return rec.VmSpec(
            tenant=self.ref.tenant, project=self.ref.project, vm_id=self.ref.vm_id, uid=self.uid,
            flavor=self.flavor, image=self.image, labels=dict(self.labels),
            vcpus=self.resources.vcpus, memory_mib=self.resources.memory_mib,
            disk_gib=self.resources.disk_gib, request_id=self.request_id,
            create_time_ns=self.create_time_ns, delete_time_ns=self.delete_time_ns, shard=self.shard,
            node_selector=dict(self.node_selector), anti_affinity_group=self.anti_affinity_group,
            restart_policy=int(self.restart_policy), anti_affinity_scope=int(self.anti_affinity_scope),
            affinity_group=self.affinity_group, affinity_scope=int(self.affinity_scope),
        )

    @classmethod
    def from_proto(cls, m: rec.VmSpec) -> VmSpec:
        return cls(
            VmRef(m.tenant, m.project, m.vm_id), m.uid, m.flavor, m.image,
            Resources(m.vcpus, m.memory_mib, m.disk_gib), dict(m.labels), m.request_id,
            m.create_time_ns, m.delete_time_ns, m.shard, dict(m.node_selector), m.anti_affinity_group,
            RestartPolicy(m.restart_policy) if m.restart_policy in (0, 1) else RestartPolicy.ALWAYS,
            _scope(m.anti_affinity_scope), m.affinity_group, _scope(m.affinity_scope),
        )

    def to_bytes(self) -> bytes:
        return self.to_proto().SerializeToString()

    @classmethod
    def from_bytes(cls, data: bytes) -> VmSpec:
        return cls.from_proto(rec.VmSpec.FromString(data))

    def marked_deleted(self, at_ns: int) -> VmSpec:
        return replace(self, delete_time_ns=at_ns)


def _scope(value: int) -> Scope:
    return Scope(value) if value in (0, 1) else Scope.HOST


@dataclass(frozen=True, slots=True)
class VmStatus:
    """Observed state; written by the scheduler at bind, then by the host's agent."""

    state: VmState
    host: str = ""
    reason: str = ""
    message: str = ""
    update_time_ns: int = 0
    accepted_time_ns: int = 0

    def to_bytes(self) -> bytes:
        return rec.VmStatus(
            state=int(self.state), host=self.host, reason=self.reason, message=self.message,
            update_time_ns=self.update_time_ns, accepted_time_ns=self.accepted_time_ns,
        ).SerializeToString()

    @classmethod
    def from_bytes(cls, data: bytes) -> VmStatus:
        m = rec.VmStatus.FromString(data)
        return cls(VmState(m.state), m.host, m.reason, m.message, m.update_time_ns, m.accepted_time_ns)


@dataclass(frozen=True, slots=True)
class Binding:
    """A VM bound to a host: what that host's agent must make true."""

    spec: VmSpec
    host: str
    zone: str = ""  # the host's zone at bind time, if the VM is counted there (VmSpec.zone_group)
    evict_reason: str = ""  # set by a drain: destroy here, then back to the queue
    evict_message: str = ""

    @property
    def deleting(self) -> bool:
        return self.spec.deleting

    @property
    def evicting(self) -> bool:
        return bool(self.evict_reason) and not self.spec.deleting

    def to_bytes(self) -> bytes:
        return rec.Binding(spec=self.spec.to_proto(), host=self.host, delete_time_ns=self.spec.delete_time_ns,
                           zone=self.zone, evict_reason=self.evict_reason,
                           evict_message=self.evict_message).SerializeToString()

    @classmethod
    def from_bytes(cls, data: bytes) -> Binding:
        m = rec.Binding.FromString(data)
        return cls(VmSpec.from_proto(m.spec), m.host, m.zone, m.evict_reason, m.evict_message)


@dataclass(frozen=True, slots=True)
class HostRegistration:
    """A host as its agent registered it: ``capacity`` is the raw capacity its driver
    reports, ``overcommit`` the agent's setting; :attr:`allocatable` is what
    placement books against."""

    host: str
    driver: str
    capacity: Resources
    labels: Mapping[str, str] = field(default_factory=dict)
    agent: str = ""
    register_time_ns: int = 0
    overcommit: Overcommit = NO_OVERCOMMIT

    @property
    def allocatable(self) -> Resources:
        return self.overcommit.allocatable(self.capacity)

    def to_bytes(self) -> bytes:
        o = self.overcommit
        return rec.HostRegistration(
            host=self.host, driver=self.driver, vcpus=self.capacity.vcpus,
            memory_mib=self.capacity.memory_mib, disk_gib=self.capacity.disk_gib, labels=dict(self.labels),
            agent=self.agent, register_time_ns=self.register_time_ns,
            vcpu_overcommit=o.vcpus, memory_overcommit=o.memory, disk_overcommit=o.disk,
        ).SerializeToString()

    @classmethod
    def from_bytes(cls, data: bytes) -> HostRegistration:
        m = rec.HostRegistration.FromString(data)
        overcommit = Overcommit(_stored_ratio(m.vcpu_overcommit), _stored_ratio(m.memory_overcommit),
                                _stored_ratio(m.disk_overcommit))
        return cls(m.host, m.driver, Resources(m.vcpus, m.memory_mib, m.disk_gib), dict(m.labels), m.agent,
                   m.register_time_ns, overcommit)


def _stored_ratio(ratio: float) -> float:
    # 0 is unset: written by an agent older than the setting, whose driver had already
    # multiplied the capacity it registered; so no overcommit on top. A value no agent
    # writes (negative, NaN) must not stop the readers of every host either.
    return ratio if math.isfinite(ratio) and ratio > 0 else 1.0


@dataclass(frozen=True, slots=True)
class HostAllocation:
    """Sum of what is bound to a host; changes only with its bindings, in one txn."""

    resources: Resources = Resources()
    vm_count: int = 0
    groups: Mapping[str, int] = field(default_factory=dict)  # VMs per anti-affinity group

    def plus(self, resources: Resources, count: int = 1, group: str = "") -> HostAllocation:
        return HostAllocation(self.resources + resources, self.vm_count + count,
                              _count(self.groups, group, count))

    def minus(self, resources: Resources, count: int = 1, group: str = "") -> HostAllocation:
        return HostAllocation(self.resources - resources, self.vm_count - count,
                              _count(self.groups, group, -count))

    def to_bytes(self) -> bytes:
        r = self.resources
        return rec.HostAllocation(vcpus=r.vcpus, memory_mib=r.memory_mib, disk_gib=r.disk_gib,
                                  vm_count=self.vm_count, groups=dict(self.groups)).SerializeToString()

    @classmethod
    def from_bytes(cls, data: bytes) -> HostAllocation:
        m = rec.HostAllocation.FromString(data)
        return cls(Resources(m.vcpus, m.memory_mib, m.disk_gib), m.vm_count, dict(m.groups))


def _count(groups: Mapping[str, int], group: str, delta: int) -> Mapping[str, int]:
    """``groups`` with ``group``'s count moved by ``delta``; zero counts are dropped."""
    if not group:
        return groups
    counted = dict(groups)
    n = counted.get(group, 0) + delta
    if n > 0:
        counted[group] = n
    else:
        counted.pop(group, None)
    return counted


@dataclass(frozen=True, slots=True)
class Flavor:
    name: str
    resources: Resources

    def to_bytes(self) -> bytes:
        r = self.resources
        return rec.Flavor(name=self.name, vcpus=r.vcpus, memory_mib=r.memory_mib,
                          disk_gib=r.disk_gib).SerializeToString()

    @classmethod
    def from_bytes(cls, data: bytes) -> Flavor:
        m = rec.Flavor.FromString(data)
        return cls(m.name, Resources(m.vcpus, m.memory_mib, m.disk_gib))


@dataclass(frozen=True, slots=True)
class Image:
    name: str
    os: str
    source: str = ""
    size_gib: int = 0

    def to_bytes(self) -> bytes:
        return rec.Image(name=self.name, os=self.os, source=self.source,
                         size_gib=self.size_gib).SerializeToString()

    @classmethod
    def from_bytes(cls, data: bytes) -> Image:
        m = rec.Image.FromString(data)
        return cls(m.name, m.os, m.source, m.size_gib)


DEFAULT_FLAVORS = (
    Flavor("small", Resources(1, 1024, 10)),
    Flavor("medium", Resources(2, 4096, 40)),
    Flavor("large", Resources(4, 16384, 100)),
)
DEFAULT_IMAGES = (
    Image("ubuntu", "ubuntu-24.04", "builtin://ubuntu-24.04", 4),
    Image("debian", "debian-12", "builtin://debian-12", 3),
    Image("photon", "photon-5", "builtin://photon-5", 1),
)
