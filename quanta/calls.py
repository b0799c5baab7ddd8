"""What each SDK method sends and how its answer is read: one place for both clients.

:class:`Calls` has one builder per SDK method; a builder returns a description of
the call (:class:`Unary`, :class:`Pages` or :class:`Stream`) and does no I/O. The
sync :class:`quanta.Client` and the asyncio :class:`quanta.aio.Client` differ only
in how they carry a description out (blocking, or awaiting), through the
``unary``/``pages``/``listed``/``stream`` method factories each defines; which
builder each SDK method calls, and of which kind, is a table written once
(:class:`quanta.methods.Methods`) that each client installs with its factories.

Retries are the channel's: :func:`service_config` gives gRPC a retry policy for
UNAVAILABLE on the methods in :data:`RETRIED` (reads, idempotent verbs, and
CreateVm, whose request_id makes a retry return the VM the first attempt made),
within the call's deadline, with the same bytes on every attempt.
"""

from __future__ import annotations

import json
import pathlib
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import grpc
from google.protobuf import duration_pb2, field_mask_pb2
from google.protobuf.message import Message

from controlplane.gen.quanta.v1 import (
    auth_pb2,
    auth_pb2_grpc,
    catalog_pb2,
    catalog_pb2_grpc,
    common_pb2,
    disk_pb2,
    disk_pb2_grpc,
    host_pb2,
    host_pb2_grpc,
    network_pb2,
    network_pb2_grpc,
    tenancy_pb2,
    tenancy_pb2_grpc,
    vm_pb2,
    vm_pb2_grpc,
)
from quanta import config
from quanta.errors import ConfigError, QuantaError, from_rpc_error
from quanta.outcomes import CreatedVms, PlannedVms

R = TypeVar("R")
T = TypeVar("T")

VMS = "quanta.v1.VmService"
HOSTS = "quanta.v1.HostService"
TENANTS = "quanta.v1.TenantService"
PROJECTS = "quanta.v1.ProjectService"
QUOTAS = "quanta.v1.QuotaService"
FLAVORS = "quanta.v1.FlavorService"
IMAGES = "quanta.v1.ImageService"
TOKENS = "quanta.v1.TokenService"
AUDIT = "quanta.v1.AuditService"
NETWORKS = "quanta.v1.NetworkService"
DISKS = "quanta.v1.DiskService"

#: The stub class of each service (sync and asyncio channels take the same stubs).
STUBS: dict[str, Callable[[Any], Any]] = {
    VMS: vm_pb2_grpc.VmServiceStub, HOSTS: host_pb2_grpc.HostServiceStub,
    TENANTS: tenancy_pb2_grpc.TenantServiceStub, PROJECTS: tenancy_pb2_grpc.ProjectServiceStub,
    QUOTAS: tenancy_pb2_grpc.QuotaServiceStub, FLAVORS: catalog_pb2_grpc.FlavorServiceStub,
    IMAGES: catalog_pb2_grpc.ImageServiceStub, TOKENS: auth_pb2_grpc.TokenServiceStub,
    AUDIT: auth_pb2_grpc.AuditServiceStub, NETWORKS: network_pb2_grpc.NetworkServiceStub,
    DISKS: disk_pb2_grpc.DiskServiceStub,
}

#: Methods retried on UNAVAILABLE: reads, verbs whose retry after an attempt that
#: applied does no harm (DeleteVm: a VM being deleted is answered as it is, whatever
#: its etag; a pending VM it removed is NOT_FOUND), and CreateVm (idempotent by the request_id every SDK create
#: carries). CreateVms is retried because every SDK ``create_vms`` carries the ids
#: that make it idempotent, generated when not given and resent unchanged by every
#: attempt: INDEPENDENT, a request_id for each of its VMs (:func:`create_vm_request`),
#: so a retry returns the VMs the first attempt made and tries again only those it
#: refused, as retried CreateVms would; ALL_OR_NOTHING, the set's request_id (which
#: covers its members: the server refuses theirs), so a retry returns the same set
#: and VMs, never a second set. A CreateVms sent by other means without those ids
#: must not be retried blindly. PlanVms likewise: without a hold it writes nothing,
#: and every SDK ``plan_vms`` with a hold carries a request_id (generated per call,
#: resent by every attempt), so a retry returns the plan the first attempt held, never
#: a second hold; a held PlanVms sent by other means without one must not be retried
#: blindly. Creates of
#: other resources take no request_id the server honours, and a retried DestroyOrphan
#: would find its record gone (NOT_FOUND): not retried.
#:
#: The VM verbs of issue 12: StartVm and StopVm set the desired power state, so a
#: second attempt sets what the first set. RestartVm is retried because every SDK
#: restart carries a request_id (generated per call, resent by every attempt): a
#: retry of an attempt that applied returns the VM and restarts it no more. UpdateVm
#: sets absolute values (the whole label map, the flavor) under its field mask, so
#: applying one request twice leaves what applying it once does; with an etag (what
#: the CLI always sends) an attempt after one that applied fails ABORTED
#: (ETAG_MISMATCH) instead of writing again, and the caller re-reads. Without an
#: etag a retry could land after another client's change and undo it; that is the
#: last-writer-wins the caller chose by sending no etag (the first attempt's place
#: among the writers was unknown anyway once it went unanswered).
#:
#: Networks and disks (issue 14): CreateNetwork and CreateDisk are idempotent by the
#: request_id every SDK create carries; AttachDisk and DetachDisk are idempotent (a
#: disk attached to, or detached from, this VM already returns the VM unchanged).
#: Deletes of networks and disks are not retried: a retry after one that applied is
#: NOT_FOUND.
RETRIED: dict[str, tuple[str, ...]] = {
    VMS: ("CreateVm", "CreateVms", "PlanVms", "GetVm", "GetVmSet", "ListVms", "DeleteVm", "StartVm", "StopVm",
          "RestartVm", "UpdateVm", "AttachDisk", "DetachDisk"),
    NETWORKS: ("CreateNetwork", "GetNetwork", "ListNetworks"),
    DISKS: ("CreateDisk", "GetDisk", "ListDisks"),
    HOSTS: ("GetHost", "ListHosts", "SetMaintenance", "DrainHost", "ListOrphans"),
    TENANTS: ("GetTenant", "ListTenants"),
    PROJECTS: ("GetProject", "ListProjects"),
    QUOTAS: ("GetQuota", "ListQuotas"),
    FLAVORS: ("GetFlavor", "ListFlavors"),
    IMAGES: ("GetImage", "ListImages"),
    TOKENS: ("GetToken", "GetCaller"),
    AUDIT: ("ListAuditRecords",),
}

#: Attempts in all (the first and three retries, as the SDK did by hand before), with
#: exponential backoff from 0.1 s (gRPC randomises each pause below its bound).
RETRY_ATTEMPTS = 4
RETRY_BACKOFF_S = (0.1, 2.0)  # the first pause's bound, the largest bound
RETRY_POLICY = {"maxAttempts": RETRY_ATTEMPTS, "initialBackoff": f"{RETRY_BACKOFF_S[0]}s",
                "maxBackoff": f"{RETRY_BACKOFF_S[1]}s", "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"]}


def service_config() -> str:
    """The gRPC service config (JSON) that gives :data:`RETRIED` its retry policy."""
    names = [{"service": service, "method": method} for service, methods in RETRIED.items() for method in methods]
    return json.dumps({"methodConfig": [{"name": names, "retryPolicy": RETRY_POLICY}]})


