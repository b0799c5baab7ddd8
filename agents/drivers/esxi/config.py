"""How an esxi driver reaches its hosts and makes VMs there."""

from __future__ import annotations

import re
from dataclasses import dataclass

CLONE_MODES = ("auto", "instant", "linked", "full")


@dataclass(frozen=True, slots=True)
class EsxiConfig:
    """One vSphere endpoint (a standalone ESXi host or a vCenter) and the hosts of it to run.

    ``url`` is ``https://HOST[:PORT]/sdk``; credentials are separate so they never
    appear in a URL that gets logged.
    """

    url: str
    user: str
    password: str = ""
    verify_tls: bool = True
    """Verify the server certificate (against ``ca_file`` or the system store)."""
    ca_file: str | None = None
    hosts: tuple[str, ...] = ()
    """HostSystem names to run; empty: every host the endpoint manages."""
    host_id_prefix: str = ""
    """Quanta host id = prefix + host name (lower-cased, other than [a-z0-9.-] replaced by '-')."""
    datastore: str = ""
    """Datastore for new VMs; empty: the host's datastore with the most free space."""
    datastore_classes: tuple[tuple[str, str], ...] = ()
    """(class, datastore name) pairs: persistent disks of a class live on that datastore
    (``[ds] quanta-disks/{uid}.vmdk``), and a host that mounts it carries the label
    ``datastore.quanta.io/{class}=true``. One datastore per class."""
    image_prefix: str = "quanta-image-"
    """An image named ``ubuntu`` is the template VM ``quanta-image-ubuntu`` (with a snapshot)."""
    clone_mode: str = "auto"
    """auto: InstantClone from a running parent on vCenter, else linked, falling back to full;
    or force one of instant / linked / full."""
    threads: int = 16
    """Blocking pyvmomi calls in flight at once for this endpoint."""
    retries: int = 3
    """Extra attempts of an operation that failed with a transient fault."""
    retry_base_s: float = 0.2
    task_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        if self.clone_mode not in CLONE_MODES:
            raise ValueError(f"clone_mode must be one of {CLONE_MODES}")
        if self.threads < 1:
            raise ValueError("threads must be >= 1")
        if self.retries < 0:
            raise ValueError("retries must be >= 0")
        classes = [c for c, _ in self.datastore_classes]
        if len(set(classes)) != len(classes):
            raise ValueError(f"a datastore class is given twice: {sorted(classes)}")
        for cls, ds in self.datastore_classes:
            if not cls or not ds or not _CLASS.fullmatch(cls):
                raise ValueError(f"datastore class {cls!r}={ds!r}: need CLASS=DATASTORE, CLASS of [a-z0-9-]")

    def datastore_for(self, datastore_class: str) -> str:
        """The datastore name of a class ("" if the class is not configured)."""
        return next((ds for c, ds in self.datastore_classes if c == datastore_class), "")


_CLASS = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")

