"""quanta.v1.ProjectService: a tenant's projects (tenant admins manage them; members
and viewers of a project see it)."""

from __future__ import annotations

import asyncio

from controlplane.api import errors, validation
from controlplane.api.access import caller, require
from controlplane.api.convert import limits_from_proto, project_to_proto
from controlplane.api.paging import page
from controlplane.auth.policy import Action, visible_projects
from controlplane.gen.quanta.v1 import tenancy_pb2, tenancy_pb2_grpc
from controlplane.models import now_ns
from controlplane.store.errors import AlreadyExists, Conflict, NotFound
from controlplane.store.tenancy import HoldsDisks, HoldsVms, QuotaInvalid, TenancyStore
from controlplane.store.vms import VmStore
from controlplane.tenancy import Project

_FORCE_ROUNDS = 5
_DELETE_CONCURRENCY = 32


def quota_invalid(err: QuotaInvalid) -> errors.ApiError:
    return errors.invalid_argument(err.violations, "QUOTA_INVALID")


def holds_vms(err: HoldsVms) -> errors.ApiError:
    return errors.failed_precondition(str(err), "HAS_VMS", metadata={"vms": str(err.vms)})


def holds_disks(err: HoldsDisks) -> errors.ApiError:
    return errors.failed_precondition(str(err), "HAS_DISKS", metadata={"disks": str(err.disks)})


async def delete_project(tenancy: TenancyStore, vms: VmStore, tenant: str, project: str, *, force: bool,
                         etag: str = "") -> Project:
    """Delete a project; with ``force``, first mark it as being deleted (it takes no
    new VMs from then on: creates fail with ProjectDeleting), then request deletion
    of its VMs (each releases its quota at once; agents destroy them). A forced
    deletion cut short (deadline, crash) leaves the project marked; deleting again
    finishes it. Raises HoldsVms (not force), NotFound, Conflict."""
    if force:
        await tenancy.mark_project_deleting(tenant, project, etag=etag)
        etag = ""  # the mark changed the record; the etag was checked against it
    semaphore = asyncio.Semaphore(_DELETE_CONCURRENCY)

    async def delete(record) -> None:
        async with semaphore:
            try:
                await vms.request_delete(record.ref)
            except NotFound:
                pass

    for _round in range(_FORCE_ROUNDS):
        try:
            return await tenancy.delete_project(tenant, project, etag=etag)
        except HoldsVms:
            if not force:
                raise

        after = None
        while True:
            records, after, _revision = await vms.list(tenant, project, page_size=1000, after=after)
            await asyncio.gather(*(delete(r) for r in records if not r.spec.deleting))
            if after is None:
                break
    # Not reached in practice: the mark stops creates, so one round deletes every VM.
    raise Conflict(f"the VMs of tenants/{tenant}/projects/{project} kept changing; retry")


class ProjectService(tenancy_pb2_grpc.ProjectServiceServicer):
    def __init__(self, tenancy: TenancyStore, vms: VmStore):
        self._tenancy = tenancy
        self._vms = vms

    async def CreateProject(self, request: tenancy_pb2.CreateProjectRequest, context) -> tenancy_pb2.Project:
        v = validation.Violations()
        tenant = v.capture(validation.parse_tenant_name, request.parent, "parent")
        v.capture(validation.validate_resource_id, request.project_id, "project_id", "project id")
        v.capture(validation.validate_labels, request.project.labels, "project.labels")
        v.capture(validation.validate_limits, request.quota, "quota")
        v.raise_if_any()
        tenant = v.valid(tenant)
        require(Action.ADMIN, tenant, kind="tenant", name=request.parent)
        now = now_ns()
        project = Project(tenant, request.project_id, request.project.display_name, dict(request.project.labels),
                          limits_from_proto(request.quota), now, now)
        try:
            revision = await self._tenancy.create_project(project)
        except NotFound as err:
            raise errors.not_found("tenant", request.parent) from err
        except AlreadyExists as err:
            raise errors.already_exists("project", project.name) from err
        except QuotaInvalid as err:
            raise quota_invalid(err) from err
        return project_to_proto(project, revision)

    async def GetProject(self, request: tenancy_pb2.GetProjectRequest, context) -> tenancy_pb2.Project:
        tenant, project_id = validation.parse_project_parent(request.name, "name")
        require(Action.READ, tenant, project_id, kind="project", name=request.name)
        try:
            return project_to_proto(*await self._tenancy.get_project(tenant, project_id))
        except NotFound as err:
            raise errors.not_found("project", request.name) from err

    async def ListProjects(self, request: tenancy_pb2.ListProjectsRequest, context) -> tenancy_pb2.ListProjectsResponse:
        v = validation.Violations()
        tenant = v.capture(validation.parse_tenant_name, request.parent, "parent")
        selector = v.capture(validation.parse_label_selector, request.label_selector)
        v.raise_if_any()
        tenant = v.valid(tenant)
        principal = caller()
        visible = visible_projects(principal, tenant)
        if visible is not None and not visible:
            raise errors.not_found("tenant", request.parent)
        projects, _revision = await self._tenancy.list_projects(tenant)
        shown = [(p, r) for p, r in projects if (visible is None or p.project_id in visible)
                 and (not selector or validation.matches(selector, p.labels))]
        scope = f"projects|{request.parent}|{validation.format_label_selector(selector or {})}"
        chosen, token = page(shown, lambda pr: pr[0].project_id, page_size=request.page_size,
                             page_token=request.page_token, scope=scope)
        return tenancy_pb2.ListProjectsResponse(projects=[project_to_proto(p, r) for p, r in chosen],
                                                next_page_token=token)

    async def UpdateProject(self, request: tenancy_pb2.UpdateProjectRequest, context) -> tenancy_pb2.Project:
        v = validation.Violations()
        names = v.capture(validation.parse_project_parent, request.project.name, "project.name")
        paths = v.capture(validation.mask_paths, list(request.update_mask.paths), ("display_name", "labels"))
        v.capture(validation.validate_labels, request.project.labels, "project.labels")
        v.raise_if_any()
        tenant, project_id = v.valid(names)
        paths = v.valid(paths)
        require(Action.ADMIN, tenant, project_id, kind="project", name=request.project.name)

        def change(project: Project) -> Project:
            return project.with_(
                display_name=request.project.display_name if "display_name" in paths else project.display_name,
                labels=dict(request.project.labels) if "labels" in paths else project.labels)

        try:
            return project_to_proto(*await self._tenancy.update_project(tenant, project_id, change,
                                                                        etag=request.project.etag))
        except NotFound as err:
            raise errors.not_found("project", request.project.name) from err
        except Conflict as err:
            raise errors.aborted(str(err), "ETAG_MISMATCH" if request.project.etag else "CONFLICT") from err

    async def DeleteProject(self, request: tenancy_pb2.DeleteProjectRequest, context) -> tenancy_pb2.Project:
        tenant, project_id = validation.parse_project_parent(request.name, "name")
        require(Action.ADMIN, tenant, project_id, kind="project", name=request.name)
        try:
            project = await delete_project(self._tenancy, self._vms, tenant, project_id, force=request.force,
                                           etag=request.etag)
        except NotFound as err:
            raise errors.not_found("project", request.name) from err
        except HoldsVms as err:
            raise holds_vms(err) from err
        except HoldsDisks as err:
            raise holds_disks(err) from err
        except Conflict as err:
            raise errors.aborted(str(err), "ETAG_MISMATCH" if request.etag else "CONFLICT") from err
        return project_to_proto(project, 0)


