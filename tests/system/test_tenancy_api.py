"""Multi-tenancy through the real API: two tenants, every role, every kind of method
(allowed, denied, or answered as if absent; lists filtered), the quota race across
several frontends, tokens that expire, are revoked or tampered with, audit records
for every mutation, and forced deletion of projects and tenants that hold VMs."""

from __future__ import annotations

import base64
import concurrent.futures
import json
import re
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import pytest
from google.protobuf import duration_pb2, field_mask_pb2

from controlplane.api.errors import ApiError
from controlplane.gen.quanta.v1 import disk_pb2, disk_pb2_grpc, network_pb2, network_pb2_grpc, tenancy_pb2, vm_pb2
from quanta.client import Client
from quanta.local import LocalSystem
from tests.conftest import Tally, describe_vms, wait_until

ROLES = ("admin", "acme_admin", "web_member", "acme_viewer", "web_viewer", "globex_admin")
#: The port groups a system admin granted each tenant (its networks may map only to those).
BACKINGS = {"acme": ["pg-acme", "pg-acme-2"], "globex": ["pg-globex"]}


@dataclass
class World:
    system: LocalSystem
    tokens: dict[str, str]

    def as_(self, who: str, tenant: str = "acme", project: str = "web", **kwargs) -> Client:
        token = self.system.admin_token if who == "admin" else self.tokens[who]
        return Client(self.system.endpoint, token=token, tenant=tenant, project=project, **kwargs)


@pytest.fixture(scope="module")
def world():
    with LocalSystem(hosts=3, frontends=3, latency="zero", metrics=True) as system:
        with system.client(ensure_project=False) as admin:
            admin.create_tenant("acme", quota={"vms": 100}, network_backings=BACKINGS["acme"])
            admin.create_tenant("globex", network_backings=BACKINGS["globex"])
            admin.create_project("web", tenant="acme", quota={"vms": 40})
            admin.create_project("db", tenant="acme", quota={"vms": 40})
            admin.create_project("app", tenant="globex")
            grants = {
                "acme_admin": [("tenant-admin", "acme", "")],
                "web_member": [("project-member", "acme", "web")],
                "acme_viewer": [("viewer", "acme", "")],
                "web_viewer": [("viewer", "acme", "web")],
                "globex_admin": [("tenant-admin", "globex", "")],
            }
            tokens = {who: admin.create_token(who, g).bearer_token for who, g in grants.items()}
        w = World(system, tokens)
        for tenant, project, vm in (("acme", "web", "vm-a"), ("acme", "db", "vm-d"), ("globex", "app", "vm-g")):
            with w.as_("admin", tenant, project) as c:
                c.create_vm(vm, flavor="small", image="ubuntu")
                _create_disk(c, "disk-" + vm[-1])
        # Placed, so that stopping and restarting them is allowed (a pending VM is FAILED_PRECONDITION).
        for tenant, project, vm in (("acme", "web", "vm-a"), ("acme", "db", "vm-d"), ("globex", "app", "vm-g")):
            with w.as_("admin", tenant, project) as c:
                wait_until(lambda c=c, vm=vm: c.get_vm(vm).state not in (vm_pb2.Vm.PENDING, vm_pb2.Vm.SCHEDULED),
                           timeout=60, message=f"{vm} to be placed",
                           seen=lambda c=c, vm=vm: vm_pb2.Vm.State.Name(c.get_vm(vm).state))
        yield w


def outcome(call: Callable[[], object]) -> str:
    try:
        call()
    except ApiError as err:
        return err.code.name
    return "OK"


def _same(got: object, want: object) -> None:
    assert got == want, (got, want)


def _fresh() -> str:
    return f"x-{uuid.uuid4().hex[:8]}"


VM_A = "tenants/acme/projects/web/vms/vm-a"


def _vm_call(c: Client, method: str, request) -> object:
    """A VmService method by its raw stub (the SDK's verbs are another change's)."""
    return c._call(getattr(c._vms, method), request)


def _disk_call(c: Client, method: str, request) -> object:
    """A DiskService method by its raw stub (the SDK's disk verbs are another change's)."""
    return c._call(getattr(disk_pb2_grpc.DiskServiceStub(c._channel), method), request)


def _create_disk(c: Client, disk_id: str, size_gib: int = 1) -> disk_pb2.Disk:
    return _disk_call(c, "CreateDisk", disk_pb2.CreateDiskRequest(
        parent=f"tenants/{c.tenant}/projects/{c.project}", disk_id=disk_id, disk=disk_pb2.Disk(size_gib=size_gib)))


def _list_disks(c: Client, parent: str) -> list[str]:
    return [d.name for d in _disk_call(c, "ListDisks", disk_pb2.ListDisksRequest(parent=parent)).disks]


def _delete_fresh_disk(w: World, c: Client) -> None:
    disk_id = _fresh()
    with w.as_("admin", "acme", "web") as admin:
        _create_disk(admin, disk_id)
    _disk_call(c, "DeleteDisk", disk_pb2.DeleteDiskRequest(name=f"tenants/acme/projects/web/disks/{disk_id}"))


DISK_A, DISK_G = "tenants/acme/projects/web/disks/disk-a", "tenants/globex/projects/app/disks/disk-g"


def _delete_fresh_vm(w: World, c: Client) -> None:
    vm_id = _fresh()
    with w.as_("admin", "acme", "web") as admin:
        admin.create_vm(vm_id, flavor="small", image="ubuntu")
    c.delete_vm(vm_id)


def _create_vms(c: Client, mode: int = vm_pb2.CreateVmsRequest.INDEPENDENT, **fields) -> vm_pb2.CreateVmsResponse:
    return _vm_call(c, "CreateVms", vm_pb2.CreateVmsRequest(
        parent=f"tenants/{c.tenant}/projects/{c.project}", mode=mode, requests=[vm_pb2.CreateVmRequest(
            vm_id=_fresh(), vm=vm_pb2.Vm(flavor="small", image="ubuntu"))], **fields))


