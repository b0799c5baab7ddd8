"""Table-driven tests for controlplane.api.validation, plus page-token properties."""

from __future__ import annotations

import base64

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.api import validation as v
from controlplane.api.errors import ApiError


def _invalid(fn, *args, **kwargs) -> ApiError:
    with pytest.raises(ApiError) as info:
        fn(*args, **kwargs)
    err = info.value
    assert err.code is grpc.StatusCode.INVALID_ARGUMENT
    assert err.field_violations, "an INVALID_ARGUMENT must name the field"
    return err


ID_63 = "a" + "b" * 61 + "c"
ID_64 = "a" * 64


# --- resource ids and names ------------------------------------------------------------

@pytest.mark.parametrize(
    "value, ok",
    [
        ("a", True),
        ("a1", True),
        ("web-01", True),
        (ID_63, True),
        (ID_64, False),
        ("", False),
        ("1abc", False),
        ("-abc", False),
        ("abc-", False),
        ("Abc", False),
        ("a_b", False),
        ("a.b", False),
        ("a b", False),
        ("é", False),
    ],
)
def test_resource_id(value: str, ok: bool) -> None:
    assert bool(v.RESOURCE_ID.match(value)) is ok
    if ok:
        v.validate_resource_id(value, "vm_id")
    else:
        err = _invalid(v.validate_resource_id, value, "vm_id")
        assert err.field_violations[0][0] == "vm_id"


@pytest.mark.parametrize(
    "name, expected",
    [
        ("tenants/acme/projects/web", ("acme", "web")),
        (f"tenants/{ID_63}/projects/p", (ID_63, "p")),
    ],
)
def test_parse_project_parent_ok(name: str, expected: tuple[str, str]) -> None:
    assert v.parse_project_parent(name) == expected
    assert v.project_name(*expected) == name


@pytest.mark.parametrize(
    "name, fragment",
    [
        ("", "required"),
        ("tenants/acme", "not of the form"),
        ("tenants/acme/projects/web/vms/x", "not of the form"),
        ("tenant/acme/projects/web", "not of the form"),
        ("tenants/acme/projects/", "project id must not be empty"),
        ("tenants//projects/web", "tenant id must not be empty"),
        ("tenants/Acme/projects/web", "tenant id"),
        (f"tenants/{ID_64}/projects/web", "tenant id"),
        ("/tenants/acme/projects/web", "not of the form"),
        ("tenants/acme/projects/web/", "not of the form"),
    ],
)
def test_parse_project_parent_bad(name: str, fragment: str) -> None:
    err = _invalid(v.parse_project_parent, name, field="vm.parent")
    assert err.reason == "FIELD_INVALID"
    assert all(field == "vm.parent" for field, _ in err.field_violations)
    assert any(fragment in desc for _, desc in err.field_violations), err.field_violations


def test_parse_project_parent_reports_every_bad_segment() -> None:
    err = _invalid(v.parse_project_parent, "tenants/A/projects/B")
    assert [d.split(" ")[0] for _, d in err.field_violations] == ["tenant", "project"]


@pytest.mark.parametrize(
    "name, ok",
    [
        ("tenants/t/projects/p/vms/v", True),
        (f"tenants/t/projects/p/vms/{ID_63}", True),
        (f"tenants/t/projects/p/vms/{ID_64}", False),
        ("tenants/t/projects/p/vms/", False),
        ("tenants/t/projects/p/vms/V1", False),
        ("tenants/t/projects/p", False),
        ("tenants/t/projects/p/hosts/v", False),
        ("tenants/t/projects/p/vms/v/extra", False),
    ],
)
def test_parse_vm_name(name: str, ok: bool) -> None:
    if ok:
        t, p, vm = v.parse_vm_name(name)
        assert v.vm_name(t, p, vm) == name
    else:
        err = _invalid(v.parse_vm_name, name)
        assert err.field_violations[0][0] == "name"


