from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class VmSpec(_message.Message):
    __slots__ = ("tenant", "project", "vm_id", "uid", "flavor", "image", "labels", "vcpus", "memory_mib", "disk_gib", "request_id", "create_time_ns", "delete_time_ns", "shard", "node_selector", "anti_affinity_group", "restart_policy", "anti_affinity_scope", "affinity_group", "affinity_scope", "power", "power_off_mode", "power_off_grace_s", "power_time_ns", "restarts", "restart_request_id", "power_policy", "bootstrap", "vm_set", "plan", "nics", "disks")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class NodeSelectorEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TENANT_FIELD_NUMBER: _ClassVar[int]
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    FLAVOR_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    VCPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MIB_FIELD_NUMBER: _ClassVar[int]
    DISK_GIB_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    DELETE_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    NODE_SELECTOR_FIELD_NUMBER: _ClassVar[int]
    ANTI_AFFINITY_GROUP_FIELD_NUMBER: _ClassVar[int]
    RESTART_POLICY_FIELD_NUMBER: _ClassVar[int]
    ANTI_AFFINITY_SCOPE_FIELD_NUMBER: _ClassVar[int]
    AFFINITY_GROUP_FIELD_NUMBER: _ClassVar[int]
    AFFINITY_SCOPE_FIELD_NUMBER: _ClassVar[int]
    POWER_FIELD_NUMBER: _ClassVar[int]
    POWER_OFF_MODE_FIELD_NUMBER: _ClassVar[int]
    POWER_OFF_GRACE_S_FIELD_NUMBER: _ClassVar[int]
    POWER_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    RESTARTS_FIELD_NUMBER: _ClassVar[int]
    RESTART_REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    POWER_POLICY_FIELD_NUMBER: _ClassVar[int]
    BOOTSTRAP_FIELD_NUMBER: _ClassVar[int]
    VM_SET_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    NICS_FIELD_NUMBER: _ClassVar[int]
    DISKS_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    project: str
    vm_id: str
    uid: str
    flavor: str
    image: str
    labels: _containers.ScalarMap[str, str]
    vcpus: int
    memory_mib: int
    disk_gib: int
    request_id: str
    create_time_ns: int
    delete_time_ns: int
    shard: int
    node_selector: _containers.ScalarMap[str, str]
    anti_affinity_group: str
    restart_policy: int
    anti_affinity_scope: int
    affinity_group: str
    affinity_scope: int
    power: int
    power_off_mode: int
    power_off_grace_s: int
    power_time_ns: int
    restarts: int
    restart_request_id: str
    power_policy: int
    bootstrap: BootstrapSummary
    vm_set: str
    plan: str
    nics: _containers.RepeatedCompositeFieldContainer[Nic]
    disks: _containers.RepeatedCompositeFieldContainer[DiskRef]
    def __init__(self, tenant: _Optional[str] = ..., project: _Optional[str] = ..., vm_id: _Optional[str] = ..., uid: _Optional[str] = ..., flavor: _Optional[str] = ..., image: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., vcpus: _Optional[int] = ..., memory_mib: _Optional[int] = ..., disk_gib: _Optional[int] = ..., request_id: _Optional[str] = ..., create_time_ns: _Optional[int] = ..., delete_time_ns: _Optional[int] = ..., shard: _Optional[int] = ..., node_selector: _Optional[_Mapping[str, str]] = ..., anti_affinity_group: _Optional[str] = ..., restart_policy: _Optional[int] = ..., anti_affinity_scope: _Optional[int] = ..., affinity_group: _Optional[str] = ..., affinity_scope: _Optional[int] = ..., power: _Optional[int] = ..., power_off_mode: _Optional[int] = ..., power_off_grace_s: _Optional[int] = ..., power_time_ns: _Optional[int] = ..., restarts: _Optional[int] = ..., restart_request_id: _Optional[str] = ..., power_policy: _Optional[int] = ..., bootstrap: _Optional[_Union[BootstrapSummary, _Mapping]] = ..., vm_set: _Optional[str] = ..., plan: _Optional[str] = ..., nics: _Optional[_Iterable[_Union[Nic, _Mapping]]] = ..., disks: _Optional[_Iterable[_Union[DiskRef, _Mapping]]] = ...) -> None: ...

