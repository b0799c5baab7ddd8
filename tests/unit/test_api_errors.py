"""ApiError: the wire format (google.rpc.Status + details) and the constructors."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from controlplane.api import errors
from controlplane.api.errors import DOMAIN, GRPC_DETAILS_METADATA_KEY, ApiError


def _decode(status: grpc.Status) -> status_pb2.Status:
    md = dict(status.trailing_metadata)
    return status_pb2.Status.FromString(md[GRPC_DETAILS_METADATA_KEY])


def _details(rich: status_pb2.Status) -> dict[str, object]:
    out: dict[str, object] = {}
    for kind in (error_details_pb2.ErrorInfo, error_details_pb2.BadRequest, error_details_pb2.RetryInfo):
        for detail in rich.details:
            if detail.Is(kind.DESCRIPTOR):
                msg = kind()
                detail.Unpack(msg)
                out[kind.__name__] = msg
    return out


class FakeRpcError(grpc.RpcError, grpc.Call):
    """What a sync stub raises: an RpcError that is also a Call."""

    def __init__(self, code, details, trailing=()):
        self._code, self._details, self._trailing = code, details, tuple(trailing)

    def code(self):
        return self._code

    def details(self):
        return self._details

    def trailing_metadata(self):
        return self._trailing

    def initial_metadata(self):
        return ()

    def is_active(self):
        return False

    def time_remaining(self):
        return None

    def cancel(self):
        return False

    def add_callback(self, callback):
        return False


def _as_rpc_error(err: ApiError) -> FakeRpcError:
    status = err.to_status()
    return FakeRpcError(status.code, status.details, status.trailing_metadata)


def test_to_status_carries_error_info_only_by_default() -> None:
    err = errors.not_found("vm", "tenants/t/projects/p/vms/v")
    status = err.to_status()
    assert status.code is grpc.StatusCode.NOT_FOUND
    assert status.details == "vm 'tenants/t/projects/p/vms/v' not found"
    rich = _decode(status)
    assert rich.code == grpc.StatusCode.NOT_FOUND.value[0]
    assert rich.message == status.details
    details = _details(rich)
    assert set(details) == {"ErrorInfo"}
    info = details["ErrorInfo"]
    assert (info.reason, info.domain) == ("VM_NOT_FOUND", DOMAIN)
    assert dict(info.metadata) == {"kind": "vm", "name": "tenants/t/projects/p/vms/v"}


def test_to_status_adds_bad_request_and_retry_info() -> None:
    err = ApiError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "QUOTA_EXCEEDED",
        "quota exceeded",
        metadata={"resource": "vcpus"},
        field_violations=[("vm.flavor", "too big")],
        retry_delay_s=2.5,
    )
    details = _details(_decode(err.to_status()))
    violations = details["BadRequest"].field_violations
    assert [(v.field, v.description) for v in violations] == [("vm.flavor", "too big")]
    assert details["RetryInfo"].retry_delay.seconds == 2
    assert details["RetryInfo"].retry_delay.nanos == 500_000_000


def test_to_status_appends_extra_metadata() -> None:
    status = errors.aborted("etag mismatch").to_status([("x-request-id", "r1")])
    assert isinstance(status, grpc.Status)
    assert status.code is grpc.StatusCode.ABORTED
    assert ("x-request-id", "r1") in status.trailing_metadata
    assert _decode(status).message == "etag mismatch"


@pytest.mark.parametrize(
    "err",
    [
        errors.invalid_argument([("name", "required"), ("vm.labels[\"a b\"]", "bad key")]),
        errors.resource_exhausted("quota", "QUOTA_EXCEEDED", retry_delay_s=0.25),
        errors.unavailable("try later"),
        errors.already_exists("Vm", "tenants/t/projects/p/vms/v"),
        ApiError(grpc.StatusCode.FAILED_PRECONDITION, "VM_NOT_STOPPED", "stop it first",
                 metadata={"state": "RUNNING"}),
    ],
)
def test_round_trip_through_a_sync_rpc_error(err: ApiError) -> None:
    back = ApiError.from_rpc_error(_as_rpc_error(err))
    assert (back.code, back.reason, back.message) == (err.code, err.reason, err.message)
    assert back.metadata == err.metadata
    assert back.field_violations == err.field_violations
    assert back.retry_delay_s == err.retry_delay_s


def test_from_rpc_error_without_rich_status_falls_back_to_code_and_details() -> None:
    back = ApiError.from_rpc_error(FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"))
    assert (back.code, back.reason, back.message) == (grpc.StatusCode.DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED",
                                                      "Deadline Exceeded")
    assert back.metadata == {} and back.field_violations == [] and back.retry_delay_s is None


def test_from_rpc_error_ignores_contradicting_or_corrupt_details() -> None:
    rich = errors.not_found("vm", "x").to_status().trailing_metadata
    back = ApiError.from_rpc_error(FakeRpcError(grpc.StatusCode.INTERNAL, "boom", rich))
    assert (back.code, back.reason) == (grpc.StatusCode.INTERNAL, "INTERNAL")
    corrupt = ((GRPC_DETAILS_METADATA_KEY, b"\xff\xff\xff"),)
    back = ApiError.from_rpc_error(FakeRpcError(grpc.StatusCode.UNAVAILABLE, "down", corrupt))
    assert (back.code, back.reason, back.message) == (grpc.StatusCode.UNAVAILABLE, "UNAVAILABLE", "down")


def test_from_rpc_error_on_a_bare_rpc_error() -> None:
    back = ApiError.from_rpc_error(grpc.RpcError("?"))
    assert back.code is grpc.StatusCode.UNKNOWN


@pytest.mark.parametrize(
    "err, code, reason",
    [
        (errors.invalid_argument([("f", "d")]), grpc.StatusCode.INVALID_ARGUMENT, "FIELD_INVALID"),
        (errors.invalid_argument([("f", "d")], reason="INVALID_PAGE_TOKEN"), grpc.StatusCode.INVALID_ARGUMENT,
         "INVALID_PAGE_TOKEN"),
        (errors.not_found("vm", "n"), grpc.StatusCode.NOT_FOUND, "VM_NOT_FOUND"),
        (errors.not_found("Host", "n"), grpc.StatusCode.NOT_FOUND, "HOST_NOT_FOUND"),
        (errors.not_found("VmTemplate", "n"), grpc.StatusCode.NOT_FOUND, "VM_TEMPLATE_NOT_FOUND"),
        (errors.not_found("VM", "n"), grpc.StatusCode.NOT_FOUND, "VM_NOT_FOUND"),
        (errors.already_exists("project", "n"), grpc.StatusCode.ALREADY_EXISTS, "PROJECT_ALREADY_EXISTS"),
        (errors.aborted("m"), grpc.StatusCode.ABORTED, "CONFLICT"),
        (errors.aborted("m", "ETAG_MISMATCH"), grpc.StatusCode.ABORTED, "ETAG_MISMATCH"),
        (errors.failed_precondition("m", "HOST_DRAINING"), grpc.StatusCode.FAILED_PRECONDITION,
         "HOST_DRAINING"),
        (errors.resource_exhausted("m", "QUOTA_EXCEEDED"), grpc.StatusCode.RESOURCE_EXHAUSTED,
         "QUOTA_EXCEEDED"),
        (errors.unavailable("m"), grpc.StatusCode.UNAVAILABLE, "UNAVAILABLE"),
        (errors.permission_denied("m"), grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED"),
        (errors.unauthenticated("m"), grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED"),
        (errors.out_of_range("m", "RESOURCE_VERSION_EXPIRED"), grpc.StatusCode.OUT_OF_RANGE,
         "RESOURCE_VERSION_EXPIRED"),
        (errors.internal(), grpc.StatusCode.INTERNAL, "INTERNAL"),
    ],
)
def test_constructors(err: ApiError, code: grpc.StatusCode, reason: str) -> None:
    assert (err.code, err.reason) == (code, reason)
    assert str(err) == err.message


def test_invalid_argument_lists_violations_in_message() -> None:
    err = errors.invalid_argument([("name", "required"), ("page_size", "must not be negative")])
    assert err.message == "invalid request: name: required; page_size: must not be negative"
    assert err.field_violations == [("name", "required"), ("page_size", "must not be negative")]


def test_retry_delays() -> None:
    assert errors.unavailable("m").retry_delay_s == 1.0
    assert errors.unavailable("m", retry_delay_s=None).retry_delay_s is None
    assert errors.resource_exhausted("m", "RATE_LIMITED", retry_delay_s=0.5).retry_delay_s == 0.5


@pytest.mark.parametrize(
    "reason", ["", "lower", "Mixed_Case", "TRAILING_", "_LEADING", "A" * 64, "HAS SPACE"]
)
def test_bad_reason_is_a_programming_error(reason: str) -> None:
    with pytest.raises(ValueError):
        ApiError(grpc.StatusCode.INTERNAL, reason, "m")


def test_ok_code_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        ApiError(grpc.StatusCode.OK, "FINE", "m")
