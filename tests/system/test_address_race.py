"""Networks and exact address allocation through the real processes (LocalSystem, three
frontends on addresses of their own): 200 concurrent creates with a STATIC_POOL NIC on
a /26 spread over the three frontends hand out exactly its 62 addresses, none twice,
and 62 distinct MACs, the rest RESOURCE_EXHAUSTED ADDRESS_POOL_EXHAUSTED; deleted VMs
give their addresses back; a network in use is not deleted; a STATIC address is taken
once; two networks on one port group share its pool; bad NICs are INVALID_ARGUMENT;
validate_only and PlanVms say when a pool cannot take the VMs."""

from __future__ import annotations

import concurrent.futures
import ipaddress
import re
import uuid
from collections import Counter
from collections.abc import Iterator

import grpc
import pytest

from controlplane.api.errors import ApiError
from controlplane.etcd.server import free_port
from controlplane.gen.quanta.v1 import network_pb2, network_pb2_grpc, vm_pb2
from quanta.client import Client
from quanta.local import LocalSystem
from tests.conftest import wait_until

TENANT, PROJECT = "race", "p"
PARENT = f"tenants/{TENANT}/projects/{PROJECT}"
POOL = vm_pb2.NetworkInterface.STATIC_POOL
STATIC = vm_pb2.NetworkInterface.STATIC
EXHAUSTED = (grpc.StatusCode.RESOURCE_EXHAUSTED, "ADDRESS_POOL_EXHAUSTED")
MAC = re.compile(r"^00:50:56:[0-3][0-9a-f]:[0-9a-f]{2}:[0-9a-f]{2}$")  # VMware's manual range


ENDPOINTS: list[str] = []  # the three frontends' addresses, once the system is up


@pytest.fixture(scope="module")
def system() -> Iterator[LocalSystem]:
    with LocalSystem(hosts=2, frontends=1, latency="zero", metrics=False) as local:
        ENDPOINTS[:] = [local.endpoint]
        for name in ("frontend-b", "frontend-c"):
            ENDPOINTS.append(f"127.0.0.1:{free_port()}")
            local.add_frontend(name, ENDPOINTS[-1])
        with local.client(ensure_project=False) as admin:
            # A system admin grants the port groups the tests' networks map to.
            admin.create_tenant(TENANT, network_backings=[f"pg-{n}" for n in ("pool", "fixed", "plain", "fixed2",
                                                                             "small", "segment")]
                                + ["VM Network"])
            admin.create_project(PROJECT, tenant=TENANT)
        yield local


def networks(c: Client) -> network_pb2_grpc.NetworkServiceStub:
    return network_pb2_grpc.NetworkServiceStub(c._channel)


def make_network(c: Client, network_id: str, cidr: str = "", gateway: str = "", *,
                 backing: str = "") -> network_pb2.Network:
    subnet = network_pb2.Subnet(cidr=cidr, gateway=gateway) if cidr else None
    return c._call(networks(c).CreateNetwork, network_pb2.CreateNetworkRequest(
        parent=PARENT, network_id=network_id,
        network=network_pb2.Network(backing=backing or f"pg-{network_id}", subnet=subnet)))


def create_vm(c: Client, network: str, mode: int = POOL, ip: str = "", *, vm_id: str = "",
              request_id: str = "") -> vm_pb2.Vm:
    return c._call(c._vms.CreateVm, vm_pb2.CreateVmRequest(
        parent=PARENT, vm_id=vm_id or f"v-{uuid.uuid4().hex[:10]}", request_id=request_id,
        vm=vm_pb2.Vm(flavor="small", image="ubuntu", node_selector={"rack": "nowhere"},  # stays PENDING
                     nics=[vm_pb2.NetworkInterface(network=network, address_mode=mode, ip=ip)])), timeout=60)


def error(call) -> ApiError:
    with pytest.raises(ApiError) as info:
        call()
    return info.value


