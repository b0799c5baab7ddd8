"""bench/procfs: memory figures of live, dead and zombie processes (a zombie's status
has no memory fields: million.py crashed reading its finished client's peak RSS)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from bench.procfs import memory_kib
from tests.conftest import wait_until


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_memory_of_a_live_a_zombie_and_a_gone_process() -> None:
    rss = memory_kib(os.getpid(), "VmRSS")
    assert memory_kib(os.getpid(), "VmHWM") >= rss > 0  # the peak read after: never below
    child = subprocess.Popen(["true"])
    try:
        wait_until(lambda: _state(child.pid) == "Z", timeout=30, message="the child a zombie",
                   seen=lambda: _state(child.pid))
        assert memory_kib(child.pid, "VmHWM") is None
    finally:
        child.wait(30)
    assert memory_kib(child.pid, "VmRSS") is None  # reaped: gone
    assert memory_kib(None, "VmRSS") is None
