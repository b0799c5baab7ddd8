"""quanta.v1.TenantService: tenants (system admins create and delete them and grant
them network backings; tenant admins rename and label them; anyone granted a role in
a tenant sees it, its backings included)."""

from __future__ import annotations

from controlplane import backings
from controlplane.api import errors, validation
from controlplane.api.access import audit_note, caller, require
from controlplane.api.convert import limits_from_proto, tenant_to_proto
from controlplane.api.paging import page
from controlplane.api.project_service import delete_project, holds_disks, holds_vms
from controlplane.auth.policy import Action, visible_tenants
from controlplane.auth.revocations import RevocationList
from controlplane.gen.quanta.v1 import tenancy_pb2, tenancy_pb2_grpc
from controlplane.models import now_ns
from controlplane.store.errors import AlreadyExists, Conflict, NotFound
from controlplane.store.tenancy import BackingInUse, HoldsDisks, HoldsVms, TenancyStore
from controlplane.store.vms import VmStore
from controlplane.tenancy import Tenant

#: UpdateTenant's mask paths; network_backings only when named (system admins).
UPDATABLE = ("display_name", "labels", "network_backings")
_UNNAMED = ("display_name", "labels")  # what an empty mask means


def backing_in_use(err: BackingInUse) -> errors.ApiError:
    return errors.failed_precondition(str(err), "BACKING_IN_USE", metadata={
        "backings": ",".join(err.revoked), "networks": ",".join(err.networks[:BackingInUse.SHOWN]),
        "network_count": str(len(err.networks))})


def _grants_changed(before: tuple[str, ...], after: tuple[str, ...]) -> str:
    """The audit note of a change of grants ("" when none)."""
    granted, revoked = backings.revoked(after, before), backings.revoked(before, after)
    parts = ([f"granted backings {list(granted)}"] if granted else []) + (
        [f"revoked backings {list(revoked)}"] if revoked else [])
    return "; ".join(parts)


