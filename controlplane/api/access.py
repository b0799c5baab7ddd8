"""Authorisation checks for service methods: the policy (controlplane.auth.policy)
turned into API errors. A scope the caller may not even read is NOT_FOUND (no
existence leak); one it may read but not act on is PERMISSION_DENIED."""

from __future__ import annotations

import contextvars
from typing import Protocol

from controlplane import logcontext
from controlplane.api import errors
from controlplane.auth.policy import Action, Decision, decide
from controlplane.auth.principal import Principal, current

audit_scope: contextvars.ContextVar[dict | None] = contextvars.ContextVar("quanta_audit_scope", default=None)
"""Set (to an empty dict) by the audit interceptor around a mutation; :func:`require`
records in it the tenant and resource the caller was found allowed (or visibly
denied) to act on, so audit records are filed by what was authorised, never by a
name the request body merely claims."""


class AuditDraft(Protocol):
    """The success record of the mutation being handled, for a service to write in
    the mutation's own transaction (then the audit interceptor writes none)."""

    async def writes(self, resource: str = "") -> list:
        """The ops (puts) that file the record; [] if there is none to file.
        ``resource``: the record's resource, when the call makes several (CreateVms
        files one record per VM it creates, or one for its set); else as authorised."""

    def committed(self) -> None:
        """Tell the interceptor the writes were committed with the mutation."""

    def dry_run(self) -> None:
        """Tell the interceptor the call writes nothing, whatever its outcome, and files
        no record (validate_only: AIP-163, no side effects; like a read)."""


def audit_draft() -> AuditDraft | None:
    """The draft of the audited call being handled (None outside one)."""
    scope = audit_scope.get()
    return scope.get("draft") if scope is not None else None


def audit_note(note: str) -> None:
    """What the audited call being handled changed that its method and resource do not
    say (e.g. the backings an UpdateTenant granted), for its success record's message;
    the last note set wins. Never a secret. No-op outside an audited call."""
    scope = audit_scope.get()
    if scope is not None:
        scope["note"] = note


def caller() -> Principal:
    """The authenticated caller of the RPC being handled."""
    principal = current.get()
    if principal is None:  # only reachable if a service is mounted without AuthInterceptor
        raise errors.unauthenticated("no authenticated caller")
    return principal


def require(action: Action, tenant: str = "", project: str | None = None, *, kind: str, name: str) -> Principal:
    """The caller, if it may do ``action`` on the scope; else the ApiError to answer.
    ``kind``/``name`` describe the resource for NOT_FOUND (e.g. "project", its name)."""
    principal = caller()
    decision = decide(principal, action, tenant, project)
    if decision is Decision.HIDDEN:
        raise errors.not_found(kind, name)
    if tenant:
        logcontext.tenant.set(tenant)  # reset with the RPC's other context (AuthInterceptor)
        scope = audit_scope.get()
        if scope is not None:
            scope.update(tenant=tenant, resource=name)
    if decision is Decision.DENIED:
        raise errors.permission_denied(f"{principal.subject} may not {action.value.replace('-', ' ')} on {name}",
                                       "ROLE_NOT_GRANTED")
    return principal
