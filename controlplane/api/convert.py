"""Domain records → API messages (quanta.v1). The only place that builds them."""

from __future__ import annotations

from typing import cast

from google.protobuf.timestamp_pb2 import Timestamp

from controlplane.auth.principal import Grant, Role
from controlplane.disks import DiskName
from controlplane.gen.quanta.store.v1 import tenancy_pb2 as trec
from controlplane.gen.quanta.v1 import (
    auth_pb2,
    catalog_pb2,
    common_pb2,
    disk_pb2,
    host_pb2,
    network_pb2,
    tenancy_pb2,
    vm_pb2,
)
from controlplane.models import (
    AddressMode,
    BootstrapFormat,
    BootstrapState,
    Flavor,
    Image,
    Nic,
    Power,
    PowerOffMode,
    PowerPolicy,
    Resources,
    RestartPolicy,
    Scope,
    VmSet,
    VmSetRef,
    VmSetState,
    VmState,
)
from controlplane.store.disks import DiskView
from controlplane.store.hosts import HostRecord
from controlplane.store.networks import NetworkView
from controlplane.store.orphans import Orphan
from controlplane.store.vms import VmRecord
from controlplane.tenancy import DIMENSIONS, Limits, Project, Tenant, Usage


def _ts(ns: int) -> Timestamp | None:
    if not ns:
        return None
    ts = Timestamp()
    ts.FromNanoseconds(ns)
    return ts


def resources_to_proto(r: Resources) -> common_pb2.Resources:
    return common_pb2.Resources(vcpus=r.vcpus, memory_mib=r.memory_mib, disk_gib=r.disk_gib)


VM_SET_STATE_TO_PROTO = {VmSetState.PENDING: vm_pb2.VmSet.PENDING, VmSetState.PLACED: vm_pb2.VmSet.PLACED,
                         VmSetState.FAILED: vm_pb2.VmSet.FAILED}


def vm_set_to_proto(vm_set: VmSet, revision: int) -> vm_pb2.VmSet:
    """A set as the API shows it, with its condition Placed: False with reason
    SetDoesNotFit (the shortfall the scheduler recorded) while PENDING, False with
    DeadlineExceeded once FAILED, True once PLACED."""
    ref = vm_set.ref
    if vm_set.state is VmSetState.PLACED:
        placed = common_pb2.Condition(type="Placed", status="True", reason="Placed",
                                      message=vm_set.message or "every member was bound in one transaction",
                                      last_transition_time=_ts(vm_set.update_time_ns))
    elif vm_set.state is VmSetState.FAILED:
        placed = common_pb2.Condition(type="Placed", status="False", reason="DeadlineExceeded",
                                      message=vm_set.message or "the set did not fit before its deadline",
                                      last_transition_time=_ts(vm_set.update_time_ns))
    else:
        placed = common_pb2.Condition(type="Placed", status="False", reason="SetDoesNotFit",
                                      message=vm_set.message or "waiting until every member fits at once",
                                      last_transition_time=_ts(vm_set.update_time_ns or vm_set.create_time_ns))
    return vm_pb2.VmSet(
        name=ref.name, uid=vm_set.uid, state=VM_SET_STATE_TO_PROTO[vm_set.state],
        vms=[vm_set.member(vm_id).name for vm_id in vm_set.vms], conditions=[placed],
        create_time=_ts(vm_set.create_time_ns), deadline_time=_ts(vm_set.deadline_ns),
        update_time=_ts(vm_set.update_time_ns), resource_version=revision)


