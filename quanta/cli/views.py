"""The columns and detail views of each resource the CLI prints (see output.py for
how they are rendered). Pure functions of the messages (and the current time, for
ages)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

from google.protobuf.timestamp_pb2 import Timestamp

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
from quanta.cli.output import Column, Section, View, last_id, plural, short_name
from quanta.outcomes import PlannedVms, VmPlacement, status_code

_DIMENSIONS = ("vms", "vcpus", "memory_mib", "disk_gib", "data_disks", "data_disk_gib")


def age(ts: Timestamp, now_s: float | None = None) -> str:
    """How long ago ``ts`` was, kubectl style: ``45s``, ``12m``, ``3h``, ``5d``; ``-`` if unset."""
    if not ts.seconds and not ts.nanos:
        return "-"
    seconds = max(0, int((time.time() if now_s is None else now_s) - ts.seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= 2 * size or (unit == "m" and seconds >= size):
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _when(ts: Timestamp) -> str:
    return f"{ts.ToJsonString()} ({age(ts)} ago)" if ts.seconds or ts.nanos else "-"


def pairs(mapping: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(mapping.items())) or "-"


def _condition(vm: vm_pb2.Vm) -> common_pb2.Condition | None:
    """The condition that explains the VM's state: the first not True with a reason
    (NoHostFits, WaitingForAddress, ...), else for a STOPPED VM why it is stopped
    (StoppedByRequest, StoppedOutsideQuanta, CreatedStopped); None when nothing needs
    explaining (AddressReported and BootstrapCleared say all is well)."""
    pending = next((c for c in vm.conditions if c.reason and c.status != "True"), None)
    if pending is not None or vm.state != vm_pb2.Vm.STOPPED:
        return pending
    return next((c for c in vm.conditions if c.type == "Stopped" and c.reason), None)


def vm_state(vm: vm_pb2.Vm) -> str:
    return vm_pb2.Vm.State.Name(vm.state)


def vm_reason(vm: vm_pb2.Vm) -> str:
    """``"NoHostFits: 0/11 hosts fit: ..."``, or "" when nothing is amiss."""
    condition = _condition(vm)
    if condition is None:
        return ""
    return f"{condition.reason}: {condition.message}" if condition.message else condition.reason


def desired_power(vm: vm_pb2.Vm) -> str:
    """``on`` or ``off``: what the VM's spec asks for (Vm.power)."""
    return "off" if vm.power == vm_pb2.Vm.POWERED_OFF else "on"


def power(vm: vm_pb2.Vm) -> str:
    """The desired power, and what the VM is while it differs: ``on``, ``off``,
    ``off (desired; the VM is RUNNING)`` while a stop is under way."""
    desired = desired_power(vm)
    actual = {vm_pb2.Vm.RUNNING: "on", vm_pb2.Vm.STOPPED: "off"}.get(vm.state)
    return desired if actual in (None, desired) else f"{desired} (desired; the VM is {vm_state(vm)})"


def waiting_for_address(vm: vm_pb2.Vm) -> bool:
    """Whether the VM waits for its first address (condition AddressAssigned False)."""
    return any(c.type == "AddressAssigned" and c.status == "False" for c in vm.conditions)


def first_ip(vm: vm_pb2.Vm) -> str:
    return vm.addresses[0].ip if vm.addresses else "-"


def ips(vm: vm_pb2.Vm) -> str:
    return ",".join(a.ip for a in vm.addresses) or "-"


def _family(address: vm_pb2.Address) -> str:
    return {vm_pb2.Address.IPV4: "IPv4", vm_pb2.Address.IPV6: "IPv6"}.get(address.family, "-")


def size(count: int) -> str:
    """``512 B``, ``4.0 KiB (4096 B)``: a byte count for people."""
    return f"{count} B" if count < 1024 else f"{count / 1024:.1f} KiB ({count} B)"


