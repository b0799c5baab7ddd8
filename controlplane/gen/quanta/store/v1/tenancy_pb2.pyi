from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Limits(_message.Message):
    __slots__ = ("vms", "vcpus", "memory_mib", "disk_gib", "data_disks", "data_disk_gib")
    VMS_FIELD_NUMBER: _ClassVar[int]
    VCPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MIB_FIELD_NUMBER: _ClassVar[int]
    DISK_GIB_FIELD_NUMBER: _ClassVar[int]
    DATA_DISKS_FIELD_NUMBER: _ClassVar[int]
    DATA_DISK_GIB_FIELD_NUMBER: _ClassVar[int]
    vms: int
    vcpus: int
    memory_mib: int
    disk_gib: int
    data_disks: int
    data_disk_gib: int
    def __init__(self, vms: _Optional[int] = ..., vcpus: _Optional[int] = ..., memory_mib: _Optional[int] = ..., disk_gib: _Optional[int] = ..., data_disks: _Optional[int] = ..., data_disk_gib: _Optional[int] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("vms", "vcpus", "memory_mib", "disk_gib", "data_disks", "data_disk_gib")
    VMS_FIELD_NUMBER: _ClassVar[int]
    VCPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MIB_FIELD_NUMBER: _ClassVar[int]
    DISK_GIB_FIELD_NUMBER: _ClassVar[int]
    DATA_DISKS_FIELD_NUMBER: _ClassVar[int]
    DATA_DISK_GIB_FIELD_NUMBER: _ClassVar[int]
    vms: int
    vcpus: int
    memory_mib: int
    disk_gib: int
    data_disks: int
    data_disk_gib: int
    def __init__(self, vms: _Optional[int] = ..., vcpus: _Optional[int] = ..., memory_mib: _Optional[int] = ..., disk_gib: _Optional[int] = ..., data_disks: _Optional[int] = ..., data_disk_gib: _Optional[int] = ...) -> None: ...

class TenantRecord(_message.Message):
    __slots__ = ("tenant_id", "display_name", "labels", "quota", "allocated", "create_time_ns", "update_time_ns", "network_backings")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    QUOTA_FIELD_NUMBER: _ClassVar[int]
    ALLOCATED_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    NETWORK_BACKINGS_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    display_name: str
    labels: _containers.ScalarMap[str, str]
    quota: Limits
    allocated: Usage
    create_time_ns: int
    update_time_ns: int
    network_backings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, tenant_id: _Optional[str] = ..., display_name: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., quota: _Optional[_Union[Limits, _Mapping]] = ..., allocated: _Optional[_Union[Usage, _Mapping]] = ..., create_time_ns: _Optional[int] = ..., update_time_ns: _Optional[int] = ..., network_backings: _Optional[_Iterable[str]] = ...) -> None: ...

class ProjectRecord(_message.Message):
    __slots__ = ("tenant_id", "project_id", "display_name", "labels", "quota", "create_time_ns", "update_time_ns", "delete_time_ns")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    QUOTA_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    DELETE_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    project_id: str
    display_name: str
    labels: _containers.ScalarMap[str, str]
    quota: Limits
    create_time_ns: int
    update_time_ns: int
    delete_time_ns: int
    def __init__(self, tenant_id: _Optional[str] = ..., project_id: _Optional[str] = ..., display_name: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., quota: _Optional[_Union[Limits, _Mapping]] = ..., create_time_ns: _Optional[int] = ..., update_time_ns: _Optional[int] = ..., delete_time_ns: _Optional[int] = ...) -> None: ...

class Grant(_message.Message):
    __slots__ = ("role", "tenant", "project")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    role: str
    tenant: str
    project: str
    def __init__(self, role: _Optional[str] = ..., tenant: _Optional[str] = ..., project: _Optional[str] = ...) -> None: ...

class TokenRecord(_message.Message):
    __slots__ = ("token_id", "subject", "grants", "issue_time_ns", "expire_time_ns", "issued_by")
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    GRANTS_FIELD_NUMBER: _ClassVar[int]
    ISSUE_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    ISSUED_BY_FIELD_NUMBER: _ClassVar[int]
    token_id: str
    subject: str
    grants: _containers.RepeatedCompositeFieldContainer[Grant]
    issue_time_ns: int
    expire_time_ns: int
    issued_by: str
    def __init__(self, token_id: _Optional[str] = ..., subject: _Optional[str] = ..., grants: _Optional[_Iterable[_Union[Grant, _Mapping]]] = ..., issue_time_ns: _Optional[int] = ..., expire_time_ns: _Optional[int] = ..., issued_by: _Optional[str] = ...) -> None: ...

class Revocation(_message.Message):
    __slots__ = ("token_id", "revoke_time_ns", "revoked_by")
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    REVOKE_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    REVOKED_BY_FIELD_NUMBER: _ClassVar[int]
    token_id: str
    revoke_time_ns: int
    revoked_by: str
    def __init__(self, token_id: _Optional[str] = ..., revoke_time_ns: _Optional[int] = ..., revoked_by: _Optional[str] = ...) -> None: ...

class SigningKey(_message.Message):
    __slots__ = ("key_id", "private_key_pem", "create_time_ns")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    PRIVATE_KEY_PEM_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    private_key_pem: bytes
    create_time_ns: int
    def __init__(self, key_id: _Optional[str] = ..., private_key_pem: _Optional[bytes] = ..., create_time_ns: _Optional[int] = ...) -> None: ...

class AuditRecord(_message.Message):
    __slots__ = ("time_ns", "subject", "method", "resource", "tenant", "peer", "code", "message", "correlation_id", "token_id")
    TIME_NS_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CORRELATION_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    time_ns: int
    subject: str
    method: str
    resource: str
    tenant: str
    peer: str
    code: str
    message: str
    correlation_id: str
    token_id: str
    def __init__(self, time_ns: _Optional[int] = ..., subject: _Optional[str] = ..., method: _Optional[str] = ..., resource: _Optional[str] = ..., tenant: _Optional[str] = ..., peer: _Optional[str] = ..., code: _Optional[str] = ..., message: _Optional[str] = ..., correlation_id: _Optional[str] = ..., token_id: _Optional[str] = ...) -> None: ...

class RateDemand(_message.Message):
    __slots__ = ("per_second", "time_ns")
    class PerSecondEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    TIME_NS_FIELD_NUMBER: _ClassVar[int]
    per_second: _containers.ScalarMap[str, float]
    time_ns: int
    def __init__(self, per_second: _Optional[_Mapping[str, float]] = ..., time_ns: _Optional[int] = ...) -> None: ...
