"""The one rule for a watch's starting point (controlplane.api.streams)."""

from __future__ import annotations

import grpc
import pytest

from controlplane.api.errors import ApiError
from controlplane.api.streams import start_revision


@pytest.mark.parametrize(("requested", "current", "start"), [
    (0, 10, 10),   # now
    (7, 10, 7),    # a version the client saw: resume after it
    (10, 10, 10),  # the newest
])
def test_a_watch_starts_after_the_requested_version_or_now(requested: int, current: int, start: int) -> None:
    assert start_revision(requested, current) == start


def test_a_version_newer_than_the_store_is_out_of_range() -> None:
    with pytest.raises(ApiError) as refused:
        start_revision(13, 10)
    err = refused.value
    assert (err.code, err.reason) == (grpc.StatusCode.OUT_OF_RANGE, "RESOURCE_VERSION_TOO_NEW")
    assert err.metadata == {"resource_version": "13", "current": "10"}