def bootstrap_summary(vm: vm_pb2.Vm) -> str:
    """``CLOUD_INIT, 4.0 KiB (4096 B), CLEARED`` or ``-``: what reads show of the
    bootstrap data (never the data, which the API does not return)."""
    if not vm.HasField("bootstrap"):
        return "-"
    b = vm.bootstrap
    fmt = vm_pb2.Bootstrap.Format.Name(b.format) if b.format else "CLOUD_INIT"
    return f"{fmt}, {size(b.size_bytes)}, " + (vm_pb2.Bootstrap.State.Name(b.state) if b.state else "-")


def _resources(r: common_pb2.Resources) -> str:
    return f"{plural(r.vcpus, 'vCPU')}, {r.memory_mib} MiB, {r.disk_gib} GiB"


def _scope(scope: int) -> str:
    return vm_pb2.Vm.Scope.Name(scope) if scope else "HOST"


def _vm_detail(vm: vm_pb2.Vm) -> list[Section]:
    fields = [
        ("Name", last_id(vm.name)),
        ("Resource", vm.name),
        ("UID", vm.uid or "-"),
        ("State", vm_state(vm)),
        ("Power", power(vm)),
        ("Power policy", vm_pb2.Vm.PowerPolicy.Name(vm.power_policy) if vm.power_policy else "KEEP_STOPPED"),
        ("Host", vm.host or "-"),
        ("Flavor", f"{vm.flavor} ({_resources(vm.resources)})" if vm.HasField("resources") else vm.flavor),
        ("Image", vm.image),
        ("Labels", pairs(vm.labels)),
        ("Node selector", pairs(vm.node_selector)),
        ("Anti-affinity", f"{vm.anti_affinity_group} ({_scope(vm.anti_affinity_scope)})"
         if vm.anti_affinity_group else "-"),
        ("Affinity", f"{vm.affinity_group} ({_scope(vm.affinity_scope)})" if vm.affinity_group else "-"),
        ("Restart policy", vm_pb2.Vm.RestartPolicy.Name(vm.restart_policy) if vm.restart_policy else "ALWAYS"),
        ("Set", f"{last_id(vm.vm_set)} (all or nothing; `quanta vm set get {last_id(vm.vm_set)}`)"
         if vm.vm_set else "-"),
        ("Created", _when(vm.create_time)),
        ("Updated", _when(vm.update_time)),
    ]
    if vm.HasField("delete_time"):
        fields.append(("Deletion requested", _when(vm.delete_time)))
    sections = [Section(fields=fields),
                Section(title="Addresses", headers=("IP", "FAMILY", "MAC", "NETWORK"),
                        rows=[(a.ip, _family(a), a.mac or "-", a.network or "-") for a in vm.addresses],
                        empty="none yet (waiting for the guest to report one)" if waiting_for_address(vm)
                        else "none")]
    if vm.nics:
        sections.append(Section(title="NICs",
                                headers=("#", "NETWORK", "MODE", "ADDRESS", "MAC", "GATEWAY", "BACKING"),
                                rows=[(str(i), nic_network(n), nic_mode(n), nic_address(n), n.mac_address or "-",
                                       n.gateway or "-", n.backing or "-") for i, n in enumerate(vm.nics)]))
    if vm.disks:
        sections.append(Section(title="Persistent disks",
                                fields=[("Attached", ", ".join(last_id(d) for d in vm.disks))]))
    if vm.HasField("bootstrap"):
        b = vm.bootstrap
        sections.append(Section(title="Bootstrap data (never shown: its summary only)", fields=[
            ("Format", vm_pb2.Bootstrap.Format.Name(b.format) if b.format else "CLOUD_INIT"),
            ("Size", size(b.size_bytes)),
            ("SHA-256", b.sha256 or "-"),
            ("State", vm_pb2.Bootstrap.State.Name(b.state) if b.state else "-")]))
    sections.append(Section(title="Conditions", headers=("TYPE", "STATUS", "REASON", "MESSAGE", "SINCE"),
                            rows=[(c.type, c.status, c.reason or "-", c.message or "-",
                                   age(c.last_transition_time)) for c in vm.conditions], empty="none"))
    return sections