@pytest.mark.parametrize(
    "name, ok",
    [
        ("hosts/esx-01", True),
        ("hosts/esx01.lab.example.com", True),
        ("hosts/10.0.0.1", True),
        ("hosts/" + "a" * 253, True),
        ("hosts/" + "a" * 254, False),
        ("hosts/ESX01", False),
        ("hosts/esx_01", False),
        ("hosts/-esx", False),
        ("hosts/esx.", False),
        ("hosts/", False),
        ("hosts/a/b", False),
        ("esx-01", False),
    ],
)
def test_parse_host_name(name: str, ok: bool) -> None:
    if ok:
        assert v.host_name(v.parse_host_name(name)) == name
    else:
        _invalid(v.parse_host_name, name)


@pytest.mark.parametrize(
    "name, ok",
    [
        ("hosts/esx-01/orphans/6f1c0a9e", True),
        ("hosts/esx-01/orphans/", False),
        ("hosts/ESX/orphans/6f1c", False),
        ("hosts/esx-01/orphans/a/b", False),
        ("hosts/esx-01/vms/6f1c", False),
        ("", False),
    ],
)
def test_parse_orphan_name(name: str, ok: bool) -> None:
    if ok:
        assert v.parse_orphan_name(name) == ("esx-01", "6f1c0a9e")
    else:
        _invalid(v.parse_orphan_name, name)


def test_violations_collects_across_fields() -> None:
    collected = v.Violations()
    assert collected.capture(v.parse_project_parent, "tenants/x/projects/y") == ("x", "y")
    assert collected.capture(v.parse_vm_name, "nope") is None
    assert collected.capture(v.validate_labels, {"bad key": "x"}, "vm.labels") is None
    collected.add("vm.flavor", "required")
    err = _invalid(collected.raise_if_any)
    assert [f for f, _ in err.field_violations] == ["name", 'vm.labels["bad key"]', "vm.flavor"]
    v.Violations().raise_if_any()  # nothing collected: no error


# --- labels ----------------------------------------------------------------------------

@pytest.mark.parametrize(
    "labels",
    [
        {},
        {"app": "web"},
        {"app": ""},
        {"App_1.x-y": "V_1.x-Y"},
        {"a" * 63: "b" * 63},
        {"example.com/tier": "front"},
        {"a.b-c.d/x": "y"},
        {f"k{i}": "v" for i in range(64)},
    ],
)
def test_labels_ok(labels: dict[str, str]) -> None:
    v.validate_labels(labels, "labels")


@pytest.mark.parametrize(
    "labels, field",
    [
        ({"": "x"}, 'labels[""]'),
        ({"a" * 64: "x"}, None),
        ({"-app": "x"}, 'labels["-app"]'),
        ({"app-": "x"}, 'labels["app-"]'),
        ({"a b": "x"}, 'labels["a b"]'),
        ({"app": "b" * 64}, 'labels["app"]'),
        ({"app": "-x"}, 'labels["app"]'),
        ({"app": "x y"}, 'labels["app"]'),
        ({"Example.com/x": "y"}, None),
        ({"/x": "y"}, None),
        ({"a..b/x": "y"}, None),
        ({"example.com/": "y"}, None),
        ({"a/b/c": "y"}, None),
        ({("a" * 254) + "/x": "y"}, None),
        ({f"k{i}": "v" for i in range(65)}, "labels"),
    ],
)
def test_labels_bad(labels: dict[str, str], field: str | None) -> None:
    err = _invalid(v.validate_labels, labels, "labels")
    if field is not None:
        assert err.field_violations[0][0] == field


def test_label_violation_truncates_huge_keys() -> None:
    err = _invalid(v.validate_labels, {"x" * 10_000: "y"}, "labels")
    assert len(err.message) < 500


# --- selectors -------------------------------------------------------------------------

@pytest.mark.parametrize(
    "text, expected",
    [
        ("", {}),
        ("   ", {}),
        ("app=web", {"app": "web"}),
        ("app==web", {"app": "web"}),
        ("app=web,tier=front", {"app": "web", "tier": "front"}),
        (" app = web , tier==front ", {"app": "web", "tier": "front"}),
        ("app=", {"app": ""}),
        ("example.com/app=web", {"example.com/app": "web"}),
    ],
)
def test_selector_ok(text: str, expected: dict[str, str]) -> None:
    assert v.parse_label_selector(text, "label_selector") == expected


