"""Request validation: resource names, labels, selectors, request ids, paging.

Pure functions without I/O. Each raises :class:`~controlplane.api.errors.ApiError`
with code INVALID_ARGUMENT and one ``(field path, description)`` violation per
problem found, so a client can point at the exact field. Use :class:`Violations` to
check several fields and report them all in one error.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import struct
from collections.abc import Callable, Mapping
from typing import ParamSpec, TypeVar

import grpc

from controlplane.api.errors import ApiError, invalid_argument

# AIP-122 resource ids: lowercase letter first, then lowercase letters, digits and
# hyphens, no trailing hyphen, 1..63 characters.
RESOURCE_ID = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
# Host ids are DNS names: up to 253 characters of lowercase letters, digits, '-' and '.'.
HOST_ID = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")

MAX_LABELS = 64
MAX_REVISION = 2**62  # resource versions are etcd revisions (int64); nothing real comes near
_LABEL_NAME = re.compile(r"^[a-zA-Z0-9]([-_.a-zA-Z0-9]{0,61}[a-zA-Z0-9])?$")
_LABEL_VALUE = re.compile(r"^([a-zA-Z0-9]([-_.a-zA-Z0-9]{0,61}[a-zA-Z0-9])?)?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_MAX_PREFIX = 253
_MAX_REQUEST_ID = 128
_SHOWN = 80  # how much of an offending value an error message repeats

P = ParamSpec("P")
T = TypeVar("T")


class Violations:
    """Collects field violations across several checks, then raises them together.

    >>> v = Violations()
    >>> parent = v.capture(parse_project_parent, req.parent)   # None when invalid
    >>> v.capture(validate_labels, req.vm.labels, "vm.labels")
    >>> v.raise_if_any()
    >>> tenant, project = v.valid(parent)   # typed as set from here on
    """

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []
        self.reason = ""  # set: the reason to raise with instead of FIELD_INVALID (e.g. USER_DATA_TOO_LARGE)

    def add(self, field: str, description: str) -> None:
        self.items.append((field, description))

    def capture(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T | None:
        """Calls ``fn``; an INVALID_ARGUMENT ApiError is recorded (→ None), others propagate."""
        try:
            return fn(*args, **kwargs)
        except ApiError as err:
            if err.code is not grpc.StatusCode.INVALID_ARGUMENT:
                raise
            self.items.extend(err.field_violations)
            return None

    def raise_if_any(self, reason: str = "") -> None:
        """Raises INVALID_ARGUMENT listing everything collected, with ``reason``, else
        :attr:`reason` if set, else FIELD_INVALID; no-op when nothing was collected."""
        if self.items:
            raise invalid_argument(self.items, reason or self.reason or "FIELD_INVALID")

    def valid(self, value: T | None) -> T:
        """``value`` (what a ``capture`` returned, or a lookup whose absence was
        ``add``-ed) once it is known to be set. Called after ``raise_if_any``, it never
        raises: a capture that returned None recorded a violation. Before it, raises
        INVALID_ARGUMENT as ``raise_if_any`` does; None with nothing collected is a bug
        in the caller (RuntimeError)."""
        if value is None:
            self.raise_if_any()
            raise RuntimeError("no violation recorded for a value that is missing")
        return value


def _show(value: str) -> str:
    return json.dumps(value if len(value) <= _SHOWN else value[:_SHOWN] + "...")


def _check_id(
    value: str, what: str, field: str, out: list[tuple[str, str]], pattern: re.Pattern[str]
) -> None:
    if not value:
        out.append((field, f"{what} must not be empty"))
    elif not pattern.match(value):
        out.append((field, f"{what} {_show(value)} must match {pattern.pattern}"))


# --- resource names ----------------------------------------------------------------


def project_name(tenant: str, project: str) -> str:
    return f"tenants/{tenant}/projects/{project}"


def vm_name(tenant: str, project: str, vm: str) -> str:
    return f"tenants/{tenant}/projects/{project}/vms/{vm}"


def host_name(host: str) -> str:
    return f"hosts/{host}"


def validate_resource_id(value: str, field: str, what: str = "id") -> None:
    """Checks an AIP-122 id (e.g. a client-chosen ``vm_id``)."""
    out: list[tuple[str, str]] = []
    _check_id(value, what, field, out, RESOURCE_ID)
    if out:
        raise invalid_argument(out)


def _parse(name: str, field: str, collections: tuple[str, ...], pattern: re.Pattern[str]) -> tuple[str, ...]:
    form = "/".join(f"{c}/{{{c[:-1]}}}" for c in collections)
    if not name:
        raise invalid_argument([(field, f'required, of the form "{form}"')])
    parts = name.split("/")
    if len(parts) != 2 * len(collections) or tuple(parts[0::2]) != collections:
        raise invalid_argument([(field, f'{_show(name)} is not of the form "{form}"')])
    out: list[tuple[str, str]] = []
    for collection, value in zip(collections, parts[1::2], strict=True):
        _check_id(value, f"{collection[:-1]} id", field, out, pattern)
    if out:
        raise invalid_argument(out)
    return tuple(parts[1::2])


def parse_project_parent(parent: str, field: str = "parent") -> tuple[str, str]:
    """``"tenants/{t}/projects/{p}"`` → ``(t, p)``."""
    t, p = _parse(parent, field, ("tenants", "projects"), RESOURCE_ID)
    return t, p


def parse_vm_name(name: str, field: str = "name") -> tuple[str, str, str]:
    """``"tenants/{t}/projects/{p}/vms/{v}"`` → ``(t, p, v)``."""
    t, p, v = _parse(name, field, ("tenants", "projects", "vms"), RESOURCE_ID)
    return t, p, v


def parse_vm_set_name(name: str, field: str = "name") -> tuple[str, str, str]:
    """``"tenants/{t}/projects/{p}/vmSets/{s}"`` → ``(t, p, s)``."""
    t, p, s = _parse(name, field, ("tenants", "projects", "vmSets"), RESOURCE_ID)
    return t, p, s


def parse_disk_name(name: str, field: str = "name") -> tuple[str, str, str]:
    """``"tenants/{t}/projects/{p}/disks/{d}"`` → ``(t, p, d)``."""
    t, p, d = _parse(name, field, ("tenants", "projects", "disks"), RESOURCE_ID)
    return t, p, d


def parse_disk_of(value: str, tenant: str, project: str, field: str) -> str:
    """A disk of the project ``tenant``/``project`` named by its id or full name → its
    id; INVALID_ARGUMENT for another project's name (disks attach within a project)."""
    if "/" not in value:
        validate_resource_id(value, field, "disk id")
        return value
    t, p, d = parse_disk_name(value, field)
    if (t, p) != (tenant, project):
        raise invalid_argument([(field, f"{_show(value)} is not a disk of {project_name(tenant, project)}")])
    return d