def test_200_creates_over_three_frontends_hand_out_a_26_exactly(system: LocalSystem) -> None:
    with system.client(ensure_project=False) as admin:
        made = make_network(admin, "pool", "10.99.0.64/26")
        assert (made.addresses_total, made.addresses_used) == (62, 0)
    clients = [Client(ENDPOINTS[i % 3], token=system.admin_token, own_connection=True) for i in range(30)]
    macs: list[str] = []
    try:
        def one(i: int) -> tuple[str, str]:
            try:
                vm = create_vm(clients[i % 30], "pool", vm_id=f"r-{i:03d}")
            except ApiError as err:
                return (err.code.name, err.reason)
            assert len(vm.nics) == 1
            macs.append(vm.nics[0].mac_address)
            return ("OK", vm.nics[0].ip)

        with concurrent.futures.ThreadPoolExecutor(30) as pool:
            outcomes = list(pool.map(one, range(200)))
    finally:
        for client in clients:
            client.close()
    ips = [ip for code, ip in outcomes if code == "OK"]
    refused = Counter(o for o in outcomes if o[0] != "OK")
    assert len(ips) == 62 and len(set(ips)) == 62, Counter(o[0] for o in outcomes)
    assert refused == {(EXHAUSTED[0].name, EXHAUSTED[1]): 138}
    assert len(set(macs)) == 62 and all(MAC.match(m) for m in macs), macs  # one MAC per NIC on the port group
    net = ipaddress.IPv4Network("10.99.0.64/26")
    assert all(ipaddress.IPv4Address(ip) in net for ip in ips)
    with system.client(ensure_project=False) as admin:
        got = admin._call(networks(admin).GetNetwork, network_pb2.GetNetworkRequest(name=f"{PARENT}/networks/pool"))
        assert (got.addresses_used, got.addresses_total) == (62, 62)
        # A VM read shows its NIC as its spec holds it.
        first = outcomes.index(("OK", ips[0]))
        vm = admin._call(admin._vms.GetVm, vm_pb2.GetVmRequest(name=f"{PARENT}/vms/r-{first:03d}"))
        nic = vm.nics[0]
        assert (nic.network, nic.address_mode, nic.ip, nic.prefix_length, nic.backing) == (
            f"{PARENT}/networks/pool", POOL, ips[0], 26, "pg-pool")
        assert nic.mac_address in macs
        # In use: not deleted.
        err = error(lambda: admin._call(networks(admin).DeleteNetwork,
                                        network_pb2.DeleteNetworkRequest(name=f"{PARENT}/networks/pool")))
        assert (err.code, err.reason, err.metadata.get("vms")) == (grpc.StatusCode.FAILED_PRECONDITION,
                                                                   "NETWORK_IN_USE", "62")
        # Deleted VMs give their addresses back: the next creates get exactly those.
        gone = {f"r-{i:03d}": ip for i, (code, ip) in enumerate(outcomes) if code == "OK"}
        freed = dict(list(gone.items())[:5])
        for vm_id in freed:
            admin._call(admin._vms.DeleteVm, vm_pb2.DeleteVmRequest(name=f"{PARENT}/vms/{vm_id}"))

        def used() -> int:
            return admin._call(networks(admin).GetNetwork,
                               network_pb2.GetNetworkRequest(name=f"{PARENT}/networks/pool")).addresses_used

        wait_until(lambda: used() == 57, timeout=60, message="the deleted VMs' addresses to be released",
                   seen=lambda: f"{used()} used")
        again = {create_vm(admin, "pool").nics[0].ip for _ in range(5)}
        assert again == set(freed.values())
        err = error(lambda: create_vm(admin, "pool"))
        assert (err.code, err.reason) == EXHAUSTED


def test_a_retried_create_keeps_its_address_and_a_static_address_is_taken_once(system: LocalSystem) -> None:
    with system.client(ensure_project=False) as admin:
        make_network(admin, "fixed", "10.98.0.0/24", gateway="10.98.0.1")
        first = create_vm(admin, "fixed", request_id="same-request", vm_id="retry")
        again = create_vm(admin, "fixed", request_id="same-request", vm_id="retry")
        assert again.uid == first.uid and again.nics[0].ip == first.nics[0].ip
        assert first.nics[0].gateway == "10.98.0.1"
        create_vm(admin, "fixed", STATIC, "10.98.0.10")
        err = error(lambda: create_vm(admin, f"{PARENT}/networks/fixed", STATIC, "10.98.0.10"))
        assert (err.code, err.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "ADDRESS_IN_USE")
        assert err.metadata == {"network": f"{PARENT}/networks/fixed", "ip": "10.98.0.10"}