def channel_options(*, own_connection: bool = False) -> list[tuple[str, Any]]:
    """The options of every SDK channel: retries on, the service config above, and
    with ``own_connection`` a connection not shared with other clients of the process."""
    options: list[tuple[str, Any]] = [("grpc.enable_retries", 1), ("grpc.service_config", service_config())]
    if own_connection:
        options.append(("grpc.use_local_subchannel_pool", 1))
    return options


def _same(message: Any) -> Any:
    return message


@dataclass(frozen=True, slots=True)
class Unary(Generic[R]):
    """One call of ``service``'s ``method`` with ``request``, answered by one message;
    ``timeout``: seconds for it (None: the client's), retries included; ``parse``
    turns the answer into what the SDK method returns."""

    service: str
    method: str
    request: Message = field(repr=False)  # a CreateVm's holds bootstrap data: never in a repr
    timeout: float | None = None
    parse: Callable[[Any], R] = field(default=_same)


@dataclass(frozen=True, slots=True)
class Pages(Generic[T]):
    """A paginated list: ``page(token)`` is the call for one page (token "" first);
    ``items`` names the answer's repeated field; the last page has no next token."""

    page: Callable[[str], Unary[Any]]
    items: str

    def read(self, response: Any) -> tuple[Iterable[T], str]:
        """The items of one answer and the next page's token ("" after the last)."""
        return getattr(response, self.items), response.next_page_token


@dataclass(frozen=True, slots=True)
class Stream(Generic[T]):
    """A server stream of ``T``; ``timeout``: it ends quietly after that many seconds
    (None: runs until the caller stops reading). ``items``: the name of each message's
    repeated field that holds the ``T``s (a batched stream, handed back one ``T`` at a
    time); ``older``: the same ``T``s through an older method, called instead when
    the server answers ``method`` UNIMPLEMENTED before any message (a frontend older
    than this SDK)."""

    service: str
    method: str
    request: Message
    timeout: float | None = None
    items: str | None = None
    older: Stream[T] | None = None

    def instead(self, code: grpc.StatusCode, received: bool) -> Stream[T] | None:
        """The stream to read instead after ``method`` failed with ``code`` (``received``:
        after some messages): ``older`` when the server lacks ``method`` (UNIMPLEMENTED
        before any message), else None (the failure is the caller's)."""
        return self.older if code == grpc.StatusCode.UNIMPLEMENTED and not received else None


#: ``mode`` of stop_vm/restart_vm → the API's PowerOffMode.
POWER_OFF_MODES: dict[str, vm_pb2.PowerOffMode] = {"soft": vm_pb2.SOFT, "hard": vm_pb2.HARD}

#: Metadata keys (cloud-init's spelling, or the API's) that are fields of BootstrapMetadata.
_METADATA_FIELDS = {"instance-id": "instance_id", "instance_id": "instance_id",
                    "local-hostname": "hostname", "hostname": "hostname"}


def power_off_mode(mode: str) -> vm_pb2.PowerOffMode:
    """"soft" or "hard" (any case) → the API's PowerOffMode; ValueError otherwise."""
    try:
        return POWER_OFF_MODES[mode.lower()]
    except KeyError:
        raise ValueError(f"mode must be soft or hard, not {mode!r}") from None


def _duration(seconds: float | None) -> duration_pb2.Duration | None:
    if seconds is None:
        return None
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(round(seconds * 1e9))
    return duration


def bootstrap_input(*, user_data: bytes | str | None = None, ignition: bytes | str | None = None,
                    metadata: Mapping[str, str] | None = None, ssh_keys: Sequence[str] = (),
                    hostname: str = "") -> vm_pb2.Bootstrap | None:
    """The Vm.bootstrap of a create (None when nothing is given): ``user_data``
    (cloud-init) or ``ignition`` (ValueError for both), str as UTF-8; ``metadata``'s
    keys instance-id and local-hostname (or instance_id, hostname) become those
    fields, the rest ``values``; ``hostname`` wins over metadata's. The message
    holds the secret: never log or print it."""
    if user_data is not None and ignition is not None:
        raise ValueError("give user_data (cloud-init) or ignition, not both")
    data = ignition if ignition is not None else user_data
    if data is None and not metadata and not ssh_keys and not hostname:
        return None
    fields: dict[str, str] = {}
    values: dict[str, str] = {}
    for key, value in (metadata or {}).items():
        if key in _METADATA_FIELDS:
            fields[_METADATA_FIELDS[key]] = value
        else:
            values[key] = value
    if hostname:
        fields["hostname"] = hostname
    return vm_pb2.Bootstrap(
        user_data=data.encode() if isinstance(data, str) else (data or b""),
        format=vm_pb2.Bootstrap.IGNITION if ignition is not None else vm_pb2.Bootstrap.CLOUD_INIT,
        metadata=vm_pb2.BootstrapMetadata(ssh_authorized_keys=list(ssh_keys), values=values, **fields))


#: The keyword arguments of a VM in :meth:`Calls.create_vms` besides ``vm_id``: those
#: of :meth:`Calls.create_vm` (without ``validate_only``, which is the call's).
CREATE_VM_FIELDS = frozenset({
    "flavor", "image", "labels", "request_id", "node_selector", "anti_affinity_group", "restart_policy",
    "anti_affinity_scope", "affinity_group", "affinity_scope", "user_data", "ignition", "metadata", "ssh_keys",
    "hostname", "power_on", "power_policy", "nics", "disks"})

#: A CreateVms of more VMs than this gets :data:`LONG_TIMEOUT_S` instead of the client's timeout.
BIG_BATCH = 100


def create_vm_request(parent: str, vm_id: str = "", *, flavor: str, image: str,
                      labels: Mapping[str, str] | None = None, request_id: str | None = None,
                      node_selector: Mapping[str, str] | None = None, anti_affinity_group: str = "",
                      restart_policy: str = "ALWAYS", anti_affinity_scope: str = "HOST", affinity_group: str = "",
                      affinity_scope: str = "HOST", user_data: bytes | str | None = None,
                      ignition: bytes | str | None = None, metadata: Mapping[str, str] | None = None,
                      ssh_keys: Sequence[str] = (), hostname: str = "", power_on: bool = True,
                      power_policy: str = "KEEP_STOPPED", nics: Sequence[str | Mapping[str, str]] = (),
                      disks: Sequence[str] = ()) -> vm_pb2.CreateVmRequest:
    """The one place a VM's create is built, for CreateVm and each VM of CreateVms
    (arguments as :meth:`Calls.create_vm`); a request_id is generated if none is
    given. ValueError for an unknown enum value or both user_data and ignition.
    The message may hold bootstrap data: never log or print it."""
    vm = vm_pb2.Vm(flavor=flavor, image=image, labels=dict(labels or {}), node_selector=dict(node_selector or {}),
                   anti_affinity_group=anti_affinity_group,
                   # Enum fields take their value names (ValueError on an unknown one).
                   restart_policy=restart_policy, anti_affinity_scope=anti_affinity_scope,
                   affinity_group=affinity_group, affinity_scope=affinity_scope,
                   power="POWERED_ON" if power_on else "POWERED_OFF", power_policy=power_policy)
    bootstrap = bootstrap_input(user_data=user_data, ignition=ignition, metadata=metadata, ssh_keys=ssh_keys,
                                hostname=hostname)
    if bootstrap is not None:
        vm.bootstrap.CopyFrom(bootstrap)
    vm.nics.extend(nic_input(nic) for nic in nics)
    vm.disks.extend(disks)
    return vm_pb2.CreateVmRequest(parent=parent, vm_id=vm_id, request_id=request_id or uuid.uuid4().hex, vm=vm)