def nic_mode(nic: vm_pb2.NetworkInterface) -> str:
    return vm_pb2.NetworkInterface.AddressMode.Name(nic.address_mode) if nic.address_mode else "DHCP"


def nic_network(nic: vm_pb2.NetworkInterface) -> str:
    """A NIC's network as the commands take it: its id, ``shared:ID`` for a tenant's."""
    parts = nic.network.split("/")
    return f"shared:{parts[-1]}" if len(parts) == 4 else parts[-1]


def nic_address(nic: vm_pb2.NetworkInterface) -> str:
    if not nic.ip:
        return "-"
    return f"{nic.ip}/{nic.prefix_length}" if nic.prefix_length else nic.ip


def nics(vm: vm_pb2.Vm) -> str:
    return ", ".join(f"{nic_network(n)}:{n.ip or nic_mode(n).lower()}" for n in vm.nics) or "-"


VM = View(
    columns=(
        Column("NAME", lambda vm: last_id(vm.name)),
        Column("STATE", vm_state, coloured=True),
        Column("FLAVOR", lambda vm: vm.flavor),
        Column("IMAGE", lambda vm: vm.image),
        Column("HOST", lambda vm: vm.host or "-"),
        Column("IP", first_ip, narrow=True),
        Column("ADDRESSES", ips, wide=True),
        Column("AGE", lambda vm: age(vm.create_time)),
        Column("REASON", lambda vm: (_condition(vm) or common_pb2.Condition(reason="-")).reason),
        Column("POWER", desired_power, wide=True),
        Column("BOOTSTRAP", bootstrap_summary, wide=True),
        Column("MESSAGE", lambda vm: (_condition(vm) or common_pb2.Condition(message="-")).message, wide=True),
        Column("UID", lambda vm: vm.uid, wide=True),
        Column("NICS", nics, wide=True),
        Column("DISKS", lambda vm: ", ".join(last_id(d) for d in vm.disks) or "-", wide=True),
        Column("LABELS", lambda vm: pairs(vm.labels), wide=True),
    ),
    detail=_vm_detail,
)


def result_code(result: vm_pb2.CreateVmsResult) -> str:
    """``OK`` or the code a refused VM of a CreateVms got (``RESOURCE_EXHAUSTED``)."""
    return "OK" if result.code == 0 else status_code(result.code).name


def _result_vm(result: vm_pb2.CreateVmsResult, cell: Callable[[vm_pb2.Vm], str]) -> str:
    return cell(result.vm) if result.code == 0 else "-"


def _result_reason(result: vm_pb2.CreateVmsResult) -> str:
    if result.code != 0:
        return result.reason or "-"
    return (_condition(result.vm) or common_pb2.Condition(reason="-")).reason


def _result_message(result: vm_pb2.CreateVmsResult) -> str:
    if result.code != 0:
        return result.message or "-"
    return (_condition(result.vm) or common_pb2.Condition(message="-")).message


#: One VM of ``vm create-many``: made (its state as last seen) or refused (code, reason, message).
CREATE_RESULT = View(columns=(
    Column("NAME", lambda r: last_id(r.vm.name) if r.vm.name else "-"),
    Column("RESULT", result_code, coloured=True),
    Column("STATE", lambda r: _result_vm(r, vm_state), coloured=True),
    Column("HOST", lambda r: _result_vm(r, lambda vm: vm.host or "-")),
    Column("IP", lambda r: _result_vm(r, first_ip), narrow=True),
    Column("ADDRESSES", lambda r: _result_vm(r, ips), wide=True),
    Column("REASON", _result_reason),
    Column("MESSAGE", _result_message),
))


