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


class Power(enum.IntEnum):
    """Desired power state of a VM. Stored values (quanta.store.v1.VmSpec.power);
    the API's Vm.Power is shifted by one (0 there is UNSPECIFIED = POWERED_ON)."""

    ON = 0
    OFF = 1


class PowerOffMode(enum.IntEnum):
    """How a stop or restart powers a VM off. Stored values; the API's is shifted by one."""

    SOFT = 0  # guest shutdown, then hard after the grace
    HARD = 1


class PowerPolicy(enum.IntEnum):
    """What the agent does with a VM found off that nobody asked to stop. Stored values;
    the API's is shifted by one."""

    KEEP_STOPPED = 0  # report STOPPED (StoppedOutsideQuanta), leave it off
    KEEP_RUNNING = 1  # power it on again


class BootstrapFormat(enum.IntEnum):
    """Stored values; the API's Bootstrap.Format is shifted by one."""

    CLOUD_INIT = 0
    IGNITION = 1


class BootstrapState(enum.IntEnum):
    """Where a VM's bootstrap data is (VmStatus.bootstrap_state). The API's
    Bootstrap.State is shifted by one (0 there is UNSPECIFIED)."""

    STORED = 0  # in the store only (or no bootstrap data)
    DELIVERED = 1  # on the VM, the guest has not reported that it bootstrapped
    CLEARED = 2  # the guest bootstrapped: deleted from the store, blanked on the VM


#: Default grace of a soft stop before the VM is powered off hard, and the most a request may give.
DEFAULT_STOP_GRACE_S = 60
MAX_STOP_GRACE_S = 3600


@dataclass(frozen=True, slots=True)
class BootstrapSummary:
    """What reads may show of a VM's bootstrap data: never the data itself."""

    format: BootstrapFormat
    size_bytes: int
    sha256: bytes

    def to_proto(self) -> rec.BootstrapSummary:
        return rec.BootstrapSummary(format=int(self.format), size_bytes=self.size_bytes, sha256=self.sha256)

    @classmethod
    def from_proto(cls, m: rec.BootstrapSummary) -> BootstrapSummary:
        fmt = BootstrapFormat(m.format) if m.format in (0, 1) else BootstrapFormat.CLOUD_INIT
        return cls(fmt, m.size_bytes, m.sha256)


@dataclass(frozen=True, slots=True)
class Address:
    """An address a VM's guest reports."""

    ip: str
    mac: str = ""
    network: str = ""
    family: int = 4  # 4 or 6

    def to_proto(self) -> rec.Address:
        return rec.Address(ip=self.ip, mac=self.mac, network=self.network, family=self.family)

    @classmethod
    def from_proto(cls, m: rec.Address) -> Address:
        return cls(m.ip, m.mac, m.network, m.family or 4)


class AddressMode(enum.IntEnum):
    """How a NIC gets its address (stored values; the API's are one higher)."""

    DHCP = 0  # the guest asks the network's DHCP; Vm.addresses shows what it got
    STATIC_POOL = 1  # Quanta took a free address of the network's pool
    STATIC = 2  # the address the create asked for


@dataclass(frozen=True, slots=True)
class Nic:
    """A NIC of a VM as its spec holds it: a copy of what the scheduler (``backing``)
    and the host's agent (backing, and for static modes the address, prefix, gateway
    and DNS it renders into the guest's network config) need, so neither reads
    networks. Static modes own ``addresses/{backing}/{ip}``; every NIC owns
    ``ports/{network_uid}/{t}/{p}/{vm}/{index}`` and, with ``mac`` (chosen at create,
    ``controlplane/macs.py``; "" in VMs made before MACs were claimed),
    ``macs/{backing}/{mac}`` (controlplane/store/keys.py)."""

    network: str  # full name: tenants/{t}/projects/{p}/networks/{n} or tenants/{t}/networks/{n}
    network_uid: str
    backing: str  # port group on the hosts
    address_mode: AddressMode = AddressMode.DHCP
    ip: str = ""  # static modes
    prefix_length: int = 0
    gateway: str = ""
    dns_servers: tuple[str, ...] = ()
    mac: str = ""

    @property
    def static(self) -> bool:
        return self.address_mode is not AddressMode.DHCP

    def to_proto(self) -> rec.Nic:
        return rec.Nic(network=self.network, network_uid=self.network_uid, backing=self.backing,
                       address_mode=int(self.address_mode), ip=self.ip, prefix_length=self.prefix_length,
                       gateway=self.gateway, dns_servers=list(self.dns_servers), mac=self.mac)

    @classmethod
    def from_proto(cls, m: rec.Nic) -> Nic:
        mode = AddressMode(m.address_mode) if m.address_mode in (0, 1, 2) else AddressMode.DHCP
        return cls(m.network, m.network_uid, m.backing, mode, m.ip, m.prefix_length, m.gateway,
                   tuple(m.dns_servers), m.mac)