#: ``ip=`` of a NIC (``nic_input``) that asks for an address of the network's pool.
POOL = "pool"
#: ``ip=`` of a NIC that asks for DHCP (also what a NIC without ``ip`` gets).
DHCP = "dhcp"


def nic_input(nic: str | Mapping[str, str]) -> vm_pb2.NetworkInterface:
    """A VM's NIC from ``"net=web"`` (DHCP), ``"net=web,ip=pool"`` (an address of the
    network's pool), ``"net=web,ip=10.0.0.5"`` (that address), or the same as a mapping
    (``{"net": "web", "ip": "pool"}``; ``network`` for ``net``). The network is an id
    (the project's, else its tenant's shared one) or a full name. ValueError for
    anything else."""
    if isinstance(nic, str):
        try:
            fields = dict(part.split("=", 1) for part in nic.split(",") if part.strip())
        except ValueError:
            raise ValueError(f"a NIC is net=NETWORK[,ip=pool|dhcp|ADDRESS], not {nic!r}") from None
    else:
        fields = dict(nic)
    fields = {key.strip().lower(): value.strip() for key, value in fields.items()}
    network = fields.pop("net", "") or fields.pop("network", "")
    ip = fields.pop("ip", DHCP) or DHCP
    if not network or fields:
        raise ValueError(f"a NIC is net=NETWORK[,ip=pool|dhcp|ADDRESS], not {nic!r}")
    if ip.lower() == POOL:
        return vm_pb2.NetworkInterface(network=network, address_mode=vm_pb2.NetworkInterface.STATIC_POOL)
    if ip.lower() == DHCP:
        return vm_pb2.NetworkInterface(network=network, address_mode=vm_pb2.NetworkInterface.DHCP)
    return vm_pb2.NetworkInterface(network=network, address_mode=vm_pb2.NetworkInterface.STATIC, ip=ip)


def named(collection: str, id_or_name: str) -> str:
    """``"hosts/", "h1"`` → ``"hosts/h1"``; a full name is kept as it is."""
    return id_or_name if id_or_name.startswith(collection) else f"{collection}{id_or_name}"


ROLES = {"system-admin": auth_pb2.Grant.SYSTEM_ADMIN, "tenant-admin": auth_pb2.Grant.TENANT_ADMIN,
         "project-member": auth_pb2.Grant.PROJECT_MEMBER, "viewer": auth_pb2.Grant.VIEWER}

#: The timeout of deletes that may remove many VMs first (force).
LONG_TIMEOUT_S = 120.0