#: One VM of ``vm create-many --validate-only``: nothing was made, so no state: would
#: it be created, or how would it be refused.
VALIDATED_RESULT = View(columns=(
    Column("NAME", lambda r: last_id(r.vm.name) if r.vm.name else "-"),
    Column("RESULT", lambda r: "would create" if r.code == 0 else result_code(r), coloured=True),
    Column("REASON", lambda r: r.reason or "-" if r.code != 0 else "-"),
    Column("MESSAGE", lambda r: r.message or "-" if r.code != 0 else "-"),
))


def _filtered(placement: VmPlacement) -> str:
    """``6 ZoneAntiAffinity, 2 NotEnoughMemory`` (largest first) or ``-``."""
    parts = sorted(placement.filtered.items(), key=lambda kv: (-kv[1], kv[0]))
    return ", ".join(f"{n} {reason}" for reason, n in parts) or "-"


#: One VM of ``vm create-many --plan``: the host it would go to, or why it fits nowhere.
PLACEMENT = View(columns=(
    Column("NAME", lambda p: last_id(p.name)),
    Column("HOST", lambda p: p.host or "-"),
    Column("WHY NOT", lambda p: p.message or "-"),
    Column("FILTERED", _filtered, wide=True),
))


def headroom_text(planned: PlannedVms) -> str:
    """``vms 77, vcpus 60 (short by 4), memory_mib unlimited, ...``: the project's quota
    left once the set is made."""
    cells = []
    for dimension, left in planned.quota_headroom.items():
        if left is None:
            cells.append(f"{dimension} unlimited")
        else:
            cells.append(f"{dimension} {left}" + (f" (short by {-left})" if left < 0 else ""))
    return ", ".join(cells)


def _in(ts: Timestamp, now_s: float | None = None) -> str:
    """``in 59s``: how long until ``ts`` (``passed`` once it has)."""
    now = int(time.time() if now_s is None else now_s)
    left = int(ts.seconds + ts.nanos / 1e9 - now)
    if left <= 0:
        return "passed"
    # age() formats a span back from now: the span from now to ts, as if past.
    return f"in {age(Timestamp(seconds=now - left), now)}"


def plan_summary(planned: PlannedVms, *, now_s: float | None = None) -> list[str]:
    """What ``--plan`` says under its table: whether the set fits (and if not, why),
    the quota headroom after it, and a held plan's name and end."""
    count = len(planned)
    hosts = len(set(planned.hosts.values()))
    if planned.fits:
        lines = [f"fits: yes ({plural(count, 'VM')} on {plural(hosts, 'host')})"]
    else:
        lines = [f"fits: no ({why_not(planned)})"]
    lines.append(f"quota headroom after the set: {headroom_text(planned)}")
    if planned.held:
        expire = planned.response.expire_time
        until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expire.seconds))
        lines.append(f"{short_name(planned.plan)}: held until {until} ({_in(expire, now_s)})")
    return lines


def why_not(planned: PlannedVms) -> str:
    """Why a plan does not fit, in one line: the VMs no host takes (the first by
    name and message), the quota dimensions it would exceed."""
    parts = []
    if unplaced := planned.unplaced:
        first = unplaced[0]
        parts.append(f"{plural(len(unplaced), 'VM')} of {len(planned)} {'fits' if len(unplaced) == 1 else 'fit'} "
                     f"no host; {last_id(first.name)}: {first.message or _filtered(first)}")
    if short := planned.quota_short:
        parts.append("quota short by " + ", ".join(f"{n} {d}" for d, n in short.items()))
    if not parts:  # e.g. a hold that lost its race to other writers each time
        parts.append(next((p.message for p in planned.placements if p.message), "it does not fit now"))
    return "; ".join(parts)


def set_state(vm_set: vm_pb2.VmSet) -> str:
    return vm_pb2.VmSet.State.Name(vm_set.state)


