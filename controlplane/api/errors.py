"""The API's error model: one exception type that becomes a rich ``google.rpc.Status``.

Handlers raise :class:`ApiError` (usually through the constructors below); the
:class:`~controlplane.api.interceptors.ErrorInterceptor` turns it into a gRPC status
whose trailing metadata (``grpc-status-details-bin``) carries:

- ``google.rpc.ErrorInfo`` — always: ``reason`` (UPPER_SNAKE_CASE, stable, what
  clients branch on), ``domain`` (:data:`DOMAIN`) and string ``metadata``;
- ``google.rpc.BadRequest`` — when there are field violations;
- ``google.rpc.RetryInfo`` — when the client should retry after a delay.

Clients recover all of it with :meth:`ApiError.from_rpc_error`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

DOMAIN = "quanta.v1"

GRPC_DETAILS_METADATA_KEY = "grpc-status-details-bin"

_REASON = re.compile(r"^[A-Z][A-Z0-9_]{0,61}[A-Z0-9]$")
_CODES_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}


class _Status(NamedTuple):
    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, str | bytes], ...]


class Status(_Status, grpc.Status):
    """A concrete :class:`grpc.Status` (code, details, trailing_metadata)."""


class ApiError(Exception):
    """An error to return to the API caller as a rich gRPC status.

    ``reason`` must be UPPER_SNAKE_CASE (at most 63 characters): it is part of the API
    contract, unlike ``message``, which is for humans and may change. ``metadata``
    values must be strings. Raises ValueError for a malformed reason or an OK code
    (these are programming errors).
    """

    code: grpc.StatusCode
    reason: str
    message: str
    metadata: dict[str, str]
    field_violations: list[tuple[str, str]]
    retry_delay_s: float | None

    def __init__(
        self,
        code: grpc.StatusCode,
        reason: str,
        message: str,
        *,
        metadata: Mapping[str, str] | None = None,
        field_violations: Iterable[tuple[str, str]] = (),
        retry_delay_s: float | None = None,
    ) -> None:
        if code is grpc.StatusCode.OK:
            raise ValueError("ApiError needs a non-OK status code")
        if not _REASON.match(reason):
            raise ValueError(f"reason {reason!r} is not UPPER_SNAKE_CASE")
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.metadata = dict(metadata or {})
        self.field_violations = [(str(f), str(d)) for f, d in field_violations]
        self.retry_delay_s = retry_delay_s

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return (
            f"ApiError({self.code.name}, {self.reason!r}, {self.message!r}, metadata={self.metadata!r}, "
            f"field_violations={self.field_violations!r}, retry_delay_s={self.retry_delay_s!r})"
        )

    # --- wire format -------------------------------------------------------------

    def to_status_proto(self) -> status_pb2.Status:
        """The ``google.rpc.Status`` message with ErrorInfo (+ BadRequest, RetryInfo)."""
        details: list[Any] = [
            error_details_pb2.ErrorInfo(reason=self.reason, domain=DOMAIN, metadata=self.metadata)
        ]
        if self.field_violations:
            details.append(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                        for f, d in self.field_violations
                    ]
                )
            )
        if self.retry_delay_s is not None:
            delay = duration_pb2.Duration()
            delay.FromNanoseconds(int(round(max(self.retry_delay_s, 0.0) * 1e9)))
            details.append(error_details_pb2.RetryInfo(retry_delay=delay))
        packed = []
        for detail in details:
            any_msg = any_pb2.Any()
            any_msg.Pack(detail)
            packed.append(any_msg)
        return status_pb2.Status(code=self.code.value[0], message=self.message, details=packed)

    def to_status(self, extra_metadata: Iterable[tuple[str, str | bytes]] = ()) -> grpc.Status:
        """The :class:`grpc.Status` for ``context.abort_with_status``.

        ``extra_metadata`` (e.g. the correlation id) is appended to the trailing metadata
        that carries the encoded status.
        """
        status = rpc_status.to_status(self.to_status_proto())
        extra = tuple(extra_metadata)
        if not extra:
            return status
        return Status(status.code, status.details, tuple(status.trailing_metadata) + extra)

    @classmethod
    def from_status_proto(cls, status: status_pb2.Status) -> ApiError:
        """Rebuilds an ApiError from a ``google.rpc.Status``; unknown details are ignored."""
        code = _CODES_BY_VALUE.get(status.code, grpc.StatusCode.UNKNOWN)
        if code is grpc.StatusCode.OK:
            code = grpc.StatusCode.UNKNOWN
        reason = code.name
        metadata: dict[str, str] = {}
        violations: list[tuple[str, str]] = []
        retry: float | None = None
        for detail in status.details:
            # Unpack is False (and leaves the message alone) when the detail is of another type.
            info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
            info_r = error_details_pb2.RetryInfo()
            if detail.Unpack(info):
                if _REASON.match(info.reason):
                    reason = info.reason
                metadata.update(info.metadata)
            elif detail.Unpack(bad):
                violations.extend((v.field, v.description) for v in bad.field_violations)
            elif detail.Unpack(info_r):
                retry = info_r.retry_delay.ToNanoseconds() / 1e9
        return cls(
            code, reason, status.message, metadata=metadata, field_violations=violations, retry_delay_s=retry
        )

    @classmethod
    def from_rpc_error(cls, err: grpc.RpcError) -> ApiError:
        """Client side: recover the ApiError a server sent.

        Works for a sync ``grpc.RpcError`` (which is also a ``grpc.Call``) and for
        ``grpc.aio.AioRpcError``. Without a rich status (or with one that contradicts
        the call's code) the result has the call's code, ``reason`` equal to the code
        name (e.g. "UNAVAILABLE") and the call's details as message. Never raises.
        """
        code = _call_attr(err, "code") or grpc.StatusCode.UNKNOWN
        if not isinstance(code, grpc.StatusCode) or code is grpc.StatusCode.OK:
            code = grpc.StatusCode.UNKNOWN
        details = _call_attr(err, "details") or ""
        for key, value in _call_attr(err, "trailing_metadata") or ():
            if key != GRPC_DETAILS_METADATA_KEY or not isinstance(value, bytes):
                continue
            try:
                rich = status_pb2.Status.FromString(value)
            except Exception:  # noqa: BLE001 - a corrupt detail must not hide the code
                break
            if rich.code == code.value[0]:
                return cls.from_status_proto(rich)
            break
        return cls(code, code.name, str(details))


def _call_attr(err: object, name: str) -> Any:
    fn = getattr(err, name, None)
    if not callable(fn):
        return None
    try:
        return fn()
    except Exception:  # noqa: BLE001 - a half-built error object; fall back to defaults
        return None


def _kind_reason(kind: str) -> str:
    """"vm" / "Vm" -> "VM", "VmTemplate" / "vm template" -> "VM_TEMPLATE"."""
    snake = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", kind.strip())
    return re.sub(r"[^A-Za-z0-9]+", "_", snake).strip("_").upper() or "RESOURCE"


# --- constructors, one per status the API uses -------------------------------------


def invalid_argument(
    violations: Iterable[tuple[str, str]],
    reason: str = "FIELD_INVALID",
    *,
    metadata: Mapping[str, str] | None = None,
) -> ApiError:
    """INVALID_ARGUMENT listing every ``(field path, description)`` in the message."""
    items = list(violations)
    listed = "; ".join(f"{field}: {desc}" for field, desc in items)
    message = f"invalid request: {listed}" if listed else "invalid request"
    return ApiError(
        grpc.StatusCode.INVALID_ARGUMENT, reason, message, metadata=metadata, field_violations=items
    )


def not_found(kind: str, name: str) -> ApiError:
    """NOT_FOUND with reason ``{KIND}_NOT_FOUND`` and metadata ``kind``, ``name``."""
    return ApiError(
        grpc.StatusCode.NOT_FOUND,
        f"{_kind_reason(kind)}_NOT_FOUND",
        f"{kind} {name!r} not found",
        metadata={"kind": kind, "name": name},
    )


def already_exists(kind: str, name: str) -> ApiError:
    """ALREADY_EXISTS with reason ``{KIND}_ALREADY_EXISTS`` and metadata ``kind``, ``name``."""
    return ApiError(
        grpc.StatusCode.ALREADY_EXISTS,
        f"{_kind_reason(kind)}_ALREADY_EXISTS",
        f"{kind} {name!r} already exists",
        metadata={"kind": kind, "name": name},
    )


def aborted(message: str, reason: str = "CONFLICT", *, metadata: Mapping[str, str] | None = None) -> ApiError:
    """ABORTED: a concurrency conflict (stale etag, lost compare); re-read and retry."""
    return ApiError(grpc.StatusCode.ABORTED, reason, message, metadata=metadata)


def failed_precondition(message: str, reason: str, *, metadata: Mapping[str, str] | None = None) -> ApiError:
    """FAILED_PRECONDITION: the system is not in a state that allows the call."""
    return ApiError(grpc.StatusCode.FAILED_PRECONDITION, reason, message, metadata=metadata)


def resource_exhausted(
    message: str,
    reason: str,
    retry_delay_s: float | None = None,
    *,
    metadata: Mapping[str, str] | None = None,
) -> ApiError:
    """RESOURCE_EXHAUSTED: quota or rate limit; RetryInfo when a retry can succeed later."""
    return ApiError(
        grpc.StatusCode.RESOURCE_EXHAUSTED, reason, message, metadata=metadata, retry_delay_s=retry_delay_s
    )


def unavailable(
    message: str,
    retry_delay_s: float | None = 1.0,
    reason: str = "UNAVAILABLE",
    *,
    metadata: Mapping[str, str] | None = None,
) -> ApiError:
    """UNAVAILABLE: transient; safe to retry after ``retry_delay_s``."""
    return ApiError(
        grpc.StatusCode.UNAVAILABLE, reason, message, metadata=metadata, retry_delay_s=retry_delay_s
    )


def permission_denied(message: str, reason: str = "PERMISSION_DENIED") -> ApiError:
    """PERMISSION_DENIED: authenticated, but the caller's role does not allow this."""
    return ApiError(grpc.StatusCode.PERMISSION_DENIED, reason, message)


def unauthenticated(message: str, reason: str = "UNAUTHENTICATED") -> ApiError:
    """UNAUTHENTICATED: no valid bearer token."""
    return ApiError(grpc.StatusCode.UNAUTHENTICATED, reason, message)


def out_of_range(message: str, reason: str, *, metadata: Mapping[str, str] | None = None) -> ApiError:
    """OUT_OF_RANGE: e.g. a watch from a compacted resource_version (clients re-list)."""
    return ApiError(grpc.StatusCode.OUT_OF_RANGE, reason, message, metadata=metadata)


def page_token_expired() -> ApiError:
    """OUT_OF_RANGE PAGE_TOKEN_EXPIRED: a paged listing's revision was compacted
    between its pages (the client starts the listing again)."""
    return out_of_range("the listing's revision was compacted; start it again", "PAGE_TOKEN_EXPIRED")


def watch_expired(resource_version: int) -> ApiError:
    """OUT_OF_RANGE RESOURCE_VERSION_EXPIRED: a watch from a compacted
    ``resource_version`` (the client lists again and watches from the listing's)."""
    return out_of_range(f"resource_version {resource_version} is too old; list again and watch from its "
                        "resource_version", "RESOURCE_VERSION_EXPIRED")


def internal(message: str = "internal error", reason: str = "INTERNAL") -> ApiError:
    """INTERNAL: a bug on our side; the message must not leak internals."""
    return ApiError(grpc.StatusCode.INTERNAL, reason, message)