def _plan_vms(c: Client, project: str, hold_s: int = 0) -> vm_pb2.PlanVmsResponse:
    """PlanVms of one small VM in acme/``project`` (held ``hold_s`` s, then released by its lease)."""
    return _vm_call(c, "PlanVms", vm_pb2.PlanVmsRequest(
        parent=f"tenants/acme/projects/{project}", hold=duration_pb2.Duration(seconds=hold_s),
        requests=[vm_pb2.CreateVmRequest(vm_id=_fresh(), vm=vm_pb2.Vm(flavor="small", image="ubuntu"))]))


def _get_fresh_set(w: World, c: Client, project: str) -> object:
    """GetVmSet of a set the system admin just made in acme/``project``."""
    with w.as_("admin", "acme", project) as admin:
        name = _create_vms(admin, vm_pb2.CreateVmsRequest.ALL_OR_NOTHING).set.name
    return _vm_call(c, "GetVmSet", vm_pb2.GetVmSetRequest(name=name))


OK, PD, NF, FP = "OK", "PERMISSION_DENIED", "NOT_FOUND", "FAILED_PRECONDITION"

# operation -> (what it does with a client, expected outcome per role in ROLES order)
MATRIX: dict[str, tuple[Callable[[World, Client], object], tuple[str, ...]]] = {
    "get tenant acme": (lambda w, c: c.get_tenant("acme"), (OK, OK, OK, OK, OK, NF)),
    "get tenant globex": (lambda w, c: c.get_tenant("globex"), (OK, NF, NF, NF, NF, OK)),
    "get project acme/web": (lambda w, c: c.get_project("web"), (OK, OK, OK, OK, OK, NF)),
    "get project acme/db": (lambda w, c: c.get_project("db"), (OK, OK, NF, OK, NF, NF)),
    "get vm acme/web": (lambda w, c: c.get_vm("vm-a"), (OK, OK, OK, OK, OK, NF)),
    "get vm acme/db": (lambda w, c: c.get_vm("tenants/acme/projects/db/vms/vm-d"), (OK, OK, NF, OK, NF, NF)),
    "get vm globex/app": (lambda w, c: c.get_vm("tenants/globex/projects/app/vms/vm-g"), (OK, NF, NF, NF, NF, OK)),
    "list vms acme/web": (lambda w, c: list(c.list_vms()), (OK, OK, OK, OK, OK, NF)),
    "get quota acme/web": (lambda w, c: c.get_quota("tenants/acme/projects/web/quota"), (OK, OK, OK, OK, OK, NF)),
    "get quota acme/db": (lambda w, c: c.get_quota("tenants/acme/projects/db/quota"), (OK, OK, NF, OK, NF, NF)),
    "create vm acme/web": (lambda w, c: c.create_vm(_fresh(), flavor="small", image="ubuntu"),
                           (OK, OK, OK, PD, PD, NF)),
    "create vm acme/db": (lambda w, c: Client.create_vm(c, _fresh(), flavor="small", image="ubuntu")
                          if c.project == "db" else None, (OK, OK, NF, PD, NF, NF)),
    "delete vm acme/web": (_delete_fresh_vm, (OK, OK, OK, PD, PD, NF)),
    # Issue 12's verbs: WRITE_VMS, like create and delete (vm-a is placed: see the fixture).
    "update vm acme/web": (lambda w, c: _vm_call(c, "UpdateVm", vm_pb2.UpdateVmRequest(
        vm=vm_pb2.Vm(name=VM_A, labels={"touched": "yes"}), update_mask=field_mask_pb2.FieldMask(paths=["labels"]))),
                           (OK, OK, OK, PD, PD, NF)),
    "start vm acme/web": (lambda w, c: _vm_call(c, "StartVm", vm_pb2.StartVmRequest(name=VM_A)),
                          (OK, OK, OK, PD, PD, NF)),
    "stop vm acme/web": (lambda w, c: _vm_call(c, "StopVm", vm_pb2.StopVmRequest(name=VM_A)),
                         (OK, OK, OK, PD, PD, NF)),
    "restart vm acme/web": (lambda w, c: _vm_call(c, "RestartVm", vm_pb2.RestartVmRequest(name=VM_A)),
                            (OK, OK, OK, PD, PD, NF)),
    "stop vm acme/db": (lambda w, c: _vm_call(c, "StopVm", vm_pb2.StopVmRequest(
        name="tenants/acme/projects/db/vms/vm-d")), (OK, OK, NF, PD, NF, NF)),
    "update vm globex/app": (lambda w, c: _vm_call(c, "UpdateVm", vm_pb2.UpdateVmRequest(
        vm=vm_pb2.Vm(name="tenants/globex/projects/app/vms/vm-g", labels={"x": "y"}),
        update_mask=field_mask_pb2.FieldMask(paths=["labels"]))), (OK, NF, NF, NF, NF, OK)),
    # Issue 15's: CreateVms is WRITE_VMS on its parent (either mode), GetVmSet READ.
    "create vms acme/web": (lambda w, c: _create_vms(c), (OK, OK, OK, PD, PD, NF)),
    "create vm set acme/web": (lambda w, c: _create_vms(c, vm_pb2.CreateVmsRequest.ALL_OR_NOTHING),
                               (OK, OK, OK, PD, PD, NF)),
    # PlanVms is WRITE_VMS on its parent (a plan may hold room), held or not.
    "plan vms acme/web": (lambda w, c: _plan_vms(c, "web"), (OK, OK, OK, PD, PD, NF)),
    "plan vms acme/db": (lambda w, c: _plan_vms(c, "db"), (OK, OK, NF, PD, NF, NF)),
    "plan and hold acme/web": (lambda w, c: _plan_vms(c, "web", hold_s=2), (OK, OK, OK, PD, PD, NF)),
    "get vm set acme/web": (lambda w, c: _get_fresh_set(w, c, "web"), (OK, OK, OK, OK, OK, NF)),
    "get vm set acme/db": (lambda w, c: _get_fresh_set(w, c, "db"), (OK, OK, NF, OK, NF, NF)),
    "create project in acme": (lambda w, c: c.create_project(_fresh(), tenant="acme", quota={"vms": 1}),
                               (OK, OK, PD, PD, PD, NF)),
    "update quota acme/web": (lambda w, c: c.update_quota("tenants/acme/projects/web/quota", {"vms": 40}),
                              (OK, OK, PD, PD, PD, NF)),
    "update quota acme/db": (lambda w, c: c.update_quota("tenants/acme/projects/db/quota", {"vms": 40}),
                             (OK, OK, NF, PD, NF, NF)),
    "update ticket acme": (lambda w, c: c.update_quota("tenants/acme/quota", {"vms": 100}), (OK, PD, PD, PD, PD, NF)),
    "create tenant": (lambda w, c: c.create_tenant(_fresh()), (OK, PD, PD, PD, PD, PD)),
    # Backings are infrastructure: a tenant's admin renames it but grants it no backing.
    "rename tenant acme": (lambda w, c: c.update_tenant("acme", display_name="Acme"), (OK, OK, PD, PD, PD, NF)),
    "grant backings to acme": (lambda w, c: c.update_tenant("acme", network_backings=BACKINGS["acme"]),
                               (OK, PD, PD, PD, PD, NF)),
    "grant backings to a new tenant": (lambda w, c: c.create_tenant(_fresh(), network_backings=["pg-globex"]),
                                       (OK, PD, PD, PD, PD, PD)),
    "read acme's backings": (lambda w, c: _same(list(c.get_tenant("acme").network_backings), BACKINGS["acme"]),
                             (OK, OK, OK, OK, OK, NF)),
    "issue acme token": (lambda w, c: c.create_token("x@acme", [("project-member", "acme", "web")]),
                         (OK, OK, PD, PD, PD, PD)),
    "issue system token": (lambda w, c: c.create_token("x", [("system-admin", "", "")]), (OK, PD, PD, PD, PD, PD)),
    "list hosts": (lambda w, c: list(c.list_hosts()), (OK, PD, PD, PD, PD, PD)),
    "list acme audit": (lambda w, c: c.list_audit(tenant="acme"), (OK, OK, PD, PD, PD, NF)),
    "list all audit": (lambda w, c: c.list_audit(), (OK, PD, PD, PD, PD, PD)),
    "create acme flavor": (lambda w, c: c.create_flavor(_fresh(), vcpus=1, memory_mib=512, disk_gib=5, tenant="acme"),
                           (OK, OK, PD, PD, PD, NF)),
    "create public flavor": (lambda w, c: c.create_flavor(_fresh(), vcpus=1, memory_mib=512, disk_gib=5),
                             (OK, PD, PD, PD, PD, PD)),
    "list acme flavors": (lambda w, c: c.list_flavors(tenant="acme"), (OK, OK, OK, OK, OK, NF)),
    "list images": (lambda w, c: c.list_images(), (OK, OK, OK, OK, OK, OK)),
    "delete project acme/db": (lambda w, c: c.delete_project("db", tenant="acme"), (FP, FP, NF, PD, NF, NF)),
    # Issue 14's disks: managed by project members, read by viewers, like VMs.
    "get disk acme/web": (lambda w, c: _disk_call(c, "GetDisk", disk_pb2.GetDiskRequest(name=DISK_A)),
                          (OK, OK, OK, OK, OK, NF)),
    "get disk globex/app": (lambda w, c: _disk_call(c, "GetDisk", disk_pb2.GetDiskRequest(name=DISK_G)),
                            (OK, NF, NF, NF, NF, OK)),
    "list disks acme/web": (lambda w, c: _list_disks(c, "tenants/acme/projects/web"), (OK, OK, OK, OK, OK, NF)),
    "list disks acme/db": (lambda w, c: _list_disks(c, "tenants/acme/projects/db"), (OK, OK, NF, OK, NF, NF)),
    "list disks globex/app": (lambda w, c: _list_disks(c, "tenants/globex/projects/app"), (OK, NF, NF, NF, NF, OK)),
    "create disk acme/web": (lambda w, c: _create_disk(c, _fresh()), (OK, OK, OK, PD, PD, NF)),
    "update disk acme/web": (lambda w, c: _disk_call(c, "UpdateDisk", disk_pb2.UpdateDiskRequest(
        disk=disk_pb2.Disk(name=DISK_A, description="touched"),
        update_mask=field_mask_pb2.FieldMask(paths=["description"]))), (OK, OK, OK, PD, PD, NF)),
    "delete disk acme/web": (_delete_fresh_disk, (OK, OK, OK, PD, PD, NF)),
    "detach disk acme/web": (lambda w, c: _vm_call(c, "DetachDisk", vm_pb2.DetachDiskRequest(name=VM_A, disk="disk-a")),
                             (FP, FP, FP, PD, PD, NF)),  # allowed, and not attached
    "attach disk globex/app": (lambda w, c: _vm_call(c, "AttachDisk", vm_pb2.AttachDiskRequest(
        name="tenants/globex/projects/app/vms/vm-g", disk="no-such")), (NF, NF, NF, NF, NF, NF)),
}


