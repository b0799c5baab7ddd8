"""Python SDK for Quanta's gRPC API (what the ``quanta`` CLI uses).

    from quanta import Client
    with Client() as quanta:                      # endpoint: arg, $QUANTA_ENDPOINT or `quanta up`'s
        vm = quanta.create_vm("web-1", flavor="small", image="ubuntu")
        vm = quanta.wait_for_vm("web-1", "RUNNING")

Returns quanta.v1 protobuf messages; raises ``controlplane.api.errors.ApiError``
(with ``code``, ``reason``, ``field_violations``) for every failed call.
Creates carry a request_id (generated if not given) and are retried on
UNAVAILABLE with the same request_id, so a retry never makes a second VM.
"""

from __future__ import annotations

import json
import os
import pathlib
import time
import uuid
from collections.abc import Callable, Iterator

import grpc
from google.protobuf import duration_pb2, field_mask_pb2

from controlplane.api.errors import ApiError
from controlplane.gen.quanta.v1 import (
    auth_pb2,
    auth_pb2_grpc,
    catalog_pb2,
    catalog_pb2_grpc,
    common_pb2,
    host_pb2,
    host_pb2_grpc,
    tenancy_pb2,
    tenancy_pb2_grpc,
    vm_pb2,
    vm_pb2_grpc,
)

DEFAULT_ENDPOINT = "127.0.0.1:7000"
ROLES = {"system-admin": auth_pb2.Grant.SYSTEM_ADMIN, "tenant-admin": auth_pb2.Grant.TENANT_ADMIN,
         "project-member": auth_pb2.Grant.PROJECT_MEMBER, "viewer": auth_pb2.Grant.VIEWER}