class Nic(_message.Message):
    __slots__ = ("network", "network_uid", "backing", "address_mode", "ip", "prefix_length", "gateway", "dns_servers", "mac")
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    NETWORK_UID_FIELD_NUMBER: _ClassVar[int]
    BACKING_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_MODE_FIELD_NUMBER: _ClassVar[int]
    IP_FIELD_NUMBER: _ClassVar[int]
    PREFIX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_FIELD_NUMBER: _ClassVar[int]
    DNS_SERVERS_FIELD_NUMBER: _ClassVar[int]
    MAC_FIELD_NUMBER: _ClassVar[int]
    network: str
    network_uid: str
    backing: str
    address_mode: int
    ip: str
    prefix_length: int
    gateway: str
    dns_servers: _containers.RepeatedScalarFieldContainer[str]
    mac: str
    def __init__(self, network: _Optional[str] = ..., network_uid: _Optional[str] = ..., backing: _Optional[str] = ..., address_mode: _Optional[int] = ..., ip: _Optional[str] = ..., prefix_length: _Optional[int] = ..., gateway: _Optional[str] = ..., dns_servers: _Optional[_Iterable[str]] = ..., mac: _Optional[str] = ...) -> None: ...

class DiskRef(_message.Message):
    __slots__ = ("disk_id", "uid", "size_gib", "datastore_class")
    DISK_ID_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    SIZE_GIB_FIELD_NUMBER: _ClassVar[int]
    DATASTORE_CLASS_FIELD_NUMBER: _ClassVar[int]
    disk_id: str
    uid: str
    size_gib: int
    datastore_class: str
    def __init__(self, disk_id: _Optional[str] = ..., uid: _Optional[str] = ..., size_gib: _Optional[int] = ..., datastore_class: _Optional[str] = ...) -> None: ...