def parse_plan_name(name: str, field: str = "plan") -> tuple[str, str, str]:
    """``"tenants/{t}/projects/{p}/plans/{plan}"`` → ``(t, p, plan)``."""
    t, p, plan = _parse(name, field, ("tenants", "projects", "plans"), RESOURCE_ID)
    return t, p, plan


def parse_host_name(name: str, field: str = "name") -> str:
    """``"hosts/{h}"`` → ``h``; host ids are DNS names (see :data:`HOST_ID`)."""
    (h,) = _parse(name, field, ("hosts",), HOST_ID)
    return h


VM_UID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


def parse_orphan_name(name: str, field: str = "name") -> tuple[str, str]:
    """``"hosts/{h}/orphans/{uid}"`` → ``(h, uid)`` (a quarantined VM, by its Quanta uid)."""
    host_part, sep, rest = name.partition("/orphans/")
    if not sep:
        raise invalid_argument([(field, f'{_show(name)} is not of the form "hosts/{{host}}/orphans/{{uid}}"')])
    host = parse_host_name(host_part, field)
    out: list[tuple[str, str]] = []
    _check_id(rest, "VM uid", field, out, VM_UID)
    if out:
        raise invalid_argument(out)
    return host, rest


# --- labels and selectors ------------------------------------------------------------


def _label_key_problem(key: str) -> str | None:
    prefix, slash, label = key.rpartition("/")
    if slash and (not prefix or len(prefix) > _MAX_PREFIX or not _DNS_SUBDOMAIN.match(prefix)):
        return f"key prefix {_show(prefix)} must be a DNS subdomain of at most {_MAX_PREFIX} characters"
    if not label:
        return "key name must not be empty"
    if len(label) > 63:
        return f"key name must be at most 63 characters, got {len(label)}"
    if not _LABEL_NAME.match(label):
        return (
            f"key name {_show(label)} must consist of alphanumerics, '-', '_' or '.', "
            "and start and end with an alphanumeric"
        )
    return None


def _label_value_problem(value: str) -> str | None:
    if len(value) > 63:
        return f"value must be at most 63 characters, got {len(value)}"
    if not _LABEL_VALUE.match(value):
        return (
            f"value {_show(value)} must be empty or consist of alphanumerics, '-', '_' or '.', "
            "and start and end with an alphanumeric"
        )
    return None