def local_state_path() -> pathlib.Path:
    """Where ``quanta up`` records its endpoint for the CLI and SDK."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return pathlib.Path(base) / "quanta" / "local.json"


def _local_state(key: str) -> str | None:
    try:
        return json.loads(local_state_path().read_text())[key]
    except (OSError, ValueError, KeyError):
        return None


def resolve_endpoint(endpoint: str | None = None) -> str:
    """``endpoint``, else $QUANTA_ENDPOINT, else the one `quanta up` recorded."""
    return endpoint or os.environ.get("QUANTA_ENDPOINT") or _local_state("endpoint") or DEFAULT_ENDPOINT


def resolve_token(token: str | None = None) -> str:
    """``token``, else $QUANTA_TOKEN, else the admin token `quanta up` recorded ("" if none)."""
    return token or os.environ.get("QUANTA_TOKEN") or _local_state("admin_token") or ""


class _Metadata(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Adds fixed metadata (the bearer token) to every call."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]):
        self._metadata = metadata

    def _details(self, details):
        return details._replace(metadata=(*(details.metadata or ()), *self._metadata))

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)


class Client:
    """A connection to Quanta's API as one caller (``token``) in one project (the
    default for VM calls; tenant and project methods name their resources).

    ``tls_ca``: a PEM file to verify the server with (TLS); without it the channel
    is plaintext (the local default on loopback). ``own_connection``: do not share
    the TCP connection with other clients of this process (gRPC pools them per
    target), e.g. to spread load over frontends behind one address."""

    def __init__(self, endpoint: str | None = None, *, token: str | None = None, tenant: str = "default",
                 project: str = "default", timeout: float = 10.0, tls_ca: str | None = None,
                 own_connection: bool = False):
        self.endpoint = resolve_endpoint(endpoint)
        self.tenant = tenant
        self.project = project
        self.timeout = timeout
        tls_ca = tls_ca or os.environ.get("QUANTA_TLS_CA")
        options = [("grpc.use_local_subchannel_pool", 1)] if own_connection else []
        if tls_ca:
            credentials = grpc.ssl_channel_credentials(pathlib.Path(tls_ca).read_bytes())
            self._raw_channel = grpc.secure_channel(self.endpoint, credentials, options=options)
        else:
            self._raw_channel = grpc.insecure_channel(self.endpoint, options=options)
        bearer = resolve_token(token)
        self._channel = (grpc.intercept_channel(self._raw_channel, _Metadata((("authorization", f"Bearer {bearer}"),)))
                         if bearer else self._raw_channel)
        self._vms = vm_pb2_grpc.VmServiceStub(self._channel)
        self._hosts = host_pb2_grpc.HostServiceStub(self._channel)
        self._tenants = tenancy_pb2_grpc.TenantServiceStub(self._channel)
        self._projects = tenancy_pb2_grpc.ProjectServiceStub(self._channel)
        self._quotas = tenancy_pb2_grpc.QuotaServiceStub(self._channel)
        self._flavors = catalog_pb2_grpc.FlavorServiceStub(self._channel)
        self._images = catalog_pb2_grpc.ImageServiceStub(self._channel)
        self._tokens = auth_pb2_grpc.TokenServiceStub(self._channel)
        self._audit = auth_pb2_grpc.AuditServiceStub(self._channel)

    def close(self) -> None:
        self._raw_channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def parent(self) -> str:
        return f"tenants/{self.tenant}/projects/{self.project}"

    def vm_name(self, vm_id: str) -> str:
        return vm_id if vm_id.startswith("tenants/") else f"{self.parent}/vms/{vm_id}"

    def _call(self, method, request, *, retries: int = 0, timeout: float | None = None):
        """One API call within ``timeout`` (default ``self.timeout``) in all, retrying
        UNAVAILABLE up to ``retries`` times (with backoff) while time is left. Raises
        ApiError."""
        deadline = time.monotonic() + (timeout or self.timeout)
        for attempt in range(retries + 1):
            try:
                return method(request, timeout=max(0.001, deadline - time.monotonic()))
            except grpc.RpcError as err:
                backoff = min(0.1 * 2 ** attempt, 2.0)
                if (err.code() == grpc.StatusCode.UNAVAILABLE and attempt < retries
                        and time.monotonic() + backoff < deadline):
                    time.sleep(backoff)
                    continue
                raise ApiError.from_rpc_error(err) from None

    # VMs
    def create_vm(self, vm_id: str = "", *, flavor: str, image: str, labels: dict[str, str] | None = None,
                  request_id: str | None = None, node_selector: dict[str, str] | None = None,
                  anti_affinity_group: str = "", restart_policy: str = "ALWAYS", anti_affinity_scope: str = "HOST",
                  affinity_group: str = "", affinity_scope: str = "HOST") -> vm_pb2.Vm:
        """Create a VM; returns it PENDING. ``vm_id`` "" lets the server assign one.
        Idempotent per request_id (one is generated, and reused by the retries here).
        ``node_selector``: host labels it needs; ``anti_affinity_group``: no two VMs
        of the group on one host; ``anti_affinity_scope`` "ZONE": nor two zone-scoped
        VMs of the group in one zone (host label topology.quanta.io/zone);
        ``affinity_group``: only on a host (``affinity_scope`` "HOST") or in a zone
        ("ZONE") that runs a VM of that group; ``restart_policy``: "ALWAYS" (placed
        again when its host is drained or dead) or "NEVER" (deleted then)."""
        request = vm_pb2.CreateVmRequest(
            parent=self.parent, vm_id=vm_id, request_id=request_id or uuid.uuid4().hex,
            vm=vm_pb2.Vm(flavor=flavor, image=image, labels=labels or {}, node_selector=node_selector or {},
                         anti_affinity_group=anti_affinity_group,
                         # Enum fields take their value names (ValueError on an unknown one).
                         restart_policy=restart_policy, anti_affinity_scope=anti_affinity_scope,
                         affinity_group=affinity_group, affinity_scope=affinity_scope),
        )
        return self._call(self._vms.CreateVm, request, retries=3)

    def get_vm(self, vm_id: str) -> vm_pb2.Vm:
        return self._call(self._vms.GetVm, vm_pb2.GetVmRequest(name=self.vm_name(vm_id)), retries=3)

    def list_vms(self, *, label_selector: str = "", page_size: int = 500) -> Iterator[vm_pb2.Vm]:
        """Every VM of the project, fetched page by page at one consistent revision."""
        token = ""
        while True:
            response = self._call(self._vms.ListVms, vm_pb2.ListVmsRequest(
                parent=self.parent, page_size=page_size, page_token=token, label_selector=label_selector),
                retries=3)
            yield from response.vms
            token = response.next_page_token
            if not token:
                return

    def delete_vm(self, vm_id: str, *, etag: str = "") -> vm_pb2.Vm:
        """Request deletion; returns the VM DELETING. Idempotent."""
        return self._call(self._vms.DeleteVm, vm_pb2.DeleteVmRequest(name=self.vm_name(vm_id), etag=etag),
                          retries=3)

    def watch_vms(self, *, resource_version: int = 0, label_selector: str = "",
                  timeout: float | None = None) -> Iterator[vm_pb2.VmEvent]:
        """Stream VM events (from 0: current state first). Ends after ``timeout`` seconds if given."""
        yield from _stream(self._vms.WatchVms(vm_pb2.WatchVmsRequest(
            parent=self.parent, resource_version=resource_version, label_selector=label_selector),
            timeout=timeout), timeout)

    def wait_for_vm(self, vm_id: str, state: str, *, timeout: float = 60.0) -> vm_pb2.Vm:
        """Block until the VM is in ``state`` (e.g. "RUNNING"), watching, not polling.
        Raises TimeoutError."""
        wanted = vm_pb2.Vm.State.Value(state)
        name = self.vm_name(vm_id)
        deadline = time.monotonic() + timeout
        for event in self.watch_vms(timeout=timeout):
            if event.vm.name == name and event.vm.state == wanted:
                return event.vm
            if time.monotonic() > deadline:
                break
        raise TimeoutError(f"{name} not {state} within {timeout}s")

    # Hosts
    def list_hosts(self) -> Iterator[host_pb2.Host]:
        token = ""
        while True:
            response = self._call(self._hosts.ListHosts, host_pb2.ListHostsRequest(page_size=1000,
                                                                                   page_token=token), retries=3)
            yield from response.hosts
            token = response.next_page_token
            if not token:
                return

    def get_host(self, host_id: str) -> host_pb2.Host:
        name = _named("hosts/", host_id)
        return self._call(self._hosts.GetHost, host_pb2.GetHostRequest(name=name), retries=3)

    def set_maintenance(self, host_id: str, maintenance: bool = True) -> host_pb2.Host:
        """Take a host out of placement (or put it back); system admins. Idempotent."""
        name = _named("hosts/", host_id)
        return self._call(self._hosts.SetMaintenance,
                          host_pb2.SetMaintenanceRequest(name=name, maintenance=maintenance), retries=3)

    def delete_host(self, host_id: str) -> host_pb2.Host:
        """Forget a decommissioned host (no heartbeat, no VMs); system admins. Returns
        it as it was. FAILED_PRECONDITION (HOST_ALIVE, HOST_NOT_EMPTY) otherwise."""
        return self._call(self._hosts.DeleteHost, host_pb2.DeleteHostRequest(name=_named("hosts/", host_id)))

    def watch_hosts(self, *, resource_version: int = 0, timeout: float | None = None) -> Iterator[host_pb2.HostEvent]:
        """Stream host events (from 0: every host first); system admins. Ends after
        ``timeout`` seconds if given."""
        yield from _stream(self._hosts.WatchHosts(host_pb2.WatchHostsRequest(resource_version=resource_version),
                                                  timeout=timeout), timeout)

    def drain_host(self, host_id: str, *, wait: bool = False, timeout_s: float = 300.0,
                   on_progress: Callable[[host_pb2.Host], None] | None = None) -> host_pb2.Host:
        """Have the host emptied: maintenance, then the scheduler moves its VMs off by
        restart policy (ALWAYS: placed again elsewhere; NEVER: deleted). Returns at
        once with the host (DRAINING, or DRAINED when empty); with ``wait``, as
        :meth:`wait_for_host_drained` does. Idempotent; ``set_maintenance(host,
        False)`` ends the drain."""
        name = _named("hosts/", host_id)
        host = self._call(self._hosts.DrainHost, host_pb2.DrainHostRequest(name=name), retries=3)
        return self.wait_for_host_drained(name, timeout_s=timeout_s, on_progress=on_progress) if wait else host

    def wait_for_host_drained(self, host_id: str, *, timeout_s: float = 300.0,
                              on_progress: Callable[[host_pb2.Host], None] | None = None) -> host_pb2.Host:
        """Block until the host holds no VMs, watching, not polling; returns it then
        (a host forgotten meanwhile was empty: its last known state, with no VMs).
        ``on_progress(host)`` is called when the host is first seen and whenever
        its VM count changes. Raises TimeoutError after ``timeout_s`` (the drain
        goes on), ApiError (NOT_FOUND) for an unknown host."""
        name = _named("hosts/", host_id)
        last = self.get_host(name)  # NOT_FOUND now rather than a silent timeout
        if on_progress is not None:
            on_progress(last)
        if last.vm_count == 0:
            return last
        deadline = time.monotonic() + timeout_s
        for event in self.watch_hosts(timeout=timeout_s):
            if event.host.name != name:
                continue
            if event.type == common_pb2.DELETED:
                last.vm_count = 0
                return last
            if event.host.vm_count != last.vm_count and on_progress is not None:
                on_progress(event.host)
            last = event.host
            if last.vm_count == 0:
                return last
            if time.monotonic() > deadline:
                break
        raise TimeoutError(f"{name} still holds {last.vm_count} VMs after {timeout_s:g} s; the drain goes on")

    def list_orphans(self, host_id: str = "") -> Iterator[host_pb2.OrphanVm]:
        """Quarantined VMs: on a host (``host_id``) or any, unknown to the store and
        without a tombstone; system admins."""
        host = _named("hosts/", host_id) if host_id else ""
        token = ""
        while True:
            response = self._call(self._hosts.ListOrphans, host_pb2.ListOrphansRequest(
                host=host, page_size=1000, page_token=token), retries=3)
            yield from response.orphans
            token = response.next_page_token
            if not token:
                return

    def adopt_orphan(self, host_id: str, uid: str) -> vm_pb2.Vm:
        """Bring a quarantined VM back under its project, on the host it runs on; charges
        its quota (RESOURCE_EXHAUSTED when it does not fit). System admins."""
        name = f"{_named('hosts/', host_id)}/orphans/{uid}"
        return self._call(self._hosts.AdoptOrphan, host_pb2.AdoptOrphanRequest(name=name))

    def destroy_orphan(self, host_id: str, uid: str) -> host_pb2.OrphanVm:
        """Have a quarantined VM destroyed by its host's agent. System admins."""
        name = f"{_named('hosts/', host_id)}/orphans/{uid}"
        return self._call(self._hosts.DestroyOrphan, host_pb2.DestroyOrphanRequest(name=name), retries=3)

    # Tenants, projects and quotas
    def create_tenant(self, tenant_id: str, *, display_name: str = "", labels: dict[str, str] | None = None,
                      quota: dict[str, int] | None = None) -> tenancy_pb2.Tenant:
        """Create a tenant (system admins); ``quota``: its ticket, e.g. {"vms": 100, "vcpus": 64}."""
        return self._call(self._tenants.CreateTenant, tenancy_pb2.CreateTenantRequest(
            tenant_id=tenant_id, tenant=tenancy_pb2.Tenant(display_name=display_name, labels=labels or {}),
            quota=tenancy_pb2.ResourceLimits(**(quota or {}))))

    def get_tenant(self, tenant_id: str) -> tenancy_pb2.Tenant:
        return self._call(self._tenants.GetTenant, tenancy_pb2.GetTenantRequest(name=f"tenants/{tenant_id}"),
                          retries=3)

    def list_tenants(self) -> list[tenancy_pb2.Tenant]:
        return _all(lambda token: self._call(self._tenants.ListTenants, tenancy_pb2.ListTenantsRequest(
            page_size=1000, page_token=token), retries=3), "tenants")

    def update_tenant(self, tenant_id: str, *, display_name: str | None = None,
                      labels: dict[str, str] | None = None, etag: str = "") -> tenancy_pb2.Tenant:
        tenant = tenancy_pb2.Tenant(name=f"tenants/{tenant_id}", display_name=display_name or "",
                                    labels=labels or {}, etag=etag)
        paths = [p for p, v in (("display_name", display_name), ("labels", labels)) if v is not None]
        return self._call(self._tenants.UpdateTenant, tenancy_pb2.UpdateTenantRequest(
            tenant=tenant, update_mask=field_mask_pb2.FieldMask(paths=paths)))

    def delete_tenant(self, tenant_id: str, *, force: bool = False, etag: str = "") -> tenancy_pb2.Tenant:
        return self._call(self._tenants.DeleteTenant, tenancy_pb2.DeleteTenantRequest(
            name=f"tenants/{tenant_id}", force=force, etag=etag), timeout=max(self.timeout, 120))

    def create_project(self, project_id: str, *, tenant: str | None = None, display_name: str = "",
                       labels: dict[str, str] | None = None,
                       quota: dict[str, int] | None = None) -> tenancy_pb2.Project:
        """Create a project in ``tenant`` (default: this client's) with limits ``quota``."""
        return self._call(self._projects.CreateProject, tenancy_pb2.CreateProjectRequest(
            parent=f"tenants/{tenant or self.tenant}", project_id=project_id,
            project=tenancy_pb2.Project(display_name=display_name, labels=labels or {}),
            quota=tenancy_pb2.ResourceLimits(**(quota or {}))))

    def get_project(self, project_id: str, *, tenant: str | None = None) -> tenancy_pb2.Project:
        return self._call(self._projects.GetProject, tenancy_pb2.GetProjectRequest(
            name=f"tenants/{tenant or self.tenant}/projects/{project_id}"), retries=3)

    def list_projects(self, *, tenant: str | None = None) -> list[tenancy_pb2.Project]:
        return _all(lambda token: self._call(self._projects.ListProjects, tenancy_pb2.ListProjectsRequest(
            parent=f"tenants/{tenant or self.tenant}", page_size=1000, page_token=token), retries=3), "projects")

    def delete_project(self, project_id: str, *, tenant: str | None = None, force: bool = False,
                       etag: str = "") -> tenancy_pb2.Project:
        """Delete a project; refused (FAILED_PRECONDITION HAS_VMS) while it holds VMs,
        unless ``force``: then the project is first marked as being deleted (its
        ``delete_time``; creates in it fail with FAILED_PRECONDITION PROJECT_DELETING),
        its VMs are deleted, then it. A forced deletion cut short stays marked: call
        again to finish it."""
        return self._call(self._projects.DeleteProject, tenancy_pb2.DeleteProjectRequest(
            name=f"tenants/{tenant or self.tenant}/projects/{project_id}", force=force, etag=etag),
            timeout=max(self.timeout, 120))

    def get_quota(self, name: str) -> tenancy_pb2.Quota:
        """``name``: "tenants/t/quota" or "tenants/t/projects/p/quota"."""
        return self._call(self._quotas.GetQuota, tenancy_pb2.GetQuotaRequest(name=name), retries=3)

    def update_quota(self, name: str, limits: dict[str, int | None], *, etag: str = "") -> tenancy_pb2.Quota:
        """Set the named limits (None: unlimited); other dimensions are unchanged."""
        quota = tenancy_pb2.Quota(name=name, etag=etag, limits=tenancy_pb2.ResourceLimits(
            **{k: v for k, v in limits.items() if v is not None}))
        return self._call(self._quotas.UpdateQuota, tenancy_pb2.UpdateQuotaRequest(
            quota=quota, update_mask=field_mask_pb2.FieldMask(paths=[f"limits.{k}" for k in limits])))

    def list_quotas(self, *, tenant: str | None = None) -> list[tenancy_pb2.Quota]:
        return _all(lambda token: self._call(self._quotas.ListQuotas, tenancy_pb2.ListQuotasRequest(
            parent=f"tenants/{tenant or self.tenant}", page_size=1000, page_token=token), retries=3), "quotas")

    # Catalog
    def create_flavor(self, flavor_id: str, *, vcpus: int, memory_mib: int, disk_gib: int,
                      tenant: str = "") -> catalog_pb2.Flavor:
        """A public flavor, or ``tenant``'s private one."""
        return self._call(self._flavors.CreateFlavor, catalog_pb2.CreateFlavorRequest(
            parent=f"tenants/{tenant}" if tenant else "", flavor_id=flavor_id, flavor=catalog_pb2.Flavor(
                resources=common_pb2.Resources(vcpus=vcpus, memory_mib=memory_mib, disk_gib=disk_gib))))

    def list_flavors(self, *, tenant: str | None = None) -> list[catalog_pb2.Flavor]:
        """The flavors ``tenant`` (default: this client's) may use."""
        return _all(lambda token: self._call(self._flavors.ListFlavors, catalog_pb2.ListFlavorsRequest(
            parent=f"tenants/{tenant or self.tenant}", page_size=1000, page_token=token), retries=3), "flavors")

    def delete_flavor(self, name: str) -> catalog_pb2.Flavor:
        return self._call(self._flavors.DeleteFlavor, catalog_pb2.DeleteFlavorRequest(name=name))

    def create_image(self, image_id: str, *, source: str, os_name: str = "", size_gib: int = 0) -> catalog_pb2.Image:
        return self._call(self._images.CreateImage, catalog_pb2.CreateImageRequest(
            image_id=image_id, image=catalog_pb2.Image(source=source, os=os_name, size_gib=size_gib)))

    def list_images(self) -> list[catalog_pb2.Image]:
        return _all(lambda token: self._call(self._images.ListImages, catalog_pb2.ListImagesRequest(
            page_size=1000, page_token=token), retries=3), "images")

    def delete_image(self, image_id: str) -> catalog_pb2.Image:
        return self._call(self._images.DeleteImage, catalog_pb2.DeleteImageRequest(name=f"images/{image_id}"))

    # Tokens and audit
    def create_token(self, subject: str, grants: list[tuple[str, str, str]], *,
                     ttl_s: int = 24 * 3600) -> auth_pb2.CreateTokenResponse:
        """Issue a token; ``grants``: (role, tenant, project) with role one of
        system-admin, tenant-admin, project-member, viewer. The bearer token is in
        ``.bearer_token`` of the response (shown only once)."""
        return self._call(self._tokens.CreateToken, auth_pb2.CreateTokenRequest(
            subject=subject, ttl=duration_pb2.Duration(seconds=ttl_s),
            grants=[auth_pb2.Grant(role=ROLES[r], tenant=t, project=p) for r, t, p in grants]))

    def get_token(self, token_id: str) -> auth_pb2.Token:
        name = _named("tokens/", token_id)
        return self._call(self._tokens.GetToken, auth_pb2.GetTokenRequest(name=name), retries=3)

    def revoke_token(self, token_id: str) -> auth_pb2.Token:
        name = _named("tokens/", token_id)
        return self._call(self._tokens.RevokeToken, auth_pb2.RevokeTokenRequest(name=name))

    def whoami(self) -> auth_pb2.Token:
        return self._call(self._tokens.GetCaller, auth_pb2.GetCallerRequest(), retries=3)

    def list_audit(self, *, tenant: str = "") -> list[auth_pb2.AuditRecord]:
        """The audit log, oldest first: one tenant's, or (tenant "") everything."""
        return _all(lambda token: self._call(self._audit.ListAuditRecords, auth_pb2.ListAuditRecordsRequest(
            parent=f"tenants/{tenant}" if tenant else "", page_size=1000, page_token=token), retries=3), "records")

    def watch_audit(self, *, tenant: str = "", resource_version: int = 0,
                    timeout: float | None = None) -> Iterator[auth_pb2.AuditEvent]:
        yield from _stream(self._audit.WatchAuditRecords(auth_pb2.WatchAuditRecordsRequest(
            parent=f"tenants/{tenant}" if tenant else "", resource_version=resource_version), timeout=timeout),
            timeout)

    def list_audit_for(self, resource: str, *, tenant: str = "", limit: int = 5) -> list[auth_pb2.AuditRecord]:
        """The last ``limit`` audit records about ``resource`` (its full name), oldest
        first, from ``tenant``'s log ("" for the whole log). The API has no filter by
        resource: this reads the log through, page by page. Raises ApiError
        (PERMISSION_DENIED or NOT_FOUND when the caller may not read that log)."""
        recent: list[auth_pb2.AuditRecord] = []
        for record in self.list_audit(tenant=tenant):
            if record.resource == resource:
                recent.append(record)
                del recent[:-limit]
        return recent


def _named(collection: str, id_or_name: str) -> str:
    """``"hosts/", "h1"`` → ``"hosts/h1"``; a full name is kept as it is."""
    return id_or_name if id_or_name.startswith(collection) else f"{collection}{id_or_name}"


def _stream(stream, timeout: float | None) -> Iterator:
    """The messages of a server stream; ends quietly when ``timeout`` (if given) runs
    out, raises ApiError for anything else, and cancels the call when abandoned."""
    try:
        yield from stream
    except grpc.RpcError as err:
        if err.code() == grpc.StatusCode.DEADLINE_EXCEEDED and timeout is not None:
            return
        raise ApiError.from_rpc_error(err) from None
    finally:
        stream.cancel()


def _all(fetch, field: str) -> list:
    items, token = [], ""
    while True:
        response = fetch(token)
        items.extend(getattr(response, field))
        token = response.next_page_token
        if not token:
            return items
