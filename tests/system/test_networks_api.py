"""NetworkService through the real processes: bad input as field violations, pages
(the project's networks, then the tenant's shared ones), update by field mask and etag,
the watch rule (events with revisions, bookmarks, OUT_OF_RANGE for a future version),
and audit records of every mutation."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from google.protobuf import field_mask_pb2

from controlplane.api import validation
from controlplane.api.errors import ApiError
from controlplane.gen.quanta.v1 import common_pb2, network_pb2, network_pb2_grpc, vm_pb2
from quanta.client import Client
from quanta.local import LocalSystem

TENANT, PROJECT = "nets", "p"
PARENT = f"tenants/{TENANT}/projects/{PROJECT}"


@pytest.fixture(scope="module")
def admin() -> Iterator[Client]:
    with LocalSystem(hosts=1, frontends=1, latency="zero", metrics=False) as local, \
            local.client(ensure_project=False) as c:
        c.create_tenant(TENANT, network_backings=["VM Network"])
        c.create_project(PROJECT, tenant=TENANT)
        yield c


def stub(c: Client) -> network_pb2_grpc.NetworkServiceStub:
    return network_pb2_grpc.NetworkServiceStub(c._channel)


def create(c: Client, parent: str, network_id: str, **subnet) -> network_pb2.Network:
    return c._call(stub(c).CreateNetwork, network_pb2.CreateNetworkRequest(
        parent=parent, network_id=network_id, network=network_pb2.Network(
            backing="VM Network", subnet=network_pb2.Subnet(**subnet) if subnet else None)))


def error(call) -> ApiError:
    with pytest.raises(ApiError) as info:
        call()
    return info.value


def test_bad_networks_are_refused_field_by_field(admin: Client) -> None:
    err = error(lambda: admin._call(stub(admin).CreateNetwork, network_pb2.CreateNetworkRequest(
        parent=PARENT, network_id="Bad_Id", network=network_pb2.Network(
            uid="x", subnet=network_pb2.Subnet(cidr="10.0.0.0/24", gateway="10.0.1.1", range_start="10.0.0.300")))))
    assert (err.code, err.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "FIELD_INVALID")
    fields = {path for path, _why in err.field_violations}
    assert {"network_id", "network.backing", "network.uid", "network.subnet.gateway",
            "network.subnet.range_start"} <= fields, err.field_violations
    assert error(lambda: create(admin, "tenants/no-such", "n")).code is grpc.StatusCode.NOT_FOUND


def test_pages_list_the_projects_networks_then_the_shared_ones_at_one_revision(admin: Client) -> None:
    for i in range(3):
        create(admin, PARENT, f"own-{i}")
        create(admin, f"tenants/{TENANT}", f"shared-{i}")
    names: list[str] = []
    token = ""
    revisions = set()
    while True:
        page = admin._call(stub(admin).ListNetworks, network_pb2.ListNetworksRequest(
            parent=PARENT, include_shared=True, page_size=2, page_token=token))
        names += [n.name for n in page.networks]
        revisions.add(page.resource_version)
        token = page.next_page_token
        if not token:
            break
    own = [n for n in names if n.startswith(f"{PARENT}/networks/own-")]
    shared = [n for n in names if n.startswith(f"tenants/{TENANT}/networks/shared-")]
    assert len(own) == 3 and len(shared) == 3 and names.index(shared[0]) > names.index(own[-1])
    assert len(revisions) == 1
    only_shared = admin._call(stub(admin).ListNetworks, network_pb2.ListNetworksRequest(parent=f"tenants/{TENANT}"))
    assert {n.name for n in only_shared.networks} >= set(shared) and not set(own) & {
        n.name for n in only_shared.networks}


def test_update_by_mask_and_etag_and_the_watch_rule(admin: Client) -> None:
    made = create(admin, PARENT, "watched", cidr="10.3.0.0/24", dns_servers=["10.0.0.53"])
    events = admin._call(stub(admin).WatchNetworks, network_pb2.WatchNetworksRequest(
        parent=PARENT, resource_version=made.resource_version - 1), timeout=30)
    first = next(events)
    assert (first.type, first.network.name, first.resource_version) == (common_pb2.ADDED, made.name,
                                                                        made.resource_version)
    changed = admin._call(stub(admin).UpdateNetwork, network_pb2.UpdateNetworkRequest(
        network=network_pb2.Network(name=made.name, etag=made.etag, description="web tier", backing="ignored",
                                    subnet=network_pb2.Subnet(dns_servers=["10.0.0.54"])),
        update_mask=field_mask_pb2.FieldMask(paths=["description", "subnet.dns_servers"])))
    assert (changed.description, list(changed.subnet.dns_servers), changed.backing) == (
        "web tier", ["10.0.0.54"], "VM Network")
    assert changed.subnet.cidr == "10.3.0.0/24" and changed.etag != made.etag
    stale = error(lambda: admin._call(stub(admin).UpdateNetwork, network_pb2.UpdateNetworkRequest(
        network=network_pb2.Network(name=made.name, etag=made.etag, description="x"),
        update_mask=field_mask_pb2.FieldMask(paths=["description"]))))
    assert (stale.code, stale.reason) == (grpc.StatusCode.ABORTED, "ETAG_MISMATCH")
    second = next(events)
    while second.type == common_pb2.BOOKMARK:
        second = next(events)
    assert (second.type, second.resource_version, second.network.description) == (
        common_pb2.MODIFIED, changed.resource_version, "web tier")
    gone = admin._call(stub(admin).DeleteNetwork, network_pb2.DeleteNetworkRequest(name=made.name))
    assert gone.uid == made.uid
    third = next(events)
    while third.type == common_pb2.BOOKMARK:
        third = next(events)
    assert third.type == common_pb2.DELETED and third.resource_version > changed.resource_version
    events.cancel()
    with pytest.raises(grpc.RpcError) as raised:
        next(stub(admin).WatchNetworks(network_pb2.WatchNetworksRequest(
            parent=PARENT, resource_version=third.resource_version + 1000), timeout=10))
    future = ApiError.from_rpc_error(raised.value)
    assert (future.code, future.reason) == (grpc.StatusCode.OUT_OF_RANGE, "RESOURCE_VERSION_TOO_NEW")
    audited = {(r.method, r.resource) for r in admin.list_audit(tenant=TENANT)}
    assert {("CreateNetwork", made.name), ("UpdateNetwork", made.name), ("DeleteNetwork", made.name)} <= audited


def test_backings_are_granted_by_a_system_admin_and_one_in_use_is_not_revoked(admin: Client) -> None:
    """A backing not granted to the tenant is PERMISSION_DENIED BACKING_NOT_GRANTED (a
    field violation on network.backing), a project's network and a shared one alike;
    granted, it is used; revoking it while a network is on it is FAILED_PRECONDITION
    BACKING_IN_USE naming the network; every grant and revoke is in the audit log."""
    for parent in (PARENT, f"tenants/{TENANT}"):
        refused = error(lambda parent=parent: admin._call(stub(admin).CreateNetwork, network_pb2.CreateNetworkRequest(
            parent=parent, network_id="late", network=network_pb2.Network(backing="pg-late"))))
        assert (refused.code, refused.reason) == (grpc.StatusCode.PERMISSION_DENIED, "BACKING_NOT_GRANTED")
        assert [path for path, _ in refused.field_violations] == ["network.backing"]
        assert refused.metadata == {"backing": "pg-late", "tenant": TENANT}
    granted = admin.update_tenant(TENANT, network_backings=["VM Network", "pg-late"])
    assert list(granted.network_backings) == ["VM Network", "pg-late"]
    assert list(admin.get_tenant(TENANT).network_backings) == ["VM Network", "pg-late"]
    made = admin._call(stub(admin).CreateNetwork, network_pb2.CreateNetworkRequest(
        parent=PARENT, network_id="late", network=network_pb2.Network(backing="pg-late")))
    assert made.backing == "pg-late"
    in_use = error(lambda: admin.update_tenant(TENANT, network_backings=["VM Network"]))
    assert (in_use.code, in_use.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "BACKING_IN_USE")
    assert (in_use.metadata["backings"], in_use.metadata["networks"], in_use.metadata["network_count"]) == (
        "pg-late", made.name, "1")
    assert made.name in in_use.message
    assert list(admin.get_tenant(TENANT).network_backings) == ["VM Network", "pg-late"]
    # Other paths are not held up by a network on a backing: only a revoke is.
    assert admin.update_tenant(TENANT, display_name="Nets").display_name == "Nets"
    admin._call(stub(admin).DeleteNetwork, network_pb2.DeleteNetworkRequest(name=made.name))
    assert list(admin.update_tenant(TENANT, network_backings=["VM Network"]).network_backings) == ["VM Network"]
    notes = [r.message for r in admin.list_audit(tenant=TENANT) if r.method == "UpdateTenant" and r.code == "OK"]
    assert "granted backings ['pg-late']" in notes and "revoked backings ['pg-late']" in notes, notes


def test_bad_grants_are_refused_field_by_field(admin: Client) -> None:
    for bad, paths in ((["", "ok", "x" * 81, "ok", " pad"], ["[0]", "[2]", "[3]", "[4]"]),
                       ([f"pg-{i}" for i in range(257)], [""])):
        err = error(lambda bad=bad: admin.update_tenant(TENANT, network_backings=bad))
        assert (err.code, err.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "FIELD_INVALID")
        assert [path for path, _ in err.field_violations] == [f"tenant.network_backings{p}" for p in paths]
    err = error(lambda: admin.create_tenant("bad-grants", network_backings=["dup", "dup"]))
    assert err.field_violations == [("tenant.network_backings[1]", "'dup' is listed twice")]
    assert error(lambda: admin.get_tenant("bad-grants")).code is grpc.StatusCode.NOT_FOUND


def test_bad_list_requests_are_refused_field_by_field(admin: Client) -> None:
    """Every field violation of a ListNetworks at once (include_shared only with a
    project parent); a token of another listing (include_shared flipped) is
    INVALID_PAGE_TOKEN; a token of this listing whose position is not "p:ID" or "s:ID"
    is INVALID_PAGE_TOKEN, as in every listing (the tokens below are made as the service makes them)."""
    bad = error(lambda: admin._call(stub(admin).ListNetworks, network_pb2.ListNetworksRequest(
        parent=f"tenants/{TENANT}", include_shared=True, page_size=-1, label_selector="a!=b")))
    assert (bad.code, bad.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "FIELD_INVALID")
    assert [path for path, _ in bad.field_violations] == ["page_size", "label_selector", "include_shared"]
    for i in range(2):
        create(admin, PARENT, f"paged-{i}")
    first = admin._call(stub(admin).ListNetworks, network_pb2.ListNetworksRequest(parent=PARENT, page_size=1))
    assert first.next_page_token
    other = error(lambda: admin._call(stub(admin).ListNetworks, network_pb2.ListNetworksRequest(
        parent=PARENT, include_shared=True, page_token=first.next_page_token)))
    assert (other.code, other.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN")
    scope = f"networks|{PARENT}|1|"
    for position in ("x:own-0", "p:Bad_Id", "own-0"):
        token = validation.encode_page_token(scope, first.resource_version, position)
        refused = error(lambda token=token: admin._call(stub(admin).ListNetworks, network_pb2.ListNetworksRequest(
            parent=PARENT, include_shared=True, page_token=token)))
        assert (refused.code, refused.reason, refused.field_violations) == (
            grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN", [("page_token", "not a token of this listing")])
    shared_only = admin._call(stub(admin).ListNetworks, network_pb2.ListNetworksRequest(
        parent=PARENT, include_shared=True, page_size=1000,
        page_token=validation.encode_page_token(scope, first.resource_version, "s:")))
    assert shared_only.networks and all(
        n.name.startswith(f"tenants/{TENANT}/networks/") for n in shared_only.networks)


def test_a_gateway_a_vm_holds_refuses_the_network(admin: Client) -> None:
    """A VM holds 10.45.0.1 (STATIC) on a network without a gateway: a network on the
    same backing whose gateway is 10.45.0.1 is FAILED_PRECONDITION ADDRESS_IN_USE, a
    field violation on network.subnet.gateway; another network with a free gateway on
    that segment is made."""
    plain = create(admin, PARENT, "plain-45", cidr="10.45.0.0/24")
    admin._call(admin._vms.CreateVm, vm_pb2.CreateVmRequest(
        parent=PARENT, vm_id="holder-45", vm=vm_pb2.Vm(flavor="small", image="ubuntu", nics=[
            vm_pb2.NetworkInterface(network=plain.name, address_mode=vm_pb2.NetworkInterface.STATIC,
                                    ip="10.45.0.1")])))
    refused = error(lambda: create(admin, PARENT, "routed-45", cidr="10.45.0.0/24", gateway="10.45.0.1"))
    assert (refused.code, refused.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "ADDRESS_IN_USE")
    assert [path for path, _ in refused.field_violations] == ["network.subnet.gateway"]
    assert refused.metadata == {"network": f"{PARENT}/networks/routed-45", "ip": "10.45.0.1"}
    assert create(admin, PARENT, "routed-45", cidr="10.45.0.0/24", gateway="10.45.0.254").subnet.gateway == \
        "10.45.0.254"
