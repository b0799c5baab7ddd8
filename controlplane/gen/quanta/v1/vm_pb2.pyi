import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import field_mask_pb2 as _field_mask_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from controlplane.gen.quanta.v1 import common_pb2 as _common_pb2
from controlplane.gen.quanta.v1 import tenancy_pb2 as _tenancy_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PowerOffMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    POWER_OFF_MODE_UNSPECIFIED: _ClassVar[PowerOffMode]
    SOFT: _ClassVar[PowerOffMode]
    HARD: _ClassVar[PowerOffMode]
POWER_OFF_MODE_UNSPECIFIED: PowerOffMode
SOFT: PowerOffMode
HARD: PowerOffMode

class NetworkInterface(_message.Message):
    __slots__ = ("network", "address_mode", "ip", "prefix_length", "gateway", "dns_servers", "backing", "mac_address")
    class AddressMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        ADDRESS_MODE_UNSPECIFIED: _ClassVar[NetworkInterface.AddressMode]
        DHCP: _ClassVar[NetworkInterface.AddressMode]
        STATIC_POOL: _ClassVar[NetworkInterface.AddressMode]
        STATIC: _ClassVar[NetworkInterface.AddressMode]
    ADDRESS_MODE_UNSPECIFIED: NetworkInterface.AddressMode
    DHCP: NetworkInterface.AddressMode
    STATIC_POOL: NetworkInterface.AddressMode
    STATIC: NetworkInterface.AddressMode
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_MODE_FIELD_NUMBER: _ClassVar[int]
    IP_FIELD_NUMBER: _ClassVar[int]
    PREFIX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_FIELD_NUMBER: _ClassVar[int]
    DNS_SERVERS_FIELD_NUMBER: _ClassVar[int]
    BACKING_FIELD_NUMBER: _ClassVar[int]
    MAC_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    network: str
    address_mode: NetworkInterface.AddressMode
    ip: str
    prefix_length: int
    gateway: str
    dns_servers: _containers.RepeatedScalarFieldContainer[str]
    backing: str
    mac_address: str
    def __init__(self, network: _Optional[str] = ..., address_mode: _Optional[_Union[NetworkInterface.AddressMode, str]] = ..., ip: _Optional[str] = ..., prefix_length: _Optional[int] = ..., gateway: _Optional[str] = ..., dns_servers: _Optional[_Iterable[str]] = ..., backing: _Optional[str] = ..., mac_address: _Optional[str] = ...) -> None: ...

class AttachDiskRequest(_message.Message):
    __slots__ = ("name", "disk", "etag")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DISK_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    name: str
    disk: str
    etag: str
    def __init__(self, name: _Optional[str] = ..., disk: _Optional[str] = ..., etag: _Optional[str] = ...) -> None: ...

class DetachDiskRequest(_message.Message):
    __slots__ = ("name", "disk", "etag")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DISK_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    name: str
    disk: str
    etag: str
    def __init__(self, name: _Optional[str] = ..., disk: _Optional[str] = ..., etag: _Optional[str] = ...) -> None: ...

