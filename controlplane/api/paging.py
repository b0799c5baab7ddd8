"""Pagination: of small, fully read collections (tenants, projects, flavors, ...:
items sorted by a key, resumed after the last key of the previous page), and the
request side of a project's paged listings read from the store at one revision
(VMs, disks)."""

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
    """A List of one project's ``collection`` as asked: its page size and label
    selector, the page token's scope, and where the token resumes (``revision`` 0
    and ``after`` "" for the first page)."""

    tenant: str
    project: str
    size: int
    selector: dict[str, str]
    scope: str
    revision: int
    after: str


def project_listing(collection: str, parent: str, page_size: int, label_selector: str,
                    page_token: str) -> ProjectListing:
    """Check a project listing's request and its caller's right to read the project;
    raises INVALID_ARGUMENT (every field violation at once; a token of another listing
    or a bad position) or PERMISSION_DENIED/NOT_FOUND as ``require`` does."""
    v = validation.Violations()
    owner = v.capture(validation.parse_project_parent, parent)
    size = v.capture(validation.page_size, page_size)
    selector = v.capture(validation.parse_label_selector, label_selector)
    v.raise_if_any()
    tenant, project = v.valid(owner)
    size, selector = v.valid(size), v.valid(selector)
    require(Action.READ, tenant, project, kind="project", name=parent)
    scope = f"{collection}|{parent}|{validation.format_label_selector(selector)}"
    token = validation.decode_page_token(page_token, scope)
    revision, after = token if token else (0, "")
    if after:
        validation.validate_resource_id(after, "page_token", "page token position")
    return ProjectListing(tenant, project, size, selector, scope, revision, after)