class NetworkRecord(_message.Message):
    __slots__ = ("tenant", "project", "network_id", "uid", "labels", "description", "backing", "subnet", "create_time_ns", "update_time_ns", "request_id")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TENANT_FIELD_NUMBER: _ClassVar[int]
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    NETWORK_ID_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    BACKING_FIELD_NUMBER: _ClassVar[int]
    SUBNET_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    project: str
    network_id: str
    uid: str
    labels: _containers.ScalarMap[str, str]
    description: str
    backing: str
    subnet: SubnetRecord
    create_time_ns: int
    update_time_ns: int
    request_id: str
    def __init__(self, tenant: _Optional[str] = ..., project: _Optional[str] = ..., network_id: _Optional[str] = ..., uid: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., description: _Optional[str] = ..., backing: _Optional[str] = ..., subnet: _Optional[_Union[SubnetRecord, _Mapping]] = ..., create_time_ns: _Optional[int] = ..., update_time_ns: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class SubnetRecord(_message.Message):
    __slots__ = ("cidr", "gateway", "dns_servers", "range_start", "range_end")
    CIDR_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_FIELD_NUMBER: _ClassVar[int]
    DNS_SERVERS_FIELD_NUMBER: _ClassVar[int]
    RANGE_START_FIELD_NUMBER: _ClassVar[int]
    RANGE_END_FIELD_NUMBER: _ClassVar[int]
    cidr: str
    gateway: str
    dns_servers: _containers.RepeatedScalarFieldContainer[str]
    range_start: str
    range_end: str
    def __init__(self, cidr: _Optional[str] = ..., gateway: _Optional[str] = ..., dns_servers: _Optional[_Iterable[str]] = ..., range_start: _Optional[str] = ..., range_end: _Optional[str] = ...) -> None: ...

class PortRecord(_message.Message):
    __slots__ = ("vm_uid", "ip")
    VM_UID_FIELD_NUMBER: _ClassVar[int]
    IP_FIELD_NUMBER: _ClassVar[int]
    vm_uid: str
    ip: str
    def __init__(self, vm_uid: _Optional[str] = ..., ip: _Optional[str] = ...) -> None: ...

class AddressRecord(_message.Message):
    __slots__ = ("vm", "vm_uid", "gateway")
    VM_FIELD_NUMBER: _ClassVar[int]
    VM_UID_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_FIELD_NUMBER: _ClassVar[int]
    vm: str
    vm_uid: str
    gateway: bool
    def __init__(self, vm: _Optional[str] = ..., vm_uid: _Optional[str] = ..., gateway: _Optional[bool] = ...) -> None: ...

class DiskRecord(_message.Message):
    __slots__ = ("tenant", "project", "disk_id", "uid", "labels", "description", "size_gib", "datastore_class", "create_time_ns", "update_time_ns", "delete_time_ns", "request_id")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TENANT_FIELD_NUMBER: _ClassVar[int]
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    DISK_ID_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    SIZE_GIB_FIELD_NUMBER: _ClassVar[int]
    DATASTORE_CLASS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    DELETE_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    project: str
    disk_id: str
    uid: str
    labels: _containers.ScalarMap[str, str]
    description: str
    size_gib: int
    datastore_class: str
    create_time_ns: int
    update_time_ns: int
    delete_time_ns: int
    request_id: str
    def __init__(self, tenant: _Optional[str] = ..., project: _Optional[str] = ..., disk_id: _Optional[str] = ..., uid: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., description: _Optional[str] = ..., size_gib: _Optional[int] = ..., datastore_class: _Optional[str] = ..., create_time_ns: _Optional[int] = ..., update_time_ns: _Optional[int] = ..., delete_time_ns: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class DiskAttachment(_message.Message):
    __slots__ = ("vm", "vm_uid", "detaching", "attach_time_ns")
    VM_FIELD_NUMBER: _ClassVar[int]
    VM_UID_FIELD_NUMBER: _ClassVar[int]
    DETACHING_FIELD_NUMBER: _ClassVar[int]
    ATTACH_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    vm: str
    vm_uid: str
    detaching: bool
    attach_time_ns: int
    def __init__(self, vm: _Optional[str] = ..., vm_uid: _Optional[str] = ..., detaching: _Optional[bool] = ..., attach_time_ns: _Optional[int] = ...) -> None: ...

class VmSetRecord(_message.Message):
    __slots__ = ("uid", "vms", "shard", "state", "create_time_ns", "deadline_ns", "update_time_ns", "reason", "message", "request_id", "failing")
    UID_FIELD_NUMBER: _ClassVar[int]
    VMS_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_NS_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    FAILING_FIELD_NUMBER: _ClassVar[int]
    uid: str
    vms: _containers.RepeatedScalarFieldContainer[str]
    shard: int
    state: int
    create_time_ns: int
    deadline_ns: int
    update_time_ns: int
    reason: str
    message: str
    request_id: str
    failing: bool
    def __init__(self, uid: _Optional[str] = ..., vms: _Optional[_Iterable[str]] = ..., shard: _Optional[int] = ..., state: _Optional[int] = ..., create_time_ns: _Optional[int] = ..., deadline_ns: _Optional[int] = ..., update_time_ns: _Optional[int] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ..., request_id: _Optional[str] = ..., failing: _Optional[bool] = ...) -> None: ...

class BootstrapSummary(_message.Message):
    __slots__ = ("format", "size_bytes", "sha256")
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    format: int
    size_bytes: int
    sha256: bytes
    def __init__(self, format: _Optional[int] = ..., size_bytes: _Optional[int] = ..., sha256: _Optional[bytes] = ...) -> None: ...

class BootstrapData(_message.Message):
    __slots__ = ("uid", "format", "user_data", "metadata")
    UID_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    USER_DATA_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    uid: str
    format: int
    user_data: bytes
    metadata: bytes
    def __init__(self, uid: _Optional[str] = ..., format: _Optional[int] = ..., user_data: _Optional[bytes] = ..., metadata: _Optional[bytes] = ...) -> None: ...

class Address(_message.Message):
    __slots__ = ("ip", "mac", "network", "family")
    IP_FIELD_NUMBER: _ClassVar[int]
    MAC_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    ip: str
    mac: str
    network: str
    family: int
    def __init__(self, ip: _Optional[str] = ..., mac: _Optional[str] = ..., network: _Optional[str] = ..., family: _Optional[int] = ...) -> None: ...

class Condition(_message.Message):
    __slots__ = ("type", "status", "reason", "message", "time_ns")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TIME_NS_FIELD_NUMBER: _ClassVar[int]
    type: str
    status: str
    reason: str
    message: str
    time_ns: int
    def __init__(self, type: _Optional[str] = ..., status: _Optional[str] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ..., time_ns: _Optional[int] = ...) -> None: ...

class VmStatus(_message.Message):
    __slots__ = ("state", "host", "reason", "message", "update_time_ns", "accepted_time_ns", "addresses", "conditions", "power_time_ns", "restarts", "bootstrap_state", "observed_revision")
    STATE_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    CONDITIONS_FIELD_NUMBER: _ClassVar[int]
    POWER_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    RESTARTS_FIELD_NUMBER: _ClassVar[int]
    BOOTSTRAP_STATE_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_REVISION_FIELD_NUMBER: _ClassVar[int]
    state: int
    host: str
    reason: str
    message: str
    update_time_ns: int
    accepted_time_ns: int
    addresses: _containers.RepeatedCompositeFieldContainer[Address]
    conditions: _containers.RepeatedCompositeFieldContainer[Condition]
    power_time_ns: int
    restarts: int
    bootstrap_state: int
    observed_revision: int
    def __init__(self, state: _Optional[int] = ..., host: _Optional[str] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ..., update_time_ns: _Optional[int] = ..., accepted_time_ns: _Optional[int] = ..., addresses: _Optional[_Iterable[_Union[Address, _Mapping]]] = ..., conditions: _Optional[_Iterable[_Union[Condition, _Mapping]]] = ..., power_time_ns: _Optional[int] = ..., restarts: _Optional[int] = ..., bootstrap_state: _Optional[int] = ..., observed_revision: _Optional[int] = ...) -> None: ...

class Binding(_message.Message):
    __slots__ = ("spec", "host", "delete_time_ns", "zone", "evict_reason", "evict_message")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    DELETE_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    EVICT_REASON_FIELD_NUMBER: _ClassVar[int]
    EVICT_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    spec: VmSpec
    host: str
    delete_time_ns: int
    zone: str
    evict_reason: str
    evict_message: str
    def __init__(self, spec: _Optional[_Union[VmSpec, _Mapping]] = ..., host: _Optional[str] = ..., delete_time_ns: _Optional[int] = ..., zone: _Optional[str] = ..., evict_reason: _Optional[str] = ..., evict_message: _Optional[str] = ...) -> None: ...

class ZoneGroup(_message.Message):
    __slots__ = ("vms",)
    VMS_FIELD_NUMBER: _ClassVar[int]
    vms: int
    def __init__(self, vms: _Optional[int] = ...) -> None: ...

class HostRegistration(_message.Message):
    __slots__ = ("host", "driver", "vcpus", "memory_mib", "disk_gib", "labels", "agent", "register_time_ns", "vcpu_overcommit", "memory_overcommit", "disk_overcommit", "networks")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    HOST_FIELD_NUMBER: _ClassVar[int]
    DRIVER_FIELD_NUMBER: _ClassVar[int]
    VCPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MIB_FIELD_NUMBER: _ClassVar[int]
    DISK_GIB_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    REGISTER_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    VCPU_OVERCOMMIT_FIELD_NUMBER: _ClassVar[int]
    MEMORY_OVERCOMMIT_FIELD_NUMBER: _ClassVar[int]
    DISK_OVERCOMMIT_FIELD_NUMBER: _ClassVar[int]
    NETWORKS_FIELD_NUMBER: _ClassVar[int]
    host: str
    driver: str
    vcpus: int
    memory_mib: int
    disk_gib: int
    labels: _containers.ScalarMap[str, str]
    agent: str
    register_time_ns: int
    vcpu_overcommit: float
    memory_overcommit: float
    disk_overcommit: float
    networks: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, host: _Optional[str] = ..., driver: _Optional[str] = ..., vcpus: _Optional[int] = ..., memory_mib: _Optional[int] = ..., disk_gib: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ..., agent: _Optional[str] = ..., register_time_ns: _Optional[int] = ..., vcpu_overcommit: _Optional[float] = ..., memory_overcommit: _Optional[float] = ..., disk_overcommit: _Optional[float] = ..., networks: _Optional[_Iterable[str]] = ...) -> None: ...

class HostAllocation(_message.Message):
    __slots__ = ("vcpus", "memory_mib", "disk_gib", "vm_count", "groups", "holds")
    class GroupsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class HoldsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: HeldRoom
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[HeldRoom, _Mapping]] = ...) -> None: ...
    VCPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MIB_FIELD_NUMBER: _ClassVar[int]
    DISK_GIB_FIELD_NUMBER: _ClassVar[int]
    VM_COUNT_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    HOLDS_FIELD_NUMBER: _ClassVar[int]
    vcpus: int
    memory_mib: int
    disk_gib: int
    vm_count: int
    groups: _containers.ScalarMap[str, int]
    holds: _containers.MessageMap[str, HeldRoom]
    def __init__(self, vcpus: _Optional[int] = ..., memory_mib: _Optional[int] = ..., disk_gib: _Optional[int] = ..., vm_count: _Optional[int] = ..., groups: _Optional[_Mapping[str, int]] = ..., holds: _Optional[_Mapping[str, HeldRoom]] = ...) -> None: ...