def _label_field(field: str, key: str) -> str:
    return f"{field}[{_show(key)}]"


def validate_labels(labels: Mapping[str, str], field: str = "labels") -> None:
    """Kubernetes-style labels: at most 64; keys ``[prefix/]name``, values ≤ 63 characters.

    Violations name the entry, e.g. ``labels["app"]``.
    """
    out: list[tuple[str, str]] = []
    if len(labels) > MAX_LABELS:
        out.append((field, f"at most {MAX_LABELS} labels allowed, got {len(labels)}"))
    for key, value in labels.items():
        for problem in (_label_key_problem(key), _label_value_problem(value)):
            if problem:
                out.append((_label_field(field, key), problem))
    if out:
        raise invalid_argument(out)


def parse_label_selector(selector: str, field: str = "label_selector") -> dict[str, str]:
    """``"k=v,k2==v2"`` → ``{"k": "v", "k2": "v2"}``; ``""`` → ``{}`` (matches everything).

    Only equality is supported; whitespace around keys and values is ignored; a key
    may appear once. The value may be empty (``"k="`` matches labels with ``k: ""``).
    """
    result: dict[str, str] = {}
    if not selector.strip():
        return result
    out: list[tuple[str, str]] = []
    for i, term in enumerate(selector.split(",")):
        where = f"term {i + 1} ({_show(term.strip())})"
        if "!=" in term:
            out.append((field, f"{where}: only equality (key=value) is supported"))
            continue
        key, eq, value = term.partition("=")
        if value.startswith("="):
            value = value[1:]
        key, value = key.strip(), value.strip()
        if not eq or "=" in value:
            out.append((field, f"{where}: must be key=value"))
            continue
        problem = _label_key_problem(key) or _label_value_problem(value)
        if problem:
            out.append((field, f"{where}: {problem}"))
        elif key in result:
            out.append((field, f"{where}: key {_show(key)} appears more than once"))
        else:
            result[key] = value
    if out:
        raise invalid_argument(out)
    return result


