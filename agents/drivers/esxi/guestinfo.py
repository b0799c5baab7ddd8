"""Bootstrap data as ``guestinfo`` extraConfig keys: what the guest reads, what it
reports back, and how the keys are blanked (pure pyvmomi data, no calls).

- cloud-init (its VMware datasource): ``guestinfo.userdata`` and
  ``guestinfo.metadata`` (instance metadata, JSON), each base64 with its
  ``.encoding`` key set to ``base64``.
- Ignition (its ``vmware`` provider): ``guestinfo.ignition.config.data``, base64, with
  ``guestinfo.ignition.config.data.encoding`` = ``base64``.
- The guest reports that it bootstrapped by setting ``guestinfo.quanta.bootstrap`` to
  ``done`` (e.g. ``vmware-rpctool "info-set guestinfo.quanta.bootstrap done"`` at the
  end of its user data).

The values are secret: built here only into the create spec, never logged, never
kept by the session's cache (which keeps only :func:`present`).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping

from pyVmomi import vim

from agents.drivers.protocol import BootstrapFormat, BootstrapPayload

USERDATA_KEY = "guestinfo.userdata"
METADATA_KEY = "guestinfo.metadata"
IGNITION_KEY = "guestinfo.ignition.config.data"
ENCODING_SUFFIX = ".encoding"
DATA_KEYS = (USERDATA_KEY, METADATA_KEY, IGNITION_KEY)
"""Every key that may carry bootstrap data (each with its ``.encoding`` key)."""
CLEARED_KEYS = tuple(k for key in DATA_KEYS for k in (key, key + ENCODING_SUFFIX))
"""What :func:`clear_options` blanks: every data key and its encoding key, whatever the format."""

REPORT_KEY = "guestinfo.quanta.bootstrap"
REPORT_DONE = "done"


def _encoded(key: str, data: bytes) -> list:
    return [vim.option.OptionValue(key=key, value=base64.b64encode(data).decode("ascii")),
            vim.option.OptionValue(key=key + ENCODING_SUFFIX, value="base64")]


def options(payload: BootstrapPayload | None) -> list:
    """The extraConfig options that deliver ``payload`` ([] for None). Pure.

    cloud-init: user data, and the metadata when there is some (the datasource
    then falls back to the VM's product UUID as instance id); Ignition: the config."""
    if payload is None:
        return []
    if payload.format is BootstrapFormat.IGNITION:
        return _encoded(IGNITION_KEY, payload.user_data)
    found = _encoded(USERDATA_KEY, payload.user_data)
    if payload.metadata:
        found += _encoded(METADATA_KEY, payload.metadata)
    return found


def clear_options() -> list:
    """Options that blank every bootstrap key (vSphere removes an extraConfig key set
    to ""), for either format and whichever of them the VM has. Pure."""
    return [vim.option.OptionValue(key=key, value="") for key in CLEARED_KEYS]


def present(extra_config: Mapping[str, object]) -> bool:
    """Whether a VM's extraConfig (key → value) still carries bootstrap data."""
    return any(extra_config.get(key) not in (None, "") for key in DATA_KEYS)
