"""agents/netconfig.py: a NIC's MAC (its request's, else derived from uid and index in
VMware's static range), and the cloud-init network config (version 2) a guest is given."""

from __future__ import annotations

import re

import pytest

from agents import netconfig
from agents.drivers.esxi.clone import nic_changes
from agents.drivers.esxi.session import HostInfo, PortGroup
from agents.drivers.protocol import NicRequest, VmRequest

pytestmark = pytest.mark.unit

MAC = re.compile(r"^00:50:56:[0-3][0-9a-f]:[0-9a-f]{2}:[0-9a-f]{2}$")


@pytest.mark.parametrize("uid", ["a", "vm-1", "0" * 36, "ü-uid", ""])
def test_macs_are_in_the_static_range_deterministic_and_distinct_per_vm(uid):
    first = netconfig.macs(uid, 16)
    assert first == netconfig.macs(uid, 16)
    assert len(set(first)) == 16
    assert all(MAC.match(m) for m in first)


def test_nic_zero_keeps_the_sim_drivers_historical_mac():
    # The sim driver's historical MAC of a VM: the first 22 bits of the uid's SHA-256.
    assert netconfig.mac("vm-1") == "00:50:56:2d:62:b0"
    assert netconfig.mac("vm-1", 1) == "00:50:56:2d:62:b1"


def test_the_mac_index_wraps_inside_the_range():
    # Find a uid whose NIC 0 is near the top of the range: the next ones wrap to 00:00:00.
    uid = next(u for u in (f"u{i}" for i in range(100_000)) if netconfig.mac(u).startswith("00:50:56:3f:ff"))
    top = int(netconfig.mac(uid).replace(":", "")[6:], 16)
    wrapped = netconfig.mac(uid, 0x400000 - top)
    assert wrapped == "00:50:56:00:00:00"
    with pytest.raises(ValueError):
        netconfig.mac(uid, -1)


STATIC = NicRequest("web", ip="10.1.0.10", prefix_length=24, gateway="10.1.0.1", dns_servers=("10.1.0.2", "1.1.1.1"))
STATIC_NO_GW = NicRequest("db", ip="10.2.0.10", prefix_length=16)
STATIC_2ND_GW = NicRequest("db", ip="10.2.0.10", prefix_length=16, gateway="10.2.0.1")
DHCP = NicRequest("lan")
V6 = NicRequest("v6", ip="fd00::10", prefix_length=64, gateway="fd00::1", dns_servers=("fd00::53",))


def eth(uid, i, **fields):
    return {"match": {"macaddress": netconfig.mac(uid, i)}, **fields}


@pytest.mark.parametrize("nics, ethernets", [
    ((), None),
    ((DHCP,), None),  # cloud-init's fallback does exactly this
    ((DHCP, DHCP), {"nic0": eth("u", 0, dhcp4=True), "nic1": eth("u", 1, dhcp4=True)}),
    ((STATIC,), {"nic0": eth("u", 0, addresses=["10.1.0.10/24"],
                             routes=[{"to": "0.0.0.0/0", "via": "10.1.0.1"}],
                             nameservers={"addresses": ["10.1.0.2", "1.1.1.1"]})}),
    ((DHCP, STATIC_NO_GW), {"nic0": eth("u", 0, dhcp4=True), "nic1": eth("u", 1, addresses=["10.2.0.10/16"])}),
    # The default route goes on the first static NIC that has a gateway, once per family.
    ((STATIC_NO_GW, STATIC, STATIC_2ND_GW), {
        "nic0": eth("u", 0, addresses=["10.2.0.10/16"]),
        "nic1": eth("u", 1, addresses=["10.1.0.10/24"], routes=[{"to": "0.0.0.0/0", "via": "10.1.0.1"}],
                    nameservers={"addresses": ["10.1.0.2", "1.1.1.1"]}),
        "nic2": eth("u", 2, addresses=["10.2.0.10/16"])}),
    ((STATIC, V6), {
        "nic0": eth("u", 0, addresses=["10.1.0.10/24"], routes=[{"to": "0.0.0.0/0", "via": "10.1.0.1"}],
                    nameservers={"addresses": ["10.1.0.2", "1.1.1.1"]}),
        "nic1": eth("u", 1, addresses=["fd00::10/64"], routes=[{"to": "::/0", "via": "fd00::1"}],
                    nameservers={"addresses": ["fd00::53"]})}),
], ids=["none", "one-dhcp", "two-dhcp", "static", "dhcp-and-static", "first-gateway-wins", "dual-stack"])
def test_network_config(nics, ethernets):
    config = netconfig.network_config("u", nics)
    if ethernets is None:
        assert config is None
    else:
        assert config == {"version": 2, "ethernets": ethernets}


@pytest.mark.parametrize("nic, message", [
    (NicRequest("a", ip="10.0.0.300", prefix_length=24), "NIC 0: ip '10.0.0.300' is not an IP address"),
    (NicRequest("a", ip="10.0.0.3", prefix_length=0), "NIC 0: prefix length 0 is not in 1..32"),
    (NicRequest("a", ip="10.0.0.3", prefix_length=33), "NIC 0: prefix length 33 is not in 1..32"),
    (NicRequest("a", ip="10.0.0.3", prefix_length=24, gateway="10.0.1.1"), "outside 10.0.0.0/24"),
    (NicRequest("a", ip="10.0.0.3", prefix_length=24, gateway="fd00::1"), "is not an IPv4 address"),
    (NicRequest("a", ip="10.0.0.3", prefix_length=24, dns_servers=("dns.example",)), "DNS server"),
])
def test_bad_static_settings_are_refused_naming_the_nic(nic, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        netconfig.network_config("u", (nic,))


def test_a_nic_with_a_mac_is_matched_by_it_and_one_without_by_the_derived_one():
    """The control plane's MAC (NicRequest.mac) wins; a NIC of a VM made before MACs
    were claimed keeps the one derived from the uid, in the config and on the card."""
    chosen = NicRequest("web", ip="10.1.0.10", prefix_length=24, mac="00:50:56:12:34:56")
    config = netconfig.network_config("u", (chosen, DHCP))
    assert config is not None
    assert config["ethernets"]["nic0"]["match"] == {"macaddress": "00:50:56:12:34:56"}
    assert config["ethernets"]["nic1"]["match"] == {"macaddress": netconfig.mac("u", 1)}
    assert netconfig.nic_mac("u", 0, chosen) == "00:50:56:12:34:56"
    assert netconfig.nic_mac("u", 1, DHCP) == netconfig.mac("u", 1)
    host = HostInfo("host-1", "h", 4, 1 << 30, "8.0", (), ("web", "lan"), mo=None, pool=None, vm_folder=None,
                    port_groups=(PortGroup("web"), PortGroup("lan")))
    cards = [change.device for change in nic_changes(VmRequest("u", "vm", "img", 1, 1, 1, nics=(chosen, DHCP)), host)]
    assert [c.macAddress for c in cards] == ["00:50:56:12:34:56", netconfig.mac("u", 1)]
    assert all(c.addressType == "manual" for c in cards)