class HeldRoom(_message.Message):
    __slots__ = ("vcpus", "memory_mib", "disk_gib", "vm_count", "groups")
    class GroupsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    VCPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MIB_FIELD_NUMBER: _ClassVar[int]
    DISK_GIB_FIELD_NUMBER: _ClassVar[int]
    VM_COUNT_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    vcpus: int
    memory_mib: int
    disk_gib: int
    vm_count: int
    groups: _containers.ScalarMap[str, int]
    def __init__(self, vcpus: _Optional[int] = ..., memory_mib: _Optional[int] = ..., disk_gib: _Optional[int] = ..., vm_count: _Optional[int] = ..., groups: _Optional[_Mapping[str, int]] = ...) -> None: ...

class HoldRecord(_message.Message):
    __slots__ = ("tenant", "project", "plan", "vms", "expire_ns")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    VMS_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_NS_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    project: str
    plan: str
    vms: _containers.RepeatedCompositeFieldContainer[PlannedVm]
    expire_ns: int
    def __init__(self, tenant: _Optional[str] = ..., project: _Optional[str] = ..., plan: _Optional[str] = ..., vms: _Optional[_Iterable[_Union[PlannedVm, _Mapping]]] = ..., expire_ns: _Optional[int] = ...) -> None: ...

class PlannedVm(_message.Message):
    __slots__ = ("vm_id", "host", "flavor", "vcpus", "memory_mib", "disk_gib")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    FLAVOR_FIELD_NUMBER: _ClassVar[int]
    VCPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MIB_FIELD_NUMBER: _ClassVar[int]
    DISK_GIB_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    host: str
    flavor: str
    vcpus: int
    memory_mib: int
    disk_gib: int
    def __init__(self, vm_id: _Optional[str] = ..., host: _Optional[str] = ..., flavor: _Optional[str] = ..., vcpus: _Optional[int] = ..., memory_mib: _Optional[int] = ..., disk_gib: _Optional[int] = ...) -> None: ...

