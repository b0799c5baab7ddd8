"""When an agent re-lists its bindings: every ``resync_s``, or ten times as long as the
last listing took when that is longer (a listing of 427,000 bindings took 3 minutes,
and a resync every 5 minutes took most of the agent's time)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from agents.service import RESYNC_COST_FACTOR, resync_after

SECONDS = st.floats(min_value=0, max_value=1e6, allow_nan=False)


def test_a_quick_listing_keeps_the_configured_interval() -> None:
    assert resync_after(300.0, 0.05) == 300.0


def test_a_slow_listing_pushes_the_next_resync_back() -> None:
    assert resync_after(300.0, 180.0) == 1800.0


@given(SECONDS, SECONDS)
def test_re_listing_takes_at_most_a_share_of_the_time(resync_s: float, listed_s: float) -> None:
    after = resync_after(resync_s, listed_s)
    assert after >= resync_s and after in (resync_s, RESYNC_COST_FACTOR * listed_s)
    assert RESYNC_COST_FACTOR * listed_s <= after
