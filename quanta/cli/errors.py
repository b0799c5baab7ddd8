"""What the CLI says when something expected goes wrong — never a traceback.

Every command runs inside :func:`guarded`: API errors, a ``--wait`` that ran out
of time, an unreachable endpoint, Ctrl-C and a closed pipe (``quanta vm list |
head -1``) end the command with one clear message on stderr and an exit code
(1, or 130 for Ctrl-C, 0 for a closed pipe). Field violations name the user's
flag, not the API's field, and say the rule in words, not as a regular expression.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import NoReturn

import grpc

from controlplane.api.errors import ApiError
from controlplane.api.validation import HOST_ID, RESOURCE_ID
from controlplane.etcd.client import EtcdError
from quanta.errors import Unreachable, short_cause, unreachable_message


class WaitTimeout(Exception):
    """A ``--wait`` ran out of time; the message says what was last seen (state and
    condition) and that the operation goes on."""


class CliError(Exception):
    """A failure the CLI itself reports: a usage problem found after parsing (a TLS
    CA file that does not exist: ``exit_code`` 2) or an outcome it refuses to call
    success (a VM that went to ERROR while ``--wait`` followed it)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


#: API field → what the user typed, for the field violations the API returns.
#: Prefixes match sub-fields (``vm.labels["x"]`` → ``--label``).
FLAGS: Mapping[str, str] = {
    "vm_id": "--name",
    "vm.flavor": "--flavor",
    "vm.image": "--image",
    "vm.labels": "--label",
    "vm.node_selector": "--node-selector",
    "vm.anti_affinity_group": "--anti-affinity-group",
    "vm.affinity_group": "--affinity-group",
    "request_id": "--request-id",
    "label_selector": "--selector",
    "parent": "--tenant/--project",
    "name": "NAME",
    "quota": "--quota",
    "limits": "LIMITS",
    "tenant_id": "TENANT",
    "project_id": "PROJECT",
    "flavor_id": "FLAVOR",
    "image_id": "IMAGE",
    "etag": "--etag",
    "resource_version": "--resource-version",
    "vm.name": "NAME",
    "vm.etag": "--etag",
    "vm.power_policy": "--power-policy",
    "vm.nics": "--nic",
    "vm.disks": "--disk",
    "disk": "DISK",
    "network_id": "NETWORK",
    "network.backing": "--backing",
    "network.subnet.cidr": "--cidr",
    "network.subnet.gateway": "--gateway",
    "network.subnet.dns_servers": "--dns",
    "network.subnet.range_start": "--range",
    "network.subnet.range_end": "--range",
    "network.labels": "--label",
    "disk_id": "DISK",
    "disk.size_gib": "--size",
    "disk.datastore_class": "--class",
    "disk.labels": "--label",
    "vm.bootstrap": "--user-data/--ignition",
    "vm.bootstrap.format": "--ignition",
    "vm.bootstrap.metadata": "--metadata",
    "vm.bootstrap.metadata.hostname": "--hostname",
    "vm.bootstrap.metadata.ssh_authorized_keys": "--ssh-key",
    "update_mask": "--label/--flavor",
    "grace": "--grace",
    "mode": "--hard",
    "plan": "--from-plan",
    "hold": "--hold",
}

#: Patterns the API quotes in violations, and the rule they stand for.
RULES: Mapping[str, str] = {
    RESOURCE_ID.pattern: "use 1 to 63 lowercase letters, digits and hyphens, starting with a letter "
                         "and not ending with a hyphen (e.g. web-1)",
    HOST_ID.pattern: "use lowercase letters, digits, hyphens and dots (a DNS name), starting and ending "
                     "with a letter or digit, at most 253 characters",
}

_MUST_MATCH = re.compile(r"^(?P<what>.*) must match (?P<pattern>\S+)$")


def etcd_message(err: EtcdError, endpoint: str) -> str:
    """What to say when etcd (for the commands that read it directly) failed."""
    if err.code is grpc.StatusCode.UNAVAILABLE:
        return (f"cannot reach etcd at {endpoint}: {short_cause(str(err))}\n  start a local system with `quanta up`, "
                "or name its etcd with --etcd.")
    return str(err)


def flag_for(field: str, flags: Mapping[str, str] = FLAGS) -> str:
    """The flag (or argument) the user typed for an API field; the field itself
    when none matches."""
    for api_field in sorted(flags, key=len, reverse=True):
        if field == api_field or field.startswith((f"{api_field}.", f"{api_field}[")):
            return flags[api_field]
    return field


def in_words(description: str) -> str:
    """A violation's description with a quoted regular expression replaced by the rule in words."""
    match = _MUST_MATCH.match(description)
    if match and match.group("pattern") in RULES:
        return f"{match.group('what')} is not valid: {RULES[match.group('pattern')]}"
    return description


def describe(err: ApiError, endpoint: str, context: str | None = None,
             flags: Mapping[str, str] = FLAGS) -> str:
    """The message for an API error: ``error: CODE: REASON: message`` (the reason
    left out when the server sent none) and one line per field violation, or the
    unreachable message when no server answered."""
    if isinstance(err, Unreachable):  # the SDK said it already, with where it tried
        return "error: " + err.message
    if err.code is grpc.StatusCode.UNAVAILABLE and err.reason == err.code.name:
        # No rich status: gRPC itself gave up, no frontend answered.
        return "error: " + unreachable_message(endpoint, context, err.message)
    reason = "" if err.reason == err.code.name else f"{err.reason}: "
    message = err.message
    if err.field_violations and message == "invalid request: " + "; ".join(
            f"{field}: {description}" for field, description in err.field_violations):
        message = "invalid request"  # the lines below say it again, in the user's words
    lines = [f"error: {err.code.name}: {reason}{message}"]
    lines += [f"  {flag_for(field, flags)}: {in_words(description)}" for field, description in err.field_violations]
    return "\n".join(lines)


def fail(message: str, code: int = 1) -> NoReturn:
    print(message, file=sys.stderr, flush=True)
    sys.exit(code)


@contextmanager
def guarded(endpoint: Callable[[], str] = lambda: "", context: Callable[[], str | None] = lambda: None,
            flags: Mapping[str, str] = FLAGS) -> Iterator[None]:
    """Run a command's body; turn every expected failure into a message and an
    exit code. ``endpoint``/``context`` are asked for only when needed (the API
    address the command used, or etcd's for the commands that read it, and the
    context it came from)."""
    try:
        yield
    except ApiError as err:
        fail(describe(err, endpoint(), context(), flags))
    except EtcdError as err:
        fail(f"error: {etcd_message(err, endpoint())}")
    except (WaitTimeout, TimeoutError) as err:
        fail(f"error: {err}")
    except CliError as err:
        fail(f"error: {err}", err.exit_code)
    except KeyboardInterrupt:
        fail("interrupted", 130)
    except BrokenPipeError:
        # Output piped into e.g. `head`, which stopped reading: end quietly (and keep
        # Python from complaining when it flushes stdout on exit).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