@pytest.mark.parametrize("operation", list(MATRIX))
def test_every_role_is_allowed_denied_or_answered_not_found(world: World, operation: str) -> None:
    action, expected = MATRIX[operation]
    got = {}
    for who in ROLES:
        project = "db" if "acme/db" in operation and operation.startswith("create vm") else "web"
        with world.as_(who, "acme", project) as client:
            got[who] = outcome(lambda client=client: action(world, client))
    assert got == dict(zip(ROLES, expected, strict=True))


def test_not_found_for_another_tenant_looks_like_absence(world: World) -> None:
    """globex's admin learns nothing from asking about acme: the answer for acme's real
    project is the same as for a project that does not exist."""
    with world.as_("globex_admin", "acme", "web") as spy:
        real = pytest.raises(ApiError, spy.get_project, "web").value
        made_up = pytest.raises(ApiError, spy.get_project, "no-such").value
    assert (real.code, real.reason) == (made_up.code, made_up.reason) == (grpc.StatusCode.NOT_FOUND,
                                                                          "PROJECT_NOT_FOUND")
    # So do issue 12's verbs on acme's real VM and on one that does not exist.
    with world.as_("globex_admin", "acme", "web") as spy:
        for name in (VM_A, "tenants/acme/projects/web/vms/no-such"):
            for method, request in (("StopVm", vm_pb2.StopVmRequest(name=name)),
                                    ("StartVm", vm_pb2.StartVmRequest(name=name)),
                                    ("RestartVm", vm_pb2.RestartVmRequest(name=name)),
                                    ("UpdateVm", vm_pb2.UpdateVmRequest(
                                        vm=vm_pb2.Vm(name=name, flavor="large"),
                                        update_mask=field_mask_pb2.FieldMask(paths=["flavor"])))):
                err = pytest.raises(ApiError, _vm_call, spy, method, request).value
                assert (err.code, err.reason, err.metadata) == (grpc.StatusCode.NOT_FOUND, "VM_NOT_FOUND",
                                                                {"kind": "vm", "name": name}), (method, name)
    # So do disks: acme's real one and one that does not exist, by every disk method.
    with world.as_("globex_admin", "acme", "web") as spy:
        for name in (DISK_A, "tenants/acme/projects/web/disks/no-such"):
            for method, request in (("GetDisk", disk_pb2.GetDiskRequest(name=name)),
                                    ("DeleteDisk", disk_pb2.DeleteDiskRequest(name=name)),
                                    ("UpdateDisk", disk_pb2.UpdateDiskRequest(
                                        disk=disk_pb2.Disk(name=name, description="x"),
                                        update_mask=field_mask_pb2.FieldMask(paths=["description"])))):
                err = pytest.raises(ApiError, _disk_call, spy, method, request).value
                assert (err.code, err.reason, err.metadata) == (grpc.StatusCode.NOT_FOUND, "DISK_NOT_FOUND",
                                                                {"kind": "disk", "name": name}), (method, name)
            # Attaching acme's disk to globex's VM: disks attach within the VM's project only.
            err = pytest.raises(ApiError, _vm_call, spy, "AttachDisk", vm_pb2.AttachDiskRequest(
                name="tenants/globex/projects/app/vms/vm-g", disk=name)).value
            assert err.code == grpc.StatusCode.INVALID_ARGUMENT and "acme" not in err.message.split("is not")[1]
    # And GetVmSet on acme's real set and on one that does not exist.
    with world.as_("admin", "acme", "web") as admin:
        real_set = _create_vms(admin, vm_pb2.CreateVmsRequest.ALL_OR_NOTHING).set.name
    with world.as_("globex_admin", "acme", "web") as spy:
        for name in (real_set, "tenants/acme/projects/web/vmSets/no-such"):
            err = pytest.raises(ApiError, _vm_call, spy, "GetVmSet", vm_pb2.GetVmSetRequest(name=name)).value
            assert (err.code, err.reason, err.metadata) == (grpc.StatusCode.NOT_FOUND, "VM_SET_NOT_FOUND",
                                                            {"kind": "vm set", "name": name}), name


