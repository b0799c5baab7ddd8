"""The SDK's exceptions: one class per kind of failure, so callers write
``except QuotaExceeded:`` instead of reading status details.

Every failure of :class:`quanta.Client` and :class:`quanta.aio.Client` raises a
:class:`QuantaError`, built from the ``google.rpc.Status`` the frontend sends
(``ErrorInfo`` reason and metadata, ``BadRequest`` field violations, ``RetryInfo``)
by :func:`from_rpc_error`: the class follows the status code, and for
RESOURCE_EXHAUSTED the reason (quota or rate limit). Client-side failures (no
endpoint reachable, a bad config file, a wait that ran out of time) are
QuantaErrors too.

``QuantaError`` subclasses ``controlplane.api.errors.ApiError``, which the SDK
raised before, so ``except ApiError`` keeps working for one release; new code
catches :class:`QuantaError` or one of its subclasses.

    try:
        quanta.create_vm("web-1", flavor="small", image="ubuntu")
    except QuotaExceeded as err:
        print("over quota in", err.dimensions)
    except RateLimited as err:
        time.sleep(err.retry_delay)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import grpc

from controlplane.api.errors import GRPC_DETAILS_METADATA_KEY, ApiError


class QuantaError(ApiError):
    """A failed call: ``code`` (grpc.StatusCode), ``reason`` (stable, UPPER_SNAKE_CASE:
    what to branch on), ``message`` (for humans; may change), ``metadata`` (strings),
    ``field_violations`` ((field path, description) pairs), ``retry_delay_s`` (when
    a retry can succeed later), and where it was sent: ``endpoint`` and ``context``
    (the config context the client was built from; None without one)."""

    endpoint: str | None
    context: str | None

    def __init__(
        self,
        code: grpc.StatusCode,
        reason: str,
        message: str,
        *,
        metadata: Mapping[str, str] | None = None,
        field_violations: Iterable[tuple[str, str]] = (),
        retry_delay_s: float | None = None,
        endpoint: str | None = None,
        context: str | None = None,
    ) -> None:
        super().__init__(code, reason, message, metadata=metadata, field_violations=field_violations,
                         retry_delay_s=retry_delay_s)
        self.endpoint = endpoint
        self.context = context

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.code.name}, {self.reason!r}, {self.message!r}, "
                f"metadata={self.metadata!r}, field_violations={self.field_violations!r}, "
                f"retry_delay_s={self.retry_delay_s!r})")


class InvalidArgument(QuantaError):
    """INVALID_ARGUMENT: the request is malformed; ``field_violations`` say where."""


class NotFound(QuantaError):
    """NOT_FOUND (reason ``{KIND}_NOT_FOUND``; metadata ``kind``, ``name``). Also what a
    caller gets for another tenant's resource."""


class AlreadyExists(QuantaError):
    """ALREADY_EXISTS: the id is taken (``{KIND}_ALREADY_EXISTS``), or a request_id was
    reused for a different request (REQUEST_ID_REUSED)."""


class PermissionDenied(QuantaError):
    """PERMISSION_DENIED: the token's role does not allow this."""


class Unauthenticated(QuantaError):
    """UNAUTHENTICATED: no token, or an expired, revoked or forged one (see ``reason``)."""


class ResourceExhausted(QuantaError):
    """RESOURCE_EXHAUSTED for a reason other than quota or rate limit."""


class QuotaExceeded(ResourceExhausted):
    """RESOURCE_EXHAUSTED, reason QUOTA_EXCEEDED: the project's or tenant's ticket has
    no room; ``dimensions`` names the limits that were hit."""

    @property
    def dimensions(self) -> list[str]:
        """The quota dimensions over their limit, e.g. ["vms", "vcpus"] (may be empty)."""
        return [d for d in self.metadata.get("dimensions", "").split(",") if d]


class RateLimited(ResourceExhausted):
    """RESOURCE_EXHAUSTED, reason RATE_LIMITED: this caller sent too many requests;
    wait ``retry_delay`` seconds before the next."""

    @property
    def retry_delay(self) -> float:
        """Seconds to wait before retrying (0.0 if the server named none)."""
        return self.retry_delay_s or 0.0


class FailedPrecondition(QuantaError):
    """FAILED_PRECONDITION: the system is not in a state that allows this (e.g. a
    project that still holds VMs: HAS_VMS)."""


class Aborted(QuantaError):
    """ABORTED: a concurrency conflict (stale etag: ETAG_MISMATCH; a lost compare:
    CONFLICT); re-read and retry."""


#: Another name for :class:`Aborted`: what the API calls a conflict.
Conflict = Aborted


class OutOfRange(QuantaError):
    """OUT_OF_RANGE: e.g. a watch from a compacted resource_version; list again."""


class Unavailable(QuantaError):
    """UNAVAILABLE: transient (the store, a frontend); safe to retry idempotent calls
    (the SDK already retried reads and creates before raising this)."""


class Unreachable(Unavailable):
    """No frontend answered at ``endpoint``: nothing listens there, the name does
    not resolve, or TLS failed. The message names the endpoint and context tried."""


class DeadlineExceeded(QuantaError):
    """DEADLINE_EXCEEDED: the call did not finish within its timeout; it may or may
    not have taken effect."""


