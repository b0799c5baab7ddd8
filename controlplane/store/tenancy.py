"""Tenants and projects in etcd, with the quota invariants they carry.

- A tenant's ``allocated`` is the sum of its projects' limits; it changes in the
  transaction that changes a project's limits, compared on the tenant's revision, so
  two tenant admins raising two projects at once cannot over-allocate the ticket.
- Creating or deleting a project also rewrites its tenant record, so a tenant
  deletion that compares the tenant's revision cannot miss a project made meanwhile.
- A project's usage stripes (``usage/{t}/{p}/{n}``, see ledger.py) go with the project.
- A tenant's network backings (see controlplane/backings.py): a revoke compares, in its
  transaction, that no network of the tenant changed since it read them (none is on a
  revoked backing); a network's create compares the tenant's record as it read it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from controlplane import backings
from controlplane.etcd import EtcdClient, ops, prefix_end
from controlplane.models import now_ns
from controlplane.store.errors import AlreadyExists, Conflict, NotFound, StoreError
from controlplane.store.keys import Keys
from controlplane.store.networks import Network
from controlplane.tenancy import Limits, Project, Tenant, Usage, ticket_problems

_MAX_CAS_ATTEMPTS = 16

DEFAULT_TENANT = "default"
DEFAULT_PROJECT = "default"


class QuotaInvalid(StoreError):
    """A limit change would break the ticket invariant; ``violations`` are (field, why)."""

    def __init__(self, violations: list[tuple[str, str]]):
        super().__init__("; ".join(f"{f}: {why}" for f, why in violations))
        self.violations = violations


class HoldsDisks(StoreError):
    """A project still holds persistent disks (not being deleted): they would be left
    on their datastores with no project, so they are deleted first, explicitly (their
    data is destroyed), never by a project's deletion, not even a forced one."""

    def __init__(self, name: str, disks: int):
        super().__init__(f"{name} still holds {disks} persistent disk{'' if disks == 1 else 's'}; delete them "
                         "first (quanta disk delete)")
        self.disks = disks


class BackingInUse(StoreError):
    """A revoke of backings that networks of the tenant are on (``networks``: their
    names, all of them, sorted)."""

    SHOWN = 3  # how many networks the message names

    def __init__(self, tenant_id: str, revoked: tuple[str, ...], networks: list[str]):
        shown = ", ".join(networks[:self.SHOWN]) + (f" and {len(networks) - self.SHOWN} more"
                                                    if len(networks) > self.SHOWN else "")
        super().__init__(f"tenants/{tenant_id}: backing{'' if len(revoked) == 1 else 's'} "
                         f"{', '.join(repr(b) for b in revoked)} in use by network{'' if len(networks) == 1 else 's'} "
                         f"{shown}; delete them first")
        self.revoked = revoked
        self.networks = networks


class HoldsVms(StoreError):
    """A project (or a tenant's project) still holds VMs."""

    def __init__(self, name: str, vms: int):
        super().__init__(f"{name} still holds {vms} VM{'' if vms == 1 else 's'}; delete them first or delete "
                         "with force")
        self.vms = vms


def _etag(revision: int) -> str:
    return f"{revision:x}"


def _check_etag(etag: str, revision: int) -> None:
    if etag and etag != _etag(revision):
        raise Conflict(f"etag {etag} does not match {_etag(revision)}")


