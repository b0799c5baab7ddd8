"""What /proc says of a process the benchmarks watch (Linux, proc(5))."""

from __future__ import annotations

import pathlib


def memory_kib(pid: int | None, field: str) -> int | None:
    """A memory field of ``pid``'s status (``VmRSS``: resident now, ``VmHWM``: its
    peak) in KiB; None when the process is gone or a zombie (whose status has none)."""
    try:
        status = pathlib.Path(f"/proc/{pid}/status").read_text()
    except (OSError, TypeError):
        return None
    _, found, rest = status.partition(f"\n{field}:")
    return int(rest.split()[0]) if found else None
