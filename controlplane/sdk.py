"""Deprecated: the SDK is ``quanta`` now (``from quanta import Client``).

Kept importable for one release; importing it warns. It re-exports
``quanta.client`` unchanged.
"""

from __future__ import annotations

import warnings

from quanta.client import (  # noqa: F401
    DEFAULT_ENDPOINT,
    ROLES,
    Client,
    local_state_path,
    resolve_endpoint,
    resolve_token,
)

warnings.warn("controlplane.sdk is deprecated; use `from quanta import Client` (quanta.client)",
              DeprecationWarning, stacklevel=2)
