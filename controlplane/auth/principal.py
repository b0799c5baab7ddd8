"""Principals, roles and grants: the caller as the API sees it after authentication."""

from __future__ import annotations

import contextvars
import enum
from dataclasses import dataclass


class Role(enum.Enum):
    """Values are the wire names used in tokens and records; see quanta.v1.Grant.Role."""

    SYSTEM_ADMIN = "system-admin"
    TENANT_ADMIN = "tenant-admin"
    PROJECT_MEMBER = "project-member"
    VIEWER = "viewer"


@dataclass(frozen=True, slots=True)
class Grant:
    """A role over a scope: everything (tenant and project empty), one tenant, or one
    project of a tenant. Which scopes a role accepts is checked by :func:`validate`."""

    role: Role
    tenant: str = ""
    project: str = ""

    def covers(self, tenant: str, project: str | None) -> bool:
        """True when this grant's scope includes ``tenant`` (and ``project``, when given;
        ``project=None`` asks about the tenant as a whole)."""
        if not self.tenant:
            return True
        if self.tenant != tenant:
            return False
        if not self.project:
            return True
        return project is not None and project == self.project

    def to_claim(self) -> dict[str, str]:
        claim = {"role": self.role.value}
        if self.tenant:
            claim["tenant"] = self.tenant
        if self.project:
            claim["project"] = self.project
        return claim

    @classmethod
    def from_claim(cls, claim: dict) -> Grant:
        return cls(Role(claim["role"]), claim.get("tenant", ""), claim.get("project", ""))

    def __str__(self) -> str:
        scope = "/".join(x for x in (self.tenant, self.project) if x) or "*"
        return f"{self.role.value}@{scope}"


def scope_error(grant: Grant) -> str | None:
    """Why ``grant`` is malformed, or None: system-admin is global; tenant-admin needs
    a tenant and no project; project-member a tenant and a project; viewer any scope
    (a project only with its tenant)."""
    if grant.project and not grant.tenant:
        return "a project scope needs its tenant"
    if grant.role is Role.SYSTEM_ADMIN and grant.tenant:
        return "system-admin is granted without tenant or project"
    if grant.role is Role.TENANT_ADMIN and (not grant.tenant or grant.project):
        return "tenant-admin is granted on a tenant (and no project)"
    if grant.role is Role.PROJECT_MEMBER and not (grant.tenant and grant.project):
        return "project-member is granted on a tenant and a project"
    return None


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: ``subject`` from its token, the token's id and grants."""

    subject: str
    grants: tuple[Grant, ...]
    token_id: str = ""
    expires_at: float = 0.0

    @property
    def is_system_admin(self) -> bool:
        return any(g.role is Role.SYSTEM_ADMIN for g in self.grants)

    @property
    def identity(self) -> str:
        """Who this is for rate limits: the subject within the scope of its grants, so a
        tenant admin minting a token for subject "admin" gets a bucket of its own."""
        scope = "*" if any(not g.tenant for g in self.grants) else ",".join(sorted({g.tenant for g in self.grants}))
        return f"{scope}|{self.subject}"


current = contextvars.ContextVar[Principal | None]("quanta_principal", default=None)
"""The caller of the RPC being handled (bound by the auth interceptor)."""