#: The datastore class of a disk created without one; sim hosts carry its label.
DEFAULT_DATASTORE_CLASS = "standard"
#: Host label prefix: "datastore.quanta.io/{class}" = "true" on hosts that reach the
#: (shared) datastore of that class.
DATASTORE_LABEL_PREFIX = "datastore.quanta.io/"


def datastore_label(datastore_class: str) -> str:
    return DATASTORE_LABEL_PREFIX + datastore_class


@dataclass(frozen=True, slots=True)
class DiskRef:
    """A persistent disk attached to a VM, as the VM's spec holds it: what placement
    (its class) and the host's agent (uid: the disk's identity on the datastore; size)
    need. The disk itself is ``disks/{t}/{p}/{disk_id}`` of the VM's project."""

    disk_id: str
    uid: str
    size_gib: int
    datastore_class: str = DEFAULT_DATASTORE_CLASS

    def to_proto(self) -> rec.DiskRef:
        return rec.DiskRef(disk_id=self.disk_id, uid=self.uid, size_gib=self.size_gib,
                           datastore_class=self.datastore_class)

    @classmethod
    def from_proto(cls, m: rec.DiskRef) -> DiskRef:
        return cls(m.disk_id, m.uid, m.size_gib, m.datastore_class or DEFAULT_DATASTORE_CLASS)