def vm_to_proto(record: VmRecord) -> vm_pb2.Vm:
    spec, status = record.spec, record.status
    vm = vm_pb2.Vm(
        name=spec.ref.name, uid=spec.uid, flavor=spec.flavor, image=spec.image, labels=dict(spec.labels),
        resources=resources_to_proto(spec.resources), host=status.host,
        # VmState's values are Vm.State's (tests/unit/test_convert.py holds them so).
        state=cast(vm_pb2.Vm.State, int(record.state)),
        create_time=_ts(spec.create_time_ns), update_time=_ts(status.update_time_ns or spec.create_time_ns),
        delete_time=_ts(spec.delete_time_ns), etag=record.etag, resource_version=record.resource_version,
        node_selector=dict(spec.node_selector), anti_affinity_group=spec.anti_affinity_group,
        restart_policy=RESTART_POLICY_TO_PROTO[spec.restart_policy],
        anti_affinity_scope=SCOPE_TO_PROTO[spec.anti_affinity_scope], affinity_group=spec.affinity_group,
        affinity_scope=SCOPE_TO_PROTO[spec.affinity_scope], reconciling=record.reconciling,
        vm_set=VmSetRef(spec.ref.tenant, spec.ref.project, spec.vm_set).name if spec.vm_set else "",
        power=POWER_TO_PROTO[spec.power], power_policy=POWER_POLICY_TO_PROTO[spec.power_policy],
        addresses=[vm_pb2.Address(ip=a.ip, mac=a.mac, network=a.network,
                                  family=vm_pb2.Address.IPV6 if a.family == 6 else vm_pb2.Address.IPV4)
                   for a in status.addresses],
    )
    vm.disks.extend(DiskName(spec.ref.tenant, spec.ref.project, d.disk_id).name for d in spec.disks)
    vm.nics.extend(nic_to_proto(nic) for nic in spec.nics)
    if spec.bootstrap is not None:
        # The summary only: the data itself is in bootstrap/, which no read touches.
        b = spec.bootstrap
        vm.bootstrap.CopyFrom(vm_pb2.Bootstrap(
            format=BOOTSTRAP_FORMAT_TO_PROTO[b.format], size_bytes=b.size_bytes, sha256=b.sha256.hex(),
            state=BOOTSTRAP_STATE_TO_PROTO[status.bootstrap]))
    if status.reason:
        condition_type = "Scheduled" if status.state == VmState.PENDING else "Ready"
        vm.conditions.append(common_pb2.Condition(
            type=condition_type, status="False", reason=status.reason, message=status.message,
            last_transition_time=_ts(status.update_time_ns)))
    for c in status.conditions:
        vm.conditions.append(common_pb2.Condition(type=c.type, status=c.status, reason=c.reason, message=c.message,
                                                  last_transition_time=_ts(c.time_ns)))
    return vm


def disk_to_proto(view: DiskView) -> disk_pb2.Disk:
    """A disk as the API shows it: its record and attachment read at one revision."""
    d = view.disk
    # DiskState's values are Disk.State's.
    return disk_pb2.Disk(
        name=d.name, uid=d.uid, labels=dict(d.labels), description=d.description, size_gib=d.size_gib,
        datastore_class=d.datastore_class, state=cast(disk_pb2.Disk.State, int(view.state)), vm=view.vm,
        create_time=_ts(d.create_time_ns), update_time=_ts(d.update_time_ns or d.create_time_ns),
        etag=view.etag, resource_version=view.resource_version)


ADDRESS_MODE_TO_PROTO = {AddressMode.DHCP: vm_pb2.NetworkInterface.DHCP,
                         AddressMode.STATIC_POOL: vm_pb2.NetworkInterface.STATIC_POOL,
                         AddressMode.STATIC: vm_pb2.NetworkInterface.STATIC}
ADDRESS_MODE_FROM_PROTO = {vm_pb2.NetworkInterface.ADDRESS_MODE_UNSPECIFIED: AddressMode.DHCP,
                           vm_pb2.NetworkInterface.DHCP: AddressMode.DHCP,
                           vm_pb2.NetworkInterface.STATIC_POOL: AddressMode.STATIC_POOL,
                           vm_pb2.NetworkInterface.STATIC: AddressMode.STATIC}


def nic_to_proto(nic: Nic) -> vm_pb2.NetworkInterface:
    """A VM's NIC as its spec holds it: the network's full name, the mode, its MAC, and
    for static modes the address with the subnet's prefix, gateway and DNS."""
    return vm_pb2.NetworkInterface(network=nic.network, address_mode=ADDRESS_MODE_TO_PROTO[nic.address_mode],
                                   ip=nic.ip, prefix_length=nic.prefix_length, gateway=nic.gateway,
                                   dns_servers=list(nic.dns_servers), backing=nic.backing, mac_address=nic.mac)


def network_to_proto(view: NetworkView) -> network_pb2.Network:
    n = view.network
    m = network_pb2.Network(name=n.name, uid=n.uid, labels=dict(n.labels), description=n.description,
                            backing=n.backing, addresses_used=view.addresses_used,
                            addresses_total=view.addresses_total, create_time=_ts(n.create_time_ns),
                            update_time=_ts(n.update_time_ns or n.create_time_ns), etag=view.etag,
                            resource_version=view.revision)
    if n.subnet is not None:
        s = n.subnet
        m.subnet.CopyFrom(network_pb2.Subnet(cidr=s.cidr, gateway=s.gateway, dns_servers=list(s.dns_servers),
                                             range_start=s.range_start, range_end=s.range_end))
    return m


RESTART_POLICY_TO_PROTO = {RestartPolicy.ALWAYS: vm_pb2.Vm.ALWAYS, RestartPolicy.NEVER: vm_pb2.Vm.NEVER}
RESTART_POLICY_FROM_PROTO = {vm_pb2.Vm.RESTART_POLICY_UNSPECIFIED: RestartPolicy.ALWAYS,
                             vm_pb2.Vm.ALWAYS: RestartPolicy.ALWAYS, vm_pb2.Vm.NEVER: RestartPolicy.NEVER}