class TenantService(tenancy_pb2_grpc.TenantServiceServicer):
    def __init__(self, tenancy: TenancyStore, vms: VmStore, revocations: RevocationList):
        self._tenancy = tenancy
        self._vms = vms
        self._revocations = revocations

    async def CreateTenant(self, request: tenancy_pb2.CreateTenantRequest, context) -> tenancy_pb2.Tenant:
        v = validation.Violations()
        v.capture(validation.validate_resource_id, request.tenant_id, "tenant_id", "tenant id")
        v.capture(validation.validate_labels, request.tenant.labels, "tenant.labels")
        v.capture(validation.validate_limits, request.quota, "quota")
        grants = tuple(request.tenant.network_backings)
        for path, why in backings.grant_problems(grants, "tenant.network_backings"):
            v.add(path, why)
        v.raise_if_any()
        require(Action.SYSTEM, kind="tenant", name=f"tenants/{request.tenant_id}")
        now = now_ns()
        tenant = Tenant(request.tenant_id, request.tenant.display_name, dict(request.tenant.labels),
                        limits_from_proto(request.quota), create_time_ns=now, update_time_ns=now,
                        network_backings=grants)
        if grants:
            audit_note(_grants_changed((), grants))
        try:
            revision = await self._tenancy.create_tenant(tenant)
        except AlreadyExists as err:
            raise errors.already_exists("tenant", tenant.name) from err
        return tenant_to_proto(tenant, revision)

    async def GetTenant(self, request: tenancy_pb2.GetTenantRequest, context) -> tenancy_pb2.Tenant:
        tenant_id = validation.parse_tenant_name(request.name)
        require(Action.READ, tenant_id, kind="tenant", name=request.name)
        try:
            return tenant_to_proto(*await self._tenancy.get_tenant(tenant_id))
        except NotFound as err:
            raise errors.not_found("tenant", request.name) from err

    async def ListTenants(self, request: tenancy_pb2.ListTenantsRequest, context) -> tenancy_pb2.ListTenantsResponse:
        selector = validation.parse_label_selector(request.label_selector)
        visible = visible_tenants(caller())
        tenants, _revision = await self._tenancy.list_tenants()
        shown = [(t, r) for t, r in tenants if (visible is None or t.tenant_id in visible)
                 and (not selector or validation.matches(selector, t.labels))]
        chosen, token = page(shown, lambda tr: tr[0].tenant_id, page_size=request.page_size,
                             page_token=request.page_token,
                             scope=f"tenants|{validation.format_label_selector(selector)}")
        return tenancy_pb2.ListTenantsResponse(tenants=[tenant_to_proto(t, r) for t, r in chosen],
                                               next_page_token=token)

    async def UpdateTenant(self, request: tenancy_pb2.UpdateTenantRequest, context) -> tenancy_pb2.Tenant:
        v = validation.Violations()
        tenant_id = v.capture(validation.parse_tenant_name, request.tenant.name, "tenant.name")
        mask = list(request.update_mask.paths)
        paths = v.capture(validation.mask_paths, mask, UPDATABLE) if mask else set(_UNNAMED)
        v.capture(validation.validate_labels, request.tenant.labels, "tenant.labels")
        grants = tuple(request.tenant.network_backings)
        if paths and "network_backings" in paths:
            for path, why in backings.grant_problems(grants, "tenant.network_backings"):
                v.add(path, why)
        v.raise_if_any()
        tenant_id, paths = v.valid(tenant_id), v.valid(paths)
        # Backings are infrastructure: only system admins grant or revoke them.
        require(Action.SYSTEM if "network_backings" in paths else Action.ADMIN, tenant_id, kind="tenant",
                name=request.tenant.name)

        def change(tenant: Tenant) -> Tenant:
            updated = tenant.with_(
                display_name=request.tenant.display_name if "display_name" in paths else tenant.display_name,
                labels=dict(request.tenant.labels) if "labels" in paths else tenant.labels,
                network_backings=grants if "network_backings" in paths else tenant.network_backings)
            audit_note(_grants_changed(tenant.network_backings, updated.network_backings))
            return updated

        try:
            return tenant_to_proto(*await self._tenancy.update_tenant(tenant_id, change, etag=request.tenant.etag))
        except NotFound as err:
            raise errors.not_found("tenant", request.tenant.name) from err
        except BackingInUse as err:
            raise backing_in_use(err) from err
        except Conflict as err:
            raise errors.aborted(str(err), "ETAG_MISMATCH" if request.tenant.etag else "CONFLICT") from err

    async def DeleteTenant(self, request: tenancy_pb2.DeleteTenantRequest, context) -> tenancy_pb2.Tenant:
        tenant_id = validation.parse_tenant_name(request.name)
        require(Action.SYSTEM, tenant_id, kind="tenant", name=request.name)

        if not request.force:
            # Refuse before deleting anything (empty projects included).
            holding = {p: u.vms for p, u in (await self._tenancy.usages(tenant_id)).items() if u.vms > 0}
            if holding:
                raise holds_vms(HoldsVms(f"{request.name} (projects {', '.join(sorted(holding))})",
                                         sum(holding.values())))

        async def remove_project(project_id: str) -> None:
            await delete_project(self._tenancy, self._vms, tenant_id, project_id, force=request.force)

        try:
            tenant = await self._tenancy.delete_tenant(tenant_id, etag=request.etag, delete_project=remove_project)
        except NotFound as err:
            raise errors.not_found("tenant", request.name) from err
        except HoldsVms as err:
            raise holds_vms(err) from err
        except HoldsDisks as err:
            raise holds_disks(err) from err
        except Conflict as err:
            raise errors.aborted(str(err), "ETAG_MISMATCH" if request.etag else "CONFLICT") from err
        # Its tokens go with it: a tenant made again under this id starts with none.
        await self._revocations.revoke_tenant(tenant_id, revoked_by=caller().subject)
        return tenant_to_proto(tenant, 0)
