"""Images on the datastores that need them: copied on first use, then cached.

An image ``ubuntu`` is registered once, as the template VM ``quanta-image-ubuntu``
with a snapshot, on some datastore. A host that makes VMs on another datastore gets
its own copy there (``quanta-image-ubuntu@DATASTORE``, a full clone plus a
snapshot), made the first time a VM needs it. Concurrent first uses share one copy:
the cache holds one future per (image, datastore), and a failed copy is forgotten
so that the next use tries again. A copy left by an earlier agent is found by name.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pyVmomi import vim

from agents.drivers.esxi.clone import ImageRef
from agents.drivers.esxi.faults import to_driver_error
from agents.drivers.esxi.session import Datastore, HostInfo, Session
from agents.drivers.protocol import ImageNotFound, OperationFailed

SNAPSHOT_NAME = "quanta-base"


class ImageCache:
    def __init__(self, session: Session):
        self._session = session
        self._prefix = session.config.image_prefix
        self._ready: dict[tuple[str, str], asyncio.Future[ImageRef]] = {}
        self.copies = 0
        """Image copies this cache made (for tests and metrics)."""

    async def get(self, image: str, host: HostInfo, datastore: Datastore) -> ImageRef:
        """The image, ready on ``datastore``. Raises ImageNotFound, or DriverError if a copy failed."""
        key = (image, datastore.moid)
        ready = self._ready.get(key)
        if ready is None or (ready.done() and ready.exception() is not None):
            ready = self._ready[key] = asyncio.ensure_future(self._prepare(image, host, datastore))
        return await asyncio.shield(ready)

    async def _prepare(self, image: str, host: HostInfo, datastore: Datastore) -> ImageRef:
        await self._session.synced.wait()
        name = f"{self._prefix}{image}"
        source = await self._read(name)
        if source is None:
            raise ImageNotFound(f"image {image!r}: no VM named {name!r} on {self._session.config.url}")
        if datastore.moid in source.datastores:
            return source
        copy_name = f"{name}@{datastore.name}"
        existing = await self._read(copy_name)
        if existing is not None and existing.snapshot is not None:
            return existing
        try:
            spec = vim.vm.CloneSpec(location=vim.vm.RelocateSpec(
                pool=host.pool, host=host.mo, datastore=datastore.mo,
                diskMoveType="moveAllDiskBackingsAndDisallowSharing"), powerOn=False, template=False)
            copy = await self._session.run_task(source.mo.CloneVM_Task, host.vm_folder, copy_name, spec)
            await self._session.run_task(copy.CreateSnapshot_Task, SNAPSHOT_NAME, "Quanta image base", False, False)
        except Exception as err:
            raise to_driver_error(err, f"copy image {image!r} to {datastore.name}") from err
        self.copies += 1
        made = await self._read_mo(copy_name, copy)
        if made.snapshot is None:
            raise OperationFailed(f"image copy {copy_name!r} has no snapshot", transient=True)
        return made

    async def _read(self, name: str) -> ImageRef | None:
        moid = self._session.by_name.get(name)
        if moid is None:
            return None
        return await self._read_mo(name, self._session.vm_mo(moid))

    async def _read_mo(self, name: str, mo: Any) -> ImageRef:
        try:
            return await self._session.call(_image_ref, self._session, name, mo)
        except Exception as err:
            raise to_driver_error(err, f"read image {name!r}") from err


def _image_ref(session: Session, name: str, mo: Any) -> ImageRef:
    """Blocking: read what cloning needs of an image VM."""
    props = session.retrieve(mo, ["snapshot.currentSnapshot", "config.guestId", "config.hardware.device",
                                  "runtime.powerState", "datastore"])
    snapshot = props.get("snapshot.currentSnapshot")
    devices = tuple(props.get("config.hardware.device") or ())
    if snapshot is not None:
        snap = session.retrieve(snapshot, ["config.hardware.device"])
        devices = tuple(snap.get("config.hardware.device") or devices)
    return ImageRef(name=name, moid=mo._moId, powered_on=props.get("runtime.powerState") == "poweredOn",
                    datastores=frozenset(ds._moId for ds in props.get("datastore") or ()), mo=mo, snapshot=snapshot,
                    guest_id=props.get("config.guestId") or "", devices=devices)