def test_lists_contain_only_what_the_caller_may_see(world: World) -> None:
    def tenants(who: str) -> set[str]:
        with world.as_(who) as c:
            return {t.name for t in c.list_tenants()}

    assert {"tenants/acme", "tenants/globex", "tenants/default"} <= tenants("admin")
    assert tenants("acme_admin") == tenants("web_member") == tenants("acme_viewer") == {"tenants/acme"}
    assert tenants("globex_admin") == {"tenants/globex"}
    with world.as_("web_member") as member, world.as_("acme_viewer") as viewer:
        assert [p.name for p in member.list_projects()] == ["tenants/acme/projects/web"]
        assert {"tenants/acme/projects/web", "tenants/acme/projects/db"} <= {p.name for p in viewer.list_projects()}
        assert [q.name for q in member.list_quotas()] == ["tenants/acme/projects/web/quota"]
        assert all(vm.name.startswith("tenants/acme/projects/web/") for vm in member.list_vms())
        assert DISK_A in _list_disks(member, "tenants/acme/projects/web")
        assert all(name.startswith("tenants/acme/projects/web/") for name in
                   _list_disks(member, "tenants/acme/projects/web"))
    with world.as_("acme_admin") as acme:
        records = acme.list_audit(tenant="acme")
    assert records and all(r.resource.split("/")[:2] == ["tenants", "acme"] or r.resource == "tokens"
                           for r in records)


def _networks(c: Client) -> network_pb2_grpc.NetworkServiceStub:
    return network_pb2_grpc.NetworkServiceStub(c._channel)


def _make_network(c: Client, parent: str, network_id: str, backing: str = "") -> network_pb2.Network:
    """A network on ``backing`` (default: the first granted to the parent's tenant)."""
    return c._call(_networks(c).CreateNetwork, network_pb2.CreateNetworkRequest(
        parent=parent, network_id=network_id, network=network_pb2.Network(
            backing=backing or BACKINGS[parent.split("/")[1]][0], subnet=network_pb2.Subnet(cidr="10.40.0.0/24"))))


def _listed(c: Client, parent: str, include_shared: bool = False) -> set[str]:
    response = c._call(_networks(c).ListNetworks, network_pb2.ListNetworksRequest(
        parent=parent, include_shared=include_shared, page_size=1000))
    return {n.name for n in response.networks}


