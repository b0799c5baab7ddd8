"""What makes two creates with one ``request_id`` the same request.

A create's request record (``requests/{t}/{p}/{sha256(request_id)}``, see
:meth:`controlplane.store.vms.VmStore.create`) keeps the fingerprint of what the
caller asked for. A later create with that request_id is a retry only if its
fingerprint is the same: then it gets the first answer; otherwise it is refused
(``RequestMismatch``), never answered with a VM it did not describe (DESIGN.md:
"A request_id reused with different parameters is refused"). Records written
before fingerprints existed have none and are taken as retries, as before.

Bootstrap metadata is not in the spec (it is secret, stored apart, and rendered with
defaults such as the VM's uid that differ per attempt): the frontend digests it as the
request gave it (:func:`metadata_digest`) and passes the digest in; it is only ever
hashed into the fingerprint, never stored or returned on its own.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence

from controlplane.models import AddressMode, VmSpec

VERSION = b"vm-create-v1\0"

FINGERPRINTED = frozenset({
    "flavor", "image", "labels", "node_selector", "anti_affinity_group", "anti_affinity_scope",
    "affinity_group", "affinity_scope", "restart_policy", "power", "power_policy", "bootstrap",
    "nics", "disks",
})
"""The VmSpec fields a caller chooses (besides the VM's id)."""

NOT_FINGERPRINTED = frozenset({
    "ref",  # its tenant and project are in the request record's key; its id counts when chosen (below)
    "uid", "resources", "request_id", "create_time_ns", "delete_time_ns", "shard",  # made by the server
    # set by later power requests (a create sets their defaults):
    "power_off_mode", "power_off_grace_s", "power_time_ns", "restarts", "restart_request_id",
    "vm_set",  # a set's member: the set's own request_id covers the set
    "plan",  # as vm_set
})


def metadata_digest(*, instance_id: str, hostname: str, ssh_authorized_keys: Sequence[str],
                    values: Mapping[str, str]) -> bytes:
    """SHA-256 of a create's bootstrap metadata as the request gave it (keys in order,
    values in key order; not the rendered metadata, whose defaults differ per attempt),
    or b"" when it gave none (every field empty). Pure."""
    if not (instance_id or hostname or ssh_authorized_keys or values):
        return b""
    doc = {"instance_id": instance_id, "hostname": hostname, "ssh_authorized_keys": list(ssh_authorized_keys),
           "values": dict(sorted(values.items()))}
    encoded = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return hashlib.sha256(b"vm-bootstrap-metadata-v1\0" + encoded).digest()


def fingerprint(spec: VmSpec, *, chosen_id: bool, metadata: bytes = b"") -> bytes:
    """SHA-256 of the create's parameters, normalised (defaults as stored, maps in
    key order): the VM's id if the caller chose it (``chosen_id``; a server-assigned
    id differs on every attempt), every field in :data:`FINGERPRINTED`, and
    ``metadata``, the :func:`metadata_digest` of its bootstrap metadata (b"": none,
    which leaves the fingerprint as it was before metadata counted). Pure."""
    chosen = {name: getattr(spec, name) for name in sorted(FINGERPRINTED)}
    chosen = {name: dict(value) if name in ("labels", "node_selector") else
              int(value) if name.endswith(("_scope", "_policy")) or name == "power" else value
              for name, value in chosen.items()}
    # Bootstrap data by its summary (format, size, SHA-256 of the user data) and the
    # metadata's digest (not in the spec).
    b = spec.bootstrap
    chosen["bootstrap"] = [int(b.format), b.size_bytes, b.sha256.hex()] if b is not None else None
    if metadata:
        chosen["bootstrap_metadata"] = metadata.hex()
    # NICs and disks by what the caller chose (a pool's address, the subnet's copy and
    # the disk's uid and size are the server's); absent when none, so that the
    # fingerprint of a create without them is what it was before they existed.
    chosen.pop("nics"), chosen.pop("disks")
    if spec.nics:
        chosen["nics"] = [[n.network, int(n.address_mode), n.ip if n.address_mode is AddressMode.STATIC else ""]
                          for n in spec.nics]
    if spec.disks:
        chosen["disks"] = [d.disk_id for d in spec.disks]
    chosen["vm_id"] = spec.ref.vm_id if chosen_id else ""
    encoded = json.dumps(chosen, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return hashlib.sha256(VERSION + encoded).digest()


SET_VERSION = b"vm-set-create-v1\0"


def set_fingerprint(members: list[bytes], *, set_id: str, deadline_s: int, plan: str = "") -> bytes:
    """SHA-256 of an all-or-nothing CreateVms: its members' :func:`fingerprint`s in
    request order, the set's id if the caller chose it (``set_id``, else "") and its
    deadline in seconds, and the plan it names (none: as before plans existed). A retry
    with the set's request_id is one only if this is the same. Pure."""
    digest = hashlib.sha256(SET_VERSION)
    digest.update(json.dumps([set_id, deadline_s, plan] if plan else [set_id, deadline_s]).encode())
    for member in members:
        digest.update(member)
    return digest.digest()
