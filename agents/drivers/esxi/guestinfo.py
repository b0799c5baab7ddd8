"""Bootstrap data as ``guestinfo`` extraConfig keys: what the guest reads, what it
reports back, and how the keys are blanked (pure pyvmomi data, no calls).

- cloud-init (its VMware datasource): ``guestinfo.userdata`` and
  ``guestinfo.metadata`` (instance metadata, JSON), each base64 with its
  ``.encoding`` key set to ``base64``.
- Ignition (its ``vmware`` provider): ``guestinfo.ignition.config.data``, base64, with
  ``guestinfo.ignition.config.data.encoding`` = ``base64``.
- A VM's network config (agents/netconfig.py) rides in the metadata: its ``network``
  key holds the config (JSON, base64, ``network.encoding`` = ``base64``), as
  cloud-init's VMware datasource reads it; a VM with such a config but no bootstrap
  data gets metadata of its own (``instance-id`` = the VM's uid, and the network).
- The guest reports that it bootstrapped by setting ``guestinfo.quanta.bootstrap`` to
  ``done`` (e.g. ``vmware-rpctool "info-set guestinfo.quanta.bootstrap done"`` at the
  end of its user data).

The values are secret: built here only into the create spec, never logged, never
kept by the session's cache (which keeps only :func:`present`). Not all of the
metadata is: what a guest needs again on its next boot (its instance id, host name and
network config) stays on the VM when the rest is blanked (:func:`kept_metadata`):
without it cloud-init would find no datasource, take the guest for a new instance and
fall back to DHCP on one NIC, losing its static address. Whether bootstrap data is
present is therefore said by the user data (cloud-init) or config (Ignition) keys alone.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any

from pyVmomi import vim

from agents.drivers.protocol import BootstrapFormat, BootstrapPayload

USERDATA_KEY = "guestinfo.userdata"
METADATA_KEY = "guestinfo.metadata"
IGNITION_KEY = "guestinfo.ignition.config.data"
ENCODING_SUFFIX = ".encoding"
DATA_KEYS = (USERDATA_KEY, METADATA_KEY, IGNITION_KEY)
"""Every key that may carry bootstrap data (each with its ``.encoding`` key)."""
CLEARED_KEYS = tuple(k for key in DATA_KEYS for k in (key, key + ENCODING_SUFFIX))
"""What :func:`clear_options` blanks: every data key and its encoding key, whatever the
format (the metadata is then set again to what is kept of it, if anything)."""
SECRET_KEYS = (USERDATA_KEY, IGNITION_KEY)
"""The keys whose presence says that bootstrap data is on the VM (:func:`present`)."""

NETWORK_FIELD = "network"
NETWORK_ENCODING_FIELD = "network.encoding"
INSTANCE_ID_FIELD = "instance-id"
KEPT_FIELDS = (INSTANCE_ID_FIELD, "local-hostname", NETWORK_FIELD, NETWORK_ENCODING_FIELD)
"""The metadata fields kept on the VM after its bootstrap data is cleared, when it has a network config."""

REPORT_KEY = "guestinfo.quanta.bootstrap"
REPORT_DONE = "done"


def _encoded(key: str, data: bytes) -> list:
    return [vim.option.OptionValue(key=key, value=base64.b64encode(data).decode("ascii")),
            vim.option.OptionValue(key=key + ENCODING_SUFFIX, value="base64")]


def options(payload: BootstrapPayload | None, *, vm_uid: str = "", network: Mapping[str, Any] | None = None) -> list:
    """The extraConfig options that deliver ``payload`` and the network config
    ``network`` ([] for neither). Pure.

    cloud-init: user data, and the metadata when there is some (else the datasource
    falls back to the VM's product UUID as instance id); Ignition: the config. With a
    network config, the metadata (:func:`metadata_document`) whatever the format (an
    Ignition guest does not read it). Raises ValueError when the payload's metadata
    must be merged with a network config and is not a JSON object (its content is not
    in the message)."""
    found = []
    if payload is not None:
        if payload.format is BootstrapFormat.IGNITION:
            found += _encoded(IGNITION_KEY, payload.user_data)
        else:
            found += _encoded(USERDATA_KEY, payload.user_data)
    cloud_init_metadata = payload.metadata if payload is not None and payload.format is BootstrapFormat.CLOUD_INIT \
        else b""
    metadata = metadata_document(vm_uid, cloud_init_metadata, network)
    if metadata:
        found += _encoded(METADATA_KEY, metadata)
    return found


def metadata_document(vm_uid: str, metadata: bytes, network: Mapping[str, Any] | None) -> bytes:
    """The metadata to deliver: ``metadata`` as given when there is no network config;
    else that JSON object (or a new one with ``instance-id`` = ``vm_uid``) with the
    network config in ``network`` (base64 JSON; ``network.encoding``), which replaces
    any the caller put there: the driver's names the NICs by the MACs it gave them.
    Pure. Raises ValueError for metadata that is not a JSON object."""
    if network is None:
        return metadata
    doc: dict[str, Any] = {}
    if metadata:
        try:
            doc = json.loads(metadata)
        except (UnicodeDecodeError, json.JSONDecodeError):
            doc = None  # type: ignore[assignment]
        if not isinstance(doc, dict):
            raise ValueError("bootstrap metadata must be a JSON object to carry a network config")
    doc.setdefault(INSTANCE_ID_FIELD, vm_uid)
    doc[NETWORK_FIELD] = base64.b64encode(json.dumps(network, sort_keys=True).encode()).decode("ascii")
    doc[NETWORK_ENCODING_FIELD] = "base64"
    return json.dumps(doc, sort_keys=True).encode()


def decode_network(metadata: Mapping[str, Any]) -> Any:
    """The network config a metadata document carries (None if none), decoded as
    cloud-init decodes it. Pure; for tests and tools."""
    value = metadata.get(NETWORK_FIELD)
    if value is None or isinstance(value, Mapping):
        return value
    if metadata.get(NETWORK_ENCODING_FIELD) in ("base64", "b64"):
        value = base64.b64decode(value)
    return json.loads(value)


def kept_metadata(extra_config: Mapping[str, object]) -> bytes | None:
    """What stays of a VM's metadata when its bootstrap data is cleared: the
    :data:`KEPT_FIELDS` of it when it carries a network config, else None (all of it
    goes). Pure; reads the metadata, keeps nothing else of it. Metadata it cannot
    decode counts as none."""
    value = extra_config.get(METADATA_KEY)
    if not isinstance(value, str) or not value:
        return None
    try:
        raw = base64.b64decode(value, validate=True) if extra_config.get(METADATA_KEY + ENCODING_SUFFIX) in (
            "base64", "b64") else value.encode()
        doc = json.loads(raw)
    except (binascii.Error, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(doc, dict) or NETWORK_FIELD not in doc:
        return None
    return json.dumps({k: doc[k] for k in KEPT_FIELDS if k in doc}, sort_keys=True).encode()


def clear_options(kept: bytes | None = None) -> list:
    """Options that blank every bootstrap key (vSphere removes an extraConfig key set
    to ""), for either format and whichever of them the VM has, and set the metadata
    to ``kept`` (:func:`kept_metadata`) if given. Pure."""
    kept_options = {o.key: o for o in _encoded(METADATA_KEY, kept)} if kept else {}
    return [kept_options.get(key) or vim.option.OptionValue(key=key, value="") for key in CLEARED_KEYS]


def present(extra_config: Mapping[str, object]) -> bool:
    """Whether a VM's extraConfig (key → value) still carries bootstrap data: its user
    data or Ignition config (metadata alone may be what is kept after a clear)."""
    return any(extra_config.get(key) not in (None, "") for key in SECRET_KEYS)