def test_networks_of_another_tenant_are_not_found_and_never_listed(world: World) -> None:
    """A project's members manage its networks, tenant admins the shared ones, every
    project of the tenant reads and uses the shared ones; another tenant's network is
    NOT_FOUND like one that does not exist, never listed, and unusable by a VM."""
    web, db = "tenants/acme/projects/web", "tenants/acme/projects/db"
    net = _fresh()
    with world.as_("acme_admin") as acme:
        shared = _make_network(acme, "tenants/acme", f"s-{net}")
        db_net = _make_network(acme, db, f"d-{net}")
    with world.as_("web_member") as member:
        own = _make_network(member, web, f"w-{net}")
        assert outcome(lambda: _make_network(member, "tenants/acme", _fresh())) == PD
        assert outcome(lambda: _make_network(member, db, _fresh())) == NF
        assert member._call(_networks(member).GetNetwork, network_pb2.GetNetworkRequest(name=shared.name)).uid \
            == shared.uid
        listed = _listed(member, web, include_shared=True)
        assert {own.name, shared.name} <= listed and db_net.name not in listed
        assert all(n.startswith((f"{web}/", "tenants/acme/networks/")) for n in listed)
        # Usable by id: the project's own and the tenant's shared one.
        vm = _vm_call(member, "CreateVm", vm_pb2.CreateVmRequest(parent=web, vm_id=_fresh(), vm=vm_pb2.Vm(
            flavor="small", image="ubuntu", nics=[vm_pb2.NetworkInterface(network=f"s-{net}")])))
        assert vm.nics[0].network == shared.name and vm.nics[0].backing == "pg-acme"
        member.delete_vm(vm.name)
    with world.as_("web_viewer") as viewer:
        assert outcome(lambda: _make_network(viewer, web, _fresh())) == PD
    # No tenant maps a network to a port group granted only to another: globex's
    # segment is not acme's to join, whoever of acme asks, nor acme's globex's.
    for who, parent, theirs in (("web_member", web, "pg-globex"), ("acme_admin", "tenants/acme", "pg-globex"),
                                ("globex_admin", "tenants/globex/projects/app", "pg-acme"),
                                ("globex_admin", "tenants/globex", "pg-acme-2")):
        tenant = parent.split("/")[1]
        with world.as_(who, tenant, "app" if tenant == "globex" else "web") as c:
            err = pytest.raises(ApiError, _make_network, c, parent, _fresh(), theirs).value
            assert (err.code, err.reason, err.field_violations[0][0]) == (
                grpc.StatusCode.PERMISSION_DENIED, "BACKING_NOT_GRANTED", "network.backing"), (who, parent)
    with world.as_("acme_admin") as acme:  # nor grant itself one
        err = pytest.raises(ApiError, acme.update_tenant, "acme", network_backings=[*BACKINGS["acme"],
                                                                                    "pg-globex"]).value
        assert (err.code, err.reason) == (grpc.StatusCode.PERMISSION_DENIED, "ROLE_NOT_GRANTED")
        assert list(acme.get_tenant("acme").network_backings) == BACKINGS["acme"]
    with world.as_("globex_admin", "globex", "app") as spy:
        for name in (own.name, shared.name, f"{web}/networks/no-such", "tenants/acme/networks/no-such"):
            err = pytest.raises(ApiError, spy._call, _networks(spy).GetNetwork,
                                network_pb2.GetNetworkRequest(name=name)).value
            assert (err.code, err.reason, err.metadata) == (grpc.StatusCode.NOT_FOUND, "NETWORK_NOT_FOUND",
                                                            {"kind": "network", "name": name}), name
            for method, request in (("DeleteNetwork", network_pb2.DeleteNetworkRequest(name=name)),
                                    ("UpdateNetwork", network_pb2.UpdateNetworkRequest(
                                        network=network_pb2.Network(name=name, description="x")))):
                assert outcome(lambda m=method, r=request: spy._call(getattr(_networks(spy), m), r)) == NF
        assert outcome(lambda: _listed(spy, web)) == NF
        assert outcome(lambda: _listed(spy, "tenants/acme")) == NF
        theirs = _make_network(spy, "tenants/globex/projects/app", f"g-{net}")
        assert _listed(spy, "tenants/globex/projects/app", include_shared=True) >= {theirs.name}
        assert not any(n.startswith("tenants/acme/") for n in _listed(spy, "tenants/globex/projects/app", True))
        # A VM of globex cannot name acme's network: the same answer as for no network at all.
        answers = set()
        for ref in (own.name, shared.name, "tenants/acme/networks/no-such"):
            err = pytest.raises(ApiError, _vm_call, spy, "CreateVm", vm_pb2.CreateVmRequest(
                parent="tenants/globex/projects/app", vm_id=_fresh(), vm=vm_pb2.Vm(
                    flavor="small", image="ubuntu", nics=[vm_pb2.NetworkInterface(network=ref)]))).value
            assert err.code is grpc.StatusCode.INVALID_ARGUMENT
            answers.add(err.field_violations[0][1].replace(ref, "REF"))
        assert len(answers) == 1, answers


def test_private_flavors_are_seen_and_used_only_in_their_tenant(world: World) -> None:
    with world.as_("acme_admin") as acme:
        acme.create_flavor("acme-big", vcpus=2, memory_mib=2048, disk_gib=20, tenant="acme")
        assert "tenants/acme/flavors/acme-big" in {f.name for f in acme.list_flavors()}
        vm = acme.create_vm(_fresh(), flavor="acme-big", image="ubuntu")
        assert (vm.resources.vcpus, vm.resources.memory_mib) == (2, 2048)
    with world.as_("globex_admin", "globex", "app") as globex:
        assert "tenants/acme/flavors/acme-big" not in {f.name for f in globex.list_flavors()}
        refused = pytest.raises(ApiError, globex.create_vm, _fresh(), flavor="acme-big", image="ubuntu").value
    assert refused.code == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.field_violations[0][0] == "vm.flavor" and "acme-big" not in refused.field_violations[0][1].split(
        "known:")[1]


def _frontend_creates(system: LocalSystem) -> dict[str, float]:
    counts = {}
    for name, port in system.metrics_ports.items():
        if name.startswith("frontend"):
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
            counts[name] = sum(float(v) for v in re.findall(
                r'^quanta_api_requests_total\{[^}]*method="CreateVm"[^}]*\} (\S+)$', text, re.MULTILINE))
    return counts