@pytest.mark.parametrize(("network", "mode", "ip", "field"), [
    ("no-such", POOL, "", "vm.nics[0].network"),
    ("plain", POOL, "", "vm.nics[0].address_mode"),  # no subnet: DHCP only
    ("fixed2", STATIC, "10.97.0.1", "vm.nics[0].ip"),  # the gateway
    ("fixed2", STATIC, "10.97.1.5", "vm.nics[0].ip"),  # outside the subnet
    ("fixed2", STATIC, "", "vm.nics[0].ip"),
    ("fixed2", POOL, "10.97.0.5", "vm.nics[0].ip"),
])
def test_bad_nics_are_invalid_arguments_naming_the_field(system: LocalSystem, network: str, mode: int, ip: str,
                                                         field: str) -> None:
    with system.client(ensure_project=False) as admin:
        for network_id, cidr in (("plain", ""), ("fixed2", "10.97.0.0/24")):
            try:
                make_network(admin, network_id, cidr, gateway="10.97.0.1" if cidr else "")
            except ApiError as err:
                assert err.code is grpc.StatusCode.ALREADY_EXISTS
        err = error(lambda: create_vm(admin, network, mode, ip))
        assert err.code is grpc.StatusCode.INVALID_ARGUMENT
        assert field in [path for path, _why in err.field_violations], err.field_violations


def test_create_vms_takes_pool_addresses_per_vm_or_for_the_whole_set(system: LocalSystem) -> None:
    """INDEPENDENT: each create gets its own address or its own ADDRESS_POOL_EXHAUSTED;
    ALL_OR_NOTHING: every member gets a distinct address, or the whole set is refused
    and nothing is taken."""
    def request(vm_id: str) -> vm_pb2.CreateVmRequest:
        return vm_pb2.CreateVmRequest(vm_id=vm_id, vm=vm_pb2.Vm(
            flavor="small", image="ubuntu", node_selector={"rack": "nowhere"},
            nics=[vm_pb2.NetworkInterface(network="small", address_mode=POOL)]))

    with system.client(ensure_project=False) as admin:
        make_network(admin, "small", "10.96.0.0/29")  # 6 addresses

        def used() -> int:
            return admin._call(networks(admin).GetNetwork,
                               network_pb2.GetNetworkRequest(name=f"{PARENT}/networks/small")).addresses_used

        response = admin._call(admin._vms.CreateVms, vm_pb2.CreateVmsRequest(
            parent=PARENT, mode=vm_pb2.CreateVmsRequest.ALL_OR_NOTHING,
            requests=[request(f"set-{i}") for i in range(4)]), timeout=60)
        assert len({r.vm.nics[0].ip for r in response.results}) == 4 and used() == 4
        err = error(lambda: admin._call(admin._vms.CreateVms, vm_pb2.CreateVmsRequest(
            parent=PARENT, mode=vm_pb2.CreateVmsRequest.ALL_OR_NOTHING,
            requests=[request(f"big-{i}") for i in range(3)]), timeout=60))
        assert (err.code, err.reason) == EXHAUSTED
        assert used() == 4  # nothing taken
        response = admin._call(admin._vms.CreateVms, vm_pb2.CreateVmsRequest(
            parent=PARENT, requests=[request(f"one-{i}") for i in range(4)]), timeout=60)
        outcomes = Counter((r.code, r.reason) for r in response.results)
        assert outcomes == {(0, ""): 2, (EXHAUSTED[0].value[0], EXHAUSTED[1]): 2}
        assert used() == 6
        # validate_only says the same, writing nothing.
        err = error(lambda: admin._call(admin._vms.CreateVm, vm_pb2.CreateVmRequest(
            parent=PARENT, validate_only=True, vm_id="dry", vm=request("dry").vm)))
        assert (err.code, err.reason) == EXHAUSTED
        taken_ip = next(r.vm.nics[0].ip for r in response.results if r.code == 0)
        static = vm_pb2.CreateVmRequest(parent=PARENT, validate_only=True, vm_id="dry2", vm=vm_pb2.Vm(
            flavor="small", image="ubuntu", nics=[vm_pb2.NetworkInterface(network="small", address_mode=STATIC,
                                                                          ip=taken_ip)]))
        err = error(lambda: admin._call(admin._vms.CreateVm, static))
        assert (err.code, err.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "ADDRESS_IN_USE")
        assert used() == 6