class Flavor(_message.Message):
    __slots__ = ("name", "vcpus", "memory_mib", "disk_gib")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VCPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MIB_FIELD_NUMBER: _ClassVar[int]
    DISK_GIB_FIELD_NUMBER: _ClassVar[int]
    name: str
    vcpus: int
    memory_mib: int
    disk_gib: int
    def __init__(self, name: _Optional[str] = ..., vcpus: _Optional[int] = ..., memory_mib: _Optional[int] = ..., disk_gib: _Optional[int] = ...) -> None: ...

class Image(_message.Message):
    __slots__ = ("name", "os", "source", "size_gib")
    NAME_FIELD_NUMBER: _ClassVar[int]
    OS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    SIZE_GIB_FIELD_NUMBER: _ClassVar[int]
    name: str
    os: str
    source: str
    size_gib: int
    def __init__(self, name: _Optional[str] = ..., os: _Optional[str] = ..., source: _Optional[str] = ..., size_gib: _Optional[int] = ...) -> None: ...

class RequestRecord(_message.Message):
    __slots__ = ("vm_key", "uid", "fingerprint")
    VM_KEY_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    vm_key: str
    uid: str
    fingerprint: bytes
    def __init__(self, vm_key: _Optional[str] = ..., uid: _Optional[str] = ..., fingerprint: _Optional[bytes] = ...) -> None: ...

class ShardOwner(_message.Message):
    __slots__ = ("owner", "acquire_time_ns")
    OWNER_FIELD_NUMBER: _ClassVar[int]
    ACQUIRE_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    owner: str
    acquire_time_ns: int
    def __init__(self, owner: _Optional[str] = ..., acquire_time_ns: _Optional[int] = ...) -> None: ...

class ClusterConfig(_message.Message):
    __slots__ = ("shards",)
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    shards: int
    def __init__(self, shards: _Optional[int] = ...) -> None: ...

class Tombstone(_message.Message):
    __slots__ = ("reason", "vm", "time_ns")
    REASON_FIELD_NUMBER: _ClassVar[int]
    VM_FIELD_NUMBER: _ClassVar[int]
    TIME_NS_FIELD_NUMBER: _ClassVar[int]
    reason: str
    vm: str
    time_ns: int
    def __init__(self, reason: _Optional[str] = ..., vm: _Optional[str] = ..., time_ns: _Optional[int] = ...) -> None: ...

class OrphanVm(_message.Message):
    __slots__ = ("host", "uid", "vm", "spec", "powered_on", "found_time_ns", "agent")
    HOST_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    VM_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    POWERED_ON_FIELD_NUMBER: _ClassVar[int]
    FOUND_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    host: str
    uid: str
    vm: str
    spec: VmSpec
    powered_on: bool
    found_time_ns: int
    agent: str
    def __init__(self, host: _Optional[str] = ..., uid: _Optional[str] = ..., vm: _Optional[str] = ..., spec: _Optional[_Union[VmSpec, _Mapping]] = ..., powered_on: _Optional[bool] = ..., found_time_ns: _Optional[int] = ..., agent: _Optional[str] = ...) -> None: ...
