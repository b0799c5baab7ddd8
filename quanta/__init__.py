"""Quanta on a user's machine: the SDK, the ``quanta`` CLI and ``quanta up``.

    from quanta import Client
    with Client() as quanta:                      # endpoint: arg, $QUANTA_ENDPOINT or `quanta up`'s
        vm = quanta.create_vm("web-1", flavor="small", image="ubuntu")

This package speaks the public gRPC API (and, for ``quanta up`` and a few operator
commands, starts processes or reads etcd); the control plane's own packages
(``controlplane``, ``scheduler``, ``agents``) never import it.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from controlplane.api.errors import ApiError
from quanta.client import Client

try:
    __version__ = version("quanta")
except PackageNotFoundError:  # a checkout on sys.path without an install
    __version__ = "0+unknown"

__all__ = ["ApiError", "Client", "__version__"]
