"""The SDK's typed exceptions: each status the frontend sends (a google.rpc.Status
with ErrorInfo, BadRequest, RetryInfo) becomes its class, with everything it carried."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
import pytest

from controlplane.api import errors as api
from controlplane.api.errors import ApiError
from quanta import errors


@dataclass
class FakeRpcError(grpc.RpcError):
    """What a failed call raises: its code, details and trailing metadata."""

    status: grpc.Status

    def code(self) -> grpc.StatusCode:
        return self.status.code

    def details(self) -> str:
        return self.status.details

    def trailing_metadata(self):
        return self.status.trailing_metadata


def sent(error: ApiError) -> FakeRpcError:
    """The error a client sees when a frontend raised ``error``."""
    return FakeRpcError(error.to_status())


def bare(code: grpc.StatusCode, details: str) -> FakeRpcError:
    """A status without details: what the channel itself reports (no frontend answered)."""
    return FakeRpcError(api.Status(code, details, ()))


CASES = [
    (api.not_found("vm", "tenants/t/projects/p/vms/v"), errors.NotFound, "VM_NOT_FOUND"),
    (api.already_exists("vm", "tenants/t/projects/p/vms/v"), errors.AlreadyExists, "VM_ALREADY_EXISTS"),
    (api.resource_exhausted("no room", "QUOTA_EXCEEDED", metadata={"dimensions": "vms,vcpus"}),
     errors.QuotaExceeded, "QUOTA_EXCEEDED"),
    (api.resource_exhausted("slow down", "RATE_LIMITED", retry_delay_s=0.25, metadata={"subject": "bot"}),
     errors.RateLimited, "RATE_LIMITED"),
    (api.resource_exhausted("too big", "MESSAGE_TOO_LARGE"), errors.ResourceExhausted, "MESSAGE_TOO_LARGE"),
    (api.permission_denied("viewers may not"), errors.PermissionDenied, "PERMISSION_DENIED"),
    (api.unauthenticated("expired", "TOKEN_EXPIRED"), errors.Unauthenticated, "TOKEN_EXPIRED"),
    (api.invalid_argument([("vm_id", "too long")]), errors.InvalidArgument, "FIELD_INVALID"),
    (api.failed_precondition("holds VMs", "HAS_VMS"), errors.FailedPrecondition, "HAS_VMS"),
    (api.aborted("stale", "ETAG_MISMATCH"), errors.Conflict, "ETAG_MISMATCH"),
    (api.out_of_range("compacted", "RESOURCE_VERSION_EXPIRED"), errors.OutOfRange, "RESOURCE_VERSION_EXPIRED"),
    (api.unavailable("etcd down", reason="STORE_UNAVAILABLE"), errors.Unavailable, "STORE_UNAVAILABLE"),
    (api.internal(), errors.Internal, "INTERNAL"),
    (ApiError(grpc.StatusCode.DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED", "slow"), errors.DeadlineExceeded,
     "DEADLINE_EXCEEDED"),
    (ApiError(grpc.StatusCode.UNIMPLEMENTED, "UNIMPLEMENTED", "old server"), errors.Unimplemented, "UNIMPLEMENTED"),
    (ApiError(grpc.StatusCode.CANCELLED, "CANCELLED", "gone"), errors.Cancelled, "CANCELLED"),
    (ApiError(grpc.StatusCode.DATA_LOSS, "DATA_LOSS", "lost"), errors.QuantaError, "DATA_LOSS"),
]


@pytest.mark.parametrize("error, cls, reason", CASES, ids=[f"{c[0].code.name}-{c[2]}" for c in CASES])
def test_each_status_arrives_as_its_class(error: ApiError, cls: type, reason: str) -> None:
    got = errors.from_rpc_error(sent(error), endpoint="h:1", context="lab")
    assert type(got) is cls
    assert (got.code, got.reason, got.message) == (error.code, reason, error.message)
    assert got.metadata == error.metadata
    assert (got.endpoint, got.context) == ("h:1", "lab")
    assert isinstance(got, ApiError), "except ApiError keeps working for one release"


def test_the_details_come_along() -> None:
    quota = errors.from_rpc_error(sent(CASES[2][0]))
    assert isinstance(quota, errors.QuotaExceeded) and quota.dimensions == ["vms", "vcpus"]
    limited = errors.from_rpc_error(sent(CASES[3][0]))
    assert isinstance(limited, errors.RateLimited)
    assert limited.retry_delay == pytest.approx(0.25) and limited.metadata == {"subject": "bot"}
    invalid = errors.from_rpc_error(sent(CASES[7][0]))
    assert invalid.field_violations == [("vm_id", "too long")]
    assert isinstance(errors.from_rpc_error(sent(CASES[3][0])), errors.ResourceExhausted)


def test_every_code_has_a_class_with_that_code() -> None:
    for code in grpc.StatusCode:
        if code is grpc.StatusCode.OK:
            continue
        got = errors.from_rpc_error(sent(ApiError(code, code.name, "x")))
        assert isinstance(got, errors.QuantaError) and got.code is code
        assert type(got) is errors.error_class(code, code.name)


def test_no_frontend_answering_is_unreachable_and_says_where_and_what_to_do() -> None:
    refused = bare(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses; last error: UNKNOWN: "
                   "ipv4:127.0.0.1:1: Failed to connect to remote host: Connection refused")
    got = errors.from_rpc_error(refused, endpoint="127.0.0.1:1", context="lab")
    assert isinstance(got, errors.Unreachable) and isinstance(got, errors.Unavailable)
    assert (got.endpoint, got.context) == ("127.0.0.1:1", "lab")
    text = str(got)
    assert "127.0.0.1:1" in text and "'lab'" in text and "connection refused" in text
    assert "quanta up" in text and "quanta context use" in text
    assert text.count("UNAVAILABLE") == 0
    # Without a context, the message says only the endpoint.
    assert "context" not in errors.unreachable_message("h:7000").split(".")[0]


def test_a_frontend_unavailable_is_not_unreachable() -> None:
    got = errors.from_rpc_error(sent(api.unavailable("etcd is down")))
    assert type(got) is errors.Unavailable
    assert got.retry_delay_s == 1.0


def test_a_wait_timeout_is_a_timeout_error_and_a_quanta_error() -> None:
    timeout = errors.WaitTimeout("web-1 not RUNNING within 5s", last="the vm")
    assert isinstance(timeout, TimeoutError) and isinstance(timeout, errors.DeadlineExceeded)
    assert (timeout.reason, timeout.last, str(timeout)) == ("WAIT_TIMEOUT", "the vm", "web-1 not RUNNING within 5s")
