"""A benchmark told to stop by SIGTERM (``timeout``, ``kill``) stops the processes it
started, as Ctrl-C does. (bench/e2e.py left its whole LocalSystem running; bench/million.py
stopped its system but left its benchmark client running.)"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import wait_until

ROOT = Path(__file__).resolve().parents[2]


def live_processes() -> Iterator[tuple[int, int, str]]:
    """(pid, parent pid, command line) of every process that is not a zombie."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            state, parent = (proc / "stat").read_text().rsplit(")", 1)[1].split()[:2]
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (FileNotFoundError, ProcessLookupError):
            continue
        if state not in ("Z", "X"):
            yield int(proc.name), int(parent), cmdline


def processes_naming(text: str) -> list[str]:
    """Command lines of the live processes that mention ``text``."""
    return [f"{pid}: {cmdline}" for pid, _, cmdline in live_processes() if text in cmdline]


def children_naming(pid: int, text: str) -> list[int]:
    """The live child processes of ``pid`` whose command line mentions ``text``."""
    return [child for child, parent, cmdline in live_processes() if parent == pid and text in cmdline]


def alive(pid: int) -> bool:
    return any(live == pid for live, _, _ in live_processes())


@pytest.mark.parametrize("command", [
    ["e2e.py", "--vms", "100000", "--hosts", "2", "--timeout", "600"],
    ["million.py", "--vms", "100000", "--hosts", "2", "--timeout", "600", "--no-recovery", "--progress", "1"],
], ids=["e2e", "million"])
def test_a_benchmark_stops_what_it_started_on_sigterm(command: list[str]) -> None:
    bench = subprocess.Popen([sys.executable, str(ROOT / "bench" / command[0]), *command[1:]],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    marks: list[str] = []  # what the system's processes name: its data dir, its etcd's URL
    clients: list[int] = []  # million.py's benchmark client (bench/e2e.py against its system)

    def left() -> list[str]:
        """The system's processes (and the benchmark's client) still there."""
        return sorted(set().union(*(processes_naming(mark) for mark in marks))
                      | {f"{pid}: the benchmark client" for pid in clients if alive(pid)})

    try:
        assert bench.stderr is not None
        lines: list[str] = []
        for line in bench.stderr:  # until "started LocalSystem [in N s] (logs in DIR/logs)"
            lines.append(line)
            if found := re.search(r"started LocalSystem.* \(logs in (\S+)/logs\)", line):
                break
        else:
            raise AssertionError(f"{command[0]} ended without saying its system started: {''.join(lines)[-2000:]}")
        data_dir = found.group(1)
        marks.append(data_dir)
        etcd = wait_until(lambda: [c for c in processes_naming(data_dir) if "--listen-client-urls" in c],
                          timeout=30, message=f"the etcd of {data_dir}", seen=lambda: processes_naming(data_dir))
        marks.append(re.search(r"--listen-client-urls (\S+) ", etcd[0]).group(1) + " ")  # the others' --etcd
        assert len(left()) >= 5, f"etcd, 2 frontends, a scheduler and an agent: {left()}"
        if command[0] == "million.py":
            clients += wait_until(lambda: children_naming(bench.pid, "e2e.py"), timeout=60,
                                  message="million.py's benchmark client", seen=left)
            for line in bench.stderr:  # until the client's first progress line: it is creating VMs
                lines.append(line)
                if re.match(r"\[\s*[\d.]+ s\] accepted", line):
                    break
            else:
                raise AssertionError(f"million.py's client made no progress: {''.join(lines)[-2000:]}")
        bench.send_signal(signal.SIGTERM)
        assert bench.wait(120) == 143
        assert not [pid for pid in clients if alive(pid)], "million.py ended before its benchmark client"
        wait_until(lambda: not left(), timeout=60,
                   message=f"no process of {data_dir} left after the benchmark's SIGTERM", seen=left)
    finally:
        if bench.poll() is None:  # failed before its SIGTERM: let it stop its system first
            bench.send_signal(signal.SIGTERM)
            try:
                bench.wait(120)
            except subprocess.TimeoutExpired:
                bench.kill()
                bench.wait(30)
        for process in left():  # whatever it did not stop
            try:
                os.kill(int(process.split(":", 1)[0]), signal.SIGTERM if "benchmark client" in process
                        else signal.SIGKILL)
            except ProcessLookupError:
                pass
