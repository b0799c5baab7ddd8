"""The tests' waits say, when they time out, what they waited for and what they saw
(a flake that says only "timed out" cannot be diagnosed from a CI log)."""

from __future__ import annotations

import ast
import asyncio
import pathlib

import pytest

from tests.conftest import Tally, async_wait_until, wait_until

TESTS = pathlib.Path(__file__).resolve().parents[1]
WAITS = {"wait_until", "async_wait_until"}


def test_a_timeout_names_what_was_awaited_and_what_was_seen() -> None:
    seen = Tally({"RUNNING": 97, "CREATING": 20, "SCHEDULED": 3})
    with pytest.raises(AssertionError) as timed_out:
        wait_until(lambda: False, timeout=0.05, interval=0.01, message="all 120 VMs RUNNING", seen=lambda: seen)
    assert str(timed_out.value) == ("timed out after 0.05s waiting for all 120 VMs RUNNING; "
                                    "last seen: RUNNING 97, CREATING 20, SCHEDULED 3")


def test_without_seen_the_conditions_last_value_is_shown_unless_it_says_nothing() -> None:
    with pytest.raises(AssertionError, match=r"waiting for a list; last seen: \[\]$"):
        wait_until(lambda: [], timeout=0.02, interval=0.01, message="a list")
    with pytest.raises(AssertionError, match=r"waiting for a flag$"):
        wait_until(lambda: False, timeout=0.02, interval=0.01, message="a flag")


def test_a_seen_that_fails_is_reported_and_the_timeout_stays_the_failure() -> None:
    def broken() -> str:
        raise ConnectionError("etcd is down")

    with pytest.raises(AssertionError, match=r"last seen: \(could not look: ConnectionError: etcd is down\)"):
        wait_until(lambda: None, timeout=0.02, interval=0.01, message="x", seen=broken)


def test_the_async_wait_takes_coroutine_conditions_and_seen() -> None:
    async def never() -> bool:
        return False

    async def look() -> str:
        return "3 of 4 bound"

    async def main() -> None:
        assert await async_wait_until(lambda: 7, timeout=0.05) == 7
        with pytest.raises(AssertionError, match=r"waiting for 4 bound; last seen: 3 of 4 bound$"):
            await async_wait_until(never, timeout=0.05, interval=0.01, message="4 bound", seen=look)

    asyncio.run(main())


def test_a_tally_prints_most_first_and_compares_as_counts() -> None:
    tally = Tally(["RUNNING", "CREATING", "RUNNING"])
    assert str(tally) == "RUNNING 2, CREATING 1" and str(Tally()) == "none"
    assert tally == {"RUNNING": 2, "CREATING": 1} and Tally(["RUNNING"]) != {"RUNNING": 2}


def _waits_without_a_word(path: pathlib.Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in WAITS:
            given = {kw.arg for kw in node.keywords}
            if not {"message", "seen"} <= given:
                bad.append(f"{path.relative_to(TESTS)}:{node.lineno} lacks {sorted({'message', 'seen'} - given)}")
    return bad


def test_every_wait_on_etcd_or_the_system_says_what_it_saw() -> None:
    files = sorted((TESTS / "store").glob("test_*.py")) + sorted((TESTS / "system").glob("test_*.py"))
    assert files
    bad = [line for path in files for line in _waits_without_a_word(path)]
    assert not bad, "waits that would time out without saying what they waited for and saw:\n" + "\n".join(bad)
