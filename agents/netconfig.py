"""A VM's NICs as its guest sees them: the MAC of each NIC and the cloud-init network
config that names them (pure; no I/O).

- A NIC's MAC is the one its request carries (``NicRequest.mac``: chosen at random by
  the control plane in VMware's static range 00:50:56:00:00:00-00:50:56:3f:ff:ff and
  claimed on its backing, so unique there; ``controlplane/macs.py``). A NIC without
  one (a VM made before MACs were claimed) gets one derived from the VM's uid and the
  NIC's index (:func:`mac`): the same on every host the VM is made on, NIC ``i`` its
  NIC 0's plus ``i``, but two VMs may share it (a 22-bit hash). :func:`nic_mac` is
  the one rule both drivers follow.
- The network config is cloud-init's version 2 (netplan-like): one ``ethernets``
  entry per NIC matched by ``macaddress``; a static NIC gets ``addresses``
  ([ip/prefix]) and ``nameservers``, the first static NIC with a gateway (per address
  family) the default route; a DHCP NIC ``dhcp4: true`` (``dhcp6`` for none: Quanta's
  DHCP networks are IPv4).

Used by drivers: the esxi driver sets the MACs on the VM's NICs and puts the config in
the guestinfo metadata (cloud-init's VMware datasource reads it from the metadata key
``network``, encoded as ``network.encoding`` says); the sim reports the MACs.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Sequence
from typing import Any

from agents.drivers.protocol import NicRequest
from controlplane import macs as mac_range

MAC_PREFIX = mac_range.PREFIX

NETWORK_CONFIG_VERSION = 2


def mac(vm_uid: str, index: int = 0) -> str:
    """The MAC of NIC ``index`` (0-based) of the VM ``vm_uid``. Pure, deterministic.

    NIC 0's is the sim driver's historical MAC of the VM (the first 22 bits of the
    uid's SHA-256). Raises ValueError for a negative index."""
    if index < 0:
        raise ValueError(f"NIC index must be >= 0, got {index}")
    d = hashlib.sha256(vm_uid.encode()).digest()
    base = ((d[0] & 0x3F) << 16) | (d[1] << 8) | d[2]
    return mac_range.mac_of((base + index) % mac_range.SPAN)


def nic_mac(vm_uid: str, index: int, nic: NicRequest) -> str:
    """The MAC NIC ``index`` of the VM gets: its request's, else :func:`mac`. Pure."""
    return nic.mac or mac(vm_uid, index)


def macs(vm_uid: str, count: int) -> tuple[str, ...]:
    """The MACs of NICs 0..count-1 of the VM, in order. Pure."""
    return tuple(mac(vm_uid, i) for i in range(count))


def is_static(nic: NicRequest) -> bool:
    """Whether the guest is told the NIC's address (else it asks DHCP)."""
    return bool(nic.ip)


def interface_name(index: int) -> str:
    """The ``ethernets`` key of NIC ``index`` (an id inside the config only: the guest
    matches the NIC by MAC and keeps its own interface name)."""
    return f"nic{index}"


def needs_network_config(nics: Sequence[NicRequest]) -> bool:
    """Whether the guest needs to be told its network config: some NIC is static, or
    there are several (cloud-init's fallback, without one, brings up DHCP on one NIC
    only). No NICs or one DHCP NIC: the fallback does what the VM asks."""
    return any(is_static(n) for n in nics) or len(nics) > 1


def network_config(vm_uid: str, nics: Sequence[NicRequest]) -> dict[str, Any] | None:
    """The cloud-init network config (version 2) of the VM's NICs, or None when the
    guest needs none (:func:`needs_network_config`). Pure.

    Raises ValueError (with the NIC's index, never anything else of the request) for
    a static NIC whose ip, prefix length, gateway or DNS server is not an address of
    one family, or whose gateway is outside its subnet."""
    if not needs_network_config(nics):
        return None
    ethernets: dict[str, Any] = {}
    routed: set[int] = set()  # address families that have their default route already
    for i, nic in enumerate(nics):
        entry: dict[str, Any] = {"match": {"macaddress": nic_mac(vm_uid, i, nic)}}
        if not is_static(nic):
            entry["dhcp4"] = True
            ethernets[interface_name(i)] = entry
            continue
        interface = _interface(i, nic)
        entry["addresses"] = [str(interface)]
        if nic.gateway:
            gateway = _address(i, "gateway", nic.gateway, interface.version)
            if gateway not in interface.network:
                raise ValueError(f"NIC {i}: gateway {gateway} is outside {interface.network}")
            if interface.version not in routed:
                routed.add(interface.version)
                entry["routes"] = [{"to": "0.0.0.0/0" if interface.version == 4 else "::/0", "via": str(gateway)}]
        if nic.dns_servers:
            # Any family: a v6 resolver may serve a v4-only NIC's names.
            entry["nameservers"] = {"addresses": [str(_address(i, "DNS server", s, 0)) for s in nic.dns_servers]}
        ethernets[interface_name(i)] = entry
    return {"version": NETWORK_CONFIG_VERSION, "ethernets": ethernets}


def _interface(index: int, nic: NicRequest) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    ip = _address(index, "ip", nic.ip, 0)
    if not 1 <= nic.prefix_length <= ip.max_prefixlen:
        raise ValueError(f"NIC {index}: prefix length {nic.prefix_length} is not in 1..{ip.max_prefixlen}")
    return ipaddress.ip_interface(f"{ip}/{nic.prefix_length}")


def _address(index: int, what: str, text: str, version: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"NIC {index}: {what} {text!r} is not an IP address") from None
    if version and address.version != version:
        raise ValueError(f"NIC {index}: {what} {text} is not an IPv{version} address")
    return address