def matches(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """True when every ``key=value`` of the selector is among the labels (a missing key never matches)."""
    for key, value in selector.items():
        have = labels.get(key)
        if have is None or have != value:
            return False
    return True


def format_label_selector(selector: Mapping[str, str]) -> str:
    """Canonical text of a selector (sorted keys), e.g. for a page-token scope."""
    return ",".join(f"{k}={selector[k]}" for k in sorted(selector))


# --- request ids and paging ----------------------------------------------------------


def validate_request_id(request_id: str, field: str = "request_id") -> None:
    """Empty (no idempotency) or at most 128 printable ASCII characters."""
    if len(request_id) > _MAX_REQUEST_ID:
        raise invalid_argument(
            [(field, f"must be at most {_MAX_REQUEST_ID} characters, got {len(request_id)}")]
        )
    if any(not " " <= ch <= "~" for ch in request_id):
        raise invalid_argument([(field, "must consist of printable ASCII characters")])


def page_size(n: int, default: int = 100, maximum: int = 1000, field: str = "page_size") -> int:
    """The effective page size: 0 → ``default``, above ``maximum`` → ``maximum``."""
    if n < 0:
        raise invalid_argument([(field, f"must not be negative, got {n}")])
    if n == 0:
        return min(default, maximum)
    return min(n, maximum)


# A page token is urlsafe base64 (no padding) of:
#   version (1 byte) | revision (8 bytes, big endian) | blake2b-8(scope)
#   | after_key (UTF-8) | checksum (4 bytes)
# The checksum (blake2b-4 over what precedes it) catches truncation and casual edits;
# it is not a MAC — a token is opaque, not secret, and grants nothing by itself.
_TOKEN_VERSION = 1
_TOKEN_HEAD = struct.Struct(">BQ8s")
_CHECKSUM_LEN = 4
_MAX_TOKEN_CHARS = 4096


def _digest(data: bytes, size: int) -> bytes:
    return hashlib.blake2b(data, digest_size=size).digest()


def encode_page_token(scope: str, revision: int, after_key: str) -> str:
    """An opaque token to resume a listing after ``after_key`` at ``revision``.

    ``scope`` names everything that shapes the listing (parent, selector, filter):
    the token is only accepted back with the same scope. Raises ValueError for a
    negative revision.
    """
    if not 0 <= revision <= MAX_REVISION:
        raise ValueError(f"revision must be between 0 and {MAX_REVISION}")
    body = _TOKEN_HEAD.pack(_TOKEN_VERSION, revision, _digest(scope.encode(), 8)) + after_key.encode()
    return base64.urlsafe_b64encode(body + _digest(body, _CHECKSUM_LEN)).rstrip(b"=").decode("ascii")


def invalid_page_token(why: str, field: str = "page_token") -> ApiError:
    """INVALID_ARGUMENT ``INVALID_PAGE_TOKEN``: the one answer of every listing to a
    page token it did not issue (malformed, tampered, another version or scope, or a
    position that is not one of its own)."""
    return invalid_argument([(field, why)], reason="INVALID_PAGE_TOKEN")


def decode_page_token(token: str, scope: str, field: str = "page_token") -> tuple[int, str] | None:
    """``(revision, after_key)`` from a token made by :func:`encode_page_token`; ``""`` → None.

    Raises INVALID_ARGUMENT with reason ``INVALID_PAGE_TOKEN`` for a malformed or
    tampered token, another version, or a token issued for another scope.
    """
    if not token:
        return None

    def bad(why: str) -> ApiError:
        return invalid_page_token(why, field)

    if len(token) > _MAX_TOKEN_CHARS:
        raise bad("malformed page token")
    try:
        raw = base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise bad("malformed page token") from None
    if len(raw) < _TOKEN_HEAD.size + _CHECKSUM_LEN:
        raise bad("malformed page token")
    body, checksum = raw[:-_CHECKSUM_LEN], raw[-_CHECKSUM_LEN:]
    if _digest(body, _CHECKSUM_LEN) != checksum:
        raise bad("malformed page token")
    version, revision, scope_digest = _TOKEN_HEAD.unpack_from(body)
    if revision > MAX_REVISION:
        raise bad("malformed page token")
    if version != _TOKEN_VERSION:
        raise bad("page token from an unsupported version; restart the listing")
    if scope_digest != _digest(scope.encode(), 8):
        raise bad("page token was issued for a different request; keep parent and filters unchanged")
    try:
        after_key = body[_TOKEN_HEAD.size:].decode("utf-8")
    except UnicodeDecodeError:
        raise bad("malformed page token") from None
    return revision, after_key


# --- tenancy, catalog and token names ------------------------------------------------


def parse_tenant_name(name: str, field: str = "name") -> str:
    """``"tenants/{t}"`` → ``t``."""
    (t,) = _parse(name, field, ("tenants",), RESOURCE_ID)
    return t


def parse_quota_name(name: str, field: str = "name") -> tuple[str, str | None]:
    """``"tenants/{t}/quota"`` → ``(t, None)``; ``"tenants/{t}/projects/{p}/quota"`` → ``(t, p)``."""
    if not name.endswith("/quota"):
        raise invalid_argument([(field, f'{_show(name)} is not of the form "tenants/{{tenant}}/quota" or '
                                        '"tenants/{tenant}/projects/{project}/quota"')])
    owner = name[: -len("/quota")]
    if owner.count("/") == 1:
        return parse_tenant_name(owner, field), None
    return parse_project_parent(owner, field)


def parse_network_owner(parent: str, field: str = "parent") -> tuple[str, str]:
    """``"tenants/{t}/projects/{p}"`` → ``(t, p)``; ``"tenants/{t}"`` → ``(t, "")`` (the
    tenant's shared networks)."""
    if parent.count("/") == 1:
        return parse_tenant_name(parent, field), ""
    return parse_project_parent(parent, field)


def parse_network_name(name: str, field: str = "name") -> tuple[str, str, str]:
    """``"tenants/{t}/projects/{p}/networks/{n}"`` → ``(t, p, n)``;
    ``"tenants/{t}/networks/{n}"`` → ``(t, "", n)`` (shared)."""
    if name.count("/") == 3:
        t, n = _parse(name, field, ("tenants", "networks"), RESOURCE_ID)
        return t, "", n
    t, p, n = _parse(name, field, ("tenants", "projects", "networks"), RESOURCE_ID)
    return t, p, n


def parse_flavor_name(name: str, field: str = "name") -> tuple[str, str]:
    """``"flavors/{f}"`` → ``("", f)`` (public); ``"tenants/{t}/flavors/{f}"`` → ``(t, f)``."""
    if name.startswith("tenants/"):
        t, f = _parse(name, field, ("tenants", "flavors"), RESOURCE_ID)
        return t, f
    (f,) = _parse(name, field, ("flavors",), RESOURCE_ID)
    return "", f


def parse_flavor_parent(parent: str, field: str = "parent") -> str:
    """``""`` → ``""`` (public flavors); ``"tenants/{t}"`` → ``t``."""
    return parse_tenant_name(parent, field) if parent else ""


def parse_image_name(name: str, field: str = "name") -> str:
    (i,) = _parse(name, field, ("images",), RESOURCE_ID)
    return i


def parse_token_name(name: str, field: str = "name") -> str:
    (t,) = _parse(name, field, ("tokens",), RESOURCE_ID)
    return t


def mask_paths(paths: list[str], allowed: tuple[str, ...], field: str = "update_mask") -> set[str]:
    """The paths of an update mask, each one of ``allowed`` (empty mask: all of them)."""
    if not paths:
        return set(allowed)
    unknown = [p for p in paths if p not in allowed]
    if unknown:
        raise invalid_argument([(field, f"unknown or immutable paths {unknown}; allowed: {list(allowed)}")])
    return set(paths)


MAX_LIMIT = 2**40  # far above any real quota, far below int64 sums of many projects


def validate_limits(limits, field: str) -> None:
    """Each set field of a ResourceLimits message is between 0 and MAX_LIMIT."""
    out = [(f"{field}.{d.name}", f"must be between 0 and {MAX_LIMIT}")
           for d, value in limits.ListFields() if not 0 <= value <= MAX_LIMIT]
    if out:
        raise invalid_argument(out)


def validate_resource_version(value: int, field: str = "resource_version") -> None:
    """A watch's starting point: 0 (now) or an etcd revision."""
    if not 0 <= value <= MAX_REVISION:
        raise invalid_argument([(field, f"must be between 0 and {MAX_REVISION}")])


def update_mask(paths: list[str], allowed: tuple[str, ...], *, write_once: tuple[str, ...] = (),
                field: str = "update_mask") -> set[str]:
    """The paths of a required update mask, each one of ``allowed``, or ``"*"`` for all of
    them. A path in ``write_once`` (set at create, never changed) is refused by name;
    any other is refused listing the allowed ones."""
    if not paths:
        raise invalid_argument([(field, f"required: one or more of {list(allowed)}, or \"*\"")])
    out: list[tuple[str, str]] = []
    chosen: set[str] = set()
    for path in paths:
        if path == "*":
            chosen.update(allowed)
        elif path in allowed:
            chosen.add(path)
        elif path.split(".")[0] in write_once:
            out.append((field, f"{_show(path)} is write-once (set at create only)"))
        else:
            out.append((field, f"unknown or immutable path {_show(path)}; allowed: {list(allowed)} or \"*\""))
    if out:
        raise invalid_argument(out)
    return chosen


def duration_seconds(seconds: int, nanos: int, *, default: int, maximum: int, field: str) -> int:
    """Whole seconds of a google.protobuf.Duration (a fraction rounds up); 0 (unset) →
    ``default``; negative or above ``maximum`` is INVALID_ARGUMENT."""
    if seconds < 0 or nanos < 0:
        raise invalid_argument([(field, "must not be negative")])
    whole = seconds + (1 if nanos else 0)
    if whole > maximum:
        raise invalid_argument([(field, f"must be at most {maximum} s, got {whole} s")])
    return whole or default


_HOSTNAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?)*$")
#: Metadata keys Quanta renders itself (``bootstrap.render_metadata``); ``values`` may not set them.
RESERVED_METADATA_KEYS = ("instance-id", "local-hostname", "public-keys-data")


