"""Quanta on a user's machine: the SDK, the ``quanta`` CLI and ``quanta up``.

    from quanta import Client, QuotaExceeded
    with Client() as quanta:          # settings: arguments > $QUANTA_* > context > `quanta up`'s
        try:
            vm = quanta.create_vm("web-1", flavor="small", image="ubuntu")
        except QuotaExceeded as err:
            print("no room:", err.dimensions)

``quanta.aio.Client`` is the same client for asyncio; :mod:`quanta.errors` has the
exceptions both raise; :mod:`quanta.config` the contexts and how settings resolve.

This package speaks the public gRPC API (and, for ``quanta up`` and a few operator
commands, starts processes or reads etcd); the control plane's own packages
(``controlplane``, ``scheduler``, ``agents``) never import it.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from controlplane.api.errors import ApiError
from quanta import aio
from quanta.client import Client
from quanta.errors import (
    Aborted,
    AlreadyExists,
    Cancelled,
    ConfigError,
    Conflict,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    QuantaError,
    QuotaExceeded,
    RateLimited,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    Unreachable,
    VmSetFailed,
    WaitTimeout,
)
from quanta.outcomes import CreatedVms, PlannedVms, VmOutcome, VmPlacement

try:
    __version__ = version("quanta")
except PackageNotFoundError:  # a checkout on sys.path without an install
    __version__ = "0+unknown"

__all__ = [
    "Aborted", "AlreadyExists", "ApiError", "Cancelled", "Client", "ConfigError", "Conflict", "CreatedVms",
    "DeadlineExceeded",
    "FailedPrecondition", "Internal", "InvalidArgument", "NotFound", "OutOfRange", "PermissionDenied", "PlannedVms",
    "QuantaError", "QuotaExceeded", "RateLimited", "ResourceExhausted", "Unauthenticated", "Unavailable",
    "Unimplemented", "Unreachable", "VmOutcome", "VmPlacement", "VmSetFailed", "WaitTimeout", "__version__", "aio",
]