@dataclass(frozen=True, slots=True)
class Condition:
    """A condition of a VM's status: ``type`` is "True", "False" or "Unknown" as ``status``,
    with an UpperCamelCase ``reason`` and a message for people."""

    type: str
    status: str
    reason: str = ""
    message: str = ""
    time_ns: int = 0

    def to_proto(self) -> rec.Condition:
        return rec.Condition(type=self.type, status=self.status, reason=self.reason, message=self.message,
                             time_ns=self.time_ns)

    @classmethod
    def from_proto(cls, m: rec.Condition) -> Condition:
        return cls(m.type, m.status, m.reason, m.message, m.time_ns)


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
    power: Power = Power.ON  # desired
    power_off_mode: PowerOffMode = PowerOffMode.SOFT  # of the last stop or restart
    power_off_grace_s: int = DEFAULT_STOP_GRACE_S
    power_time_ns: int = 0  # of the last Start/Stop/Restart (0: none since create)
    restarts: int = 0  # restarts asked for so far
    restart_request_id: str = ""  # of the last RestartVm
    power_policy: PowerPolicy = PowerPolicy.KEEP_STOPPED
    bootstrap: BootstrapSummary | None = None  # set: bootstrap/{t}/{p}/{vm} holds the data
    vm_set: str = ""  # the all-or-nothing set it was admitted in (its shard is the set's)
    plan: str = ""  # the plan whose held room it is bound to (holds/{plan})
    nics: tuple[Nic, ...] = ()  # empty: one DHCP NIC on the host's default network
    disks: tuple[DiskRef, ...] = ()  # persistent disks attached, in attach order

    @property
    def backings(self) -> frozenset[str]:
        """The network backings a host must reach to take this VM."""
        return frozenset(nic.backing for nic in self.nics)

    @property
    def datastore_classes(self) -> frozenset[str]:
        """The datastore classes a host must reach (label ``datastore_label(c)``)."""
        return frozenset(disk.datastore_class for disk in self.disks)

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
        m = rec.VmSpec(
            tenant=self.ref.tenant, project=self.ref.project, vm_id=self.ref.vm_id, uid=self.uid,
            flavor=self.flavor, image=self.image, labels=dict(self.labels),
            vcpus=self.resources.vcpus, memory_mib=self.resources.memory_mib,
            disk_gib=self.resources.disk_gib, request_id=self.request_id,
            create_time_ns=self.create_time_ns, delete_time_ns=self.delete_time_ns, shard=self.shard,
            node_selector=dict(self.node_selector), anti_affinity_group=self.anti_affinity_group,
            restart_policy=int(self.restart_policy), anti_affinity_scope=int(self.anti_affinity_scope),
            affinity_group=self.affinity_group, affinity_scope=int(self.affinity_scope),
        )
        # The fields most VMs leave at their defaults are set only when not (the spec is
        # built for every copy on the create and bind paths; proto3 omits defaults anyway).
        if self.power_time_ns or self.restarts or self.power or self.power_off_mode \
                or self.power_off_grace_s != DEFAULT_STOP_GRACE_S:
            m.power, m.power_off_mode, m.power_time_ns, m.restarts = (
                int(self.power), int(self.power_off_mode), self.power_time_ns, self.restarts)
            # 0 is read back as the default grace: stored only when another.
            m.power_off_grace_s = self.power_off_grace_s if self.power_off_grace_s != DEFAULT_STOP_GRACE_S else 0
            m.restart_request_id = self.restart_request_id
        if self.power_policy:
            m.power_policy = int(self.power_policy)
        if self.bootstrap is not None:
            m.bootstrap.CopyFrom(self.bootstrap.to_proto())
        if self.vm_set:
            m.vm_set = self.vm_set
        if self.plan:
            m.plan = self.plan
        if self.nics:
            m.nics.extend(nic.to_proto() for nic in self.nics)
        if self.disks:
            m.disks.extend(disk.to_proto() for disk in self.disks)
        return m

    @classmethod
    def from_proto(cls, m: rec.VmSpec) -> VmSpec:
        return cls(
            VmRef(m.tenant, m.project, m.vm_id), m.uid, m.flavor, m.image,
            Resources(m.vcpus, m.memory_mib, m.disk_gib), dict(m.labels), m.request_id,
            m.create_time_ns, m.delete_time_ns, m.shard, dict(m.node_selector), m.anti_affinity_group,
            RestartPolicy(m.restart_policy) if m.restart_policy in (0, 1) else RestartPolicy.ALWAYS,
            _scope(m.anti_affinity_scope), m.affinity_group, _scope(m.affinity_scope),
            Power(m.power) if m.power in (0, 1) else Power.ON,
            PowerOffMode(m.power_off_mode) if m.power_off_mode in (0, 1) else PowerOffMode.SOFT,
            # 0 is unset (a spec written before the field): the default grace.
            m.power_off_grace_s or DEFAULT_STOP_GRACE_S, m.power_time_ns, m.restarts, m.restart_request_id,
            PowerPolicy(m.power_policy) if m.power_policy in (0, 1) else PowerPolicy.KEEP_STOPPED,
            BootstrapSummary.from_proto(m.bootstrap) if m.HasField("bootstrap") else None, m.vm_set, m.plan,
            tuple(Nic.from_proto(n) for n in m.nics) if m.nics else (),
            tuple(DiskRef.from_proto(d) for d in m.disks) if m.disks else (),
        )

    def to_bytes(self) -> bytes:
        return self.to_proto().SerializeToString()

    @classmethod
    def from_bytes(cls, data: bytes) -> VmSpec:
        return cls.from_proto(rec.VmSpec.FromString(data))

    def marked_deleted(self, at_ns: int) -> VmSpec:
        return replace(self, delete_time_ns=at_ns)

    def stopped(self, mode: PowerOffMode, grace_s: int, at_ns: int) -> VmSpec:
        """This spec after a stop request (StopVm) at ``at_ns``: a running VM's is
        OFF with ``mode`` and ``grace_s``. One already OFF stays as it is (a retry, or
        a second stop), except that a HARD stop replaces a SOFT one (a guest that does
        not shut down is forced off at once, by the same request: ``power_time_ns``
        kept); a SOFT stop never softens a HARD one."""
        if self.power is Power.OFF:
            if mode is PowerOffMode.HARD and self.power_off_mode is not PowerOffMode.HARD:
                return replace(self, power_off_mode=PowerOffMode.HARD)
            return self
        return replace(self, power=Power.OFF, power_off_mode=mode, power_off_grace_s=grace_s, power_time_ns=at_ns)


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
    # Written by the host's agent:
    addresses: tuple[Address, ...] = ()
    conditions: tuple[Condition, ...] = ()  # besides reason/message (Scheduled or Ready False)
    power_time_ns: int = 0  # the power request (VmSpec.power_time_ns) applied
    restarts: int = 0  # restarts applied (VmSpec.restarts)
    bootstrap: BootstrapState = BootstrapState.STORED
    observed_revision: int = 0  # the binding revision whose desired state the agent made true

    def to_bytes(self) -> bytes:
        return rec.VmStatus(
            state=int(self.state), host=self.host, reason=self.reason, message=self.message,
            update_time_ns=self.update_time_ns, accepted_time_ns=self.accepted_time_ns,
            addresses=[a.to_proto() for a in self.addresses], conditions=[c.to_proto() for c in self.conditions],
            power_time_ns=self.power_time_ns, restarts=self.restarts, bootstrap_state=int(self.bootstrap),
            observed_revision=self.observed_revision,
        ).SerializeToString()

    @classmethod
    def from_bytes(cls, data: bytes) -> VmStatus:
        m = rec.VmStatus.FromString(data)
        return cls(VmState(m.state), m.host, m.reason, m.message, m.update_time_ns, m.accepted_time_ns,
                   tuple(Address.from_proto(a) for a in m.addresses),
                   tuple(Condition.from_proto(c) for c in m.conditions), m.power_time_ns, m.restarts,
                   BootstrapState(m.bootstrap_state) if m.bootstrap_state in (0, 1, 2) else BootstrapState.STORED,
                   m.observed_revision)