def _set_condition(vm_set: vm_pb2.VmSet) -> common_pb2.Condition:
    """Its condition Placed (or the first), or an empty one."""
    return next((c for c in vm_set.conditions if c.type == "Placed"),
                vm_set.conditions[0] if vm_set.conditions else common_pb2.Condition())


def _deadline(vm_set: vm_pb2.VmSet, now_s: float | None = None) -> str:
    """How long a PENDING set has left (``in 9m``), or ``-``."""
    if vm_set.state != vm_pb2.VmSet.PENDING or not vm_set.deadline_time.seconds:
        return "-"
    left = vm_set.deadline_time.seconds - (time.time() if now_s is None else now_s)
    if left <= 0:
        return "passed"
    # age() formats a span back from now: the span from now to the deadline, as if past.
    now = time.time() if now_s is None else now_s
    return f"in {age(Timestamp(seconds=int(now - left)), now)}"


def _set_detail(vm_set: vm_pb2.VmSet) -> list[Section]:
    fields = [("Name", last_id(vm_set.name)), ("Resource", vm_set.name), ("UID", vm_set.uid or "-"),
              ("State", set_state(vm_set)), ("VMs", str(len(vm_set.vms))),
              ("Created", _when(vm_set.create_time))]
    if vm_set.deadline_time.seconds:
        left = _deadline(vm_set)
        fields.append(("Deadline", vm_set.deadline_time.ToJsonString() + (f" ({left})" if left != "-" else "")))
    fields.append(("Updated", _when(vm_set.update_time)))
    return [Section(fields=fields),
            Section(title="Members", headers=("NAME",), rows=[(last_id(n),) for n in vm_set.vms], empty="none"),
            Section(title="Conditions", headers=("TYPE", "STATUS", "REASON", "MESSAGE", "SINCE"),
                    rows=[(c.type, c.status, c.reason or "-", c.message or "-", age(c.last_transition_time))
                          for c in vm_set.conditions], empty="none")]


VM_SET = View(
    columns=(
        Column("NAME", lambda s: last_id(s.name)),
        Column("STATE", set_state, coloured=True),
        Column("VMS", lambda s: str(len(s.vms))),
        Column("AGE", lambda s: age(s.create_time)),
        Column("DEADLINE", _deadline),
        Column("REASON", lambda s: _set_condition(s).reason or "-"),
        Column("MESSAGE", lambda s: _set_condition(s).message or "-", wide=True),
        Column("UID", lambda s: s.uid, wide=True),
    ),
    detail=_set_detail,
)


def _allocatable(host: host_pb2.Host) -> common_pb2.Resources:
    # A frontend older than the overcommit fields sends capacity only.
    return host.allocatable if host.HasField("allocatable") else host.capacity


def host_state(host: host_pb2.Host) -> str:
    return host_pb2.Host.State.Name(host.state) + (",MAINTENANCE" if host.maintenance else "")


def _used(allocated: int, allocatable: int) -> str:
    return f"{allocated}/{allocatable}"


def _host_detail(host: host_pb2.Host) -> list[Section]:
    """The host, then its raw capacity, overcommit ratios, allocatable capacity
    (their product) and allocation, per resource."""
    o = host.overcommit if host.HasField("overcommit") else host_pb2.Overcommit(vcpus=1, memory=1, disk=1)
    return [
        Section(fields=[("Name", last_id(host.name)), ("State", host_state(host)), ("Driver", host.driver or "-"),
                        ("VMs", str(host.vm_count)), ("Labels", pairs(host.labels)),
                        ("Networks", ", ".join(host.networks) or "-"),
                        ("Registered", _when(host.register_time))]),
        Section(title="Resources", headers=("", "VCPUS", "MEMORY_MIB", "DISK_GIB"), rows=[
            ("capacity", *_amounts(host.capacity)),
            ("overcommit", f"{o.vcpus:g}", f"{o.memory:g}", f"{o.disk:g}"),
            ("allocatable", *_amounts(_allocatable(host))),
            ("allocated", *_amounts(host.allocated)),
        ]),
    ]


