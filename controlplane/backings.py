"""Network backings: the port groups on the hosts (ESXi port group or distributed port
group names) that networks map to.

Backings are infrastructure, not tenant property: system admins grant them to tenants
(``Tenant.network_backings``); a tenant's networks may map only to a backing granted
to it (so no tenant puts its VMs on another tenant's segment), and a grant that one of
the tenant's networks is on cannot be revoked. These are the pure rules; the stores
compare what they read in the transactions that apply them (``store/networks.py``
creates a network comparing its tenant's record as read, ``store/tenancy.py`` revokes
comparing the tenant's networks as read), so a revoke and a create that race never
leave a network on a revoked backing.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence

MAX_NAME = 80  # vSphere's limit on a port group's name
MAX_PER_TENANT = 256


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a backing (None: it can): 1..MAX_NAME printable
    characters without surrounding spaces."""
    if not name:
        return "must not be empty"
    if len(name) > MAX_NAME or not name.isprintable() or name != name.strip():
        return f"a port group name: printable, no surrounding spaces, at most {MAX_NAME} characters"
    return None


def grant_problems(names: Sequence[str], field: str) -> list[tuple[str, str]]:
    """Why ``names`` cannot be a tenant's grants, as (field path, description) pairs
    (empty: they can): each a backing name, none twice, at most MAX_PER_TENANT."""
    out: list[tuple[str, str]] = []
    if len(names) > MAX_PER_TENANT:
        out.append((field, f"{len(names)} backings; at most {MAX_PER_TENANT} per tenant"))
    seen: set[str] = set()
    for i, name in enumerate(names):
        why = name_problem(name)
        if why is not None:
            out.append((f"{field}[{i}]", why))
        elif name in seen:
            out.append((f"{field}[{i}]", f"{name!r} is listed twice"))
        seen.add(name)
    return out


def revoked(before: Iterable[str], after: Iterable[str]) -> tuple[str, ...]:
    """The backings granted ``before`` and not ``after``, in their order before."""
    kept = set(after)
    return tuple(b for b in before if b not in kept)


def networks_on(backings: Collection[str], networks: Iterable[tuple[str, str]]) -> list[str]:
    """The names of ``networks`` ((name, backing) pairs) on one of ``backings``, sorted."""
    return sorted(name for name, backing in networks if backing in backings)