class VmSetState(enum.IntEnum):
    """Values match quanta.v1.VmSet.State shifted by one (stored 0 is PENDING)."""

    PENDING = 0
    PLACED = 1
    FAILED = 2


@dataclass(frozen=True, slots=True)
class VmSetRef:
    tenant: str
    project: str
    set_id: str

    @property
    def name(self) -> str:
        return f"tenants/{self.tenant}/projects/{self.project}/vmSets/{self.set_id}"

    @classmethod
    def from_name(cls, name: str) -> VmSetRef | None:
        """The ref a ``name`` stands for, or None if it is not shaped like one
        (no validation of the ids: this reads names the system wrote itself)."""
        parts = name.split("/")
        if len(parts) == 6 and parts[0] == "tenants" and parts[2] == "projects" and parts[4] == "vmSets":
            return cls(parts[1], parts[3], parts[5])
        return None


@dataclass(frozen=True, slots=True)
class VmSet:
    """VMs admitted together (CreateVms, ALL_OR_NOTHING) and placed in one transaction
    or not at all. Written by a frontend at admission (PENDING), then by the scheduler
    shard ``shard`` (every member's): PLACED in the bind's txn, FAILED at the deadline
    (its members removed, their quota released, in one txn), ``reason``/``message``
    the shortfall while PENDING. ``failing``: PENDING between the parts of a failure
    too large for one txn (``SchedulingStore.fail_set``), ``reason``/``message`` the
    failure's; such a set is never bound, only failed (with them)."""

    ref: VmSetRef
    uid: str
    vms: tuple[str, ...]  # member VM ids, as admitted
    shard: int
    state: VmSetState = VmSetState.PENDING
    create_time_ns: int = 0
    deadline_ns: int = 0
    update_time_ns: int = 0
    reason: str = ""
    message: str = ""
    request_id: str = ""
    failing: bool = False

    def member(self, vm_id: str) -> VmRef:
        return VmRef(self.ref.tenant, self.ref.project, vm_id)

    def to_bytes(self) -> bytes:
        return rec.VmSetRecord(
            uid=self.uid, vms=list(self.vms), shard=self.shard, state=int(self.state),
            create_time_ns=self.create_time_ns, deadline_ns=self.deadline_ns, update_time_ns=self.update_time_ns,
            reason=self.reason, message=self.message, request_id=self.request_id,
            failing=self.failing).SerializeToString()

    @classmethod
    def from_bytes(cls, ref: VmSetRef, data: bytes) -> VmSet:
        m = rec.VmSetRecord.FromString(data)
        state = VmSetState(m.state) if m.state in (0, 1, 2) else VmSetState.PENDING
        return cls(ref, m.uid, tuple(m.vms), m.shard, state, m.create_time_ns, m.deadline_ns, m.update_time_ns,
                   m.reason, m.message, m.request_id, m.failing)


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
    networks: frozenset[str] = frozenset()  # network backings (port groups) the host reaches

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
            networks=sorted(self.networks),
        ).SerializeToString()

    @classmethod
    def from_bytes(cls, data: bytes) -> HostRegistration:
        m = rec.HostRegistration.FromString(data)
        overcommit = Overcommit(_stored_ratio(m.vcpu_overcommit), _stored_ratio(m.memory_overcommit),
                                _stored_ratio(m.disk_overcommit))
        return cls(m.host, m.driver, Resources(m.vcpus, m.memory_mib, m.disk_gib), dict(m.labels), m.agent,
                   m.register_time_ns, overcommit, frozenset(m.networks))