def _amounts(r: common_pb2.Resources) -> tuple[str, str, str]:
    return str(r.vcpus), str(r.memory_mib), str(r.disk_gib)


HOST = View(
    columns=(
        Column("NAME", lambda h: last_id(h.name)),
        Column("STATE", host_state, coloured=True),
        Column("VMS", lambda h: str(h.vm_count)),
        Column("VCPUS", lambda h: _used(h.allocated.vcpus, _allocatable(h).vcpus)),
        Column("MEMORY_MIB", lambda h: _used(h.allocated.memory_mib, _allocatable(h).memory_mib)),
        Column("DISK_GIB", lambda h: _used(h.allocated.disk_gib, _allocatable(h).disk_gib), wide=True),
        Column("DRIVER", lambda h: h.driver or "-", wide=True),
        Column("LABELS", lambda h: pairs(h.labels), wide=True),
    ),
    detail=_host_detail,
)

ORPHAN = View(columns=(
    Column("HOST", lambda o: last_id(o.host)),
    Column("UID", lambda o: o.uid),
    Column("POWER", lambda o: "on" if o.powered_on else "off"),
    Column("VM", lambda o: o.vm or "-"),
    Column("FLAVOR", lambda o: o.flavor or "-"),
    Column("ADOPTABLE", lambda o: "yes" if o.adoptable else "no"),
    Column("FOUND", lambda o: age(o.found_time), wide=True),
))


def _named_detail(message) -> list[Section]:
    fields = [("Name", message.name), ("Display name", message.display_name or "-"),
              ("Labels", pairs(message.labels)), ("Created", _when(message.create_time)),
              ("Updated", _when(message.update_time))]
    if isinstance(message, tenancy_pb2.Project) and message.HasField("delete_time"):
        fields.append(("Being deleted since", _when(message.delete_time)))
    if isinstance(message, tenancy_pb2.Tenant):
        fields.append(("Network backings", ", ".join(message.network_backings) or "- (none granted)"))
    return [Section(fields=fields)]


TENANT = View(columns=(
    Column("NAME", lambda t: last_id(t.name)),
    Column("DISPLAY NAME", lambda t: t.display_name or "-"),
    Column("AGE", lambda t: age(t.create_time)),
    Column("LABELS", lambda t: pairs(t.labels), wide=True),
    Column("BACKINGS", lambda t: ",".join(t.network_backings) or "-", wide=True),
), detail=_named_detail)

PROJECT = View(columns=(
    Column("NAME", lambda p: last_id(p.name)),
    Column("TENANT", lambda p: p.name.split("/")[1] if p.name.count("/") >= 3 else "-"),
    Column("DISPLAY NAME", lambda p: p.display_name or "-"),
    Column("AGE", lambda p: age(p.create_time)),
    Column("DELETING", lambda p: "yes" if p.HasField("delete_time") else "no", wide=True),
    Column("LABELS", lambda p: pairs(p.labels), wide=True),
), detail=_named_detail)


def limit(limits: tenancy_pb2.ResourceLimits, dimension: str) -> str:
    return str(getattr(limits, dimension)) if limits.HasField(dimension) else "unlimited"


def quota_scope(name: str) -> str:
    """``tenants/acme/quota`` → ``acme``; ``tenants/acme/projects/web/quota`` → ``acme/web``
    (what ``quanta quota get|set`` take)."""
    parts = name.split("/")
    return "/".join(parts[1:-1:2]) if len(parts) % 2 == 1 else name


def _usage_of(dimension: str) -> Callable[[tenancy_pb2.Quota], str]:
    return lambda q: f"{getattr(q.usage, dimension)}/{limit(q.limits, dimension)}"