class WaitTimeout(DeadlineExceeded, TimeoutError):
    """A wait (``wait_for_vm``, ``wait_for_host_drained``) ran out of time; what it
    waits for may still happen. ``last``: the resource as last seen (None if never).
    Also a ``TimeoutError``, which the waits raised before."""

    last: Any

    def __init__(self, message: str, last: Any = None, *, reason: str = "WAIT_TIMEOUT") -> None:
        super().__init__(grpc.StatusCode.DEADLINE_EXCEEDED, reason, message)
        self.last = last


class VmSetFailed(FailedPrecondition):
    """A wait for a VM set (``wait_for_vm_set``) ended without it: the set FAILED
    (reason VM_SET_FAILED: its deadline passed before it fitted, its members were
    removed and their quota released), or one of its members was deleted meanwhile
    (VM_SET_MEMBER_DELETED). ``set``: the VmSet as last read."""

    set: Any

    def __init__(self, message: str, vm_set: Any = None, *, reason: str = "VM_SET_FAILED") -> None:
        super().__init__(grpc.StatusCode.FAILED_PRECONDITION, reason, message)
        self.set = vm_set


class Cancelled(QuantaError):
    """CANCELLED: the call was cancelled (by this client or the server)."""


class Unimplemented(QuantaError):
    """UNIMPLEMENTED: the server does not know this method (an older server)."""


class Internal(QuantaError):
    """INTERNAL: a bug on the server's side; its log has the details."""


class ConfigError(QuantaError):
    """The client could not be built from its settings: an unknown context, a
    malformed config file, an unreadable token file or TLS CA (FAILED_PRECONDITION,
    reason CONTEXT_NOT_FOUND, CONFIG_INVALID or FILE_UNREADABLE)."""

    def __init__(self, message: str, reason: str = "CONFIG_INVALID") -> None:
        super().__init__(grpc.StatusCode.FAILED_PRECONDITION, reason, message)


#: The class for each status code; RESOURCE_EXHAUSTED is refined by reason below.
BY_CODE: dict[grpc.StatusCode, type[QuantaError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.ABORTED: Aborted,
    grpc.StatusCode.OUT_OF_RANGE: OutOfRange,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.CANCELLED: Cancelled,
    grpc.StatusCode.UNIMPLEMENTED: Unimplemented,
    grpc.StatusCode.INTERNAL: Internal,
}

#: Classes chosen by (code, reason) before :data:`BY_CODE`.
BY_REASON: dict[tuple[grpc.StatusCode, str], type[QuantaError]] = {
    (grpc.StatusCode.RESOURCE_EXHAUSTED, "QUOTA_EXCEEDED"): QuotaExceeded,
    (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED"): RateLimited,
}


def error_class(code: grpc.StatusCode, reason: str) -> type[QuantaError]:
    """The exception class for a status ``code`` and ``reason`` (QuantaError itself
    for codes without their own class, e.g. UNKNOWN, DATA_LOSS)."""
    return BY_REASON.get((code, reason)) or BY_CODE.get(code, QuantaError)


def from_rpc_error(err: grpc.RpcError, *, endpoint: str | None = None, context: str | None = None) -> QuantaError:
    """The typed exception for a failed call (sync ``grpc.RpcError`` or
    ``grpc.aio.AioRpcError``), with everything its rich status carried.

    An UNAVAILABLE without a rich status did not come from a frontend (they always
    send an ErrorInfo): the channel found no server, and that is :class:`Unreachable`,
    whose message names ``endpoint`` and ``context`` and what to do. Never raises.
    """
    api = ApiError.from_rpc_error(err)
    if api.code is grpc.StatusCode.UNAVAILABLE and not _has_rich_status(err):
        return Unreachable(api.code, api.reason, unreachable_message(endpoint or "?", context, api.message),
                           endpoint=endpoint, context=context)
    return error_class(api.code, api.reason)(
        api.code, api.reason, api.message, metadata=api.metadata, field_violations=api.field_violations,
        retry_delay_s=api.retry_delay_s, endpoint=endpoint, context=context)


def unreachable_message(endpoint: str, context: str | None = None, detail: str = "") -> str:
    """What to tell a user whose client reached no frontend at ``endpoint`` (through
    the named ``context``, if any): which endpoint was tried, why (gRPC's ``detail``,
    shortened to its last cause, e.g. "connection refused"), and how to get one.
    The one wording for the SDK's :class:`Unreachable` and the CLI."""
    through = f" (context {context!r})" if context else ""
    why = f": {short_cause(detail)}" if detail else ""
    hints = ["start one on this machine with `quanta up`"]
    if context:
        hints.append("pick another with `quanta context use NAME` (`quanta context list` shows them)")
    hints.append("or name one with --endpoint or $QUANTA_ENDPOINT")
    return f"cannot reach the Quanta API at {endpoint}{through}{why}\n  " + ", ".join(hints) + "."


def short_cause(detail: str) -> str:
    """gRPC's "failed to connect to all addresses; last error: UNKNOWN:
    ipv4:127.0.0.1:7000: Failed to connect to remote host: Connection refused" →
    "connection refused" (its last cause); any other text as it is."""
    last = detail.rsplit(": ", 1)[-1].strip() if "failed to connect" in detail else detail.strip()
    return (last[:1].lower() + last[1:]) if last else detail


def _has_rich_status(err: grpc.RpcError) -> bool:
    trailing = getattr(err, "trailing_metadata", None)
    try:
        metadata = trailing() if callable(trailing) else ()
    except Exception:  # noqa: BLE001 - a half-built error object has no details
        return False
    return any(key == GRPC_DETAILS_METADATA_KEY for key, _ in metadata or ())
