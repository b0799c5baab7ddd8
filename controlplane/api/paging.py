"""Pagination of small, fully read collections (tenants, projects, flavors, ...):
items sorted by a key, resumed after the last key of the previous page."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from controlplane.api import validation

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
