"""The benchmark's bookkeeping (bench/tally.py): a VM refused transiently is sent again
with the same request, a VM is never counted twice, and resends are counted."""

from __future__ import annotations

import grpc
import pytest

from bench.tally import OK, Backoff, Phase, Resends

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
DEADLINE = grpc.StatusCode.DEADLINE_EXCEEDED
QUOTA = grpc.StatusCode.RESOURCE_EXHAUSTED


def test_only_the_members_refused_transiently_are_sent_again_and_counted_by_code() -> None:
    phase, resends = Phase(requested=4), Resends(limit=5)
    again = resends.settle(phase, ["a", "b", "c", "d"],
                           [(OK, ""), (UNAVAILABLE, "STORE_UNAVAILABLE"), (DEADLINE, ""), (QUOTA, "QUOTA_EXCEEDED")],
                           now=1.0, sends=1)
    assert again == ["b", "c"]
    assert phase.answered == {"a": 1.0}
    assert phase.failed == {"d": "RESOURCE_EXHAUSTED QUOTA_EXCEEDED"}
    assert resends.calls == 1 and resends.vms == {"UNAVAILABLE": 1, "DEADLINE_EXCEEDED": 1}
    assert resends.refused == {"RESOURCE_EXHAUSTED QUOTA_EXCEEDED": 1}


def test_a_resend_that_repeats_an_answer_counts_the_vm_once_at_its_first_answer() -> None:
    phase, resends = Phase(requested=2), Resends(limit=5)
    assert resends.settle(phase, ["a", "b"], [(OK, ""), (DEADLINE, "")], now=1.0, sends=1) == ["b"]
    # The timed-out create had applied: its resend (same request_id) answers OK; "a" again too.
    assert resends.settle(phase, ["a", "b"], [(OK, ""), (OK, "")], now=2.0, sends=2) == []
    assert phase.answered == {"a": 1.0, "b": 2.0}
    assert not phase.failed and resends.calls == 1


def test_a_request_sent_limit_times_is_a_failure_not_another_resend() -> None:
    phase, resends = Phase(requested=1), Resends(limit=3)
    for sends in (1, 2):
        assert resends.settle(phase, ["a"], [(UNAVAILABLE, "UNAVAILABLE")], now=sends, sends=sends) == ["a"]
    assert resends.settle(phase, ["a"], [(UNAVAILABLE, "UNAVAILABLE")], now=3, sends=3) == []
    assert phase.failed == {"a": "UNAVAILABLE"}
    assert resends.calls == 2 and resends.vms == {"UNAVAILABLE": 2}
    assert resends.refused == {"UNAVAILABLE": 1}


def test_an_all_or_nothing_set_is_sent_again_whole() -> None:
    phase, resends = Phase(requested=3), Resends()
    again = resends.settle(phase, ["a", "b", "c"], [(UNAVAILABLE, "")] + [(OK, "")] * 2, now=1.0, sends=1,
                           whole=True)
    assert again == ["a", "b", "c"]
    assert resends.vms == {"UNAVAILABLE": 1, "WITH_ITS_SET": 2}


def test_outcomes_must_match_the_members() -> None:
    with pytest.raises(ValueError, match="1 outcomes for 2 members"):
        Resends().settle(Phase(), ["a", "b"], [(OK, "")], now=0.0, sends=1)


def test_a_vm_is_done_or_failed_never_both_and_the_phase_completes_on_each_vm_once() -> None:
    phase = Phase(requested=3, requests_done=True)
    phase.fail("a", "ERROR CreateFailed")
    assert phase.finish("a", 1.0)            # ERROR, then RUNNING after all: done, no longer failed
    assert not phase.finish("a", 2.0)        # seen again (watch, then a re-listing): once
    phase.fail("a", "UNAVAILABLE")            # a late failure of a VM seen done: ignored
    phase.fail("b", "ERROR x")
    phase.fail("b", "ERROR y")                # the first reason stays
    assert phase.done == {"a": 1.0} and phase.failed == {"b": "ERROR x"}
    assert phase.ended() == 2 and not phase.complete.is_set()
    phase.finish("c", 3.0)
    assert phase.ended() == 3 and phase.complete.is_set()


@pytest.mark.parametrize(("attempt", "low", "high"), [(0, 0.1, 0.2), (3, 0.8, 1.6), (10, 5.0, 10.0), (999, 5.0, 10.0)])
def test_backoff_grows_exponentially_is_capped_and_jittered_over_its_upper_half(attempt, low, high) -> None:
    backoff = Backoff(base_s=0.2, cap_s=10.0)
    assert backoff.delay(attempt, rand=lambda: 0.0) == pytest.approx(low)
    assert backoff.delay(attempt, rand=lambda: 0.999999) == pytest.approx(high, rel=1e-5)