def test_two_networks_on_one_port_group_share_its_pool(system: LocalSystem) -> None:
    """Two networks with the same /28 on one backing, 40 creates racing over the three
    frontends on both: 14 VMs in all (the one pool's 14 addresses), none twice on the
    segment, the rest ADDRESS_POOL_EXHAUSTED; each network counts all 14 as used; a
    STATIC address one network handed out is ADDRESS_IN_USE on the other. A MAC set
    by the caller is refused: Quanta chooses it."""
    with system.client(ensure_project=False) as admin:
        for network_id in ("seg-a", "seg-b"):
            make_network(admin, network_id, "10.95.0.0/28", backing="pg-segment")
    clients = [Client(ENDPOINTS[i % 3], token=system.admin_token, own_connection=True) for i in range(12)]
    try:
        def one(i: int) -> tuple[str, str]:
            try:
                vm = create_vm(clients[i % 12], "seg-a" if i % 2 else "seg-b", vm_id=f"seg-{i:02d}")
            except ApiError as err:
                return (err.code.name, err.reason)
            return ("OK", vm.nics[0].ip)

        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            outcomes = list(pool.map(one, range(40)))
    finally:
        for client in clients:
            client.close()
    ips = [ip for code, ip in outcomes if code == "OK"]
    assert len(ips) == 14 and len(set(ips)) == 14, outcomes
    assert Counter(o for o in outcomes if o[0] != "OK") == {(EXHAUSTED[0].name, EXHAUSTED[1]): 26}
    with system.client(ensure_project=False) as admin:
        for network_id in ("seg-a", "seg-b"):
            got = admin._call(networks(admin).GetNetwork,
                              network_pb2.GetNetworkRequest(name=f"{PARENT}/networks/{network_id}"))
            assert (got.addresses_used, got.addresses_total) == (14, 14)
        a_ip = next(ip for i, (code, ip) in enumerate(outcomes) if code == "OK" and i % 2)
        err = error(lambda: create_vm(admin, "seg-b", STATIC, a_ip))
        assert (err.code, err.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "ADDRESS_IN_USE")
        err = error(lambda: admin._call(admin._vms.CreateVm, vm_pb2.CreateVmRequest(
            parent=PARENT, vm_id="mac", vm=vm_pb2.Vm(flavor="small", image="ubuntu", nics=[vm_pb2.NetworkInterface(
                network="seg-a", mac_address="00:50:56:00:00:01")]))))
        assert err.code is grpc.StatusCode.INVALID_ARGUMENT
        assert "vm.nics[0].mac_address" in [path for path, _why in err.field_violations]


def test_plans_and_validate_only_say_when_a_pool_cannot_take_the_vms(system: LocalSystem) -> None:
    """A /29 (6 addresses) with 4 taken, three VMs asking it: PlanVms places the first
    two and says ADDRESS_POOL_EXHAUSTED for the third (fits false, nothing held);
    validate_only CreateVms says the same per VM (INDEPENDENT) or for the set
    (ALL_OR_NOTHING); nothing is taken."""
    def request(vm_id: str, node_selector: dict[str, str] | None = None) -> vm_pb2.CreateVmRequest:
        return vm_pb2.CreateVmRequest(vm_id=vm_id, vm=vm_pb2.Vm(
            flavor="small", image="ubuntu", node_selector=node_selector or {},
            nics=[vm_pb2.NetworkInterface(network="planned", address_mode=POOL)]))

    with system.client(ensure_project=False) as admin:
        make_network(admin, "planned", "10.94.0.0/29", backing="VM Network")  # a port group the hosts reach
        for i in range(4):
            create_vm(admin, "planned", vm_id=f"planned-{i}")

        def used() -> int:
            return admin._call(networks(admin).GetNetwork,
                               network_pb2.GetNetworkRequest(name=f"{PARENT}/networks/planned")).addresses_used

        three = [request(f"p-{i}") for i in range(3)]
        plan = admin._call(admin._vms.PlanVms, vm_pb2.PlanVmsRequest(parent=PARENT, requests=three), timeout=60)
        assert not plan.fits
        assert [p.reason for p in plan.placements] == ["", "", EXHAUSTED[1]]
        assert all(p.host for p in plan.placements[:2]) and "exhausted" in plan.placements[2].message
        two = admin._call(admin._vms.PlanVms, vm_pb2.PlanVmsRequest(parent=PARENT, requests=three[:2]), timeout=60)
        assert two.fits and [p.reason for p in two.placements] == ["", ""]
        response = admin._call(admin._vms.CreateVms, vm_pb2.CreateVmsRequest(
            parent=PARENT, validate_only=True, requests=three), timeout=60)
        assert [(r.code, r.reason) for r in response.results][2] == (EXHAUSTED[0].value[0], EXHAUSTED[1])
        assert [r.code for r in response.results][:2] == [0, 0]
        err = error(lambda: admin._call(admin._vms.CreateVms, vm_pb2.CreateVmsRequest(
            parent=PARENT, validate_only=True, mode=vm_pb2.CreateVmsRequest.ALL_OR_NOTHING, requests=three),
            timeout=60))
        assert (err.code, err.reason) == EXHAUSTED
        assert used() == 4