POWER_TO_PROTO = {Power.ON: vm_pb2.Vm.POWERED_ON, Power.OFF: vm_pb2.Vm.POWERED_OFF}
POWER_FROM_PROTO = {vm_pb2.Vm.POWER_UNSPECIFIED: Power.ON, vm_pb2.Vm.POWERED_ON: Power.ON,
                    vm_pb2.Vm.POWERED_OFF: Power.OFF}
POWER_POLICY_TO_PROTO = {PowerPolicy.KEEP_STOPPED: vm_pb2.Vm.KEEP_STOPPED,
                         PowerPolicy.KEEP_RUNNING: vm_pb2.Vm.KEEP_RUNNING}
POWER_POLICY_FROM_PROTO = {vm_pb2.Vm.POWER_POLICY_UNSPECIFIED: PowerPolicy.KEEP_STOPPED,
                           vm_pb2.Vm.KEEP_STOPPED: PowerPolicy.KEEP_STOPPED,
                           vm_pb2.Vm.KEEP_RUNNING: PowerPolicy.KEEP_RUNNING}
POWER_OFF_MODE_FROM_PROTO = {vm_pb2.POWER_OFF_MODE_UNSPECIFIED: PowerOffMode.SOFT, vm_pb2.SOFT: PowerOffMode.SOFT,
                             vm_pb2.HARD: PowerOffMode.HARD}
BOOTSTRAP_FORMAT_TO_PROTO = {BootstrapFormat.CLOUD_INIT: vm_pb2.Bootstrap.CLOUD_INIT,
                             BootstrapFormat.IGNITION: vm_pb2.Bootstrap.IGNITION}
BOOTSTRAP_FORMAT_FROM_PROTO = {vm_pb2.Bootstrap.FORMAT_UNSPECIFIED: BootstrapFormat.CLOUD_INIT,
                               vm_pb2.Bootstrap.CLOUD_INIT: BootstrapFormat.CLOUD_INIT,
                               vm_pb2.Bootstrap.IGNITION: BootstrapFormat.IGNITION}
BOOTSTRAP_STATE_TO_PROTO = {BootstrapState.STORED: vm_pb2.Bootstrap.STORED,
                            BootstrapState.DELIVERED: vm_pb2.Bootstrap.DELIVERED,
                            BootstrapState.CLEARED: vm_pb2.Bootstrap.CLEARED}
SCOPE_TO_PROTO = {Scope.HOST: vm_pb2.Vm.HOST, Scope.ZONE: vm_pb2.Vm.ZONE}
SCOPE_FROM_PROTO = {vm_pb2.Vm.SCOPE_UNSPECIFIED: Scope.HOST, vm_pb2.Vm.HOST: Scope.HOST, vm_pb2.Vm.ZONE: Scope.ZONE}


def host_state(record: HostRecord) -> host_pb2.Host.State:
    """DEAD while the dead marker stands (even once the agent is back), else
    MISSING when not registered, else DRAINING / DRAINED (empty) while drained,
    else READY."""
    if record.dead:
        return host_pb2.Host.DEAD
    if not record.ready:
        return host_pb2.Host.MISSING
    if record.draining:
        return host_pb2.Host.DRAINING if record.allocation.vm_count else host_pb2.Host.DRAINED
    return host_pb2.Host.READY


def host_to_proto(record: HostRecord) -> host_pb2.Host:
    reg = record.registration
    host = host_pb2.Host(
        name=f"hosts/{record.host}", state=host_state(record), maintenance=record.maintenance,
        allocated=resources_to_proto(record.allocation.resources), vm_count=record.allocation.vm_count,
        resource_version=record.revision,
    )
    if reg is not None:
        host.capacity.CopyFrom(resources_to_proto(reg.capacity))
        o = reg.overcommit
        host.overcommit.CopyFrom(host_pb2.Overcommit(vcpus=o.vcpus, memory=o.memory, disk=o.disk))
        host.allocatable.CopyFrom(resources_to_proto(reg.allocatable))
        host.labels.update(reg.labels)
        host.networks.extend(sorted(reg.networks))
        host.driver = reg.driver
        if reg.register_time_ns:
            host.register_time.FromNanoseconds(reg.register_time_ns)
    return host