def test_quota_holds_under_concurrent_creates_across_frontends(world: World) -> None:
    """50 creates at once, on 25 connections spread over 3 frontends, against a limit
    of 10: exactly 10 VMs and 40 RESOURCE_EXHAUSTED."""
    with world.as_("admin", "acme") as admin:
        admin.create_project("race", tenant="acme", quota={"vms": 10})
    before = _frontend_creates(world.system)
    clients = [world.as_("acme_admin", "acme", "race", own_connection=True) for _ in range(25)]
    try:
        def create(i: int) -> str:
            try:
                clients[i % len(clients)].create_vm(f"r-{i:02d}", flavor="small", image="ubuntu")
                return "OK"
            except ApiError as err:
                return f"{err.code.name}:{err.reason}"

        with concurrent.futures.ThreadPoolExecutor(50) as pool:
            results = Counter(pool.map(create, range(50)))
    finally:
        for client in clients:
            client.close()
    assert results == {"OK": 10, "RESOURCE_EXHAUSTED:QUOTA_EXCEEDED": 40}
    with world.as_("acme_admin", "acme", "race") as c:
        assert len(list(c.list_vms())) == 10
        quota = c.get_quota("tenants/acme/projects/race/quota")
    assert (quota.usage.vms, quota.usage.vcpus, quota.limits.vms) == (10, 10, 10)
    after = _frontend_creates(world.system)
    served = [name for name in after if after[name] > before.get(name, 0)]
    assert len(served) >= 2, f"the creates reached only {served}"


def test_disk_quota_holds_under_concurrent_creates_across_frontends(world: World) -> None:
    """5 disks at once over 3 frontends against data_disks 2: exactly 2 made."""
    with world.as_("admin", "acme") as admin:
        admin.create_project("disk-race", tenant="acme", quota={"vms": 0, "data_disks": 2, "data_disk_gib": 100})
    clients = [world.as_("acme_admin", "acme", "disk-race", own_connection=True) for _ in range(5)]
    try:
        def create(i: int) -> str:
            try:
                _create_disk(clients[i], f"d-{i}", 10)
                return "OK"
            except ApiError as err:
                return f"{err.code.name}:{err.reason}"

        with concurrent.futures.ThreadPoolExecutor(5) as pool:
            results = Counter(pool.map(create, range(5)))
    finally:
        for client in clients:
            client.close()
    assert results == {"OK": 2, "RESOURCE_EXHAUSTED:QUOTA_EXCEEDED": 3}
    with world.as_("acme_admin", "acme", "disk-race") as c:
        assert len(_list_disks(c, "tenants/acme/projects/disk-race")) == 2
        quota = c.get_quota("tenants/acme/projects/disk-race/quota")
    assert (quota.usage.data_disks, quota.usage.data_disk_gib, quota.limits.data_disks) == (2, 20, 2)
    assert quota.usage.vms == 0  # disks charge no VM dimension


def test_deleting_releases_quota_at_once(world: World) -> None:
    with world.as_("admin", "acme") as admin:
        admin.create_project("tight", tenant="acme", quota={"vms": 1})
    with world.as_("acme_admin", "acme", "tight") as c:
        c.create_vm("one", flavor="small", image="ubuntu")
        assert pytest.raises(ApiError, c.create_vm, "two", flavor="small", image="ubuntu").value.reason == \
            "QUOTA_EXCEEDED"
        c.delete_vm("one")
        assert c.create_vm("two", flavor="small", image="ubuntu").state == vm_pb2.Vm.PENDING
        assert c.get_quota("tenants/acme/projects/tight/quota").usage.vms == 1


def test_project_limits_stay_within_the_tenant_ticket(world: World) -> None:
    with world.as_("admin") as admin:
        admin.create_tenant("ticketed", quota={"vms": 10, "vcpus": 8})
    with world.as_("admin", "ticketed") as admin:
        missing = pytest.raises(ApiError, admin.create_project, "p1", quota={"vms": 5}).value
        assert missing.reason == "QUOTA_INVALID" and missing.field_violations[0][0] == "quota.vcpus"
        admin.create_project("p1", quota={"vms": 6, "vcpus": 4})
        over = pytest.raises(ApiError, admin.create_project, "p2", quota={"vms": 6, "vcpus": 4}).value
        assert over.reason == "QUOTA_INVALID" and over.field_violations[0][0] == "quota.vms"
        admin.create_project("p2", quota={"vms": 4, "vcpus": 4})
        ticket = admin.get_quota("tenants/ticketed/quota")
        assert (ticket.allocated.vms, ticket.allocated.vcpus) == (10, 8)
        shrink = pytest.raises(ApiError, admin.update_quota, "tenants/ticketed/quota", {"vms": 9}).value
        assert shrink.code == grpc.StatusCode.INVALID_ARGUMENT


def test_deleting_a_project_or_tenant_with_vms_needs_force(world: World) -> None:
    with world.as_("admin") as admin:
        admin.create_tenant("doomed")
        admin.create_project("p", tenant="doomed", quota={"vms": 5})
    with world.as_("admin", "doomed", "p") as c:
        for i in range(3):
            c.create_vm(f"v-{i}", flavor="small", image="ubuntu")
        c.wait_for_vm("v-2", "RUNNING", timeout=60)
        refused = pytest.raises(ApiError, c.delete_project, "p").value
        assert (refused.code, refused.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "HAS_VMS")
        refused = pytest.raises(ApiError, c.delete_tenant, "doomed").value
        assert (refused.code, refused.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "HAS_VMS")
        assert len(list(c.list_vms())) == 3  # nothing was deleted by the refused calls
        c.delete_tenant("doomed", force=True)
        assert pytest.raises(ApiError, c.get_tenant, "doomed").value.code == grpc.StatusCode.NOT_FOUND
        assert pytest.raises(ApiError, c.create_vm, "late", flavor="small", image="ubuntu").value.code == \
            grpc.StatusCode.NOT_FOUND
        # The agent destroys the VMs and their records go.
        wait_until(lambda: not list(c.list_vms()), timeout=60, message="the forced deletion's VMs to go",
                   seen=lambda: describe_vms(c.list_vms(), want=None))


# --- tokens -------------------------------------------------------------------------------


