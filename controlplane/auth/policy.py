"""The authorisation policy, as pure functions of a principal and a scope.

Actions, from least to most privileged:

- READ: see a tenant's or project's resources. Any grant covering the scope; the
  tenant as a whole (its record, ticket and flavors) is readable with any grant in it.
- WRITE_VMS: create, update (relabel, resize), start, stop, restart and delete VMs
  in a project. tenant-admin of the tenant or project-member of the project.
- ADMIN: manage a tenant's projects, project quotas, private flavors, tokens and read
  its audit log. tenant-admin of the tenant.
- SYSTEM: tenants, tenant tickets, public flavors and images. system-admin only.
- SYSTEM_READ: hosts and the whole audit log. system-admin or a global viewer.

A caller that may not even READ a scope is answered as if it did not exist
(:attr:`Decision.HIDDEN` → NOT_FOUND), so names never leak across tenants; one that may
read but not act gets :attr:`Decision.DENIED` (PERMISSION_DENIED).
"""

from __future__ import annotations

import enum

from controlplane.auth.principal import Principal, Role


class Action(enum.Enum):
    READ = "read"
    WRITE_VMS = "write-vms"
    ADMIN = "admin"
    SYSTEM = "system"
    SYSTEM_READ = "system-read"


class Decision(enum.Enum):
    ALLOWED = "allowed"
    DENIED = "denied"
    HIDDEN = "hidden"


def can_read(principal: Principal, tenant: str, project: str | None = None) -> bool:
    """True when some grant covers ``project`` of ``tenant``; for the tenant as a whole
    (``project`` None), when some grant is in the tenant at all."""
    if project is None:
        return any(not g.tenant or g.tenant == tenant for g in principal.grants)
    return any(g.covers(tenant, project) for g in principal.grants)


def _holds(principal: Principal, role: Role, tenant: str, project: str | None) -> bool:
    return any(g.role is role and g.covers(tenant, project) for g in principal.grants)


def decide(principal: Principal, action: Action, tenant: str = "", project: str | None = None) -> Decision:
    """Whether ``principal`` may do ``action`` on the scope (``tenant`` empty: a global
    resource; ``project`` None: the tenant as a whole)."""
    if principal.is_system_admin:
        return Decision.ALLOWED
    if action is Action.SYSTEM_READ:
        global_viewer = any(g.role is Role.VIEWER and not g.tenant for g in principal.grants)
        return Decision.ALLOWED if global_viewer else Decision.DENIED
    if not tenant:  # global resources: readable by every caller, writable by system admins
        return Decision.ALLOWED if action is Action.READ else Decision.DENIED
    if not can_read(principal, tenant, project):
        return Decision.HIDDEN
    # Below, the caller knows the scope exists; refusals are PERMISSION_DENIED.
    if action is Action.READ:
        return Decision.ALLOWED
    if action is Action.WRITE_VMS:
        allowed = (_holds(principal, Role.TENANT_ADMIN, tenant, None)
                   or (project is not None and _holds(principal, Role.PROJECT_MEMBER, tenant, project)))
        return Decision.ALLOWED if allowed else Decision.DENIED
    if action is Action.ADMIN:
        return Decision.ALLOWED if _holds(principal, Role.TENANT_ADMIN, tenant, None) else Decision.DENIED
    return Decision.DENIED  # SYSTEM


def visible_tenants(principal: Principal) -> frozenset[str] | None:
    """The tenants a list may show, or None for all of them."""
    if any(not g.tenant for g in principal.grants):
        return None
    return frozenset(g.tenant for g in principal.grants)


def visible_projects(principal: Principal, tenant: str) -> frozenset[str] | None:
    """The projects of ``tenant`` a list may show, or None for all of them."""
    if any(g.covers(tenant, None) for g in principal.grants):
        return None
    return frozenset(g.project for g in principal.grants if g.tenant == tenant and g.project)


def may_grant(issuer: Principal, grant_tenant: str, grant_is_system: bool) -> bool:
    """Whether ``issuer`` may put a grant into a new token: system admins anything, a
    tenant admin only grants scoped to its own tenant (never a global one)."""
    if issuer.is_system_admin:
        return True
    if grant_is_system or not grant_tenant:
        return False
    return _holds(issuer, Role.TENANT_ADMIN, grant_tenant, None)