def orphan_to_proto(orphan: Orphan) -> host_pb2.OrphanVm:
    message = host_pb2.OrphanVm(
        name=f"hosts/{orphan.host}/orphans/{orphan.uid}", host=f"hosts/{orphan.host}", uid=orphan.uid,
        vm=orphan.vm, powered_on=orphan.powered_on, found_time=_ts(orphan.found_time_ns),
        adoptable=orphan.spec is not None)
    if orphan.spec is not None:
        spec = orphan.spec
        message.resources.CopyFrom(resources_to_proto(spec.resources))
        message.flavor, message.image = spec.flavor, spec.image
        message.labels.update(spec.labels)
    return message


def limits_to_proto(limits: Limits) -> tenancy_pb2.ResourceLimits:
    return tenancy_pb2.ResourceLimits(**{d: getattr(limits, d) for d in DIMENSIONS if getattr(limits, d) is not None})


def limits_from_proto(message: tenancy_pb2.ResourceLimits) -> Limits:
    return Limits(*(getattr(message, d) if message.HasField(d) else None for d in DIMENSIONS))


def usage_to_proto(usage: Usage) -> tenancy_pb2.ResourceUsage:
    return tenancy_pb2.ResourceUsage(**{d: getattr(usage, d) for d in DIMENSIONS})


def tenant_to_proto(tenant: Tenant, revision: int) -> tenancy_pb2.Tenant:
    return tenancy_pb2.Tenant(name=tenant.name, display_name=tenant.display_name, labels=dict(tenant.labels),
                              create_time=_ts(tenant.create_time_ns), update_time=_ts(tenant.update_time_ns),
                              etag=f"{revision:x}", network_backings=list(tenant.network_backings))


def project_to_proto(project: Project, revision: int) -> tenancy_pb2.Project:
    return tenancy_pb2.Project(name=project.name, display_name=project.display_name, labels=dict(project.labels),
                               create_time=_ts(project.create_time_ns), update_time=_ts(project.update_time_ns),
                               etag=f"{revision:x}", delete_time=_ts(project.delete_time_ns))


def project_quota_to_proto(project: Project, revision: int, usage: Usage) -> tenancy_pb2.Quota:
    return tenancy_pb2.Quota(name=f"{project.name}/quota", limits=limits_to_proto(project.quota),
                             usage=usage_to_proto(usage), etag=f"{revision:x}")


def tenant_quota_to_proto(tenant: Tenant, revision: int, usage: Usage) -> tenancy_pb2.Quota:
    return tenancy_pb2.Quota(name=f"{tenant.name}/quota", limits=limits_to_proto(tenant.quota),
                             usage=usage_to_proto(usage), allocated=usage_to_proto(tenant.allocated),
                             etag=f"{revision:x}")


def flavor_to_proto(flavor: Flavor, name: str, public: bool, revision: int = 0) -> catalog_pb2.Flavor:
    return catalog_pb2.Flavor(name=name, resources=resources_to_proto(flavor.resources), public=public,
                              etag=f"{revision:x}" if revision else "")


def image_to_proto(image: Image, revision: int = 0) -> catalog_pb2.Image:
    return catalog_pb2.Image(name=f"images/{image.name}", source=image.source, size_gib=image.size_gib, os=image.os,
                             etag=f"{revision:x}" if revision else "")


ROLE_TO_PROTO = {
    Role.SYSTEM_ADMIN: auth_pb2.Grant.SYSTEM_ADMIN, Role.TENANT_ADMIN: auth_pb2.Grant.TENANT_ADMIN,
    Role.PROJECT_MEMBER: auth_pb2.Grant.PROJECT_MEMBER, Role.VIEWER: auth_pb2.Grant.VIEWER,
}
ROLE_FROM_PROTO = {v: k for k, v in ROLE_TO_PROTO.items()}


def grant_to_proto(grant: Grant) -> auth_pb2.Grant:
    return auth_pb2.Grant(role=ROLE_TO_PROTO[grant.role], tenant=grant.tenant, project=grant.project)


def token_to_proto(record: trec.TokenRecord, revoked: bool) -> auth_pb2.Token:
    return auth_pb2.Token(
        name=f"tokens/{record.token_id}", subject=record.subject, issued_by=record.issued_by, revoked=revoked,
        grants=[auth_pb2.Grant(role=ROLE_TO_PROTO[Role(g.role)], tenant=g.tenant, project=g.project)
                for g in record.grants],
        issue_time=_ts(record.issue_time_ns), expire_time=_ts(record.expire_time_ns),
    )


def audit_to_proto(tenant_key: str, record: trec.AuditRecord) -> auth_pb2.AuditRecord:
    return auth_pb2.AuditRecord(
        name=f"{'tenants/' + record.tenant + '/' if record.tenant else ''}auditRecords/{tenant_key}",
        time=_ts(record.time_ns), subject=record.subject, method=record.method, resource=record.resource,
        peer=record.peer, code=record.code, message=record.message, correlation_id=record.correlation_id,
        token_id=record.token_id,
    )