def bootstrap_metadata_violations(*, instance_id: str, hostname: str, ssh_authorized_keys: list[str],
                                  values: Mapping[str, str], field: str) -> list[tuple[str, str]]:
    """Problems with a VM's instance metadata. Bootstrap data is secret: the
    descriptions never repeat what was given (only which field, and why)."""
    out: list[tuple[str, str]] = []
    if len(instance_id) > 256 or any(not " " < ch <= "~" for ch in instance_id):
        out.append((f"{field}.instance_id", "at most 256 printable ASCII characters without spaces"))
    if hostname and (len(hostname) > 253 or not _HOSTNAME.match(hostname)):
        out.append((f"{field}.hostname", "must be a DNS name (labels of letters, digits and '-', "
                                          "at most 253 characters)"))
    for i, key in enumerate(ssh_authorized_keys):
        if not key.strip() or "\n" in key or "\r" in key:
            out.append((f"{field}.ssh_authorized_keys[{i}]", "must be one non-empty line"))
    for key in RESERVED_METADATA_KEYS:
        if key in values:
            out.append((_label_field(f"{field}.values", key),
                        "set by Quanta (from instance_id, hostname, ssh_authorized_keys)"))
    if any(not k for k in values):
        out.append((f"{field}.values", "keys must not be empty"))
    return out