class Address(_message.Message):
    __slots__ = ("ip", "mac", "network", "family")
    class Family(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        FAMILY_UNSPECIFIED: _ClassVar[Address.Family]
        IPV4: _ClassVar[Address.Family]
        IPV6: _ClassVar[Address.Family]
    FAMILY_UNSPECIFIED: Address.Family
    IPV4: Address.Family
    IPV6: Address.Family
    IP_FIELD_NUMBER: _ClassVar[int]
    MAC_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    ip: str
    mac: str
    network: str
    family: Address.Family
    def __init__(self, ip: _Optional[str] = ..., mac: _Optional[str] = ..., network: _Optional[str] = ..., family: _Optional[_Union[Address.Family, str]] = ...) -> None: ...

class Bootstrap(_message.Message):
    __slots__ = ("user_data", "format", "metadata", "size_bytes", "sha256", "state")
    class Format(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        FORMAT_UNSPECIFIED: _ClassVar[Bootstrap.Format]
        CLOUD_INIT: _ClassVar[Bootstrap.Format]
        IGNITION: _ClassVar[Bootstrap.Format]
    FORMAT_UNSPECIFIED: Bootstrap.Format
    CLOUD_INIT: Bootstrap.Format
    IGNITION: Bootstrap.Format
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[Bootstrap.State]
        STORED: _ClassVar[Bootstrap.State]
        DELIVERED: _ClassVar[Bootstrap.State]
        CLEARED: _ClassVar[Bootstrap.State]
    STATE_UNSPECIFIED: Bootstrap.State
    STORED: Bootstrap.State
    DELIVERED: Bootstrap.State
    CLEARED: Bootstrap.State
    USER_DATA_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    user_data: bytes
    format: Bootstrap.Format
    metadata: BootstrapMetadata
    size_bytes: int
    sha256: str
    state: Bootstrap.State
    def __init__(self, user_data: _Optional[bytes] = ..., format: _Optional[_Union[Bootstrap.Format, str]] = ..., metadata: _Optional[_Union[BootstrapMetadata, _Mapping]] = ..., size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ..., state: _Optional[_Union[Bootstrap.State, str]] = ...) -> None: ...

class BootstrapMetadata(_message.Message):
    __slots__ = ("instance_id", "hostname", "ssh_authorized_keys", "values")
    class ValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    SSH_AUTHORIZED_KEYS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    hostname: str
    ssh_authorized_keys: _containers.RepeatedScalarFieldContainer[str]
    values: _containers.ScalarMap[str, str]
    def __init__(self, instance_id: _Optional[str] = ..., hostname: _Optional[str] = ..., ssh_authorized_keys: _Optional[_Iterable[str]] = ..., values: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Vm(_message.Message):
    __slots__ = ("name", "uid", "flavor", "image", "labels", "resources", "state", "host", "conditions", "create_time", "update_time", "delete_time", "etag", "resource_version", "node_selector", "anti_affinity_group", "restart_policy", "anti_affinity_scope", "affinity_group", "affinity_scope", "power", "power_policy", "bootstrap", "addresses", "reconciling", "vm_set", "nics", "disks")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[Vm.State]
        PENDING: _ClassVar[Vm.State]
        SCHEDULED: _ClassVar[Vm.State]
        CREATING: _ClassVar[Vm.State]
        RUNNING: _ClassVar[Vm.State]
        STOPPED: _ClassVar[Vm.State]
        ERROR: _ClassVar[Vm.State]
        DELETING: _ClassVar[Vm.State]
    STATE_UNSPECIFIED: Vm.State
    PENDING: Vm.State
    SCHEDULED: Vm.State
    CREATING: Vm.State
    RUNNING: Vm.State
    STOPPED: Vm.State
    ERROR: Vm.State
    DELETING: Vm.State
    class RestartPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        RESTART_POLICY_UNSPECIFIED: _ClassVar[Vm.RestartPolicy]
        ALWAYS: _ClassVar[Vm.RestartPolicy]
        NEVER: _ClassVar[Vm.RestartPolicy]
    RESTART_POLICY_UNSPECIFIED: Vm.RestartPolicy
    ALWAYS: Vm.RestartPolicy
    NEVER: Vm.RestartPolicy
    class Scope(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        SCOPE_UNSPECIFIED: _ClassVar[Vm.Scope]
        HOST: _ClassVar[Vm.Scope]
        ZONE: _ClassVar[Vm.Scope]
    SCOPE_UNSPECIFIED: Vm.Scope
    HOST: Vm.Scope
    ZONE: Vm.Scope
    class Power(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        POWER_UNSPECIFIED: _ClassVar[Vm.Power]
        POWERED_ON: _ClassVar[Vm.Power]
        POWERED_OFF: _ClassVar[Vm.Power]
    POWER_UNSPECIFIED: Vm.Power
    POWERED_ON: Vm.Power
    POWERED_OFF: Vm.Power
    class PowerPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        POWER_POLICY_UNSPECIFIED: _ClassVar[Vm.PowerPolicy]
        KEEP_STOPPED: _ClassVar[Vm.PowerPolicy]
        KEEP_RUNNING: _ClassVar[Vm.PowerPolicy]
    POWER_POLICY_UNSPECIFIED: Vm.PowerPolicy
    KEEP_STOPPED: Vm.PowerPolicy
    KEEP_RUNNING: Vm.PowerPolicy
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
    NAME_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    FLAVOR_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    CONDITIONS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    DELETE_TIME_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_VERSION_FIELD_NUMBER: _ClassVar[int]
    NODE_SELECTOR_FIELD_NUMBER: _ClassVar[int]
    ANTI_AFFINITY_GROUP_FIELD_NUMBER: _ClassVar[int]
    RESTART_POLICY_FIELD_NUMBER: _ClassVar[int]
    ANTI_AFFINITY_SCOPE_FIELD_NUMBER: _ClassVar[int]
    AFFINITY_GROUP_FIELD_NUMBER: _ClassVar[int]
    AFFINITY_SCOPE_FIELD_NUMBER: _ClassVar[int]
    POWER_FIELD_NUMBER: _ClassVar[int]
    POWER_POLICY_FIELD_NUMBER: _ClassVar[int]
    BOOTSTRAP_FIELD_NUMBER: _ClassVar[int]
    ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    RECONCILING_FIELD_NUMBER: _ClassVar[int]
    VM_SET_FIELD_NUMBER: _ClassVar[int]
    NICS_FIELD_NUMBER: _ClassVar[int]
    DISKS_FIELD_NUMBER: _ClassVar[int]
    name: str
    uid: str
    flavor: str
    image: str
    labels: _containers.ScalarMap[str, str]
    resources: _common_pb2.Resources
    state: Vm.State
    host: str
    conditions: _containers.RepeatedCompositeFieldContainer[_common_pb2.Condition]
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    delete_time: _timestamp_pb2.Timestamp
    etag: str
    resource_version: int
    node_selector: _containers.ScalarMap[str, str]
    anti_affinity_group: str
    restart_policy: Vm.RestartPolicy
    anti_affinity_scope: Vm.Scope
    affinity_group: str
    affinity_scope: Vm.Scope
    power: Vm.Power
    power_policy: Vm.PowerPolicy
    bootstrap: Bootstrap
    addresses: _containers.RepeatedCompositeFieldContainer[Address]
    reconciling: bool
    vm_set: str
    nics: _containers.RepeatedCompositeFieldContainer[NetworkInterface]
    disks: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., uid: _Optional[str] = ..., flavor: _Optional[str] = ..., image: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., resources: _Optional[_Union[_common_pb2.Resources, _Mapping]] = ..., state: _Optional[_Union[Vm.State, str]] = ..., host: _Optional[str] = ..., conditions: _Optional[_Iterable[_Union[_common_pb2.Condition, _Mapping]]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., delete_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., etag: _Optional[str] = ..., resource_version: _Optional[int] = ..., node_selector: _Optional[_Mapping[str, str]] = ..., anti_affinity_group: _Optional[str] = ..., restart_policy: _Optional[_Union[Vm.RestartPolicy, str]] = ..., anti_affinity_scope: _Optional[_Union[Vm.Scope, str]] = ..., affinity_group: _Optional[str] = ..., affinity_scope: _Optional[_Union[Vm.Scope, str]] = ..., power: _Optional[_Union[Vm.Power, str]] = ..., power_policy: _Optional[_Union[Vm.PowerPolicy, str]] = ..., bootstrap: _Optional[_Union[Bootstrap, _Mapping]] = ..., addresses: _Optional[_Iterable[_Union[Address, _Mapping]]] = ..., reconciling: _Optional[bool] = ..., vm_set: _Optional[str] = ..., nics: _Optional[_Iterable[_Union[NetworkInterface, _Mapping]]] = ..., disks: _Optional[_Iterable[str]] = ...) -> None: ...

class CreateVmRequest(_message.Message):
    __slots__ = ("parent", "vm_id", "vm", "request_id", "validate_only")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    VM_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    VALIDATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    parent: str
    vm_id: str
    vm: Vm
    request_id: str
    validate_only: bool
    def __init__(self, parent: _Optional[str] = ..., vm_id: _Optional[str] = ..., vm: _Optional[_Union[Vm, _Mapping]] = ..., request_id: _Optional[str] = ..., validate_only: _Optional[bool] = ...) -> None: ...

class CreateVmsRequest(_message.Message):
    __slots__ = ("parent", "requests", "mode", "set_id", "request_id", "deadline", "validate_only", "plan")
    class Mode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        MODE_UNSPECIFIED: _ClassVar[CreateVmsRequest.Mode]
        INDEPENDENT: _ClassVar[CreateVmsRequest.Mode]
        ALL_OR_NOTHING: _ClassVar[CreateVmsRequest.Mode]
    MODE_UNSPECIFIED: CreateVmsRequest.Mode
    INDEPENDENT: CreateVmsRequest.Mode
    ALL_OR_NOTHING: CreateVmsRequest.Mode
    PARENT_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    SET_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_FIELD_NUMBER: _ClassVar[int]
    VALIDATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    parent: str
    requests: _containers.RepeatedCompositeFieldContainer[CreateVmRequest]
    mode: CreateVmsRequest.Mode
    set_id: str
    request_id: str
    deadline: _duration_pb2.Duration
    validate_only: bool
    plan: str
    def __init__(self, parent: _Optional[str] = ..., requests: _Optional[_Iterable[_Union[CreateVmRequest, _Mapping]]] = ..., mode: _Optional[_Union[CreateVmsRequest.Mode, str]] = ..., set_id: _Optional[str] = ..., request_id: _Optional[str] = ..., deadline: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., validate_only: _Optional[bool] = ..., plan: _Optional[str] = ...) -> None: ...

class PlanVmsRequest(_message.Message):
    __slots__ = ("parent", "requests", "hold", "request_id")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    HOLD_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    parent: str
    requests: _containers.RepeatedCompositeFieldContainer[CreateVmRequest]
    hold: _duration_pb2.Duration
    request_id: str
    def __init__(self, parent: _Optional[str] = ..., requests: _Optional[_Iterable[_Union[CreateVmRequest, _Mapping]]] = ..., hold: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class PlanVmsResponse(_message.Message):
    __slots__ = ("placements", "fits", "quota_headroom", "plan", "expire_time")
    PLACEMENTS_FIELD_NUMBER: _ClassVar[int]
    FITS_FIELD_NUMBER: _ClassVar[int]
    QUOTA_HEADROOM_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    placements: _containers.RepeatedCompositeFieldContainer[VmPlacement]
    fits: bool
    quota_headroom: _tenancy_pb2.ResourceUsage
    plan: str
    expire_time: _timestamp_pb2.Timestamp
    def __init__(self, placements: _Optional[_Iterable[_Union[VmPlacement, _Mapping]]] = ..., fits: _Optional[bool] = ..., quota_headroom: _Optional[_Union[_tenancy_pb2.ResourceUsage, _Mapping]] = ..., plan: _Optional[str] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class VmPlacement(_message.Message):
    __slots__ = ("vm", "host", "filtered", "message", "reason")
    class FilteredEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    VM_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    FILTERED_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    vm: str
    host: str
    filtered: _containers.ScalarMap[str, int]
    message: str
    reason: str
    def __init__(self, vm: _Optional[str] = ..., host: _Optional[str] = ..., filtered: _Optional[_Mapping[str, int]] = ..., message: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class CreateVmsResponse(_message.Message):
    __slots__ = ("results", "set")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    SET_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[CreateVmsResult]
    set: VmSet
    def __init__(self, results: _Optional[_Iterable[_Union[CreateVmsResult, _Mapping]]] = ..., set: _Optional[_Union[VmSet, _Mapping]] = ...) -> None: ...

class CreateVmsResult(_message.Message):
    __slots__ = ("vm", "code", "reason", "message")
    VM_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    vm: Vm
    code: int
    reason: str
    message: str
    def __init__(self, vm: _Optional[_Union[Vm, _Mapping]] = ..., code: _Optional[int] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class VmSet(_message.Message):
    __slots__ = ("name", "uid", "state", "vms", "conditions", "create_time", "deadline_time", "update_time", "resource_version")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[VmSet.State]
        PENDING: _ClassVar[VmSet.State]
        PLACED: _ClassVar[VmSet.State]
        FAILED: _ClassVar[VmSet.State]
    STATE_UNSPECIFIED: VmSet.State
    PENDING: VmSet.State
    PLACED: VmSet.State
    FAILED: VmSet.State
    NAME_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    VMS_FIELD_NUMBER: _ClassVar[int]
    CONDITIONS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    uid: str
    state: VmSet.State
    vms: _containers.RepeatedScalarFieldContainer[str]
    conditions: _containers.RepeatedCompositeFieldContainer[_common_pb2.Condition]
    create_time: _timestamp_pb2.Timestamp
    deadline_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    resource_version: int
    def __init__(self, name: _Optional[str] = ..., uid: _Optional[str] = ..., state: _Optional[_Union[VmSet.State, str]] = ..., vms: _Optional[_Iterable[str]] = ..., conditions: _Optional[_Iterable[_Union[_common_pb2.Condition, _Mapping]]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., deadline_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., resource_version: _Optional[int] = ...) -> None: ...

class GetVmSetRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetVmRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListVmsRequest(_message.Message):
    __slots__ = ("parent", "page_size", "page_token", "label_selector")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    LABEL_SELECTOR_FIELD_NUMBER: _ClassVar[int]
    parent: str
    page_size: int
    page_token: str
    label_selector: str
    def __init__(self, parent: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., label_selector: _Optional[str] = ...) -> None: ...

class ListVmsResponse(_message.Message):
    __slots__ = ("vms", "next_page_token", "resource_version")
    VMS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_VERSION_FIELD_NUMBER: _ClassVar[int]
    vms: _containers.RepeatedCompositeFieldContainer[Vm]
    next_page_token: str
    resource_version: int
    def __init__(self, vms: _Optional[_Iterable[_Union[Vm, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., resource_version: _Optional[int] = ...) -> None: ...

class DeleteVmRequest(_message.Message):
    __slots__ = ("name", "etag", "delete_disks")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    DELETE_DISKS_FIELD_NUMBER: _ClassVar[int]
    name: str
    etag: str
    delete_disks: bool
    def __init__(self, name: _Optional[str] = ..., etag: _Optional[str] = ..., delete_disks: _Optional[bool] = ...) -> None: ...

class WatchVmsRequest(_message.Message):
    __slots__ = ("parent", "resource_version", "label_selector")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_VERSION_FIELD_NUMBER: _ClassVar[int]
    LABEL_SELECTOR_FIELD_NUMBER: _ClassVar[int]
    parent: str
    resource_version: int
    label_selector: str
    def __init__(self, parent: _Optional[str] = ..., resource_version: _Optional[int] = ..., label_selector: _Optional[str] = ...) -> None: ...

class VmEvent(_message.Message):
    __slots__ = ("type", "vm", "resource_version")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    VM_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_VERSION_FIELD_NUMBER: _ClassVar[int]
    type: _common_pb2.EventType
    vm: Vm
    resource_version: int
    def __init__(self, type: _Optional[_Union[_common_pb2.EventType, str]] = ..., vm: _Optional[_Union[Vm, _Mapping]] = ..., resource_version: _Optional[int] = ...) -> None: ...

class WatchVmBatchesRequest(_message.Message):
    __slots__ = ("parent", "resource_version", "label_selector")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_VERSION_FIELD_NUMBER: _ClassVar[int]
    LABEL_SELECTOR_FIELD_NUMBER: _ClassVar[int]
    parent: str
    resource_version: int
    label_selector: str
    def __init__(self, parent: _Optional[str] = ..., resource_version: _Optional[int] = ..., label_selector: _Optional[str] = ...) -> None: ...

class VmEventBatch(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[VmEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[VmEvent, _Mapping]]] = ...) -> None: ...

class UpdateVmRequest(_message.Message):
    __slots__ = ("vm", "update_mask")
    VM_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    vm: Vm
    update_mask: _field_mask_pb2.FieldMask
    def __init__(self, vm: _Optional[_Union[Vm, _Mapping]] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ...) -> None: ...

class StartVmRequest(_message.Message):
    __slots__ = ("name", "etag")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    name: str
    etag: str
    def __init__(self, name: _Optional[str] = ..., etag: _Optional[str] = ...) -> None: ...

class StopVmRequest(_message.Message):
    __slots__ = ("name", "mode", "grace", "etag")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    GRACE_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    name: str
    mode: PowerOffMode
    grace: _duration_pb2.Duration
    etag: str
    def __init__(self, name: _Optional[str] = ..., mode: _Optional[_Union[PowerOffMode, str]] = ..., grace: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., etag: _Optional[str] = ...) -> None: ...

class RestartVmRequest(_message.Message):
    __slots__ = ("name", "mode", "grace", "etag", "request_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    GRACE_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    mode: PowerOffMode
    grace: _duration_pb2.Duration
    etag: str
    request_id: str
    def __init__(self, name: _Optional[str] = ..., mode: _Optional[_Union[PowerOffMode, str]] = ..., grace: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., etag: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...