class Calls:
    """The request of every SDK method, for a caller in ``tenant``/``project`` (the
    defaults of VM calls and of the tenant-scoped lists). Pure: builds messages."""

    def __init__(self, tenant: str, project: str, timeout: float) -> None:
        self.tenant = tenant
        self.project = project
        self.timeout = timeout

    @property
    def parent(self) -> str:
        return f"tenants/{self.tenant}/projects/{self.project}"

    def vm_name(self, vm_id: str) -> str:
        return vm_id if vm_id.startswith("tenants/") else f"{self.parent}/vms/{vm_id}"

    def _long(self) -> float:
        return max(self.timeout, LONG_TIMEOUT_S)

    # VMs
    def create_vm(self, vm_id: str = "", *, flavor: str, image: str, labels: dict[str, str] | None = None,
                  request_id: str | None = None, node_selector: dict[str, str] | None = None,
                  anti_affinity_group: str = "", restart_policy: str = "ALWAYS", anti_affinity_scope: str = "HOST",
                  affinity_group: str = "", affinity_scope: str = "HOST", user_data: bytes | str | None = None,
                  ignition: bytes | str | None = None, metadata: Mapping[str, str] | None = None,
                  ssh_keys: Sequence[str] = (), hostname: str = "", power_on: bool = True,
                  power_policy: str = "KEEP_STOPPED", nics: Sequence[str | Mapping[str, str]] = (),
                  disks: Sequence[str] = (), validate_only: bool = False) -> Unary[vm_pb2.Vm]:
        """Create a VM; returns it PENDING. ``vm_id`` "" lets the server assign one.
        Idempotent per request_id (one is generated if not given; the channel's
        retries resend it). ``node_selector``: host labels it needs;
        ``anti_affinity_group``: no two VMs of the group on one host;
        ``anti_affinity_scope`` "ZONE": nor two zone-scoped VMs of the group in one
        zone (host label topology.quanta.io/zone); ``affinity_group``: only on a host
        (``affinity_scope`` "HOST") or in a zone ("ZONE") that runs a VM of that
        group; ``restart_policy``: "ALWAYS" (placed again when its host is drained or
        dead) or "NEVER" (deleted then).

        Bootstrap data (write-once, never read back: reads show its format, size,
        SHA-256 and state only; deleted from the store and blanked on the VM once the
        guest has bootstrapped): ``user_data`` (cloud-init: ``#cloud-config``, a
        script, ...) or ``ignition`` (an Ignition config), at most 64 KiB, str as
        UTF-8; ``metadata``: cloud-init meta-data keys (``instance-id`` and
        ``local-hostname`` set the instance id and hostname, the others are passed
        as they are), ``ssh_keys`` (public keys) and ``hostname`` (default: the VM's
        id). ValueError for both user_data and ignition.

        ``power_on`` False creates it STOPPED (it keeps its host and quota);
        ``power_policy``: what its agent does when it finds the VM off without a stop
        (KEEP_STOPPED: report it STOPPED; KEEP_RUNNING: power it on again).
        ``nics``: its NICs in order (see :func:`nic_input`: ``"net=web,ip=pool"``, ...;
        none: one DHCP NIC on the hosts' default network); ``disks``: persistent disks
        of the project to attach (ids or names; AVAILABLE ones).
        ``validate_only``: check everything (quota included) and return the VM it
        would make, writing nothing.
        Raises QuotaExceeded, AlreadyExists, InvalidArgument, ResourceExhausted
        (ADDRESS_POOL_EXHAUSTED), FailedPrecondition (DISK_IN_USE, ADDRESS_IN_USE), ..."""
        request = create_vm_request(self.parent, vm_id, flavor=flavor, image=image, labels=labels,
                                    request_id=request_id, node_selector=node_selector,
                                    anti_affinity_group=anti_affinity_group, restart_policy=restart_policy,
                                    anti_affinity_scope=anti_affinity_scope, affinity_group=affinity_group,
                                    affinity_scope=affinity_scope, user_data=user_data, ignition=ignition,
                                    metadata=metadata, ssh_keys=ssh_keys, hostname=hostname, power_on=power_on,
                                    power_policy=power_policy, nics=nics, disks=disks)
        request.validate_only = validate_only
        return Unary(VMS, "CreateVm", request)

    def create_vms(self, vms: Sequence[Mapping[str, Any]], *, all_or_nothing: bool = False,
                   set_id: str = "", deadline: float | None = None, validate_only: bool = False,
                   request_id: str | None = None, plan: str = "") -> Unary[CreatedVms]:
        """Create up to 1,000 VMs in one call. Each of ``vms`` is a mapping of the
        keyword arguments :meth:`create_vm` takes, ``vm_id`` among them (e.g.
        ``{"vm_id": "web-1", "flavor": "small", "image": "ubuntu", "user_data": ...}``).
        Returns a :class:`CreatedVms`: one :class:`VmOutcome` per VM in the order given.

        INDEPENDENT (the default): each VM is created or refused on its own, as by
        its own CreateVm (quota charged per VM), and carries its own request_id (one
        is generated for each VM that names none); a refused VM raises nothing, its
        outcome says why (``.refused``, ``.raise_for_refusals()``).

        ``all_or_nothing``: the VMs form a VmSet (``set_id``: its id; "" lets the
        server name it), admitted against quota as a whole and placed as a whole:
        every member bound in one transaction, or none; a set that has not fitted
        within ``deadline`` seconds (None: the server's default, 10 minutes; at most
        24 hours) FAILS and its members are removed. A refusal refuses the whole set
        and raises its typed error (QuotaExceeded, InvalidArgument naming the VM,
        ...). The set's ``request_id`` (generated if not given) covers its members,
        which carry none: a retry returns the same set and VMs.

        ``plan`` (all_or_nothing only): a plan :meth:`plan_vms` held for these same
        VMs (ids and flavors; its id, ``plans/ID`` or full name): the set is bound
        to the room it holds, on the hosts it planned. FailedPrecondition with reason
        PLAN_EXPIRED once its hold has ended (plan again), PLAN_MISMATCH for other
        VMs; nothing is written then.

        ``validate_only``: check everything (quota included), write nothing.
        Idempotent either way, so the channel retries it (see :data:`RETRIED`).
        TypeError for an unknown keyword in a VM (naming it); ValueError as
        :meth:`create_vm`, for no VMs, for ``set_id``, ``deadline``, ``request_id``
        or ``plan`` without ``all_or_nothing``, and for a member's request_id with it."""
        if not all_or_nothing and (set_id or deadline is not None or request_id or plan):
            raise ValueError("create_vms: set_id, deadline, request_id and plan are an all_or_nothing set's "
                             "(each independent VM takes its own request_id)")
        requests = self._creates("create_vms", vms, set_members=all_or_nothing)
        if all_or_nothing:
            request = vm_pb2.CreateVmsRequest(
                parent=self.parent, requests=requests, mode=vm_pb2.CreateVmsRequest.ALL_OR_NOTHING, set_id=set_id,
                deadline=_duration(deadline), request_id=request_id or uuid.uuid4().hex, validate_only=validate_only,
                plan=self.plan_name(plan) if plan else "")
        else:
            request = vm_pb2.CreateVmsRequest(parent=self.parent, requests=requests,
                                              mode=vm_pb2.CreateVmsRequest.INDEPENDENT, validate_only=validate_only)
        names = [f"{self.parent}/vms/{r.vm_id}" if r.vm_id else "" for r in requests]
        return Unary(VMS, "CreateVms", request, timeout=self._long() if len(requests) > BIG_BATCH else None,
                     parse=lambda response: CreatedVms.of(response, names, raise_refusal=all_or_nothing))

    def plan_vms(self, vms: Sequence[Mapping[str, Any]], *, hold: float | None = None,
                 request_id: str | None = None) -> Unary[PlannedVms]:
        """Where ``vms`` (as :meth:`create_vms` takes them, each with its ``vm_id``)
        would be placed now, all together, as an all_or_nothing set is placed:
        returns a :class:`PlannedVms` (per VM its host, or which filters removed how
        many hosts; ``fits``; the project's ``quota_headroom`` after the set).

        ``hold`` (seconds, at most 600; None or 0: none): when the set fits, its room
        is reserved for that long under a lease and the answer names a ``plan`` (and
        its ``expire_time``): ``create_vms(the same vms, all_or_nothing=True,
        plan=...)`` is then guaranteed that room while the hold lasts, and no other
        placement takes it. Nothing is held when the set does not fit. An unused
        hold ends by itself.

        Retried on UNAVAILABLE either way: without ``hold`` it writes nothing, as a
        read; with one it carries ``request_id`` (generated when not given, resent by
        every attempt), so a retry of an attempt whose answer was lost returns the
        plan that attempt held (the same plan and expire_time), never a second hold.
        The same request_id with other VMs raises AlreadyExists with reason
        REQUEST_ID_REUSED while that hold lasts. ``request_id`` is ignored without
        ``hold``.

        Raises NotFound (no such project), AlreadyExists (a VM id is taken),
        InvalidArgument (a bad VM, naming it); TypeError / ValueError as
        :meth:`create_vms` with all_or_nothing, and ValueError for a VM without a
        vm_id or a negative ``hold``."""
        if hold is not None and hold < 0:
            raise ValueError(f"plan_vms: hold must be 0 or more seconds, not {hold}")
        requests = self._creates("plan_vms", vms, set_members=True)
        if missing := [i for i, r in enumerate(requests) if not r.vm_id]:
            raise ValueError(f"plan_vms: vms[{missing[0]}]: give a vm_id (a plan names its VMs)")
        request = vm_pb2.PlanVmsRequest(parent=self.parent, requests=requests,
                                        hold=_duration(hold) if hold else None,
                                        request_id=(request_id or uuid.uuid4().hex) if hold else "")
        return Unary(VMS, "PlanVms", request, timeout=self._long() if len(requests) > BIG_BATCH else None,
                     parse=PlannedVms.of)

    def _creates(self, call: str, vms: Sequence[Mapping[str, Any]], *,
                 set_members: bool) -> list[vm_pb2.CreateVmRequest]:
        """Each of ``vms`` built by :func:`create_vm_request` (parent left empty: the
        call's); ``set_members``: the VMs of an all-or-nothing set or a plan, which
        carry no request_id (ValueError for one given). Errors name the VM."""
        if not vms:
            raise ValueError(f"{call}: give at least one VM")
        requests = []
        for index, spec in enumerate(vms):
            fields = dict(spec)
            vm_id = str(fields.pop("vm_id", "") or "")
            where = f"vms[{index}] ({vm_id or 'no vm_id'})"
            unknown = sorted(set(fields) - CREATE_VM_FIELDS)
            if unknown:
                raise TypeError(f"{where}: unknown field(s) {', '.join(unknown)}; "
                                f"known: vm_id, {', '.join(sorted(CREATE_VM_FIELDS))}")
            if set_members and fields.get("request_id"):
                raise ValueError(f"{where}: request_id: the set's request_id covers its members; give none")
            try:
                one = create_vm_request("", vm_id, **fields)
            except (TypeError, ValueError) as err:
                raise type(err)(f"{where}: {err}") from None
            if set_members:
                one.request_id = ""
            requests.append(one)
        return requests

    def plan_name(self, plan: str) -> str:
        """``plan-1f..``, ``plans/plan-1f..`` (as ``-o name`` prints) → the plan's full
        name in this client's project; a full name is kept."""
        if plan.startswith("tenants/"):
            return plan
        return f"{self.parent}/plans/{plan.removeprefix('plans/')}"

    def vm_set_name(self, set_id: str) -> str:
        """``cp`` or ``vmSets/cp`` (as ``-o name`` prints) → the set's full name; a full name is kept."""
        if set_id.startswith("tenants/"):
            return set_id
        return f"{self.parent}/vmSets/{set_id.removeprefix('vmSets/')}"

    def get_vm_set(self, set_id: str) -> Unary[vm_pb2.VmSet]:
        """The VM set ``set_id`` (an id in this client's project, or a full name) made by
        :meth:`create_vms` with ``all_or_nothing``: its state (PENDING, PLACED,
        FAILED), members and condition Placed (the shortfall while PENDING). NotFound."""
        return Unary(VMS, "GetVmSet", vm_pb2.GetVmSetRequest(name=self.vm_set_name(set_id)))

    def start_vm(self, vm_id: str, *, etag: str = "") -> Unary[vm_pb2.Vm]:
        """Have the VM powered on (desired power POWERED_ON); returns it at once, its
        agent powers it on. Idempotent. ``etag``: only if the VM is still at it
        (Aborted ETAG_MISMATCH). FailedPrecondition VM_DELETING, NotFound."""
        return Unary(VMS, "StartVm", vm_pb2.StartVmRequest(name=self.vm_name(vm_id), etag=etag))

    def stop_vm(self, vm_id: str, *, mode: str = "soft", grace: float | None = None,
                etag: str = "") -> Unary[vm_pb2.Vm]:
        """Have the VM powered off (desired power POWERED_OFF); returns it at once.
        ``mode`` "soft": the guest is asked to shut down and powered off hard after
        ``grace`` seconds (None: the server's default, 60 s; at most an hour);
        "hard": at once. A stopped VM keeps its host and its quota. Idempotent.
        FailedPrecondition VM_PENDING (not placed yet) or VM_DELETING; Aborted for a
        stale ``etag``. ValueError for an unknown mode."""
        return Unary(VMS, "StopVm", vm_pb2.StopVmRequest(
            name=self.vm_name(vm_id), mode=power_off_mode(mode), grace=_duration(grace), etag=etag))

    def restart_vm(self, vm_id: str, *, mode: str = "soft", grace: float | None = None, etag: str = "",
                   request_id: str | None = None) -> Unary[vm_pb2.Vm]:
        """Restart the VM once (``mode`` and ``grace`` as :meth:`stop_vm`; "hard": a
        power cycle) and leave it powered on; returns it at once. Idempotent per
        ``request_id`` (generated per call if not given, resent by the channel's
        retries): a retry restarts it no more. FailedPrecondition VM_PENDING or
        VM_DELETING; Aborted for a stale ``etag``."""
        return Unary(VMS, "RestartVm", vm_pb2.RestartVmRequest(
            name=self.vm_name(vm_id), mode=power_off_mode(mode), grace=_duration(grace), etag=etag,
            request_id=request_id or uuid.uuid4().hex))

    def update_vm(self, vm_id: str, *, labels: Mapping[str, str] | None = None, flavor: str | None = None,
                  etag: str = "") -> Unary[vm_pb2.Vm]:
        """Change what is given (None: unchanged): ``labels`` replaces the whole
        label map ({} removes every label), ``flavor`` resizes the VM (charged
        against the project's quota and its host's room in one transaction:
        QuotaExceeded, FailedPrecondition HOST_FULL; InvalidArgument for an unknown
        flavor; the host's agent then reconfigures it, power-cycling it only where
        its driver must). ``etag``: only if the VM is still at it (Aborted
        ETAG_MISMATCH): give the etag of the VM the new labels were computed from,
        or another client's change made meanwhile is overwritten. Retried on
        UNAVAILABLE (the values are absolute; see :data:`RETRIED`). ValueError when
        nothing is given."""
        paths = [path for path, value in (("labels", labels), ("flavor", flavor)) if value is not None]
        if not paths:
            raise ValueError("update_vm: give labels, flavor or both")
        vm = vm_pb2.Vm(name=self.vm_name(vm_id), labels=dict(labels or {}), flavor=flavor or "", etag=etag)
        return Unary(VMS, "UpdateVm", vm_pb2.UpdateVmRequest(vm=vm, update_mask=field_mask_pb2.FieldMask(paths=paths)))

    def resize_vm(self, vm_id: str, flavor: str, *, etag: str = "") -> Unary[vm_pb2.Vm]:
        """:meth:`update_vm` of the flavor alone."""
        return self.update_vm(vm_id, flavor=flavor, etag=etag)

    def get_vm(self, vm_id: str) -> Unary[vm_pb2.Vm]:
        """The VM ``vm_id`` (an id in this client's project, or a full name). NotFound."""
        return Unary(VMS, "GetVm", vm_pb2.GetVmRequest(name=self.vm_name(vm_id)))

    def list_vms(self, *, label_selector: str = "", page_size: int = 500) -> Pages[vm_pb2.Vm]:
        """Every VM of the project, fetched page by page at one consistent revision."""
        return Pages(lambda token: Unary(VMS, "ListVms", vm_pb2.ListVmsRequest(
            parent=self.parent, page_size=page_size, page_token=token, label_selector=label_selector)), "vms")

    def delete_vm(self, vm_id: str, *, etag: str = "", delete_disks: bool = False) -> Unary[vm_pb2.Vm]:
        """Request deletion; returns the VM DELETING. Idempotent. Its persistent disks
        are detached and kept, or with ``delete_disks`` deleted with it."""
        return Unary(VMS, "DeleteVm", vm_pb2.DeleteVmRequest(name=self.vm_name(vm_id), etag=etag,
                                                             delete_disks=delete_disks))

    def attach_disk(self, vm_id: str, disk: str, *, etag: str = "") -> Unary[vm_pb2.Vm]:
        """Attach a persistent disk of the VM's project (id or name) to the VM; its host
        attaches it hot. Idempotent. FailedPrecondition (DISK_IN_USE, DISK_DELETING,
        DATASTORE_UNREACHABLE)."""
        return Unary(VMS, "AttachDisk", vm_pb2.AttachDiskRequest(name=self.vm_name(vm_id), disk=disk, etag=etag))

    def detach_disk(self, vm_id: str, disk: str, *, etag: str = "") -> Unary[vm_pb2.Vm]:
        """Detach a persistent disk from the VM (DETACHING until its host let go of it,
        then AVAILABLE). Idempotent. FailedPrecondition (DISK_NOT_ATTACHED)."""
        return Unary(VMS, "DetachDisk", vm_pb2.DetachDiskRequest(name=self.vm_name(vm_id), disk=disk, etag=etag))

    def watch_vms(self, *, resource_version: int = 0, label_selector: str = "",
                  timeout: float | None = None) -> Stream[vm_pb2.VmEvent]:
        """Stream VM events (from 0: current state first). Ends after ``timeout`` seconds if given.
        Received several to a message (WatchVmBatches; WatchVms from a frontend without it)."""
        older = vm_pb2.WatchVmsRequest(parent=self.parent, resource_version=resource_version,
                                       label_selector=label_selector)
        batched = vm_pb2.WatchVmBatchesRequest.FromString(older.SerializeToString())  # the same fields
        return Stream(VMS, "WatchVmBatches", batched, timeout, items="events",
                      older=Stream(VMS, "WatchVms", older, timeout))

    # Networks
    def network_name(self, network_id: str, *, shared: bool = False) -> str:
        """A network's name: a full name as it is; an id in this client's project, or
        with ``shared`` its tenant's shared one."""
        if network_id.startswith("tenants/"):
            return network_id
        return f"tenants/{self.tenant}/networks/{network_id}" if shared else f"{self.parent}/networks/{network_id}"

    def create_network(self, network_id: str, *, backing: str, cidr: str = "", gateway: str = "",
                       dns_servers: Sequence[str] = (), range_start: str = "", range_end: str = "",
                       labels: Mapping[str, str] | None = None, description: str = "", shared: bool = False,
                       request_id: str | None = None) -> Unary[network_pb2.Network]:
        """Create a network on the hosts' port group ``backing``; with ``cidr`` a subnet
        whose addresses Quanta hands out (STATIC_POOL NICs; the pool is
        ``range_start``..``range_end``, default every host address but the gateway).
        ``shared``: the tenant's, for all its projects (tenant admins). Idempotent per
        request_id. InvalidArgument, AlreadyExists."""
        subnet = (network_pb2.Subnet(cidr=cidr, gateway=gateway, dns_servers=list(dns_servers),
                                     range_start=range_start, range_end=range_end) if cidr else None)
        network = network_pb2.Network(backing=backing, labels=dict(labels or {}), description=description,
                                      subnet=subnet)
        parent = f"tenants/{self.tenant}" if shared else self.parent
        return Unary(NETWORKS, "CreateNetwork", network_pb2.CreateNetworkRequest(
            parent=parent, network_id=network_id, network=network, request_id=request_id or uuid.uuid4().hex))

    def get_network(self, network_id: str, *, shared: bool = False) -> Unary[network_pb2.Network]:
        """The network (id in this client's project, or ``shared``: the tenant's; or a full name). NotFound."""
        return Unary(NETWORKS, "GetNetwork", network_pb2.GetNetworkRequest(
            name=self.network_name(network_id, shared=shared)))

    def list_networks(self, *, label_selector: str = "", include_shared: bool = True,
                      shared: bool = False) -> Pages[network_pb2.Network]:
        """The project's networks and (``include_shared``) its tenant's shared ones; with
        ``shared``, the tenant's shared ones only."""
        parent = f"tenants/{self.tenant}" if shared else self.parent
        return Pages(lambda token: Unary(NETWORKS, "ListNetworks", network_pb2.ListNetworksRequest(
            parent=parent, page_size=500, page_token=token, label_selector=label_selector,
            include_shared=include_shared and not shared)), "networks")

    def update_network(self, network_id: str, *, labels: Mapping[str, str] | None = None,
                       description: str | None = None, dns_servers: Sequence[str] | None = None,
                       shared: bool = False, etag: str = "") -> Unary[network_pb2.Network]:
        """Change the given fields (labels replace all labels). Aborted on a stale etag."""
        paths = [p for p, v in (("labels", labels), ("description", description),
                                ("subnet.dns_servers", dns_servers)) if v is not None]
        if not paths:
            raise ValueError("nothing to update: give labels, description or dns_servers")
        network = network_pb2.Network(name=self.network_name(network_id, shared=shared), labels=dict(labels or {}),
                                      description=description or "", etag=etag)
        if dns_servers is not None:
            network.subnet.dns_servers.extend(dns_servers)
        return Unary(NETWORKS, "UpdateNetwork", network_pb2.UpdateNetworkRequest(
            network=network, update_mask=field_mask_pb2.FieldMask(paths=paths)))

    def delete_network(self, network_id: str, *, shared: bool = False, etag: str = "") -> Unary[network_pb2.Network]:
        """Delete a network no VM uses (FailedPrecondition NETWORK_IN_USE otherwise)."""
        return Unary(NETWORKS, "DeleteNetwork", network_pb2.DeleteNetworkRequest(
            name=self.network_name(network_id, shared=shared), etag=etag))

    def watch_networks(self, *, resource_version: int = 0, label_selector: str = "", shared: bool = False,
                       timeout: float | None = None) -> Stream[network_pb2.NetworkEvent]:
        """Stream the project's (``shared``: the tenant's) network events."""
        parent = f"tenants/{self.tenant}" if shared else self.parent
        return Stream(NETWORKS, "WatchNetworks", network_pb2.WatchNetworksRequest(
            parent=parent, resource_version=resource_version, label_selector=label_selector), timeout)

    # Persistent disks
    def disk_name(self, disk_id: str) -> str:
        return disk_id if disk_id.startswith("tenants/") else f"{self.parent}/disks/{disk_id}"

    def create_disk(self, disk_id: str, *, size_gib: int, datastore_class: str = "",
                    labels: Mapping[str, str] | None = None, description: str = "",
                    request_id: str | None = None) -> Unary[disk_pb2.Disk]:
        """Create a persistent disk (AVAILABLE) of ``size_gib`` on datastores of
        ``datastore_class`` (default "standard"), charged to the project's quota.
        Idempotent per request_id. QuotaExceeded, InvalidArgument, AlreadyExists."""
        disk = disk_pb2.Disk(size_gib=size_gib, datastore_class=datastore_class, labels=dict(labels or {}),
                             description=description)
        return Unary(DISKS, "CreateDisk", disk_pb2.CreateDiskRequest(
            parent=self.parent, disk_id=disk_id, disk=disk, request_id=request_id or uuid.uuid4().hex))

    def get_disk(self, disk_id: str) -> Unary[disk_pb2.Disk]:
        return Unary(DISKS, "GetDisk", disk_pb2.GetDiskRequest(name=self.disk_name(disk_id)))

    def list_disks(self, *, label_selector: str = "") -> Pages[disk_pb2.Disk]:
        return Pages(lambda token: Unary(DISKS, "ListDisks", disk_pb2.ListDisksRequest(
            parent=self.parent, page_size=500, page_token=token, label_selector=label_selector)), "disks")

    def update_disk(self, disk_id: str, *, labels: Mapping[str, str] | None = None, description: str | None = None,
                    etag: str = "") -> Unary[disk_pb2.Disk]:
        """Change labels (all of them) and/or the description. Aborted on a stale etag."""
        paths = [p for p, v in (("labels", labels), ("description", description)) if v is not None]
        if not paths:
            raise ValueError("nothing to update: give labels or description")
        disk = disk_pb2.Disk(name=self.disk_name(disk_id), labels=dict(labels or {}), description=description or "",
                             etag=etag)
        return Unary(DISKS, "UpdateDisk", disk_pb2.UpdateDiskRequest(
            disk=disk, update_mask=field_mask_pb2.FieldMask(paths=paths)))

    def delete_disk(self, disk_id: str, *, etag: str = "") -> Unary[disk_pb2.Disk]:
        """Delete a detached disk and its data (FailedPrecondition DISK_ATTACHED otherwise)."""
        return Unary(DISKS, "DeleteDisk", disk_pb2.DeleteDiskRequest(name=self.disk_name(disk_id), etag=etag))

    def watch_disks(self, *, resource_version: int = 0, label_selector: str = "",
                    timeout: float | None = None) -> Stream[disk_pb2.DiskEvent]:
        return Stream(DISKS, "WatchDisks", disk_pb2.WatchDisksRequest(
            parent=self.parent, resource_version=resource_version, label_selector=label_selector), timeout)

    # Hosts
    def list_hosts(self) -> Pages[host_pb2.Host]:
        """Every host; system admins."""
        return Pages(lambda token: Unary(HOSTS, "ListHosts", host_pb2.ListHostsRequest(
            page_size=1000, page_token=token)), "hosts")

    def get_host(self, host_id: str) -> Unary[host_pb2.Host]:
        """The host ``host_id`` ("h1" or "hosts/h1"); system admins. NotFound."""
        return Unary(HOSTS, "GetHost", host_pb2.GetHostRequest(name=named("hosts/", host_id)))

    def set_maintenance(self, host_id: str, maintenance: bool = True) -> Unary[host_pb2.Host]:
        """Take a host out of placement (or put it back); system admins. Idempotent."""
        return Unary(HOSTS, "SetMaintenance", host_pb2.SetMaintenanceRequest(
            name=named("hosts/", host_id), maintenance=maintenance))

    def delete_host(self, host_id: str) -> Unary[host_pb2.Host]:
        """Forget a decommissioned host (no heartbeat, no VMs); system admins. Returns
        it as it was. FailedPrecondition (HOST_ALIVE, HOST_NOT_EMPTY) otherwise."""
        return Unary(HOSTS, "DeleteHost", host_pb2.DeleteHostRequest(name=named("hosts/", host_id)))

    def watch_hosts(self, *, resource_version: int = 0, timeout: float | None = None) -> Stream[host_pb2.HostEvent]:
        """Stream host events (from 0: every host first); system admins. Ends after
        ``timeout`` seconds if given."""
        return Stream(HOSTS, "WatchHosts", host_pb2.WatchHostsRequest(resource_version=resource_version), timeout)

    def drain_host(self, host_id: str) -> Unary[host_pb2.Host]:
        return Unary(HOSTS, "DrainHost", host_pb2.DrainHostRequest(name=named("hosts/", host_id)))

    def list_orphans(self, host_id: str = "") -> Pages[host_pb2.OrphanVm]:
        """Quarantined VMs: on a host (``host_id``) or any, unknown to the store and
        without a tombstone; system admins."""
        host = named("hosts/", host_id) if host_id else ""
        return Pages(lambda token: Unary(HOSTS, "ListOrphans", host_pb2.ListOrphansRequest(
            host=host, page_size=1000, page_token=token)), "orphans")

    def adopt_orphan(self, host_id: str, uid: str) -> Unary[vm_pb2.Vm]:
        """Bring a quarantined VM back under its project, on the host it runs on; charges
        its quota (QuotaExceeded when it does not fit). System admins."""
        return Unary(HOSTS, "AdoptOrphan", host_pb2.AdoptOrphanRequest(
            name=f"{named('hosts/', host_id)}/orphans/{uid}"))

    def destroy_orphan(self, host_id: str, uid: str) -> Unary[host_pb2.OrphanVm]:
        """Have a quarantined VM destroyed by its host's agent. System admins."""
        return Unary(HOSTS, "DestroyOrphan", host_pb2.DestroyOrphanRequest(
            name=f"{named('hosts/', host_id)}/orphans/{uid}"))

    # Tenants, projects and quotas
    def create_tenant(self, tenant_id: str, *, display_name: str = "", labels: dict[str, str] | None = None,
                      quota: dict[str, int] | None = None,
                      network_backings: Sequence[str] = ()) -> Unary[tenancy_pb2.Tenant]:
        """Create a tenant (system admins); ``quota``: its ticket, e.g. {"vms": 100, "vcpus": 64};
        ``network_backings``: the port groups its networks may map to."""
        return Unary(TENANTS, "CreateTenant", tenancy_pb2.CreateTenantRequest(
            tenant_id=tenant_id, tenant=tenancy_pb2.Tenant(display_name=display_name, labels=labels or {},
                                                           network_backings=list(network_backings)),
            quota=tenancy_pb2.ResourceLimits(**(quota or {}))))

    def get_tenant(self, tenant_id: str) -> Unary[tenancy_pb2.Tenant]:
        return Unary(TENANTS, "GetTenant", tenancy_pb2.GetTenantRequest(name=f"tenants/{tenant_id}"))

    def list_tenants(self) -> Pages[tenancy_pb2.Tenant]:
        return Pages(lambda token: Unary(TENANTS, "ListTenants", tenancy_pb2.ListTenantsRequest(
            page_size=1000, page_token=token)), "tenants")

    def update_tenant(self, tenant_id: str, *, display_name: str | None = None,
                      labels: dict[str, str] | None = None, network_backings: Sequence[str] | None = None,
                      etag: str = "") -> Unary[tenancy_pb2.Tenant]:
        """Change the fields given (None: unchanged); ``etag`` guards against a lost update (Aborted).
        ``network_backings`` (system admins) replaces the tenant's grants: revoking one a
        network is on is FailedPrecondition BACKING_IN_USE."""
        tenant = tenancy_pb2.Tenant(name=f"tenants/{tenant_id}", display_name=display_name or "",
                                    labels=labels or {}, network_backings=list(network_backings or ()), etag=etag)
        paths = [p for p, v in (("display_name", display_name), ("labels", labels),
                                ("network_backings", network_backings)) if v is not None]
        return Unary(TENANTS, "UpdateTenant", tenancy_pb2.UpdateTenantRequest(
            tenant=tenant, update_mask=field_mask_pb2.FieldMask(paths=paths)))

    def delete_tenant(self, tenant_id: str, *, force: bool = False, etag: str = "") -> Unary[tenancy_pb2.Tenant]:
        """Delete a tenant; with ``force``, its projects and VMs first."""
        return Unary(TENANTS, "DeleteTenant", tenancy_pb2.DeleteTenantRequest(
            name=f"tenants/{tenant_id}", force=force, etag=etag), timeout=self._long())

    def create_project(self, project_id: str, *, tenant: str | None = None, display_name: str = "",
                       labels: dict[str, str] | None = None,
                       quota: dict[str, int] | None = None) -> Unary[tenancy_pb2.Project]:
        """Create a project in ``tenant`` (default: this client's) with limits ``quota``."""
        return Unary(PROJECTS, "CreateProject", tenancy_pb2.CreateProjectRequest(
            parent=f"tenants/{tenant or self.tenant}", project_id=project_id,
            project=tenancy_pb2.Project(display_name=display_name, labels=labels or {}),
            quota=tenancy_pb2.ResourceLimits(**(quota or {}))))

    def get_project(self, project_id: str, *, tenant: str | None = None) -> Unary[tenancy_pb2.Project]:
        return Unary(PROJECTS, "GetProject", tenancy_pb2.GetProjectRequest(
            name=f"tenants/{tenant or self.tenant}/projects/{project_id}"))

    def list_projects(self, *, tenant: str | None = None) -> Pages[tenancy_pb2.Project]:
        parent = f"tenants/{tenant or self.tenant}"
        return Pages(lambda token: Unary(PROJECTS, "ListProjects", tenancy_pb2.ListProjectsRequest(
            parent=parent, page_size=1000, page_token=token)), "projects")

    def delete_project(self, project_id: str, *, tenant: str | None = None, force: bool = False,
                       etag: str = "") -> Unary[tenancy_pb2.Project]:
        """Delete a project; refused (FailedPrecondition HAS_VMS) while it holds VMs,
        unless ``force``: then the project is first marked as being deleted (its
        ``delete_time``; creates in it fail with FailedPrecondition PROJECT_DELETING),
        its VMs are deleted, then it. A forced deletion cut short stays marked: call
        again to finish it."""
        return Unary(PROJECTS, "DeleteProject", tenancy_pb2.DeleteProjectRequest(
            name=f"tenants/{tenant or self.tenant}/projects/{project_id}", force=force, etag=etag),
            timeout=self._long())

    def get_quota(self, name: str) -> Unary[tenancy_pb2.Quota]:
        """``name``: "tenants/t/quota" or "tenants/t/projects/p/quota"."""
        return Unary(QUOTAS, "GetQuota", tenancy_pb2.GetQuotaRequest(name=name))

    def update_quota(self, name: str, limits: dict[str, int | None], *, etag: str = "") -> Unary[tenancy_pb2.Quota]:
        """Set the named limits (None: unlimited); other dimensions are unchanged."""
        quota = tenancy_pb2.Quota(name=name, etag=etag, limits=tenancy_pb2.ResourceLimits(
            **{k: v for k, v in limits.items() if v is not None}))
        return Unary(QUOTAS, "UpdateQuota", tenancy_pb2.UpdateQuotaRequest(
            quota=quota, update_mask=field_mask_pb2.FieldMask(paths=[f"limits.{k}" for k in limits])))

    def list_quotas(self, *, tenant: str | None = None) -> Pages[tenancy_pb2.Quota]:
        parent = f"tenants/{tenant or self.tenant}"
        return Pages(lambda token: Unary(QUOTAS, "ListQuotas", tenancy_pb2.ListQuotasRequest(
            parent=parent, page_size=1000, page_token=token)), "quotas")

    # Catalog
    def create_flavor(self, flavor_id: str, *, vcpus: int, memory_mib: int, disk_gib: int,
                      tenant: str = "") -> Unary[catalog_pb2.Flavor]:
        """A public flavor, or ``tenant``'s private one."""
        return Unary(FLAVORS, "CreateFlavor", catalog_pb2.CreateFlavorRequest(
            parent=f"tenants/{tenant}" if tenant else "", flavor_id=flavor_id, flavor=catalog_pb2.Flavor(
                resources=common_pb2.Resources(vcpus=vcpus, memory_mib=memory_mib, disk_gib=disk_gib))))

    def list_flavors(self, *, tenant: str | None = None) -> Pages[catalog_pb2.Flavor]:
        """The flavors ``tenant`` (default: this client's) may use."""
        parent = f"tenants/{tenant or self.tenant}"
        return Pages(lambda token: Unary(FLAVORS, "ListFlavors", catalog_pb2.ListFlavorsRequest(
            parent=parent, page_size=1000, page_token=token)), "flavors")

    def delete_flavor(self, name: str) -> Unary[catalog_pb2.Flavor]:
        return Unary(FLAVORS, "DeleteFlavor", catalog_pb2.DeleteFlavorRequest(name=name))

    def create_image(self, image_id: str, *, source: str, os_name: str = "",
                     size_gib: int = 0) -> Unary[catalog_pb2.Image]:
        return Unary(IMAGES, "CreateImage", catalog_pb2.CreateImageRequest(
            image_id=image_id, image=catalog_pb2.Image(source=source, os=os_name, size_gib=size_gib)))

    def list_images(self) -> Pages[catalog_pb2.Image]:
        return Pages(lambda token: Unary(IMAGES, "ListImages", catalog_pb2.ListImagesRequest(
            page_size=1000, page_token=token)), "images")

    def delete_image(self, image_id: str) -> Unary[catalog_pb2.Image]:
        return Unary(IMAGES, "DeleteImage", catalog_pb2.DeleteImageRequest(name=f"images/{image_id}"))

    # Tokens and audit
    def create_token(self, subject: str, grants: list[tuple[str, str, str]], *,
                     ttl_s: int = 24 * 3600) -> Unary[auth_pb2.CreateTokenResponse]:
        """Issue a token; ``grants``: (role, tenant, project) with role one of
        system-admin, tenant-admin, project-member, viewer. The bearer token is in
        ``.bearer_token`` of the response (shown only once)."""
        return Unary(TOKENS, "CreateToken", auth_pb2.CreateTokenRequest(
            subject=subject, ttl=duration_pb2.Duration(seconds=ttl_s),
            grants=[auth_pb2.Grant(role=ROLES[r], tenant=t, project=p) for r, t, p in grants]))

    def get_token(self, token_id: str) -> Unary[auth_pb2.Token]:
        return Unary(TOKENS, "GetToken", auth_pb2.GetTokenRequest(name=named("tokens/", token_id)))

    def revoke_token(self, token_id: str) -> Unary[auth_pb2.Token]:
        return Unary(TOKENS, "RevokeToken", auth_pb2.RevokeTokenRequest(name=named("tokens/", token_id)))

    def whoami(self) -> Unary[auth_pb2.Token]:
        """The caller: the token this client sends (its subject and grants)."""
        return Unary(TOKENS, "GetCaller", auth_pb2.GetCallerRequest())

    def list_audit(self, *, tenant: str = "") -> Pages[auth_pb2.AuditRecord]:
        """The audit log, oldest first: one tenant's, or (tenant "") everything."""
        parent = f"tenants/{tenant}" if tenant else ""
        return Pages(lambda token: Unary(AUDIT, "ListAuditRecords", auth_pb2.ListAuditRecordsRequest(
            parent=parent, page_size=1000, page_token=token)), "records")

    def watch_audit(self, *, tenant: str = "", resource_version: int = 0,
                    timeout: float | None = None) -> Stream[auth_pb2.AuditEvent]:
        """Stream audit records as they are written (from 0: the log so far first)."""
        return Stream(AUDIT, "WatchAuditRecords", auth_pb2.WatchAuditRecordsRequest(
            parent=f"tenants/{tenant}" if tenant else "", resource_version=resource_version), timeout)