def _raw_call(w: World, metadata: tuple[tuple[str, str], ...]) -> ApiError:
    with grpc.insecure_channel(w.system.endpoint) as channel:
        stub = channel.unary_unary("/quanta.v1.TenantService/GetTenant",
                                   request_serializer=tenancy_pb2.GetTenantRequest.SerializeToString,
                                   response_deserializer=tenancy_pb2.Tenant.FromString)
        try:
            stub(tenancy_pb2.GetTenantRequest(name="tenants/acme"), metadata=metadata, timeout=10)
        except grpc.RpcError as err:
            return ApiError.from_rpc_error(err)
    raise AssertionError("the call succeeded")


def test_missing_malformed_and_tampered_tokens_are_unauthenticated(world: World) -> None:
    assert _raw_call(world, ()).reason == "TOKEN_MISSING"
    assert _raw_call(world, (("authorization", "Basic abc"),)).reason == "TOKEN_MALFORMED"
    header, payload, signature = world.tokens["web_member"].split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["grants"] = [{"role": "system-admin"}]
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    for token in (f"{header}.{forged}.{signature}", f"{header}.{payload}.{signature[::-1]}", "not-a-jwt"):
        err = _raw_call(world, (("authorization", f"Bearer {token}"),))
        assert (err.code, err.reason) == (grpc.StatusCode.UNAUTHENTICATED, "INVALID_TOKEN")
    assert _raw_call(world, ()).code == grpc.StatusCode.UNAUTHENTICATED


def test_health_needs_no_token(world: World) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(world.system.endpoint) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10).status
    assert status == health_pb2.HealthCheckResponse.SERVING


def test_an_expired_token_is_refused(world: World) -> None:
    with world.as_("acme_admin") as acme:
        short = acme.create_token("brief@acme", [("viewer", "acme", "web")], ttl_s=1).bearer_token

    def refused() -> str | None:
        with Client(world.system.endpoint, token=short, tenant="acme", project="web") as c:
            return None if outcome(lambda: c.get_project("web")) == OK else pytest.raises(
                ApiError, c.get_project, "web").value.reason

    wait_until(lambda: refused() == "TOKEN_EXPIRED", timeout=30, message="the token to expire",
               seen=lambda: f"get_project answered {refused() or 'OK'}")


def test_a_revoked_token_is_refused_by_every_frontend(world: World) -> None:
    with world.as_("acme_admin") as acme:
        issued = acme.create_token("leaky@acme", [("project-member", "acme", "web")])
        with Client(world.system.endpoint, token=issued.bearer_token, tenant="acme", project="web") as leaky:
            assert leaky.whoami().name == issued.token.name
            assert not acme.get_token(issued.token.name).revoked
            acme.revoke_token(issued.token.name)
            assert acme.get_token(issued.token.name).revoked

    def every_frontend_refuses() -> bool:
        # Fresh connections land on different frontends (SO_REUSEPORT).
        for _ in range(12):
            with Client(world.system.endpoint, token=issued.bearer_token, tenant="acme", project="web",
                        own_connection=True) as c:
                try:
                    c.get_project("web")
                    return False
                except ApiError as err:
                    assert err.reason == "TOKEN_REVOKED"
        return True

    def answers() -> Tally:
        tally = Tally()
        for _ in range(12):
            with Client(world.system.endpoint, token=issued.bearer_token, tenant="acme", project="web",
                        own_connection=True) as c:
                tally[outcome(lambda: c.get_project("web"))] += 1
        return tally

    wait_until(every_frontend_refuses, timeout=30, message="every frontend to refuse the revoked token",
               seen=lambda: f"answers to 12 fresh connections: {answers()}")
    with world.as_("globex_admin") as globex:
        assert outcome(lambda: globex.revoke_token(issued.token.name)) == NF  # not globex's to see


# --- audit --------------------------------------------------------------------------------


def test_every_mutation_is_audited_with_caller_resource_and_result(world: World) -> None:
    project = _fresh()
    with world.as_("acme_admin", "acme", project) as acme:
        acme.create_project(project, tenant="acme", quota={"vms": 1})
        vm = acme.create_vm("audited", flavor="small", image="ubuntu")
        acme.delete_vm("audited")
        denied = outcome(lambda: acme.create_tenant("not-allowed"))
        bad = outcome(lambda: acme.create_vm("Bad_Name", flavor="small", image="ubuntu"))
    assert (denied, bad) == (PD, "INVALID_ARGUMENT")
    expected = {
        ("CreateProject", f"tenants/acme/projects/{project}", "OK"),
        ("CreateVm", vm.name, "OK"),
        ("DeleteVm", vm.name, "OK"),
        ("CreateVm", f"tenants/acme/projects/{project}/vms/Bad_Name", "INVALID_ARGUMENT"),
    }

    def audited() -> set:
        with world.as_("admin") as admin:
            records = admin.list_audit(tenant="acme")
        return {(r.method, r.resource, r.code) for r in records if r.subject == "acme_admin"}

    wait_until(lambda: expected <= audited(), timeout=30, message=f"the {len(expected)} audit records",
               seen=lambda: f"missing {sorted(expected - audited())}")
    with world.as_("admin") as admin:
        everything = admin.list_audit()
    denial = [r for r in everything if r.method == "CreateTenant" and r.resource == "tenants/not-allowed"]
    assert denial and denial[0].code == PD and denial[0].subject == "acme_admin" and denial[0].peer
    # A tenant admin sees its tenant's records only; a member sees none.
    with world.as_("acme_admin") as acme, world.as_("web_member") as member:
        assert all(r.resource.split("/")[:2] == ["tenants", "acme"] or r.resource == "tokens"
                   for r in acme.list_audit(tenant="acme"))
        assert outcome(lambda: member.list_audit(tenant="acme")) == PD


def test_audit_records_can_be_watched(world: World) -> None:
    with world.as_("admin") as admin:
        events = admin.watch_audit(tenant="acme", timeout=60)
        assert next(events).type == 4  # BOOKMARK: the stream is live
        with world.as_("acme_admin", "acme", "web") as acme:
            made = acme.create_vm(_fresh(), flavor="small", image="ubuntu")
        for event in events:
            if event.record.resource == made.name:
                assert (event.record.method, event.record.code) == ("CreateVm", "OK")
                break
        else:
            raise AssertionError("the create was not streamed")


