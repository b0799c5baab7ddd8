"""quanta.v1.QuotaService: a tenant's resource ticket (set by system admins) and its
projects' limits (set by tenant admins, within the ticket), with live usage."""

from __future__ import annotations

from dataclasses import replace

from controlplane.api import errors, validation
from controlplane.api.access import caller, require
from controlplane.api.convert import limits_from_proto, project_quota_to_proto, tenant_quota_to_proto
from controlplane.api.paging import page
from controlplane.api.project_service import quota_invalid
from controlplane.auth.policy import Action, visible_projects
from controlplane.gen.quanta.v1 import tenancy_pb2, tenancy_pb2_grpc
from controlplane.store.errors import Conflict, NotFound
from controlplane.store.tenancy import QuotaInvalid, TenancyStore
from controlplane.tenancy import DIMENSIONS, Limits, Usage

_PATHS = ("limits", *(f"limits.{d}" for d in DIMENSIONS))


def _updated(old: Limits, new: Limits, paths: set[str]) -> Limits:
    if "limits" in paths:
        return new
    return replace(old, **{p.split(".", 1)[1]: getattr(new, p.split(".", 1)[1]) for p in paths})


class QuotaService(tenancy_pb2_grpc.QuotaServiceServicer):
    def __init__(self, tenancy: TenancyStore):
        self._tenancy = tenancy

    async def _tenant_usage(self, tenant: str) -> Usage:
        return sum((await self._tenancy.usages(tenant)).values(), Usage())

    async def _project_quota(self, tenant: str, project: str) -> tenancy_pb2.Quota:
        found, revision = await self._tenancy.get_project(tenant, project)
        return project_quota_to_proto(found, revision, await self._tenancy.usage(tenant, project))

    async def GetQuota(self, request: tenancy_pb2.GetQuotaRequest, context) -> tenancy_pb2.Quota:
        tenant, project = validation.parse_quota_name(request.name)
        require(Action.READ, tenant, project, kind="quota", name=request.name)
        try:
            if project is None:
                found, revision = await self._tenancy.get_tenant(tenant)
                return tenant_quota_to_proto(found, revision, await self._tenant_usage(tenant))
            return await self._project_quota(tenant, project)
        except NotFound as err:
            raise errors.not_found("quota", request.name) from err

    async def UpdateQuota(self, request: tenancy_pb2.UpdateQuotaRequest, context) -> tenancy_pb2.Quota:
        v = validation.Violations()
        names = v.capture(validation.parse_quota_name, request.quota.name, "quota.name")
        paths = v.capture(validation.mask_paths, list(request.update_mask.paths), _PATHS)
        v.capture(validation.validate_limits, request.quota.limits, "quota.limits")
        v.raise_if_any()
        tenant, project = v.valid(names)
        paths = v.valid(paths)
        new = limits_from_proto(request.quota.limits)
        etag = request.quota.etag
        try:
            if project is None:
                require(Action.SYSTEM, tenant, kind="quota", name=request.quota.name)
                found, _revision = await self._tenancy.get_tenant(tenant)
                updated, revision = await self._tenancy.set_ticket(tenant, _updated(found.quota, new, paths),
                                                                   etag=etag)
                return tenant_quota_to_proto(updated, revision, await self._tenant_usage(tenant))
            require(Action.ADMIN, tenant, project, kind="quota", name=request.quota.name)
            await self._tenancy.update_project(
                tenant, project, lambda p: p.with_(quota=_updated(p.quota, new, paths)), etag=etag)
            return await self._project_quota(tenant, project)
        except NotFound as err:
            raise errors.not_found("quota", request.quota.name) from err
        except QuotaInvalid as err:
            raise quota_invalid(err) from err
        except Conflict as err:
            raise errors.aborted(str(err), "ETAG_MISMATCH" if etag else "CONFLICT") from err

    async def ListQuotas(self, request: tenancy_pb2.ListQuotasRequest, context) -> tenancy_pb2.ListQuotasResponse:
        tenant = validation.parse_tenant_name(request.parent, "parent")
        visible = visible_projects(caller(), tenant)
        if visible is not None and not visible:
            raise errors.not_found("tenant", request.parent)
        projects, _revision = await self._tenancy.list_projects(tenant)
        usages = await self._tenancy.usages(tenant)
        shown = [(p, r) for p, r in projects if visible is None or p.project_id in visible]
        chosen, token = page(shown, lambda pr: pr[0].project_id, page_size=request.page_size,
                             page_token=request.page_token, scope=f"quotas|{request.parent}")
        return tenancy_pb2.ListQuotasResponse(
            quotas=[project_quota_to_proto(p, r, usages.get(p.project_id, Usage())) for p, r in chosen],
            next_page_token=token)