def _stored_ratio(ratio: float) -> float:
    # 0 is unset: written by an agent older than the setting, whose driver had already
    # multiplied the capacity it registered; so no overcommit on top. A value no agent
    # writes (negative, NaN) must not stop the readers of every host either.
    return ratio if math.isfinite(ratio) and ratio > 0 else 1.0


@dataclass(frozen=True, slots=True)
class HeldRoom:
    """Room a plan holds on one host (PlanVms with a hold): resources, VM count and the
    anti-affinity host groups of the VMs it is for."""

    resources: Resources = Resources()
    vm_count: int = 0
    groups: Mapping[str, int] = field(default_factory=dict)

    def to_proto(self) -> rec.HeldRoom:
        r = self.resources
        return rec.HeldRoom(vcpus=r.vcpus, memory_mib=r.memory_mib, disk_gib=r.disk_gib, vm_count=self.vm_count,
                            groups=dict(self.groups))

    @classmethod
    def from_proto(cls, m: rec.HeldRoom) -> HeldRoom:
        return cls(Resources(m.vcpus, m.memory_mib, m.disk_gib), m.vm_count, dict(m.groups))


@dataclass(frozen=True, slots=True)
class HostAllocation:
    """Sum of what is bound to a host; changes only with its bindings, in one txn.
    ``holds``: room plans hold on it, by plan id (taken while the plan's hold key
    exists; see controlplane/store/holds.py); carried unchanged by :meth:`plus` and
    :meth:`minus`."""

    resources: Resources = Resources()
    vm_count: int = 0
    groups: Mapping[str, int] = field(default_factory=dict)  # VMs per anti-affinity group
    holds: Mapping[str, HeldRoom] = field(default_factory=dict)

    def plus(self, resources: Resources, count: int = 1, group: str = "") -> HostAllocation:
        return HostAllocation(self.resources + resources, self.vm_count + count,
                              _count(self.groups, group, count), self.holds)

    def minus(self, resources: Resources, count: int = 1, group: str = "") -> HostAllocation:
        return HostAllocation(self.resources - resources, self.vm_count - count,
                              _count(self.groups, group, -count), self.holds)

    def to_bytes(self) -> bytes:
        r = self.resources
        m = rec.HostAllocation(vcpus=r.vcpus, memory_mib=r.memory_mib, disk_gib=r.disk_gib,
                               vm_count=self.vm_count, groups=dict(self.groups))
        for plan, room in self.holds.items():  # (written on every bind: nothing to do without holds)
            m.holds[plan].CopyFrom(room.to_proto())
        return m.SerializeToString()

    @classmethod
    def from_bytes(cls, data: bytes) -> HostAllocation:
        m = rec.HostAllocation.FromString(data)
        holds = {plan: HeldRoom.from_proto(room) for plan, room in m.holds.items()} if m.holds else {}
        return cls(Resources(m.vcpus, m.memory_mib, m.disk_gib), m.vm_count, dict(m.groups), holds)


@dataclass(frozen=True, slots=True)
class PlannedVm:
    vm_id: str
    host: str
    flavor: str
    resources: Resources


@dataclass(frozen=True, slots=True)
class Hold:
    """A plan's hold (holds/{plan}, under a lease that ends at ``expire_ns``): the VMs
    it was made for and the host each was planned on; the room itself is in those
    hosts' allocations (HostAllocation.holds[plan])."""

    tenant: str
    project: str
    plan: str
    vms: tuple[PlannedVm, ...]
    expire_ns: int

    @property
    def name(self) -> str:
        return f"tenants/{self.tenant}/projects/{self.project}/plans/{self.plan}"

    def to_bytes(self) -> bytes:
        return rec.HoldRecord(tenant=self.tenant, project=self.project, plan=self.plan, expire_ns=self.expire_ns,
                              vms=[rec.PlannedVm(vm_id=v.vm_id, host=v.host, flavor=v.flavor,
                                                 vcpus=v.resources.vcpus, memory_mib=v.resources.memory_mib,
                                                 disk_gib=v.resources.disk_gib) for v in self.vms]
                              ).SerializeToString()

    @classmethod
    def from_bytes(cls, data: bytes) -> Hold:
        m = rec.HoldRecord.FromString(data)
        return cls(m.tenant, m.project, m.plan,
                   tuple(PlannedVm(v.vm_id, v.host, v.flavor, Resources(v.vcpus, v.memory_mib, v.disk_gib))
                         for v in m.vms), m.expire_ns)


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
