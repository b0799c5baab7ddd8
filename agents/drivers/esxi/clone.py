"""Specs for making a VM from an image, one builder per way (pure pyvmomi data, no calls).

- instant: ``InstantClone_Task`` from a running parent (vCenter 6.7+); the child
  shares the parent's memory and disks, ready in about a second.
- linked: ``CloneVM_Task`` from the image's current snapshot with
  ``createNewChildDiskBacking`` (vCenter); on a standalone ESXi host, which has no
  CloneVM, ``CreateVM_Task`` with each disk a new child of the snapshot's disk.
- full: ``CloneVM_Task`` copying every disk; the fallback when a linked clone fails.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from pyVmomi import vim

from agents.drivers.esxi import guestinfo
from agents.drivers.esxi.session import NAME_KEY, RECORD_KEY, UID_KEY, Datastore, HostInfo
from agents.drivers.protocol import OperationFailed, VmRequest

_COPIED_DEVICES = (vim.vm.device.VirtualSCSIController, vim.vm.device.VirtualSATAController,
                   vim.vm.device.VirtualEthernetCard)


@dataclass(frozen=True, slots=True)
class ImageRef:
    """An image VM ready to clone from on one datastore."""

    name: str
    moid: str
    powered_on: bool
    datastores: frozenset[str]
    mo: Any = field(compare=False, repr=False)
    snapshot: Any = field(compare=False, repr=False, default=None)
    guest_id: str = ""
    devices: tuple = field(compare=False, repr=False, default=())
    """The devices of the snapshot (else of the VM): what a linked CreateVM copies."""


def vm_name(request: VmRequest) -> str:
    """vSphere name of a Quanta VM: unique per uid, so a repeated create meets DuplicateName."""
    return f"quanta-{request.vm_uid}"


def _extra_config(request: VmRequest) -> list:
    """The VM's extraConfig: its Quanta id, name and record, and its bootstrap data as
    guestinfo keys (guestinfo.py), so that the VM is made with them in one task."""
    options = [vim.option.OptionValue(key=UID_KEY, value=request.vm_uid),
               vim.option.OptionValue(key=NAME_KEY, value=request.name)]
    if request.record:
        options.append(vim.option.OptionValue(key=RECORD_KEY, value=request.record))
    return options + guestinfo.options(request.bootstrap)


def _config(request: VmRequest) -> Any:
    return vim.vm.ConfigSpec(numCPUs=request.vcpus, memoryMB=request.memory_mib,
                             annotation=f"Quanta {request.name}", extraConfig=_extra_config(request))


def clone_spec(request: VmRequest, image: ImageRef, host: HostInfo, datastore: Datastore, *, linked: bool) -> Any:
    relocate = vim.vm.RelocateSpec(pool=host.pool, host=host.mo, datastore=datastore.mo)
    spec = vim.vm.CloneSpec(location=relocate, config=_config(request), powerOn=False, template=False)
    if linked:
        relocate.diskMoveType = "createNewChildDiskBacking"
        spec.snapshot = image.snapshot
    else:
        relocate.diskMoveType = "moveAllDiskBackingsAndDisallowSharing"
    return spec


def instant_clone_spec(request: VmRequest, host: HostInfo, datastore: Datastore) -> Any:
    return vim.vm.InstantCloneSpec(
        name=vm_name(request), location=vim.vm.RelocateSpec(pool=host.pool, host=host.mo, datastore=datastore.mo),
        config=_extra_config(request))


def linked_create_spec(request: VmRequest, image: ImageRef, datastore: Datastore) -> Any:
    """CreateVM spec whose disks are new delta disks over the image snapshot's disks."""
    changes = []
    for device in image.devices:
        if isinstance(device, vim.vm.device.VirtualDisk):
            parent = device.backing
            if not isinstance(parent, vim.vm.device.VirtualDevice.FileBackingInfo):
                raise OperationFailed(f"image {image.name}: disk {device.key} has no file to link a child to")
            backing = vim.vm.device.VirtualDisk.FlatVer2BackingInfo(
                fileName=f"[{datastore.name}]", diskMode="persistent",
                parent=vim.vm.device.VirtualDisk.FlatVer2BackingInfo(fileName=parent.fileName,
                                                                     diskMode="persistent"))
            disk = vim.vm.device.VirtualDisk(key=device.key, controllerKey=device.controllerKey,
                                             unitNumber=device.unitNumber, capacityInKB=device.capacityInKB,
                                             backing=backing)
            changes.append(vim.vm.device.VirtualDeviceSpec(operation="add", fileOperation="create", device=disk))
        elif isinstance(device, vim.vm.device.VirtualEthernetCard):
            # A copy that asks for a MAC of its own: given the image's, CreateVM may keep
            # it (vcsim does), and every clone would share it.
            card = copy.copy(device)
            card.macAddress, card.addressType = None, "generated"
            changes.append(vim.vm.device.VirtualDeviceSpec(operation="add", device=card))
        elif isinstance(device, _COPIED_DEVICES):
            changes.append(vim.vm.device.VirtualDeviceSpec(operation="add", device=device))
    config = _config(request)
    config.name = vm_name(request)
    config.guestId = image.guest_id or "otherGuest64"
    config.files = vim.vm.FileInfo(vmPathName=f"[{datastore.name}]")
    config.deviceChange = changes
    return config
