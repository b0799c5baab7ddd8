import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from controlplane.gen.quanta.v1 import common_pb2 as _common_pb2
from controlplane.gen.quanta.v1 import vm_pb2 as _vm_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class OrphanVm(_message.Message):
    __slots__ = ("name", "host", "uid", "vm", "resources", "flavor", "image", "powered_on", "found_time", "adoptable", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    VM_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    FLAVOR_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    POWERED_ON_FIELD_NUMBER: _ClassVar[int]
    FOUND_TIME_FIELD_NUMBER: _ClassVar[int]
    ADOPTABLE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    name: str
    host: str
    uid: str
    vm: str
    resources: _common_pb2.Resources
    flavor: str
    image: str
    powered_on: bool
    found_time: _timestamp_pb2.Timestamp
    adoptable: bool
    labels: _containers.ScalarMap[str, str]
    def __init__(self, name: _Optional[str] = ..., host: _Optional[str] = ..., uid: _Optional[str] = ..., vm: _Optional[str] = ..., resources: _Optional[_Union[_common_pb2.Resources, _Mapping]] = ..., flavor: _Optional[str] = ..., image: _Optional[str] = ..., powered_on: _Optional[bool] = ..., found_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., adoptable: _Optional[bool] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ListOrphansRequest(_message.Message):
    __slots__ = ("host", "page_size", "page_token")
    HOST_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    host: str
    page_size: int
    page_token: str
    def __init__(self, host: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListOrphansResponse(_message.Message):
    __slots__ = ("orphans", "next_page_token")
    ORPHANS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    orphans: _containers.RepeatedCompositeFieldContainer[OrphanVm]
    next_page_token: str
    def __init__(self, orphans: _Optional[_Iterable[_Union[OrphanVm, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class AdoptOrphanRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DestroyOrphanRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class Host(_message.Message):
    __slots__ = ("name", "state", "capacity", "allocated", "vm_count", "labels", "driver", "register_time", "resource_version", "maintenance", "overcommit", "allocatable", "networks")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[Host.State]
        READY: _ClassVar[Host.State]
        MISSING: _ClassVar[Host.State]
        DEAD: _ClassVar[Host.State]
        DRAINING: _ClassVar[Host.State]
        DRAINED: _ClassVar[Host.State]
    STATE_UNSPECIFIED: Host.State
    READY: Host.State
    MISSING: Host.State
    DEAD: Host.State
    DRAINING: Host.State
    DRAINED: Host.State
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    ALLOCATED_FIELD_NUMBER: _ClassVar[int]
    VM_COUNT_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    DRIVER_FIELD_NUMBER: _ClassVar[int]
    REGISTER_TIME_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_VERSION_FIELD_NUMBER: _ClassVar[int]
    MAINTENANCE_FIELD_NUMBER: _ClassVar[int]
    OVERCOMMIT_FIELD_NUMBER: _ClassVar[int]
    ALLOCATABLE_FIELD_NUMBER: _ClassVar[int]
    NETWORKS_FIELD_NUMBER: _ClassVar[int]
    name: str
    state: Host.State
    capacity: _common_pb2.Resources
    allocated: _common_pb2.Resources
    vm_count: int
    labels: _containers.ScalarMap[str, str]
    driver: str
    register_time: _timestamp_pb2.Timestamp
    resource_version: int
    maintenance: bool
    overcommit: Overcommit
    allocatable: _common_pb2.Resources
    networks: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., state: _Optional[_Union[Host.State, str]] = ..., capacity: _Optional[_Union[_common_pb2.Resources, _Mapping]] = ..., allocated: _Optional[_Union[_common_pb2.Resources, _Mapping]] = ..., vm_count: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ..., driver: _Optional[str] = ..., register_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., resource_version: _Optional[int] = ..., maintenance: _Optional[bool] = ..., overcommit: _Optional[_Union[Overcommit, _Mapping]] = ..., allocatable: _Optional[_Union[_common_pb2.Resources, _Mapping]] = ..., networks: _Optional[_Iterable[str]] = ...) -> None: ...

class Overcommit(_message.Message):
    __slots__ = ("vcpus", "memory", "disk")
    VCPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    DISK_FIELD_NUMBER: _ClassVar[int]
    vcpus: float
    memory: float
    disk: float
    def __init__(self, vcpus: _Optional[float] = ..., memory: _Optional[float] = ..., disk: _Optional[float] = ...) -> None: ...

class GetHostRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListHostsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListHostsResponse(_message.Message):
    __slots__ = ("hosts", "next_page_token", "resource_version")
    HOSTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_VERSION_FIELD_NUMBER: _ClassVar[int]
    hosts: _containers.RepeatedCompositeFieldContainer[Host]
    next_page_token: str
    resource_version: int
    def __init__(self, hosts: _Optional[_Iterable[_Union[Host, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., resource_version: _Optional[int] = ...) -> None: ...

class SetMaintenanceRequest(_message.Message):
    __slots__ = ("name", "maintenance")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MAINTENANCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    maintenance: bool
    def __init__(self, name: _Optional[str] = ..., maintenance: _Optional[bool] = ...) -> None: ...

class DrainHostRequest(_message.Message):
    __slots__ = ("name", "timeout")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    name: str
    timeout: _duration_pb2.Duration
    def __init__(self, name: _Optional[str] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class DeleteHostRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class WatchHostsRequest(_message.Message):
    __slots__ = ("resource_version",)
    RESOURCE_VERSION_FIELD_NUMBER: _ClassVar[int]
    resource_version: int
    def __init__(self, resource_version: _Optional[int] = ...) -> None: ...

class HostEvent(_message.Message):
    __slots__ = ("type", "host", "resource_version")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_VERSION_FIELD_NUMBER: _ClassVar[int]
    type: _common_pb2.EventType
    host: Host
    resource_version: int
    def __init__(self, type: _Optional[_Union[_common_pb2.EventType, str]] = ..., host: _Optional[_Union[Host, _Mapping]] = ..., resource_version: _Optional[int] = ...) -> None: ...
