"""The authorisation policy as a table: every role over every action and scope, what
lists may show, who may grant what, grant scopes; and Hypothesis properties that
no grant in one tenant reveals or touches another, and that system actions need a
global grant."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.auth.policy import Action, Decision, can_read, decide, may_grant, visible_projects, visible_tenants
from controlplane.auth.principal import Grant, Principal, Role, scope_error

A, B = "acme", "globex"  # our tenant, another tenant
P, Q = "web", "db"  # our project, another project of our tenant

ALLOWED, DENIED, HIDDEN = Decision.ALLOWED, Decision.DENIED, Decision.HIDDEN
READ, WRITE, ADMIN, SYSTEM, SYSTEM_READ = (Action.READ, Action.WRITE_VMS, Action.ADMIN, Action.SYSTEM,
                                           Action.SYSTEM_READ)
ACTIONS = (READ, WRITE, ADMIN, SYSTEM, SYSTEM_READ)

# Scopes, as (tenant, project) arguments of decide.
SCOPES = {
    "global": ("", None),
    "own-tenant": (A, None),
    "own-project": (A, P),
    "other-project": (A, Q),
    "other-tenant": (B, None),
    "other-tenant-project": (B, P),  # same project id, another tenant
}

GRANTS = {
    "system-admin": Grant(Role.SYSTEM_ADMIN),
    "tenant-admin": Grant(Role.TENANT_ADMIN, A),
    "project-member": Grant(Role.PROJECT_MEMBER, A, P),
    "global-viewer": Grant(Role.VIEWER),
    "tenant-viewer": Grant(Role.VIEWER, A),
    "project-viewer": Grant(Role.VIEWER, A, P),
}


def _row(read, write, admin, system, system_read):
    return dict(zip(ACTIONS, (read, write, admin, system, system_read), strict=True))


# EXPECTED[grant][scope] = {action: decision}
EXPECTED: dict[str, dict[str, dict[Action, Decision]]] = {
    "system-admin": {scope: _row(ALLOWED, ALLOWED, ALLOWED, ALLOWED, ALLOWED) for scope in SCOPES},
    "tenant-admin": {
        "global": _row(ALLOWED, DENIED, DENIED, DENIED, DENIED),
        "own-tenant": _row(ALLOWED, ALLOWED, ALLOWED, DENIED, DENIED),
        "own-project": _row(ALLOWED, ALLOWED, ALLOWED, DENIED, DENIED),
        "other-project": _row(ALLOWED, ALLOWED, ALLOWED, DENIED, DENIED),
        "other-tenant": _row(HIDDEN, HIDDEN, HIDDEN, HIDDEN, DENIED),
        "other-tenant-project": _row(HIDDEN, HIDDEN, HIDDEN, HIDDEN, DENIED),
    },
    "project-member": {
        "global": _row(ALLOWED, DENIED, DENIED, DENIED, DENIED),
        # The tenant as a whole is readable with any grant in it; VMs are written per project.
        "own-tenant": _row(ALLOWED, DENIED, DENIED, DENIED, DENIED),
        "own-project": _row(ALLOWED, ALLOWED, DENIED, DENIED, DENIED),
        "other-project": _row(HIDDEN, HIDDEN, HIDDEN, HIDDEN, DENIED),
        "other-tenant": _row(HIDDEN, HIDDEN, HIDDEN, HIDDEN, DENIED),
        "other-tenant-project": _row(HIDDEN, HIDDEN, HIDDEN, HIDDEN, DENIED),
    },
    "global-viewer": {scope: _row(ALLOWED, DENIED, DENIED, DENIED, ALLOWED) for scope in SCOPES},
    "tenant-viewer": {
        "global": _row(ALLOWED, DENIED, DENIED, DENIED, DENIED),
        "own-tenant": _row(ALLOWED, DENIED, DENIED, DENIED, DENIED),
        "own-project": _row(ALLOWED, DENIED, DENIED, DENIED, DENIED),
        "other-project": _row(ALLOWED, DENIED, DENIED, DENIED, DENIED),
        "other-tenant": _row(HIDDEN, HIDDEN, HIDDEN, HIDDEN, DENIED),
        "other-tenant-project": _row(HIDDEN, HIDDEN, HIDDEN, HIDDEN, DENIED),
    },
    "project-viewer": {
        "global": _row(ALLOWED, DENIED, DENIED, DENIED, DENIED),
        "own-tenant": _row(ALLOWED, DENIED, DENIED, DENIED, DENIED),
        "own-project": _row(ALLOWED, DENIED, DENIED, DENIED, DENIED),
        "other-project": _row(HIDDEN, HIDDEN, HIDDEN, HIDDEN, DENIED),
        "other-tenant": _row(HIDDEN, HIDDEN, HIDDEN, HIDDEN, DENIED),
        "other-tenant-project": _row(HIDDEN, HIDDEN, HIDDEN, HIDDEN, DENIED),
    },
}

CASES = [
    pytest.param(grant, scope, action, EXPECTED[grant][scope][action], id=f"{grant}-{scope}-{action.value}")
    for grant in GRANTS for scope in SCOPES for action in ACTIONS
]


def principal(*grants: Grant) -> Principal:
    return Principal("someone", tuple(grants), "tok-1", 0.0)


def test_the_table_covers_every_role() -> None:
    assert {g.role for g in GRANTS.values()} == set(Role)
    assert all(scope_error(g) is None for g in GRANTS.values())
    assert len(CASES) == len(GRANTS) * len(SCOPES) * len(ACTIONS)


@pytest.mark.parametrize(("grant", "scope", "action", "expected"), CASES)
def test_decide(grant: str, scope: str, action: Action, expected: Decision) -> None:
    tenant, project = SCOPES[scope]
    assert decide(principal(GRANTS[grant]), action, tenant, project) is expected


def test_no_grants_sees_only_global_resources() -> None:
    nobody = principal()
    assert decide(nobody, READ) is ALLOWED
    for action in (WRITE, ADMIN, SYSTEM, SYSTEM_READ):
        assert decide(nobody, action) is DENIED
    for tenant, project in ((A, None), (A, P)):
        for action in (READ, WRITE, ADMIN, SYSTEM):
            assert decide(nobody, action, tenant, project) is HIDDEN


def test_grants_add_up() -> None:
    # Member of one project, viewer of another: writes only where a member.
    both = principal(Grant(Role.PROJECT_MEMBER, A, P), Grant(Role.VIEWER, A, Q))
    assert decide(both, WRITE, A, P) is ALLOWED
    assert decide(both, WRITE, A, Q) is DENIED
    assert decide(both, READ, A, Q) is ALLOWED
    assert decide(both, ADMIN, A, None) is DENIED
    # Tenant admin of one tenant, viewer of the other: admin only in its own.
    two = principal(Grant(Role.TENANT_ADMIN, A), Grant(Role.VIEWER, B))
    assert decide(two, ADMIN, A, P) is ALLOWED
    assert decide(two, ADMIN, B, P) is DENIED
    assert decide(two, WRITE, B, P) is DENIED
    assert decide(two, READ, B, P) is ALLOWED


# --- can_read, visible_tenants, visible_projects ---------------------------------------

@pytest.mark.parametrize(("grants", "tenant", "project", "expected"), [
    ((), A, None, False),
    ((Grant(Role.PROJECT_MEMBER, A, P),), A, None, True),
    ((Grant(Role.PROJECT_MEMBER, A, P),), A, P, True),
    ((Grant(Role.PROJECT_MEMBER, A, P),), A, Q, False),
    ((Grant(Role.PROJECT_MEMBER, A, P),), B, P, False),
    ((Grant(Role.PROJECT_MEMBER, A, P),), B, None, False),
    ((Grant(Role.VIEWER),), B, Q, True),
])
def test_can_read(grants: tuple[Grant, ...], tenant: str, project: str | None, expected: bool) -> None:
    assert can_read(principal(*grants), tenant, project) is expected


@pytest.mark.parametrize(("grants", "expected"), [
    ((), frozenset()),
    ((Grant(Role.SYSTEM_ADMIN),), None),
    ((Grant(Role.VIEWER),), None),
    ((Grant(Role.VIEWER), Grant(Role.TENANT_ADMIN, A)), None),
    ((Grant(Role.TENANT_ADMIN, A),), frozenset({A})),
    ((Grant(Role.PROJECT_MEMBER, A, P), Grant(Role.VIEWER, A, Q)), frozenset({A})),
    ((Grant(Role.PROJECT_MEMBER, A, P), Grant(Role.VIEWER, B)), frozenset({A, B})),
])
def test_visible_tenants(grants: tuple[Grant, ...], expected: frozenset[str] | None) -> None:
    assert visible_tenants(principal(*grants)) == expected


@pytest.mark.parametrize(("grants", "tenant", "expected"), [
    ((), A, frozenset()),
    ((Grant(Role.SYSTEM_ADMIN),), A, None),
    ((Grant(Role.VIEWER),), B, None),
    ((Grant(Role.TENANT_ADMIN, A),), A, None),
    ((Grant(Role.VIEWER, A),), A, None),
    ((Grant(Role.TENANT_ADMIN, A),), B, frozenset()),
    ((Grant(Role.PROJECT_MEMBER, A, P),), A, frozenset({P})),
    ((Grant(Role.PROJECT_MEMBER, A, P), Grant(Role.VIEWER, A, Q)), A, frozenset({P, Q})),
    ((Grant(Role.PROJECT_MEMBER, A, P), Grant(Role.VIEWER, B, Q)), A, frozenset({P})),
    ((Grant(Role.PROJECT_MEMBER, A, P), Grant(Role.VIEWER, B, Q)), B, frozenset({Q})),
    # A project grant in one tenant plus the whole of another.
    ((Grant(Role.PROJECT_MEMBER, A, P), Grant(Role.TENANT_ADMIN, B)), A, frozenset({P})),
])
def test_visible_projects(grants: tuple[Grant, ...], tenant: str, expected: frozenset[str] | None) -> None:
    assert visible_projects(principal(*grants), tenant) == expected


# --- may_grant --------------------------------------------------------------------------

@pytest.mark.parametrize(("issuer", "grant_tenant", "grant_is_system", "expected"), [
    ("system-admin", "", True, True),
    ("system-admin", "", False, True),
    ("system-admin", B, False, True),
    ("tenant-admin", A, False, True),
    ("tenant-admin", B, False, False),
    ("tenant-admin", "", False, False),  # a global viewer grant
    ("tenant-admin", "", True, False),
    ("tenant-admin", A, True, False),
    ("project-member", A, False, False),
    ("global-viewer", A, False, False),
    ("global-viewer", "", False, False),
    ("tenant-viewer", A, False, False),
    ("project-viewer", A, False, False),
])
def test_may_grant(issuer: str, grant_tenant: str, grant_is_system: bool, expected: bool) -> None:
    assert may_grant(principal(GRANTS[issuer]), grant_tenant, grant_is_system) is expected


# --- grants -----------------------------------------------------------------------------

@pytest.mark.parametrize(("grant", "problem"), [
    (Grant(Role.SYSTEM_ADMIN), None),
    (Grant(Role.SYSTEM_ADMIN, A), "system-admin"),
    (Grant(Role.SYSTEM_ADMIN, A, P), "system-admin"),
    (Grant(Role.SYSTEM_ADMIN, "", P), "needs its tenant"),
    (Grant(Role.TENANT_ADMIN, A), None),
    (Grant(Role.TENANT_ADMIN), "tenant-admin"),
    (Grant(Role.TENANT_ADMIN, A, P), "tenant-admin"),
    (Grant(Role.TENANT_ADMIN, "", P), "needs its tenant"),
    (Grant(Role.PROJECT_MEMBER, A, P), None),
    (Grant(Role.PROJECT_MEMBER), "project-member"),
    (Grant(Role.PROJECT_MEMBER, A), "project-member"),
    (Grant(Role.PROJECT_MEMBER, "", P), "needs its tenant"),
    (Grant(Role.VIEWER), None),
    (Grant(Role.VIEWER, A), None),
    (Grant(Role.VIEWER, A, P), None),
    (Grant(Role.VIEWER, "", P), "needs its tenant"),
])
def test_scope_error(grant: Grant, problem: str | None) -> None:
    error = scope_error(grant)
    if problem is None:
        assert error is None
    else:
        assert error is not None and problem in error


@pytest.mark.parametrize(("grant", "tenant", "project", "expected"), [
    (Grant(Role.VIEWER), A, None, True),
    (Grant(Role.VIEWER), B, P, True),
    (Grant(Role.TENANT_ADMIN, A), A, None, True),
    (Grant(Role.TENANT_ADMIN, A), A, P, True),
    (Grant(Role.TENANT_ADMIN, A), B, None, False),
    (Grant(Role.TENANT_ADMIN, A), B, P, False),
    (Grant(Role.PROJECT_MEMBER, A, P), A, P, True),
    (Grant(Role.PROJECT_MEMBER, A, P), A, Q, False),
    (Grant(Role.PROJECT_MEMBER, A, P), A, None, False),  # the tenant as a whole is more than the project
    (Grant(Role.PROJECT_MEMBER, A, P), B, P, False),
    (Grant(Role.PROJECT_MEMBER, A, P), A, "", False),
])
def test_grant_covers(grant: Grant, tenant: str, project: str | None, expected: bool) -> None:
    assert grant.covers(tenant, project) is expected


@pytest.mark.parametrize("grant", list(GRANTS.values()), ids=list(GRANTS))
def test_grant_claim_round_trip(grant: Grant) -> None:
    claim = grant.to_claim()
    assert claim["role"] == grant.role.value
    assert ("tenant" in claim) == bool(grant.tenant) and ("project" in claim) == bool(grant.project)
    assert Grant.from_claim(claim) == grant


# --- properties -------------------------------------------------------------------------

_ids = st.sampled_from(["acme", "globex", "initech", "web", "db", "x"])


@st.composite
def valid_grants(draw, tenant: st.SearchStrategy[str] = _ids) -> Grant:
    """A well-formed grant (as token issue accepts them) of any role."""
    role = draw(st.sampled_from(list(Role)))
    if role is Role.SYSTEM_ADMIN:
        return Grant(role)
    if role is Role.TENANT_ADMIN:
        return Grant(role, draw(tenant))
    if role is Role.PROJECT_MEMBER:
        return Grant(role, draw(tenant), draw(_ids))
    return Grant(role, draw(st.one_of(st.just(""), tenant)), draw(st.one_of(st.just(""), _ids)))


def _well_formed(g: Grant) -> Grant:
    return g if scope_error(g) is None else Grant(g.role, "", "")


tenant_a_grants = valid_grants(st.just(A)).filter(lambda g: g.tenant == A)
any_grants = valid_grants().map(_well_formed)
scopes = st.tuples(st.sampled_from([A, B, "initech", ""]), st.one_of(st.none(), _ids))


@settings(max_examples=300, deadline=None)
@given(grants=st.lists(tenant_a_grants, max_size=5), project=st.one_of(st.none(), _ids),
       action=st.sampled_from(ACTIONS))
def test_tenant_grants_reveal_nothing_of_another_tenant(grants: list[Grant], project: str | None,
                                                        action: Action) -> None:
    assert all(scope_error(g) is None and g.tenant == A for g in grants)
    who = principal(*grants)
    decision = decide(who, action, B, project)
    if action is SYSTEM_READ:
        # Hosts and the whole audit log are global: a refusal whatever scope is named.
        assert decision is DENIED
    else:
        assert decision is HIDDEN
    assert decide(who, SYSTEM, A, project) is not ALLOWED
    assert decide(who, SYSTEM) is DENIED
    assert decide(who, SYSTEM_READ) is DENIED
    assert not may_grant(who, B, False)
    assert visible_tenants(who) == frozenset({A} if grants else ())
    assert visible_projects(who, B) == frozenset()


@settings(max_examples=300, deadline=None)
@given(grants=st.lists(any_grants, max_size=5), scope=scopes)
def test_system_actions_need_a_global_grant(grants: list[Grant], scope: tuple[str, str | None]) -> None:
    who = principal(*grants)
    tenant, project = scope
    admin = any(g.role is Role.SYSTEM_ADMIN for g in grants)
    global_viewer = any(g.role is Role.VIEWER and not g.tenant for g in grants)

    system_read = decide(who, SYSTEM_READ, tenant, project)
    assert system_read is (ALLOWED if admin or global_viewer else DENIED)

    system = decide(who, SYSTEM, tenant, project)
    if admin:
        assert system is ALLOWED
    else:
        # Never allowed; hidden only where the caller may not even read.
        assert system is (DENIED if not tenant or can_read(who, tenant, project) else HIDDEN)


@settings(max_examples=300, deadline=None)
@given(grants=st.lists(any_grants, max_size=5), scope=scopes, action=st.sampled_from(ACTIONS))
def test_decisions_are_monotonic_in_grants(grants: list[Grant], scope: tuple[str, str | None],
                                           action: Action) -> None:
    """Adding a grant never takes a permission away."""
    tenant, project = scope
    rank = {HIDDEN: 0, DENIED: 1, ALLOWED: 2}
    for extra in GRANTS.values():
        before = decide(principal(*grants), action, tenant, project)
        after = decide(principal(*grants, extra), action, tenant, project)
        assert rank[after] >= rank[before], (extra, before, after)
