import datetime

from google.protobuf import field_mask_pb2 as _field_mask_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from controlplane.gen.quanta.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Disk(_message.Message):
    __slots__ = ("name", "uid", "labels", "description", "size_gib", "datastore_class", "state", "vm", "create_time", "update_time", "etag", "resource_version")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[Disk.State]
        AVAILABLE: _ClassVar[Disk.State]
        ATTACHED: _ClassVar[Disk.State]
        DETACHING: _ClassVar[Disk.State]
        DELETING: _ClassVar[Disk.State]
    STATE_UNSPECIFIED: Disk.State
    AVAILABLE: Disk.State
    ATTACHED: Disk.State
    DETACHING: Disk.State
    DELETING: Disk.State
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    SIZE_GIB_FIELD_NUMBER: _ClassVar[int]
    DATASTORE_CLASS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    VM_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    uid: str
    labels: _containers.ScalarMap[str, str]
    description: str
    size_gib: int
    datastore_class: str
    state: Disk.State
    vm: str
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    etag: str
    resource_version: int
    def __init__(self, name: _Optional[str] = ..., uid: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., description: _Optional[str] = ..., size_gib: _Optional[int] = ..., datastore_class: _Optional[str] = ..., state: _Optional[_Union[Disk.State, str]] = ..., vm: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., etag: _Optional[str] = ..., resource_version: _Optional[int] = ...) -> None: ...

class CreateDiskRequest(_message.Message):
    __slots__ = ("parent", "disk_id", "disk", "request_id")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    DISK_ID_FIELD_NUMBER: _ClassVar[int]
    DISK_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    parent: str
    disk_id: str
    disk: Disk
    request_id: str
    def __init__(self, parent: _Optional[str] = ..., disk_id: _Optional[str] = ..., disk: _Optional[_Union[Disk, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class GetDiskRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListDisksRequest(_message.Message):
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

class ListDisksResponse(_message.Message):
    __slots__ = ("disks", "next_page_token", "resource_version")
    DISKS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_VERSION_FIELD_NUMBER: _ClassVar[int]
    disks: _containers.RepeatedCompositeFieldContainer[Disk]
    next_page_token: str
    resource_version: int
    def __init__(self, disks: _Optional[_Iterable[_Union[Disk, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., resource_version: _Optional[int] = ...) -> None: ...

class UpdateDiskRequest(_message.Message):
    __slots__ = ("disk", "update_mask")
    DISK_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    disk: Disk
    update_mask: _field_mask_pb2.FieldMask
    def __init__(self, disk: _Optional[_Union[Disk, _Mapping]] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ...) -> None: ...

class DeleteDiskRequest(_message.Message):
    __slots__ = ("name", "etag")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    name: str
    etag: str
    def __init__(self, name: _Optional[str] = ..., etag: _Optional[str] = ...) -> None: ...

class WatchDisksRequest(_message.Message):
    __slots__ = ("parent", "resource_version", "label_selector")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_VERSION_FIELD_NUMBER: _ClassVar[int]
    LABEL_SELECTOR_FIELD_NUMBER: _ClassVar[int]
    parent: str
    resource_version: int
    label_selector: str
    def __init__(self, parent: _Optional[str] = ..., resource_version: _Optional[int] = ..., label_selector: _Optional[str] = ...) -> None: ...

class DiskEvent(_message.Message):
    __slots__ = ("type", "disk", "resource_version")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    DISK_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_VERSION_FIELD_NUMBER: _ClassVar[int]
    type: _common_pb2.EventType
    disk: Disk
    resource_version: int
    def __init__(self, type: _Optional[_Union[_common_pb2.EventType, str]] = ..., disk: _Optional[_Union[Disk, _Mapping]] = ..., resource_version: _Optional[int] = ...) -> None: ...