def _quota_detail(quota: tenancy_pb2.Quota) -> list[Section]:
    allocated = quota.HasField("allocated")
    headers = ("", "USAGE", *(("ALLOCATED",) if allocated else ()), "LIMIT")
    rows = [(d, str(getattr(quota.usage, d)), *((str(getattr(quota.allocated, d)),) if allocated else ()),
             limit(quota.limits, d)) for d in _DIMENSIONS]
    return [Section(fields=[("Name", quota.name), ("Scope", quota_scope(quota.name))]),
            Section(title="Limits", headers=headers, rows=rows)]


QUOTA = View(columns=(
    Column("QUOTA", lambda q: quota_scope(q.name)),
    *(Column(d.upper(), _usage_of(d)) for d in _DIMENSIONS),
), detail=_quota_detail)

FLAVOR = View(columns=(
    Column("NAME", lambda f: last_id(f.name)),
    Column("VCPUS", lambda f: str(f.resources.vcpus)),
    Column("MEMORY_MIB", lambda f: str(f.resources.memory_mib)),
    Column("DISK_GIB", lambda f: str(f.resources.disk_gib)),
    Column("VISIBILITY", lambda f: "public" if f.public else f"private ({f.name.split('/')[1]})"),
))

IMAGE = View(columns=(
    Column("NAME", lambda i: last_id(i.name)),
    Column("OS", lambda i: i.os or "-"),
    Column("SIZE_GIB", lambda i: str(i.size_gib)),
    Column("SOURCE", lambda i: i.source),
))


def grants(token: auth_pb2.Token) -> str:
    """``system-admin``, ``project-member:acme/web``, ... (as ``--grant`` takes them)."""
    out = []
    for g in token.grants:
        role = auth_pb2.Grant.Role.Name(g.role).lower().replace("_", "-")
        scope = g.tenant + (f"/{g.project}" if g.project else "")
        out.append(f"{role}:{scope}" if scope else role)
    return ",".join(out) or "-"


def _token_detail(token: auth_pb2.Token) -> list[Section]:
    return [Section(fields=[("Name", token.name), ("Subject", token.subject), ("Grants", grants(token)),
                            ("Issued", _when(token.issue_time)), ("Issued by", token.issued_by or "-"),
                            ("Expires", token.expire_time.ToJsonString() if token.HasField("expire_time") else "-"),
                            ("Revoked", "yes" if token.revoked else "no")])]


TOKEN = View(columns=(
    Column("NAME", lambda t: last_id(t.name)),
    Column("SUBJECT", lambda t: t.subject),
    Column("GRANTS", grants),
    Column("EXPIRES", lambda t: t.expire_time.ToJsonString() if t.HasField("expire_time") else "-"),
    Column("REVOKED", lambda t: "yes" if t.revoked else "no"),
    Column("ISSUED BY", lambda t: t.issued_by or "-", wide=True),
), detail=_token_detail)


def _time(ts: Timestamp) -> str:
    return ts.ToJsonString() if ts.seconds or ts.nanos else "-"


AUDIT = View(columns=(
    Column("TIME", lambda r: _time(r.time)),
    Column("SUBJECT", lambda r: r.subject or "-"),
    Column("METHOD", lambda r: r.method.rsplit("/", 1)[-1]),
    Column("RESOURCE", lambda r: r.resource or "-"),
    Column("CODE", lambda r: r.code),
    Column("MESSAGE", lambda r: r.message or "-", wide=True),
    Column("PEER", lambda r: r.peer or "-", wide=True),
    Column("CORRELATION ID", lambda r: r.correlation_id or "-", wide=True),
))


def audit_section(records: Sequence[auth_pb2.AuditRecord] | None) -> Section:
    """The detail view's "Recent audit records" (None: the caller may not read them)."""
    if records is None:
        return Section(title="Recent audit records", headers=("TIME",), empty="(not readable with this token)")
    return Section(title="Recent audit records", headers=("TIME", "SUBJECT", "METHOD", "CODE"),
                   rows=[(_time(r.time), r.subject or "-", r.method.rsplit("/", 1)[-1], r.code) for r in records],
                   empty="none")