class ClientBase:
    """What both clients share: the settings they were built from (argument >
    environment > context > ``quanta up``'s default, see :mod:`quanta.config`), the
    request builders, the bearer token metadata and the error mapping.

    ``tls_ca``: a PEM file to verify the server with (TLS); without one the channel
    is plaintext (the local default on loopback). ``own_connection``: do not share
    the TCP connection with other clients of this process (gRPC pools them per
    target), e.g. to spread load over frontends behind one address. ``context``: the
    config context to use instead of the current one. Raises ConfigError (a
    QuantaError) for an unknown context or an unreadable token file or CA."""

    def __init__(self, endpoint: str | None = None, *, token: str | None = None, tenant: str | None = None,
                 project: str | None = None, timeout: float = 10.0, tls_ca: str | None = None,
                 own_connection: bool = False, context: str | None = None) -> None:
        resolved = config.settings(endpoint=endpoint, token=token, tenant=tenant, project=project, tls_ca=tls_ca,
                                   context=context)
        self.settings = resolved
        self.endpoint = resolved.endpoint
        #: The config context this client's settings came from (None: none applied).
        self.context = resolved.context
        self._calls = Calls(resolved.tenant, resolved.project, timeout)
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {resolved.token}"),) if resolved.token else ())
        self._options = channel_options(own_connection=own_connection)
        self._credentials = _credentials(resolved.tls_ca)

    @property
    def tenant(self) -> str:
        return self._calls.tenant

    @tenant.setter
    def tenant(self, value: str) -> None:
        self._calls.tenant = value

    @property
    def project(self) -> str:
        return self._calls.project

    @project.setter
    def project(self, value: str) -> None:
        self._calls.project = value

    @property
    def timeout(self) -> float:
        return self._calls.timeout

    @property
    def parent(self) -> str:
        return self._calls.parent

    def vm_name(self, vm_id: str) -> str:
        return self._calls.vm_name(vm_id)

    def _error(self, err: grpc.RpcError) -> QuantaError:
        """The typed exception for a failed call, naming where it was sent."""
        return from_rpc_error(err, endpoint=self.endpoint, context=self.context)


def _credentials(tls_ca: str) -> grpc.ChannelCredentials | None:
    """TLS credentials that trust ``tls_ca`` (a PEM file), or None for plaintext."""
    if not tls_ca:
        return None
    try:
        pem = pathlib.Path(tls_ca).expanduser().read_bytes()
    except OSError as err:
        raise ConfigError(f"cannot read TLS CA {tls_ca}: {err.strerror}", "FILE_UNREADABLE") from None
    return grpc.ssl_channel_credentials(pem)
