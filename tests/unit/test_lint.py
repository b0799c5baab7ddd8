"""The code stays lint-clean (rules in pyproject.toml [tool.ruff.lint]) and its type
hints hold (mypy, settings in [tool.mypy])."""

from __future__ import annotations

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_ruff_finds_nothing():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--output-format", "concise", str(ROOT)],
                            capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_finds_nothing():
    # The packages and settings come from [tool.mypy]; its cache (.mypy_cache, git-ignored)
    # makes a run after a small change take seconds.
    result = subprocess.run([sys.executable, "-m", "mypy", "--no-color-output", "--no-error-summary"],
                            capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
