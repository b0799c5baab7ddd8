"""Pagination: of small, fully read collections (tenants, projects, flavors, ...:
items sorted by a key, resumed after the last key of the previous page), and the
request side of a project's paged listings read from the store at one revision
(VMs, disks, networks)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from controlplane.api import validation
from controlplane.api.access import require
from controlplane.auth.policy import Action

T = TypeVar("T")


def page(items: Sequence[T], key: Callable[[T], str], *, page_size: int, page_token: str,
         scope: str) -> tuple[list[T], str]:
    """One page of ``items`` (any order; sorted here by ``key``) and the next page's
    token ("" at the end). Raises INVALID_ARGUMENT for a bad size or token."""
    size = validation.page_size(page_size)
    token = validation.decode_page_token(page_token, scope)
    after = token[1] if token else ""
    ordered = sorted((i for i in items if key(i) > after), key=key)
    chosen = ordered[:size]
    next_token = validation.encode_page_token(scope, 0, key(chosen[-1])) if len(ordered) > size else ""
    return chosen, next_token


@dataclass(frozen=True, slots=True)
class ProjectListing:
    """A List of one project's ``collection`` (or a tenant's, ``project`` "") as asked:
    its page size and label selector, the page token's scope, and where the token
    resumes (``revision`` 0 and ``after`` "" for the first page)."""

    tenant: str
    project: str
    size: int
    selector: dict[str, str]
    scope: str
    revision: int
    after: str


def _resource_id_position(after: str) -> None:
    validation.validate_resource_id(after, "page_token", "page token position")


def project_listing(collection: str, parent: str, page_size: int, label_selector: str, page_token: str, *,
                    parse_parent: Callable[[str], tuple[str, str]] = validation.parse_project_parent,
                    project_only: Sequence[str] = (), shape: Sequence[str] = (),
                    check_position: Callable[[str], None] = _resource_id_position) -> ProjectListing:
    """Check a paged listing's request and its caller's right to read the owner: the
    project, or the tenant where ``parse_parent`` gives project "" (a tenant's shared
    networks). Raises INVALID_ARGUMENT with every field violation at once (the parent,
    page size, label selector, then each field named in ``project_only``: set in the
    request but allowed only with a project parent); then PERMISSION_DENIED/NOT_FOUND
    as ``require`` does; INVALID_ARGUMENT for a token of another listing; and what
    ``check_position`` raises for the token's nonempty position (by default
    INVALID_ARGUMENT unless it is a resource id). ``shape``: what else shapes the
    listing (e.g. include_shared), in the token's scope between parent and selector."""
    v = validation.Violations()
    owner = v.capture(parse_parent, parent)
    size = v.capture(validation.page_size, page_size)
    selector = v.capture(validation.parse_label_selector, label_selector)
    if owner and not owner[1]:
        for field in project_only:
            v.add(field, "only with a project parent")
    v.raise_if_any()
    tenant, project = v.valid(owner)
    size, selector = v.valid(size), v.valid(selector)
    require(Action.READ, tenant, project or None, kind="project" if project else "tenant", name=parent)
    scope = "|".join([collection, parent, *shape, validation.format_label_selector(selector)])
    token = validation.decode_page_token(page_token, scope)
    revision, after = token if token else (0, "")
    if after:
        check_position(after)
    return ProjectListing(tenant, project, size, selector, scope, revision, after)