def test_the_audit_record_carries_the_calls_correlation_id(world: World) -> None:
    """The caller's x-correlation-id ties the call's audit record (and log lines) to it,
    and comes back in the trailing metadata; a create's request_id is another thing."""
    with world.as_("acme_admin", "acme", "web") as acme:
        request = vm_pb2.CreateVmRequest(parent=acme.parent, vm_id=_fresh(), request_id="idem-1",
                                         vm=vm_pb2.Vm(flavor="small", image="ubuntu"))
        made, call = acme._vms.CreateVm.with_call(request, metadata=(("x-correlation-id", "corr-audit-1"),),
                                                  timeout=30)
    assert dict(call.trailing_metadata())["x-correlation-id"] == "corr-audit-1"

    def _acme_records() -> list:
        with world.as_("admin") as admin:
            return list(admin.list_audit(tenant="acme"))

    def record():
        return next((r for r in _acme_records() if r.resource == made.name), None)

    audited = wait_until(record, timeout=30, message=f"the audit record of creating {made.name}",
                         seen=lambda: f"{len(_acme_records())} acme records")
    assert (audited.method, audited.correlation_id) == ("CreateVm", "corr-audit-1")


def test_a_watch_ends_once_its_token_is_revoked(world: World) -> None:
    with world.as_("globex_admin", "globex", "app") as globex:  # globex/app is unlimited
        issued = globex.create_token("watcher@globex", [("viewer", "globex", "app")])
        with Client(world.system.endpoint, token=issued.bearer_token, tenant="globex", project="app") as watcher:
            events = watcher.watch_vms(timeout=60)
            next(events)  # the stream is live
            globex.revoke_token(issued.token.name)
            with pytest.raises(ApiError) as ended:
                for _ in range(50):  # each create is an event the stream must pass through its check
                    globex.create_vm(_fresh(), flavor="small", image="ubuntu")
                    next(events)
    assert (ended.value.code, ended.value.reason) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_REVOKED")


def test_a_tenant_admin_names_only_its_own_users(world: World) -> None:
    """Subjects minted by a tenant admin end with @tenant: no "admin" look-alike that
    would share the real admin's rate-limit bucket or read as it in audit records."""
    with world.as_("acme_admin") as acme:
        refused = pytest.raises(ApiError, acme.create_token, "admin", [("viewer", "acme", "")]).value
        assert (refused.code, refused.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "SUBJECT_NOT_IN_TENANT")
        issued = acme.create_token("ci@acme", [("viewer", "acme", "")], ttl_s=365 * 86400)
    # And a token never outlives its issuer's (acme_admin's: 24 h).
    lifetime = issued.token.expire_time.seconds - issued.token.issue_time.seconds
    assert 0 < lifetime <= 24 * 3600


def test_audit_records_are_filed_by_what_was_authorised_not_by_what_the_body_claims(world: World) -> None:
    """A name planted in a request body must not file the record in another tenant's
    log; a probe of another tenant's resource lands in the system log, not theirs."""
    from controlplane.gen.quanta.v1 import tenancy_pb2

    project = _fresh()
    with world.as_("acme_admin") as acme:
        acme._call(acme._projects.CreateProject, tenancy_pb2.CreateProjectRequest(
            parent="tenants/acme", project_id=project, quota=tenancy_pb2.ResourceLimits(vms=1),
            project=tenancy_pb2.Project(name="tenants/globex/projects/app")))
        probe = outcome(lambda: acme.delete_vm("tenants/globex/projects/app/vms/vm-g"))
    assert probe == NF

    def filed() -> tuple[list, list]:
        with world.as_("admin") as admin:
            return admin.list_audit(tenant="acme"), admin.list_audit(tenant="globex")

    wait_until(lambda: any(r.resource == f"tenants/acme/projects/{project}" for r in filed()[0]), timeout=30,
               message=f"the create of {project} filed under acme",
               seen=lambda: f"acme's log: {Tally(r.method for r in filed()[0])}")
    acme_log, globex_log = filed()
    assert not [r for r in globex_log if r.subject == "acme_admin"]


def test_limits_must_be_sane_and_refusals_leave_everything_in_place(world: World) -> None:
    with world.as_("admin") as admin:
        admin.create_tenant("careful", quota={"vms": 10})
    with world.as_("admin", "careful", "full") as admin:
        for quota in ({"vms": -1000}, {"vms": 2**62}):
            refused = pytest.raises(ApiError, admin.create_project, "bad", quota=quota).value
            assert refused.code == grpc.StatusCode.INVALID_ARGUMENT and refused.field_violations[0][0] == "quota.vms"
        admin.create_project("empty", quota={"vms": 1})
        admin.create_project("full", quota={"vms": 1})
        admin.create_vm("v", flavor="small", image="ubuntu")
        refused = pytest.raises(ApiError, admin.delete_tenant, "careful").value
        assert refused.reason == "HAS_VMS"
        assert {p.name for p in admin.list_projects()} == {"tenants/careful/projects/empty",
                                                            "tenants/careful/projects/full"}
        huge = pytest.raises(ApiError, lambda: next(admin.watch_vms(resource_version=2**63 - 1, timeout=10))).value
        assert huge.code == grpc.StatusCode.INVALID_ARGUMENT


def test_a_deleted_tenant_takes_its_tokens_along(world: World) -> None:
    """A tenant made again under a deleted one's id is not reachable by the old tokens."""
    with world.as_("admin") as admin:
        admin.create_tenant("phoenix")
        old = admin.create_token("ops@phoenix", [("tenant-admin", "phoenix", "")]).bearer_token
        admin.delete_tenant("phoenix")
        admin.create_tenant("phoenix")

    def answer() -> str:
        with Client(world.system.endpoint, token=old, tenant="phoenix", own_connection=True) as c:
            return outcome(lambda: c.get_tenant("phoenix"))

    wait_until(lambda: answer() == "UNAUTHENTICATED", timeout=30, message="the old token to be refused",
               seen=lambda: f"get_tenant answered {answer()}")
