"""How a benchmark ends when it is told to stop.

A benchmark that starts processes (etcd, a LocalSystem, vcsim) stops them in a
``finally`` block. SIGINT (Ctrl-C) runs those blocks; SIGTERM (``timeout(1)``, ``kill``)
by default ends Python at once and leaves the processes running. Call
:func:`exit_on_sigterm` first thing in a benchmark's main.
"""

from __future__ import annotations

import signal
import sys


def exit_on_sigterm() -> None:
    """Make SIGTERM raise SystemExit(143) (128 + 15, what a shell reports for it), so
    every ``finally`` block runs and the processes the benchmark started are stopped.
    Further SIGTERMs are ignored, so they do not cut that teardown short."""
    def on_sigterm(*_: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        sys.exit(143)
    signal.signal(signal.SIGTERM, on_sigterm)