class TenancyStore:
    def __init__(self, client: EtcdClient, keys: Keys):
        self._etcd = client
        self._keys = keys

    # --- tenants -----------------------------------------------------------------------

    async def create_tenant(self, tenant: Tenant) -> int:
        """Store a new tenant; returns its revision. Raises AlreadyExists."""
        key = self._keys.tenant(tenant.tenant_id)
        result = await self._etcd.txn([ops.absent(key)], [ops.put(key, tenant.to_bytes())])
        if not result.succeeded:
            raise AlreadyExists(tenant.name)
        return result.revision

    async def get_tenant(self, tenant_id: str) -> tuple[Tenant, int]:
        """(tenant, mod revision); raises NotFound."""
        result = await self._etcd.range(self._keys.tenant(tenant_id))
        if not result.kvs:
            raise NotFound(f"tenants/{tenant_id}")
        return Tenant.from_bytes(result.kvs[0].value), result.kvs[0].mod_revision

    async def list_tenants(self) -> tuple[list[tuple[Tenant, int]], int]:
        kvs, revision = await self._etcd.range_prefix(self._keys.tenants_prefix())
        return [(Tenant.from_bytes(kv.value), kv.mod_revision) for kv in kvs], revision

    async def update_tenant(self, tenant_id: str, change: Callable[[Tenant], Tenant], *, etag: str = "") -> tuple[
            Tenant, int]:
        """Apply ``change`` to the tenant by compare-and-swap. ``change`` may raise to
        refuse (e.g. QuotaInvalid). A change that revokes network backings reads the
        tenant's networks and refuses (BackingInUse) while one is on a revoked backing;
        its txn compares that none of them changed since (a network made meanwhile
        makes it read again). Raises NotFound, Conflict (etag), BackingInUse."""
        key = self._keys.tenant(tenant_id)
        networks = self._keys.networks_prefix(tenant_id)
        for _attempt in range(_MAX_CAS_ATTEMPTS):
            tenant, revision = await self.get_tenant(tenant_id)
            _check_etag(etag, revision)
            updated = change(tenant).with_(update_time_ns=now_ns())
            compares = [ops.mod_revision_is(key, revision)]
            revoked = backings.revoked(tenant.network_backings, updated.network_backings)
            if revoked:
                kvs, read_at = await self._etcd.range_prefix(networks)
                on = backings.networks_on(revoked, ((n.name, n.backing) for n in map(Network.from_bytes,
                                                                                     (kv.value for kv in kvs))))
                if on:
                    raise BackingInUse(tenant_id, revoked, on)
                compares.append(ops.unchanged_since(networks, prefix_end(networks), read_at))
            result = await self._etcd.txn(compares, [ops.put(key, updated.to_bytes())])
            if result.succeeded:
                return updated, result.revision
        raise Conflict(f"tenants/{tenant_id} kept changing; retry")

    async def set_ticket(self, tenant_id: str, limits: Limits, *, etag: str = "") -> tuple[Tenant, int]:
        """Set a tenant's quota ticket; refuses (QuotaInvalid) a ticket below what its
        projects are allocated, or one that limits a dimension some project leaves
        unlimited. The tenant and its projects are read in one snapshot and the write
        compares the tenant's revision (which every project creation changes)."""
        k = self._keys
        key = k.tenant(tenant_id)
        projects_prefix = k.projects_prefix(tenant_id)
        for _attempt in range(_MAX_CAS_ATTEMPTS):
            snapshot = await self._etcd.txn([], [ops.get(key), ops.get(projects_prefix, prefix_end(projects_prefix))])
            tenant_kvs, project_kvs = snapshot.kvs(0), snapshot.kvs(1)
            if not tenant_kvs:
                raise NotFound(f"tenants/{tenant_id}")
            revision = tenant_kvs[0].mod_revision
            _check_etag(etag, revision)
            tenant = Tenant.from_bytes(tenant_kvs[0].value)
            projects = [Project.from_bytes(kv.value) for kv in project_kvs]
            problems = []
            for d in limits.limited():
                cap = getattr(limits, d)
                held = getattr(tenant.allocated, d)
                if held > cap:
                    problems.append((f"limits.{d}", f"{cap} is below what its projects are allocated ({held})"))
                unlimited = [p.project_id for p in projects if getattr(p.quota, d) is None]
                if unlimited:
                    problems.append((f"limits.{d}", f"projects {', '.join(sorted(unlimited))} are unlimited in {d}; "
                                                    "limit them first"))
            if problems:
                raise QuotaInvalid(problems)
            updated = tenant.with_(quota=limits, update_time_ns=now_ns())
            result = await self._etcd.txn([ops.mod_revision_is(key, revision)], [ops.put(key, updated.to_bytes())])
            if result.succeeded:
                return updated, result.revision
        raise Conflict(f"tenants/{tenant_id} kept changing; retry")

    async def delete_tenant(self, tenant_id: str, *, etag: str = "",
                            delete_project: Callable[[str], Awaitable[object]]) -> Tenant:
        """Delete a tenant whose projects are all gone; ``delete_project(project_id)``
        (awaitable) is called for each remaining project first (it raises HoldsVms
        to refuse). Raises NotFound, Conflict."""
        k = self._keys
        for _attempt in range(_MAX_CAS_ATTEMPTS):
            tenant, revision = await self.get_tenant(tenant_id)
            _check_etag(etag, revision)
            projects, _rev = await self.list_projects(tenant_id)
            if projects:
                for project, _prev in projects:
                    try:
                        await delete_project(project.project_id)
                    except NotFound:
                        pass
                etag = ""  # deleting projects rewrote the tenant record
                continue
            result = await self._etcd.txn(
                [ops.mod_revision_is(k.tenant(tenant_id), revision)],
                [ops.delete(k.tenant(tenant_id)),
                 ops.delete(k.projects_prefix(tenant_id), prefix_end(k.projects_prefix(tenant_id))),
                 ops.delete(k.usage_prefix(tenant_id), prefix_end(k.usage_prefix(tenant_id))),
                 ops.delete(k.tenant_flavors_prefix(tenant_id), prefix_end(k.tenant_flavors_prefix(tenant_id))),
                 # Its networks, shared or not (their VMs are gone or going: a VM's NIC
                 # holds a copy, and its removal releases its port and address by uid).
                 ops.delete(k.networks_prefix(tenant_id), prefix_end(k.networks_prefix(tenant_id)))],
            )
            if result.succeeded:
                return tenant
        raise Conflict(f"tenants/{tenant_id} kept changing; retry")

    # --- projects ----------------------------------------------------------------------

    async def create_project(self, project: Project) -> int:
        """Store a new project (its usage starts at zero: no stripes), taking its limits
        from the tenant's ticket. Raises NotFound (tenant), AlreadyExists, QuotaInvalid."""
        k = self._keys
        key = k.project(project.tenant_id, project.project_id)
        for _attempt in range(_MAX_CAS_ATTEMPTS):
            tenant, revision = await self.get_tenant(project.tenant_id)
            problems = ticket_problems(tenant.quota, tenant.allocated, Limits(), project.quota)
            if problems:
                raise QuotaInvalid(problems)
            updated = tenant.with_(allocated=tenant.allocated + project.quota.as_usage())
            result = await self._etcd.txn(
                [ops.mod_revision_is(k.tenant(project.tenant_id), revision), ops.absent(key)],
                [ops.put(key, project.to_bytes()), ops.put(k.tenant(project.tenant_id), updated.to_bytes())],
                [ops.get(key)],
            )
            if result.succeeded:
                return result.revision
            if result.kvs(0):
                raise AlreadyExists(project.name)
        raise Conflict(f"tenants/{project.tenant_id} kept changing; retry")

    async def get_project(self, tenant_id: str, project_id: str) -> tuple[Project, int]:
        result = await self._etcd.range(self._keys.project(tenant_id, project_id))
        if not result.kvs:
            raise NotFound(f"tenants/{tenant_id}/projects/{project_id}")
        return Project.from_bytes(result.kvs[0].value), result.kvs[0].mod_revision

    async def list_projects(self, tenant_id: str) -> tuple[list[tuple[Project, int]], int]:
        kvs, revision = await self._etcd.range_prefix(self._keys.projects_prefix(tenant_id))
        return [(Project.from_bytes(kv.value), kv.mod_revision) for kv in kvs], revision

    async def usage(self, tenant_id: str, project_id: str) -> Usage:
        """A project's usage: the sum of its stripes (zero if it never held a VM)."""
        kvs, _revision = await self._etcd.range_prefix(self._keys.usage_prefix(tenant_id, project_id))
        return sum((Usage.from_bytes(kv.value) for kv in kvs), Usage())

    async def usages(self, tenant_id: str) -> dict[str, Usage]:
        """Each project's usage (the sum of its stripes), by project id; projects that
        never held a VM are absent."""
        prefix = self._keys.usage_prefix(tenant_id)
        kvs, _revision = await self._etcd.range_prefix(prefix)
        found: dict[str, Usage] = {}
        for kv in kvs:
            project = kv.key[len(prefix):].decode().split("/", 1)[0]
            found[project] = found.get(project, Usage()) + Usage.from_bytes(kv.value)
        return found

    async def update_project(self, tenant_id: str, project_id: str, change: Callable[[Project], Project], *,
                             etag: str = "") -> tuple[Project, int]:
        """Apply ``change`` (display name, labels, limits) by compare-and-swap on the
        project and, when limits change, its tenant. Raises NotFound, Conflict,
        QuotaInvalid."""
        k = self._keys
        key = k.project(tenant_id, project_id)
        for _attempt in range(_MAX_CAS_ATTEMPTS):
            project, revision = await self.get_project(tenant_id, project_id)
            _check_etag(etag, revision)
            updated = change(project).with_(update_time_ns=now_ns())
            compares = [ops.mod_revision_is(key, revision)]
            writes = [ops.put(key, updated.to_bytes())]
            if updated.quota != project.quota:
                tenant, tenant_revision = await self.get_tenant(tenant_id)
                problems = ticket_problems(tenant.quota, tenant.allocated, project.quota, updated.quota)
                if problems:
                    raise QuotaInvalid(problems)
                allocated = tenant.allocated - project.quota.as_usage() + updated.quota.as_usage()
                compares.append(ops.mod_revision_is(k.tenant(tenant_id), tenant_revision))
                writes.append(ops.put(k.tenant(tenant_id), tenant.with_(allocated=allocated).to_bytes()))
            result = await self._etcd.txn(compares, writes)
            if result.succeeded:
                return updated, result.revision
        raise Conflict(f"tenants/{tenant_id}/projects/{project_id} kept changing; retry")

    async def mark_project_deleting(self, tenant_id: str, project_id: str, *, etag: str = "") -> Project:
        """Mark a project as being deleted (idempotent: a project marked already is
        returned as it is). From the mark's commit on, the quota ledger refuses to
        grow it (ProjectDeleting): it takes no new VMs, so its VMs can all be
        deleted and then the project (:meth:`delete_project`). Nothing unmarks it;
        a deletion cut short is finished by deleting again. Raises NotFound,
        Conflict (etag, or the record kept changing)."""
        key = self._keys.project(tenant_id, project_id)
        for _attempt in range(_MAX_CAS_ATTEMPTS):
            project, revision = await self.get_project(tenant_id, project_id)
            _check_etag(etag, revision)
            if project.deleting:
                return project
            marked = project.with_(delete_time_ns=now_ns())
            result = await self._etcd.txn([ops.mod_revision_is(key, revision)], [ops.put(key, marked.to_bytes())])
            if result.succeeded:
                return marked
        raise Conflict(f"tenants/{tenant_id}/projects/{project_id} kept changing; retry")

    async def delete_project(self, tenant_id: str, project_id: str, *, etag: str = "") -> Project:
        """Delete a project that holds no VMs and no persistent disks (its usage shows
        none: VMs and disks being deleted have released theirs), returning its limits to
        the tenant's ticket. Raises NotFound, Conflict, HoldsVms, HoldsDisks."""
        k = self._keys
        key, usage = k.project(tenant_id, project_id), k.usage_prefix(tenant_id, project_id)
        for _attempt in range(_MAX_CAS_ATTEMPTS):
            result = await self._etcd.txn([], [ops.get(key), ops.get(usage, prefix_end(usage)),
                                               ops.get(k.tenant(tenant_id))])
            project_kvs, usage_kvs, tenant_kvs = result.kvs(0), result.kvs(1), result.kvs(2)
            if not project_kvs:
                raise NotFound(f"tenants/{tenant_id}/projects/{project_id}")
            _check_etag(etag, project_kvs[0].mod_revision)
            used = sum((Usage.from_bytes(kv.value) for kv in usage_kvs), Usage())
            if used.vms > 0:
                raise HoldsVms(f"tenants/{tenant_id}/projects/{project_id}", used.vms)
            if used.data_disks > 0:  # DELETING disks released theirs: agents collect them whatever the project
                raise HoldsDisks(f"tenants/{tenant_id}/projects/{project_id}", used.data_disks)
            project = Project.from_bytes(project_kvs[0].value)
            # No VM may be charged between this read and the delete (every charge writes a stripe).
            compares = [ops.mod_revision_is(key, project_kvs[0].mod_revision),
                        ops.unchanged_since(usage, prefix_end(usage), result.revision)]
            networks = k.networks_prefix(tenant_id, project_id)
            writes = [ops.delete(key), ops.delete(usage, prefix_end(usage)),
                      ops.delete(*_prefix_range(k.request(tenant_id, project_id, "x"))),
                      ops.delete(networks, prefix_end(networks))]  # its networks go with it
            if tenant_kvs:
                tenant = Tenant.from_bytes(tenant_kvs[0].value)
                compares.append(ops.mod_revision_is(k.tenant(tenant_id), tenant_kvs[0].mod_revision))
                writes.append(ops.put(k.tenant(tenant_id), tenant.with_(
                    allocated=tenant.allocated - project.quota.as_usage()).to_bytes()))
            result = await self._etcd.txn(compares, writes)
            if result.succeeded:
                return project
        raise Conflict(f"tenants/{tenant_id}/projects/{project_id} kept changing; retry")


def _prefix_range(request_key: bytes) -> tuple[bytes, bytes]:
    prefix = request_key.rsplit(b"/", 1)[0] + b"/"
    return prefix, prefix_end(prefix)


async def ensure_project(client: EtcdClient, keys: Keys, tenant_id: str = DEFAULT_TENANT,
                         project_id: str = DEFAULT_PROJECT) -> None:
    """Make the tenant and project (unlimited) if absent. Idempotent, safe to run from
    several processes at once; used to seed ``default/default`` and by tests."""
    store = TenancyStore(client, keys)
    now = now_ns()
    try:
        await store.create_tenant(Tenant(tenant_id, create_time_ns=now, update_time_ns=now))
    except AlreadyExists:
        pass
    try:
        await store.create_project(Project(tenant_id, project_id, create_time_ns=now, update_time_ns=now))
    except AlreadyExists:
        pass