#: The view of each message type (for commands that print several kinds).
VIEWS: Mapping[type, View] = {
    vm_pb2.Vm: VM, host_pb2.Host: HOST, host_pb2.OrphanVm: ORPHAN, tenancy_pb2.Tenant: TENANT,
    tenancy_pb2.Project: PROJECT, tenancy_pb2.Quota: QUOTA, catalog_pb2.Flavor: FLAVOR, catalog_pb2.Image: IMAGE,
    auth_pb2.Token: TOKEN, auth_pb2.AuditRecord: AUDIT,
}



def network_scope(network: network_pb2.Network) -> str:
    """"project" or "shared" (a tenant's network, for all its projects)."""
    return "shared" if network.name.count("/") == 3 else "project"


def pool(network: network_pb2.Network) -> str:
    subnet = network.subnet
    if not subnet.cidr:
        return "-"
    return f"{subnet.range_start}-{subnet.range_end}" if subnet.range_start else subnet.cidr


def _network_detail(network: network_pb2.Network) -> list[Section]:
    subnet = network.subnet
    return [Section(fields=[
        ("Name", last_id(network.name)), ("Resource", network.name), ("UID", network.uid or "-"),
        ("Scope", network_scope(network)), ("Backing", network.backing), ("Description", network.description or "-"),
        ("Subnet", subnet.cidr or "none (DHCP only)"), ("Gateway", subnet.gateway or "-"),
        ("DNS servers", ", ".join(subnet.dns_servers) or "-"), ("Pool", pool(network)),
        ("Addresses used", f"{network.addresses_used} of {network.addresses_total}" if subnet.cidr else "-"),
        ("Labels", pairs(network.labels)), ("Created", _when(network.create_time)),
        ("Updated", _when(network.update_time))])]


NETWORK = View(columns=(
    Column("NAME", lambda n: last_id(n.name)),
    Column("SCOPE", network_scope),
    Column("BACKING", lambda n: n.backing),
    Column("SUBNET", lambda n: n.subnet.cidr or "-"),
    Column("USED", lambda n: f"{n.addresses_used}/{n.addresses_total}" if n.subnet.cidr else "-"),
    Column("AGE", lambda n: age(n.create_time)),
    Column("GATEWAY", lambda n: n.subnet.gateway or "-", wide=True),
    Column("POOL", pool, wide=True),
    Column("LABELS", lambda n: pairs(n.labels), wide=True),
), detail=_network_detail)


def disk_state(disk: disk_pb2.Disk) -> str:
    return disk_pb2.Disk.State.Name(disk.state) if disk.state else "AVAILABLE"


def _disk_detail(disk: disk_pb2.Disk) -> list[Section]:
    return [Section(fields=[
        ("Name", last_id(disk.name)), ("Resource", disk.name), ("UID", disk.uid or "-"), ("State", disk_state(disk)),
        ("Size", f"{disk.size_gib} GiB"), ("Datastore class", disk.datastore_class or "standard"),
        ("Attached to", last_id(disk.vm) if disk.vm else "-"), ("Description", disk.description or "-"),
        ("Labels", pairs(disk.labels)), ("Created", _when(disk.create_time)), ("Updated", _when(disk.update_time))])]


DISK = View(columns=(
    Column("NAME", lambda d: last_id(d.name)),
    Column("STATE", disk_state, coloured=True),
    Column("SIZE_GIB", lambda d: str(d.size_gib)),
    Column("CLASS", lambda d: d.datastore_class or "standard"),
    Column("VM", lambda d: last_id(d.vm) if d.vm else "-"),
    Column("AGE", lambda d: age(d.create_time)),
    Column("LABELS", lambda d: pairs(d.labels), wide=True),
), detail=_disk_detail)
