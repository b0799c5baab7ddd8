"""The esxi driver's NICs, network config and persistent disks, against vcsim.

NICs: one VirtualVmxnet3 per requested NIC, in order, on the named standard or
distributed port group, with the MAC agents/netconfig.py derives, in place of the
image's; the guest's network config in the guestinfo metadata (kept when the
bootstrap data is cleared). Disks: independent-persistent VMDKs at
``[ds] quanta-disks/{uid}.vmdk`` that outlive the VM. Everything is read back through
an independent pyvmomi session (tests/vcsim.py), not only through the driver.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from dataclasses import replace

import pytest
from pyVmomi import vim

from agents import netconfig
from agents.drivers.esxi import guestinfo, open_esxi
from agents.drivers.esxi.faults import to_driver_error
from agents.drivers.esxi.session import disk_path
from agents.drivers.protocol import (
    BootstrapFormat,
    BootstrapPayload,
    DiskRequest,
    NicRequest,
    OperationFailed,
    VmNotFound,
    VmRequest,
)
from tests.vcsim import Vcsim

CLASSES = (("standard", "LocalDS_0"), ("fast", "LocalDS_1"), ("remote", "NoSuchDS"))
WEB = NicRequest("web", ip="10.1.0.10", prefix_length=24, gateway="10.1.0.1", dns_servers=("10.1.0.2",))
DB = NicRequest("db")
PLAIN = NicRequest("VM Network", ip="192.168.5.7", prefix_length=16)


def req(uid: str | None = None, image: str = "ubuntu", **fields) -> VmRequest:
    uid = uid or uuid.uuid4().hex[:12]
    return replace(VmRequest(uid, f"tenants/t/projects/p/vms/{uid}", image, 1, 512, 10), **fields)


def disk(uid: str | None = None, cls: str = "standard", size_gib: int = 2) -> DiskRequest:
    return DiskRequest(uid or f"disk-{uuid.uuid4().hex[:8]}", size_gib, cls)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 90))


@pytest.fixture(scope="module")
def esx():
    with Vcsim(mode="esx", datastores=2, port_groups=("web", "db")) as vcsim:
        vcsim.make_image("ubuntu", nic=True, datastore="LocalDS_0")  # linked CreateVM
        vcsim.make_image("flat", nic=True, snapshot=False, datastore="LocalDS_0")  # full CloneVM
        yield vcsim


@pytest.fixture(scope="module")
def vpx():
    with Vcsim(mode="vpx", distributed_port_groups=1) as vcsim:
        vcsim.make_image("ubuntu", nic=True)
        yield vcsim


async def driver_of(vcsim: Vcsim):
    session, drivers = await open_esxi(vcsim.config(datastore_classes=CLASSES, datastore="LocalDS_0"))
    (driver,) = drivers.values()
    return session, driver


def cards(vcsim: Vcsim, uid: str) -> list:
    return [d for d in vcsim.devices(uid) if isinstance(d, vim.vm.device.VirtualEthernetCard)]


def metadata(vcsim: Vcsim, uid: str) -> dict:
    keys = vcsim.extra_config(uid)
    assert keys[guestinfo.METADATA_KEY + ".encoding"] == "base64"
    return json.loads(base64.b64decode(keys[guestinfo.METADATA_KEY]))


# --- NICs -----------------------------------------------------------------------------

@pytest.mark.parametrize("image", ["ubuntu", "flat"], ids=["linked-createvm", "full-clone"])
def test_nics_replace_the_images_on_their_port_groups_with_derived_macs(esx, image):
    request = req(image=image, nics=(WEB, DB, PLAIN))
    uid = request.vm_uid

    async def body():
        session, driver = await driver_of(esx)
        try:
            made = await driver.create_vm(request)
            assert made.networks == ("web", "db", "VM Network")
            assert not made.bootstrap_present
            again = await driver.create_vm(request)  # idempotent: the same VM, no second one
            assert again.networks == made.networks
        finally:
            await session.close()
    run(body())

    found = cards(esx, uid)
    assert [type(c) for c in found] == [vim.vm.device.VirtualVmxnet3] * 3  # the image's NIC is gone
    assert [c.backing.deviceName for c in found] == ["web", "db", "VM Network"]
    assert [c.macAddress for c in found] == list(netconfig.macs(uid, 3))
    assert {c.addressType for c in found} == {"manual"}
    assert [vm.uid for vm in esx.quanta_vms()].count(uid) == 1

    doc = metadata(esx, uid)
    assert doc["instance-id"] == uid
    network = guestinfo.decode_network(doc)
    assert network == netconfig.network_config(uid, request.nics)
    assert network["ethernets"]["nic0"]["routes"] == [{"to": "0.0.0.0/0", "via": "10.1.0.1"}]
    assert network["ethernets"]["nic1"] == {"match": {"macaddress": netconfig.mac(uid, 1)}, "dhcp4": True}


def test_without_nics_the_image_nic_stays_and_no_metadata_is_written(esx):
    request = req()

    async def body():
        session, driver = await driver_of(esx)
        try:
            made = await driver.create_vm(request)
            assert made.networks == ("VM Network",)
        finally:
            await session.close()
    run(body())
    (card,) = cards(esx, request.vm_uid)
    assert card.backing.deviceName == "VM Network" and card.addressType != "manual"
    assert not [k for k in esx.extra_config(request.vm_uid) if k.startswith("guestinfo.")]


def test_a_nic_on_a_distributed_port_group_names_its_key_and_switch(vpx):
    request = req(nics=(NicRequest("DC0_DVPG0", ip="10.9.0.5", prefix_length=24, gateway="10.9.0.1"),
                        NicRequest("VM Network")))

    async def body():
        session, driver = await driver_of(vpx)
        try:
            pg = driver.host.port_group("DC0_DVPG0")
            assert pg is not None and pg.distributed
            assert "DC0_DVPG0" in (await driver.capacity()).networks
            made = await driver.create_vm(request)
            assert made.networks == ("DC0_DVPG0", "VM Network")
            return pg
        finally:
            await session.close()
    pg = run(body())
    dvs_card, std_card = cards(vpx, request.vm_uid)
    assert isinstance(dvs_card.backing, vim.vm.device.VirtualEthernetCard.DistributedVirtualPortBackingInfo)
    assert (dvs_card.backing.port.portgroupKey, dvs_card.backing.port.switchUuid) == (pg.key, pg.switch_uuid)
    assert std_card.backing.deviceName == "VM Network"
    assert [dvs_card.macAddress, std_card.macAddress] == list(netconfig.macs(request.vm_uid, 2))


def test_a_port_group_the_host_does_not_reach_or_a_bad_address_fails_and_leaves_no_vm(esx):
    missing = req(nics=(NicRequest("nowhere"),))
    bad = req(nics=(NicRequest("web", ip="10.1.0.10", prefix_length=24, gateway="10.2.0.1"),))

    async def body():
        session, driver = await driver_of(esx)
        try:
            with pytest.raises(OperationFailed) as err:
                await driver.create_vm(missing)
            assert (err.value.reason, err.value.transient) == ("NetworkNotFound", False)
            with pytest.raises(OperationFailed) as err:
                await driver.create_vm(bad)
            assert (err.value.reason, err.value.transient) == ("InvalidArgument", False)
            assert await driver.get_vm(missing.vm_uid) is None and await driver.get_vm(bad.vm_uid) is None
        finally:
            await session.close()
    run(body())
    assert not {missing.vm_uid, bad.vm_uid} & {vm.uid for vm in esx.quanta_vms()}


def test_clearing_bootstrap_data_keeps_the_network_config_the_guest_boots_with(esx):
    """The caller's metadata is merged with the network config; the clear blanks the
    user data and every secret metadata field, and leaves instance id, host name and
    network config (else cloud-init would take the next boot for a new instance)."""
    caller = {"instance-id": "i-caller", "local-hostname": "web-1", "public-keys": "ssh-ed25519 SECRET"}
    payload = BootstrapPayload(BootstrapFormat.CLOUD_INIT, b"#cloud-config\n{}\n", json.dumps(caller).encode())
    request = req(nics=(WEB,), bootstrap=payload)
    uid = request.vm_uid
    network = netconfig.network_config(uid, request.nics)

    async def body():
        session, driver = await driver_of(esx)
        try:
            made = await driver.create_vm(request)
            assert made.bootstrap_present
            doc = metadata(esx, uid)
            assert {k: doc[k] for k in caller} == caller
            assert guestinfo.decode_network(doc) == network
            for _ in range(2):  # idempotent
                await driver.clear_bootstrap(uid)
                assert not (await driver.get_vm(uid)).bootstrap_present
        finally:
            await session.close()
    run(body())
    keys = esx.extra_config(uid)
    assert guestinfo.USERDATA_KEY not in keys and guestinfo.USERDATA_KEY + ".encoding" not in keys
    doc = metadata(esx, uid)
    assert set(doc) == {"instance-id", "local-hostname", "network", "network.encoding"}
    assert (doc["instance-id"], doc["local-hostname"]) == ("i-caller", "web-1")
    assert guestinfo.decode_network(doc) == network
    assert "SECRET" not in json.dumps(doc)


def test_capacity_names_the_port_groups_and_the_datastore_classes_mounted(esx):
    async def body():
        session, driver = await driver_of(esx)
        try:
            return await driver.capacity()
        finally:
            await session.close()
    capacity = run(body())
    assert capacity.networks == frozenset({"VM Network", "web", "db"})
    assert {k: v for k, v in capacity.labels.items() if k.startswith("datastore.quanta.io/")} == {
        "datastore.quanta.io/standard": "true", "datastore.quanta.io/fast": "true"}  # not "remote": not mounted


# --- persistent disks -----------------------------------------------------------------

def test_a_disk_is_made_attached_detached_kept_and_deleted(esx):
    data = disk()
    other = disk(cls="fast")
    request = req()
    uid = request.vm_uid
    path = disk_path("LocalDS_0", data.uid)

    async def body():
        session, driver = await driver_of(esx)
        try:
            await driver.create_vm(request)
            for _ in range(2):  # idempotent
                await driver.attach_disk(uid, data)
                assert (await driver.get_vm(uid)).disks == (data.uid,)
            assert esx.disk_exists(path)
            await driver.attach_disk(uid, other)
            info = await driver.get_vm(uid)
            assert info.disks == (data.uid, other.uid) and info.disk_gib == 1  # the root disk is still the root
            (added, second) = [d for d in esx.devices(uid) if isinstance(d, vim.vm.device.VirtualDisk)][1:]
            assert added.backing.fileName == path and added.backing.diskMode == "independent_persistent"
            assert second.backing.fileName == disk_path("LocalDS_1", other.uid)

            with pytest.raises(OperationFailed) as err:
                await driver.delete_disk(data.uid, "standard")
            assert (err.value.reason, err.value.transient) == ("DiskInUse", False)

            for _ in range(2):  # idempotent
                await driver.detach_disk(uid, data.uid)
                assert (await driver.get_vm(uid)).disks == (other.uid,)
            assert esx.disk_exists(path)  # detached, kept
            await driver.detach_disk(uuid.uuid4().hex[:12], data.uid)  # an absent VM is fine

            await driver.attach_disk(uid, data)  # the existing file again (a create would fail: it exists)
            assert sorted((await driver.get_vm(uid)).disks) == sorted((other.uid, data.uid))  # in key order
            await driver.detach_disk(uid, data.uid)
            for _ in range(2):  # idempotent
                await driver.delete_disk(data.uid, "standard")
                assert not esx.disk_exists(path)
        finally:
            await session.close()
    run(body())


def test_a_data_disk_outlives_its_vm_and_follows_a_new_one(esx):
    data = disk()
    first = req(disks=(data,))
    path = disk_path("LocalDS_0", data.uid)

    async def body():
        session, driver = await driver_of(esx)
        try:
            made = await driver.create_vm(first)
            assert made.disks == (data.uid,)
            assert (await driver.create_vm(first)).disks == (data.uid,)  # a retried create attaches nothing twice
            await driver.power_on(first.vm_uid)
            await driver.destroy_vm(first.vm_uid)
            assert await driver.get_vm(first.vm_uid) is None
            assert esx.disk_exists(path)
            second = req(disks=(data,), nics=(WEB,))
            again = await driver.create_vm(second)
            assert again.disks == (data.uid,) and again.networks == ("web",)
            (attached,) = [d for d in esx.devices(second.vm_uid) if isinstance(d, vim.vm.device.VirtualDisk)
                           and d.backing.fileName == path]
            assert attached.backing.diskMode == "independent_persistent"
            await driver.destroy_vm(second.vm_uid)
            assert esx.disk_exists(path)
            await driver.delete_disk(data.uid, "standard")
            assert not esx.disk_exists(path)
        finally:
            await session.close()
    run(body())


def test_disk_errors_are_clear_and_permanent(esx):
    request = req()

    async def body():
        session, driver = await driver_of(esx)
        try:
            await driver.create_vm(request)
            for cls in ("remote", "unconfigured"):
                with pytest.raises(OperationFailed) as err:
                    await driver.attach_disk(request.vm_uid, disk(cls=cls))
                assert (err.value.reason, err.value.transient) == ("DatastoreUnreachable", False)
                with pytest.raises(OperationFailed) as err:
                    await driver.delete_disk("d-1", cls)
                assert err.value.reason == "DatastoreUnreachable"
            with pytest.raises(VmNotFound):
                await driver.attach_disk(uuid.uuid4().hex[:12], disk())
            # A VM whose requested disk cannot be made is not left behind.
            doomed = req(disks=(disk(cls="remote"),))
            with pytest.raises(OperationFailed):
                await driver.create_vm(doomed)
            assert await driver.get_vm(doomed.vm_uid) is None
            assert (await driver.get_vm(request.vm_uid)).disks == ()
        finally:
            await session.close()
    run(body())


# --- pure ------------------------------------------------------------------------------

@pytest.mark.parametrize("fault, op, reason, transient", [
    (vim.fault.FileLocked(), "delete_disk", "DiskInUse", False),
    (vim.fault.FileLocked(), "attach_disk", "DiskInUse", True),
    (vim.fault.ResourceInUse(), "delete_disk", "DiskInUse", False),
    (vim.fault.ResourceInUse(), "attach_disk", "ResourceInUse", True),
    (vim.fault.FileAlreadyExists(), "attach_disk", "FileAlreadyExists", True),
    (vim.fault.FileNotFound(), "attach_disk", "FileNotFound", True),
    (vim.fault.FileNotFound(), "create", "ImageNotFound", False),
])
def test_disk_faults_mean_what_their_operation_makes_them(fault, op, reason, transient):
    mapped = to_driver_error(fault, "ctx", op=op)
    assert (mapped.reason, mapped.transient) == (reason, transient)


def test_kept_metadata_is_the_network_part_or_nothing():
    network = {"version": 2, "ethernets": {}}
    full = guestinfo.metadata_document("vm-1", json.dumps({"public-keys": "k", "local-hostname": "h"}).encode(),
                                       network)

    def extra(doc: bytes) -> dict:
        return {guestinfo.METADATA_KEY: base64.b64encode(doc).decode(), guestinfo.METADATA_KEY + ".encoding": "base64"}
    kept = json.loads(guestinfo.kept_metadata(extra(full)))
    assert set(kept) == {"instance-id", "local-hostname", "network", "network.encoding"}
    assert kept["instance-id"] == "vm-1" and guestinfo.decode_network(kept) == network
    assert guestinfo.kept_metadata(extra(b'{"instance-id": "x", "public-keys": "k"}')) is None  # no network: all goes
    assert guestinfo.kept_metadata(extra(b"not json")) is None
    assert guestinfo.kept_metadata({}) is None
    assert guestinfo.metadata_document("vm-1", b"raw: yaml", None) == b"raw: yaml"  # no network: as given
    with pytest.raises(ValueError, match="JSON object"):
        guestinfo.metadata_document("vm-1", b"raw: yaml", network)


def test_present_counts_user_data_not_kept_metadata():
    assert guestinfo.present({guestinfo.USERDATA_KEY: "eA=="})
    assert guestinfo.present({guestinfo.IGNITION_KEY: "eA=="})
    assert not guestinfo.present({guestinfo.METADATA_KEY: "eA=="})
    options = {o.key: o.value for o in guestinfo.clear_options(b"{}")}
    assert options[guestinfo.METADATA_KEY] == base64.b64encode(b"{}").decode()
    assert options[guestinfo.USERDATA_KEY] == "" and options[guestinfo.IGNITION_KEY] == ""


def test_datastore_classes_come_from_a_repeatable_flag_and_are_checked():
    from agents.__main__ import build_parser
    from agents.drivers.esxi import EsxiConfig

    args = build_parser().parse_args(["--driver", "esxi", "--esxi-url", "https://h/sdk",
                                      "--esxi-datastore-class", "standard=datastore1",
                                      "--esxi-datastore-class", "fast = ssd-1"])
    assert args.esxi_datastore_class == [("standard", "datastore1"), ("fast", "ssd-1")]
    config = EsxiConfig("https://h/sdk", "root", datastore_classes=tuple(args.esxi_datastore_class))
    assert (config.datastore_for("fast"), config.datastore_for("other")) == ("ssd-1", "")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--esxi-datastore-class", "no-equals-sign"])
    for bad in ((("a", "x"), ("a", "y")), (("Bad Class", "x"),)):
        with pytest.raises(ValueError):
            EsxiConfig("https://h/sdk", "root", datastore_classes=bad)