@pytest.mark.parametrize(
    "text",
    ["app", "app!=web", "app===web", "app=w=b", "=web", "app=web,", ",app=web", "app=web,app=api",
     "a b=c", "app=-x", "in (a,b)", "app in (web)"],
)
def test_selector_bad(text: str) -> None:
    err = _invalid(v.parse_label_selector, text, "filter")
    assert {f for f, _ in err.field_violations} == {"filter"}


@pytest.mark.parametrize(
    "selector, labels, expected",
    [
        ({}, {}, True),
        ({}, {"a": "b"}, True),
        ({"a": "b"}, {"a": "b", "c": "d"}, True),
        ({"a": "b"}, {"a": "c"}, False),
        ({"a": "b"}, {}, False),
        ({"a": ""}, {}, False),
        ({"a": ""}, {"a": ""}, True),
        ({"a": "b", "c": "d"}, {"a": "b"}, False),
    ],
)
def test_matches(selector: dict[str, str], labels: dict[str, str], expected: bool) -> None:
    assert v.matches(selector, labels) is expected


def test_format_label_selector_is_canonical() -> None:
    assert v.format_label_selector({"b": "2", "a": "1"}) == "a=1,b=2"
    assert v.parse_label_selector(v.format_label_selector({"b": "2", "a": ""})) == {"a": "", "b": "2"}


# --- request ids and page sizes -------------------------------------------------------

@pytest.mark.parametrize(
    "rid, ok",
    [("", True), ("a", True), ("x" * 128, True), ("x" * 129, False), ("550e8400-e29b-41d4", True),
     ("with space", True), ("tab\there", False), ("née", False), ("nl\n", False)],
)
def test_request_id(rid: str, ok: bool) -> None:
    if ok:
        v.validate_request_id(rid)
    else:
        assert _invalid(v.validate_request_id, rid).field_violations[0][0] == "request_id"


@pytest.mark.parametrize(
    "n, expected", [(0, 100), (1, 1), (100, 100), (1000, 1000), (1001, 1000), (10**9, 1000)]
)
def test_page_size(n: int, expected: int) -> None:
    assert v.page_size(n) == expected


def test_page_size_custom_and_negative() -> None:
    assert v.page_size(0, default=10, maximum=50) == 10
    assert v.page_size(70, default=10, maximum=50) == 50
    assert _invalid(v.page_size, -1).field_violations[0][0] == "page_size"


# --- page tokens -----------------------------------------------------------------------

SCOPE = "tenants/a/projects/b|app=web"


def test_page_token_round_trip() -> None:
    token = v.encode_page_token(SCOPE, 42, "tenants/a/projects/b/vms/x")
    assert token.isascii() and "=" not in token and "+" not in token and "/" not in token
    assert v.decode_page_token(token, SCOPE) == (42, "tenants/a/projects/b/vms/x")


def test_empty_page_token_is_none() -> None:
    assert v.decode_page_token("", SCOPE) is None


def _tampered(token: str) -> str:
    raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    raw[10] ^= 0x01  # flip a bit of the revision
    return base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()


def _reversioned(token: str) -> str:
    import hashlib

    raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    raw[0] = 2
    body = bytes(raw[:-4])  # a well-formed token of a future version
    checksum = hashlib.blake2b(body, digest_size=4).digest()
    return base64.urlsafe_b64encode(body + checksum).rstrip(b"=").decode()


GOOD = v.encode_page_token(SCOPE, 7, "k")


@pytest.mark.parametrize(
    "token, scope, fragment",
    [
        (_tampered(GOOD), SCOPE, "malformed"),
        (GOOD[:-2], SCOPE, "malformed"),
        (GOOD + "A", SCOPE, "malformed"),
        (GOOD, "tenants/a/projects/c|app=web", "different request"),
        (GOOD, "tenants/a/projects/b|", "different request"),
        (_reversioned(GOOD), SCOPE, "version"),
        ("not a token!", SCOPE, "malformed"),
        ("AAAA", SCOPE, "malformed"),
        ("%%%%", SCOPE, "malformed"),
        ("A" * 5000, SCOPE, "malformed"),
        ("é", SCOPE, "malformed"),
    ],
)
def test_page_token_rejected(token: str, scope: str, fragment: str) -> None:
    err = _invalid(v.decode_page_token, token, scope)
    assert err.reason == "INVALID_PAGE_TOKEN"
    assert err.field_violations[0][0] == "page_token"
    assert fragment in err.field_violations[0][1]


