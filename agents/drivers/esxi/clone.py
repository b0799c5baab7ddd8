"""Specs for making a VM from an image, one builder per way (pure pyvmomi data, no calls).

- instant: ``InstantClone_Task`` from a running parent (vCenter 6.7+); the child
  shares the parent's memory and disks, ready in about a second.
- linked: ``CloneVM_Task`` from the image's current snapshot with
  ``createNewChildDiskBacking`` (vCenter); on a standalone ESXi host, which has no
  CloneVM, ``CreateVM_Task`` with each disk a new child of the snapshot's disk.
- full: ``CloneVM_Task`` copying every disk; the fallback when a linked clone fails.

A request with NICs (``VmRequest.nics``) replaces the image's NICs with its own, in
the same spec: a ``VirtualVmxnet3`` per NIC, in order, with the MAC agents/netconfig.py
derives (``addressType`` manual), on the named port group (a standard one by name, a
distributed one by its key and switch uuid). Without NICs the image's are kept.
InstantClone keeps the parent's NICs, so a request with NICs is not made that way.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from pyVmomi import vim

from agents import netconfig
from agents.drivers.esxi import guestinfo
from agents.drivers.esxi.session import NAME_KEY, RECORD_KEY, UID_KEY, Datastore, HostInfo, PortGroup
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
    try:
        network = netconfig.network_config(request.vm_uid, request.nics)
        return options + guestinfo.options(request.bootstrap, vm_uid=request.vm_uid, network=network)
    except ValueError as err:
        raise OperationFailed(f"VM {request.vm_uid}: {err}", reason="InvalidArgument") from None


def _port_group(host: HostInfo, name: str) -> PortGroup:
    pg = host.port_group(name)
    if pg is None:
        raise OperationFailed(f"host {host.name} reaches no port group {name!r}; it has {list(host.networks)}",
                              reason="NetworkNotFound")
    return pg


def nic_card(index: int, port_group: PortGroup, mac: str) -> Any:
    """NIC ``index`` of a VM on ``port_group``: a VirtualVmxnet3 with the manual MAC
    ``mac`` (``netconfig.nic_mac``). Pure."""
    backing: Any
    if port_group.distributed:
        backing = vim.vm.device.VirtualEthernetCard.DistributedVirtualPortBackingInfo(
            port=vim.dvs.PortConnection(portgroupKey=port_group.key, switchUuid=port_group.switch_uuid))
    else:
        backing = vim.vm.device.VirtualEthernetCard.NetworkBackingInfo(deviceName=port_group.name)
    return vim.vm.device.VirtualVmxnet3(
        key=-100 - index, addressType="manual", macAddress=mac, backing=backing,
        connectable=vim.vm.device.VirtualDevice.ConnectInfo(startConnected=True, allowGuestControl=True,
                                                            connected=True),
        wakeOnLanEnabled=False)


def nic_changes(request: VmRequest, host: HostInfo, image_devices: tuple = ()) -> list:
    """The device changes that give a VM the request's NICs in place of ``image_devices``'
    ([] for a request without NICs: the image's stay). Pure. Raises OperationFailed
    (NetworkNotFound) for a port group the host does not reach."""
    if not request.nics:
        return []
    cards = [nic_card(i, _port_group(host, nic.backing), netconfig.nic_mac(request.vm_uid, i, nic))
             for i, nic in enumerate(request.nics)]
    removed = [vim.vm.device.VirtualDeviceSpec(operation="remove", device=d) for d in image_devices
               if isinstance(d, vim.vm.device.VirtualEthernetCard)]
    return removed + [vim.vm.device.VirtualDeviceSpec(operation="add", device=card) for card in cards]


def _config(request: VmRequest) -> Any:
    return vim.vm.ConfigSpec(numCPUs=request.vcpus, memoryMB=request.memory_mib,
                             annotation=f"Quanta {request.name}", extraConfig=_extra_config(request))


def clone_spec(request: VmRequest, image: ImageRef, host: HostInfo, datastore: Datastore, *, linked: bool) -> Any:
    relocate = vim.vm.RelocateSpec(pool=host.pool, host=host.mo, datastore=datastore.mo)
    config = _config(request)
    if changes := nic_changes(request, host, image.devices):
        config.deviceChange = changes
    spec = vim.vm.CloneSpec(location=relocate, config=config, powerOn=False, template=False)
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


def linked_create_spec(request: VmRequest, image: ImageRef, datastore: Datastore, host: HostInfo) -> Any:
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
            if request.nics:
                continue  # the request's NICs replace the image's
            # A copy that asks for a MAC of its own: given the image's, CreateVM may keep
            # it (vcsim does), and every clone would share it.
            card = copy.copy(device)
            card.macAddress, card.addressType = None, "generated"
            changes.append(vim.vm.device.VirtualDeviceSpec(operation="add", device=card))
        elif isinstance(device, _COPIED_DEVICES):
            changes.append(vim.vm.device.VirtualDeviceSpec(operation="add", device=device))
    # The request's NICs after the copied devices: vcsim gives a new device a key of
    # its own choosing, which must not be one a copied device still has to take.
    changes += nic_changes(request, host)
    config = _config(request)
    config.name = vm_name(request)
    config.guestId = image.guest_id or "otherGuest64"
    config.files = vim.vm.FileInfo(vmPathName=f"[{datastore.name}]")
    config.deviceChange = changes
    return config
