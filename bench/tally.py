"""What each VM of a benchmark phase came to, counted once, and when to send again.

A benchmark phase (create, stop, start, delete) sends requests for many VMs and
watches them reach a state. These rules keep its figures true at any size:

- A VM is *accepted* at its first answer OK; an answer repeated by a resend (a
  create's retry with the same request_id returns the VM the first attempt made)
  changes nothing.
- A VM ends in at most one of ``done`` (its state was seen: by the watch or in a
  re-listing) and ``failed`` (refused for good, or seen ERROR): seeing it done later
  takes it out of ``failed``; a failure after it was seen done is ignored. So
  ``len(done) + len(failed)`` never counts a VM twice.
- A request refused with a transient code (UNAVAILABLE, DEADLINE_EXCEEDED: the
  system shed load, or answered too late; a timed-out write may or may not have
  applied) is sent again, the same request (same request_id), after a jittered,
  capped, exponential backoff, until it has been sent ``limit`` times; only then is
  it a failure. In a CreateVms INDEPENDENT call only the members refused so are sent
  again; an all-or-nothing set (one request_id for all its members) is sent whole.
- Resends are counted: calls, and VMs by code.

Pure: no I/O, no clock (times are passed in), randomness injected.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import grpc

TRANSIENT = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
OK = grpc.StatusCode.OK


@dataclass
class Phase:
    """What one phase (create, stop, start or delete) saw, on the client's monotonic clock."""
    requested: int = 0
    first_sent: float | None = None
    last_answered: float | None = None
    answered: dict[str, float] = field(default_factory=dict)       # vm_id -> first answer OK
    api_latency_s: list[float] = field(default_factory=list)       # per answered call
    done: dict[str, float] = field(default_factory=dict)           # vm_id -> RUNNING / STOPPED / gone first seen
    failed: dict[str, str] = field(default_factory=dict)           # vm_id -> why (ERROR state, gRPC code)
    requests_done: bool = False
    schedule_lag_s: float = 0.0                                    # with --rate: worst send delay
    complete: asyncio.Event = field(default_factory=asyncio.Event)

    def accept(self, vm_id: str, now: float) -> None:
        """An answer OK for ``vm_id``; only the first one is kept."""
        self.answered.setdefault(vm_id, now)

    def finish(self, vm_id: str, now: float) -> bool:
        """``vm_id`` seen in the phase's target state; True the first time."""
        if vm_id in self.done:
            return False
        self.done[vm_id] = now
        self.failed.pop(vm_id, None)
        self.check()
        return True

    def fail(self, vm_id: str, why: str) -> None:
        """``vm_id`` failed (the first reason is kept), unless it was seen done already."""
        if vm_id not in self.done and vm_id not in self.failed:
            self.failed[vm_id] = why
            self.check()

    def ended(self) -> int:
        """VMs that are done or failed: each once."""
        return len(self.done) + len(self.failed)

    def check(self) -> None:
        if self.requests_done and self.ended() >= self.requested:
            self.complete.set()


@dataclass(frozen=True, slots=True)
class Backoff:
    """Seconds to wait before resend ``attempt`` (0 for the first resend): exponential
    from ``base_s``, capped at ``cap_s``, jittered over its upper half so that calls
    refused together do not come back together."""
    base_s: float = 0.2
    cap_s: float = 10.0

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        ceiling = min(self.cap_s, self.base_s * 2 ** min(attempt, 30))
        return ceiling / 2 + rand() * ceiling / 2


@dataclass
class Resends:
    """Sorts the answers to requests into accepted, to send again, and refused for good,
    and counts the resends. ``limit``: how many times one request is sent at most."""
    limit: int = 30
    calls: int = 0                                         # calls sent again
    vms: Counter = field(default_factory=Counter)          # VMs sent again, by code name
    refused: Counter = field(default_factory=Counter)      # VMs refused for good, by "CODE reason"

    def settle(self, phase: Phase, members: Sequence[str], outcomes: Sequence[tuple[grpc.StatusCode, str]],
               *, now: float, sends: int, whole: bool = False) -> list[str]:
        """Record the answer to a request for ``members`` (``outcomes[i]``: the code
        and reason for ``members[i]``; OK when accepted), which has been sent
        ``sends`` times (1 for the first send). Returns the members to send again:
        those refused with a transient code (``whole``: all the members, when any
        was), none once the request was sent ``limit`` times (those are then
        failures). Raises ValueError when the outcomes do not match the members."""
        if len(outcomes) != len(members):
            raise ValueError(f"{len(outcomes)} outcomes for {len(members)} members")
        again: list[str] = []
        may_resend = sends < self.limit
        for vm_id, (code, why) in zip(members, outcomes, strict=True):
            if code == OK:
                phase.accept(vm_id, now)
            elif code in TRANSIENT and may_resend:
                again.append(vm_id)
                self.vms[code.name] += 1
            else:
                reason = f"{code.name} {why}".strip() if why != code.name else code.name
                if vm_id not in phase.failed and vm_id not in phase.done:
                    self.refused[reason] += 1
                phase.fail(vm_id, reason)
        if again and whole:
            again_set = set(again)
            extra = [vm_id for vm_id in members if vm_id not in again_set]
            self.vms["WITH_ITS_SET"] += len(extra)
            again = list(members)
        if again:
            self.calls += 1
        return again

    def summary(self) -> dict:
        return {"calls": self.calls, "vms": dict(self.vms), "limit": self.limit}