def test_page_token_negative_revision() -> None:
    with pytest.raises(ValueError):
        v.encode_page_token(SCOPE, -1, "k")
    with pytest.raises(ValueError):
        v.encode_page_token(SCOPE, v.MAX_REVISION + 1, "k")  # beyond int64 once etcd adds to it


@settings(max_examples=200, deadline=None)
@given(scope=st.text(max_size=100), revision=st.integers(min_value=0, max_value=v.MAX_REVISION),
       after_key=st.text(max_size=300).filter(lambda s: not any(0xD800 <= ord(c) <= 0xDFFF for c in s)))
def test_page_token_round_trip_property(scope: str, revision: int, after_key: str) -> None:
    token = v.encode_page_token(scope, revision, after_key)
    assert v.decode_page_token(token, scope) == (revision, after_key)
    with pytest.raises(ApiError):
        v.decode_page_token(token, scope + "x")


@settings(max_examples=200, deadline=None)
@given(garbage=st.text(min_size=1, max_size=64))
def test_garbage_page_tokens_are_rejected_cleanly(garbage: str) -> None:
    try:
        decoded = v.decode_page_token(garbage, SCOPE)
    except ApiError as err:
        assert err.reason == "INVALID_PAGE_TOKEN"
    else:  # only possible if garbage happens to be a valid token for this scope
        assert decoded is not None


# --- issue 12: update masks, durations, instance metadata ------------------------------------


def test_update_mask_is_required_and_names_what_it_refuses() -> None:
    allowed = ("labels", "flavor")
    assert v.update_mask(["*"], allowed) == {"labels", "flavor"}
    assert v.update_mask(["flavor", "flavor"], allowed) == {"flavor"}
    for paths, words in (([], "required"), (["image"], "unknown or immutable"),
                         (["bootstrap.user_data"], "write-once")):
        with pytest.raises(ApiError) as err:
            v.update_mask(paths, allowed, write_once=("bootstrap",))
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and err.value.reason == "FIELD_INVALID"
        assert err.value.field_violations[0][0] == "update_mask" and words in err.value.field_violations[0][1]


@pytest.mark.parametrize("seconds, nanos, want", [(0, 0, 60), (5, 0, 5), (5, 1, 6), (0, 1, 1), (3600, 0, 3600)])
def test_duration_seconds_rounds_up_and_defaults(seconds: int, nanos: int, want: int) -> None:
    assert v.duration_seconds(seconds, nanos, default=60, maximum=3600, field="grace") == want


@pytest.mark.parametrize("seconds, nanos", [(-1, 0), (0, -1), (3600, 1), (3601, 0)])
def test_duration_seconds_out_of_range(seconds: int, nanos: int) -> None:
    with pytest.raises(ApiError) as err:
        v.duration_seconds(seconds, nanos, default=60, maximum=3600, field="grace")
    assert err.value.field_violations[0][0] == "grace"


def test_metadata_problems_name_the_field_and_never_repeat_the_value() -> None:
    secret = "s3cr3t-value"
    problems = v.bootstrap_metadata_violations(
        instance_id=f"has space {secret}", hostname=f"{secret}_!", ssh_authorized_keys=[f"a\n{secret}", " "],
        values={"instance-id": secret, "": secret}, field="m")
    assert [f for f, _ in problems] == ["m.instance_id", "m.hostname", "m.ssh_authorized_keys[0]",
                                        "m.ssh_authorized_keys[1]", 'm.values["instance-id"]', "m.values"]
    assert secret not in repr(problems)
    assert not v.bootstrap_metadata_violations(instance_id="i-1", hostname="node-1.example", ssh_authorized_keys=[
        "ssh-ed25519 AAAA x"], values={"role": "worker"}, field="m")
