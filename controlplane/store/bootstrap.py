"""A VM's bootstrap data in etcd: cloud-init user data or an Ignition config, and the
instance metadata, kept apart from every copy of the VM's spec.

Secret (DESIGN.md): written once, in the VM's create transaction
(:func:`put_op`); read only by the agent of the VM's host (:func:`read`), to hand it
to the driver; deleted in the transaction that removes the VM, or by that agent once
the guest has bootstrapped (:func:`delete_op`). Reads of the VM (Get, List, Watch),
audit records and logs carry only its :class:`~controlplane.models.BootstrapSummary`.
Never log a :class:`BootstrapData`: its repr leaves the bytes out.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from controlplane.etcd import EtcdClient, ops
from controlplane.etcd.ops import RequestOp
from controlplane.gen.quanta.store.v1 import records_pb2 as rec
from controlplane.models import BootstrapFormat, BootstrapSummary, VmRef
from controlplane.store.keys import Keys

#: The most user data a VM may carry (cloud-init's VMware datasource and Ignition read
#: it from one guestinfo key; vSphere keeps extraConfig values small).
MAX_USER_DATA_BYTES = 64 * 1024
#: The most rendered instance metadata a VM may carry.
MAX_METADATA_BYTES = 16 * 1024


@dataclass(frozen=True, slots=True)
class BootstrapData:
    """A VM's bootstrap data as stored. ``metadata``: the instance metadata as the
    guest reads it (JSON, :func:`render_metadata`)."""

    uid: str
    format: BootstrapFormat
    user_data: bytes = field(repr=False)
    metadata: bytes = field(default=b"", repr=False)

    def summary(self) -> BootstrapSummary:
        return BootstrapSummary(self.format, len(self.user_data), hashlib.sha256(self.user_data).digest())

    def to_bytes(self) -> bytes:
        return rec.BootstrapData(uid=self.uid, format=int(self.format), user_data=self.user_data,
                                 metadata=self.metadata).SerializeToString()

    @classmethod
    def from_bytes(cls, data: bytes) -> BootstrapData:
        m = rec.BootstrapData.FromString(data)
        fmt = BootstrapFormat(m.format) if m.format in (0, 1) else BootstrapFormat.CLOUD_INIT
        return cls(m.uid, fmt, m.user_data, m.metadata)


def render_metadata(*, instance_id: str, hostname: str, ssh_authorized_keys: Sequence[str] = (),
                    values: Mapping[str, str] | None = None) -> bytes:
    """Instance metadata as JSON, with the keys cloud-init's VMware datasource reads
    (``instance-id``, ``local-hostname``, and the SSH keys as ``public-keys-data``, one per
    line) and ``values`` beside them
    (they may not replace those). Pure; keys sorted, so equal input gives equal bytes."""
    doc: dict[str, object] = dict(values or {})
    doc["instance-id"] = instance_id
    doc["local-hostname"] = hostname
    if ssh_authorized_keys:
        doc["public-keys-data"] = "\n".join(ssh_authorized_keys)
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def put_op(keys: Keys, ref: VmRef, data: BootstrapData) -> RequestOp:
    """The write that stores ``data`` for ``ref``: part of the VM's create transaction."""
    return ops.put(keys.bootstrap(ref), data.to_bytes())


def delete_op(keys: Keys, ref: VmRef) -> RequestOp:
    """The write that deletes ``ref``'s bootstrap data (a no-op when there is none)."""
    return ops.delete(keys.bootstrap(ref))


async def read(client: EtcdClient, keys: Keys, ref: VmRef, uid: str) -> BootstrapData | None:
    """The bootstrap data of the VM ``ref`` with ``uid``, or None when there is none
    (never given, deleted, or left by an earlier VM of that name). For the agent of
    the VM's host only."""
    kv = await client.get(keys.bootstrap(ref))
    if kv is None:
        return None
    data = BootstrapData.from_bytes(kv.value)
    return data if data.uid == uid else None
