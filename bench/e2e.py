"""End-to-end creation benchmark: VMs created through the gRPC API until RUNNING.

    python bench/e2e.py --vms 5000 --hosts 100            # starts a LocalSystem (sim, zero latency)
    python bench/e2e.py --endpoint 127.0.0.1:7000 --vms 500  # against a running system
    python bench/e2e.py --vms 500 --delete --json
    python bench/e2e.py --vms 5000 --hosts 100 --user-data-bytes 4096   # bootstrap data on every VM
    python bench/e2e.py --vms 5000 --hosts 100 --power                  # then stop all, start all
    python bench/e2e.py --vms 5000 --hosts 100 --batch 100              # CreateVms of 100 VMs per call

Creates ``--vms`` VMs in a fresh project (``tenants/default/projects/bench-<random>``)
with ``--concurrency`` CreateVm calls in flight, each with its own vm_id and
request_id, while one watch stream (from the revision before the first create)
records when each VM is first seen RUNNING. Nothing polls. Then prints throughput
(accepted/s, RUNNING/s, creations a minute), API create latency and
accepted→RUNNING latency (p50/p99), errors by gRPC code and the CPU seconds each
process used (from /proc/<pid>/stat), to hold against DESIGN.md's performance
budget: ≥ 30,000 creations a minute, API p99 < 50 ms, ~2 ms CPU per creation.

``--rate`` paces the creates on a fixed schedule (open loop, still capped by
``--concurrency``) to measure latency at a given load, e.g. the budget's 500/s;
without it the client sends as fast as ``--concurrency`` allows, and API latency
is then mostly queueing (Little's law: concurrency / throughput).

Latencies are measured on the client's clock: API latency from sending a CreateVm
to its answer (the successful attempt); accepted→RUNNING from that answer to the
watch event that shows the VM RUNNING. The same events carry the servers' own
timestamps (create_time, and update_time of the SCHEDULED/RUNNING status), so the
report also gives create→RUNNING as the system saw it and how late the watch
delivered it; on one machine both clocks are the same. The benchmark client runs
on the same machine and its own CPU is reported too.

``--batch N`` sends CreateVms calls of N VMs each (INDEPENDENT; ``--all-or-nothing``:
each call's VMs form a set) instead of one CreateVm per VM: ``--concurrency`` then
counts calls in flight, ``--rate`` still VMs per second, accepted/s still VMs, and
the API latency reported is per call (with calls/s). Without it (or with 1)
nothing changes.

Resends and re-lists (bench/tally.py holds the bookkeeping): a request refused
UNAVAILABLE or DEADLINE_EXCEEDED (a CreateVms call's own status, or a member's in
its answer) is sent again with the same request_id, so a create that did apply
returns the VM it made, never a second one; only the members so refused are resent
(an all-or-nothing set: whole), after a jittered exponential backoff capped at
``--resend-cap``, until sent ``--resend-limit`` times; a worker resending holds its
place, so resends slow the sending down. Each VM is counted once (accepted at its
first answer OK; done or failed, never both). The report prints the VMs and calls
resent by code, and what was refused for good. When the watch is refused
OUT_OF_RANGE (it fell behind etcd's compaction), the client lists the project's VMs
(pages, at one revision), counts their states from the listing and watches on from
its revision; the report prints how many re-lists there were. ``--batch-timeout``
shortens CreateVms' deadline to exercise the resends; ``--progress S`` prints a line
to stderr every S seconds (accepted, RUNNING, rate, resends, re-lists, how late the
watch is, RSS of etcd and of the client).

Frontends share one port (SO_REUSEPORT), which spreads connections, not calls:
``--channels`` opens that many TCP connections (distinct channel arguments, no
shared subchannel), and the report gives each frontend's share of the frontends'
CPU and the connections it holds, so an uneven spread shows.

The watch is WatchVmBatches (several events a message: those of one store change);
``--watch per-event`` uses WatchVms (a message per event) instead, to compare.
The client's own cost is mostly gRPC's per-message work on the watch stream (three
events per VM: PENDING, SCHEDULED, RUNNING); per event it reads the state, the last
condition's reason and two timestamps, formatting nothing (names are made for the
report), and request_ids are derived from the VM id (not stored).

``--user-data-bytes N`` gives every VM N bytes of cloud-init user data (its own,
so none is deduplicated anywhere): the create path with bootstrap data. ``--power``
then stops every VM (``--stop-mode``) and, once all are seen STOPPED, starts them
all again until all are seen RUNNING: StopVm/StartVm throughput and latency, with
the agents' power operations and status writes behind them.

Exit status: 0 when every VM was accepted, reached RUNNING (and, with ``--power``,
STOPPED and RUNNING again; with ``--delete``, was gone again); 1 when some did not;
2 on ``--timeout``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import pathlib
import sys
import time
import uuid
from collections import Counter
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from bench.procfs import memory_kib  # noqa: E402
from bench.tally import OK, Backoff, Phase, Resends  # noqa: E402
from bench.teardown import exit_on_sigterm  # noqa: E402
from controlplane.gen.quanta.v1 import common_pb2, vm_pb2, vm_pb2_grpc  # noqa: E402

SCHEDULED = vm_pb2.Vm.SCHEDULED
RUNNING = vm_pb2.Vm.RUNNING
STOPPED = vm_pb2.Vm.STOPPED
ERROR = vm_pb2.Vm.ERROR
MAX_WATCH_FAILURES = 20   # in a row, without an event between them
RPC_TIMEOUT_S = 10.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
_CODES = {code.value[0]: code for code in grpc.StatusCode}   # a CreateVms result's code → StatusCode


# --- process CPU -----------------------------------------------------------------------

def cpu_seconds(pid: int) -> float | None:
    """utime + stime of ``pid`` (its threads included) in seconds; None when it is gone."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK   # fields 14 and 15 of proc(5)


def cpu_snapshot(pids: dict[str, int]) -> dict[str, float | None]:
    return {name: cpu_seconds(pid) for name, pid in pids.items()}


def cpu_delta(before: dict[str, float | None], after: dict[str, float | None]) -> dict[str, float | None]:
    return {name: (after[name] - before[name]) if before.get(name) is not None and after.get(name) is not None
            else None for name in after}


def rss_mib(pid: int) -> float | None:
    """``VmRSS`` of ``pid`` in MiB; None when it is gone."""
    kib = memory_kib(pid, "VmRSS")
    return None if kib is None else round(kib / 1024)


def connections_per_process(endpoint: str, pids: dict[str, int]) -> dict[str, int]:
    """Established TCP connections on ``endpoint``'s port held by each process of
    ``pids`` whose name starts with "frontend" (the server side of the client's
    channels: how SO_REUSEPORT spread them); empty when the port is not local."""
    try:
        port = int(endpoint.rsplit(":", 1)[1])
        inodes: dict[str, str] = {}   # socket inode -> its local address, of the server's side
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            for line in pathlib.Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes[fields[9]] = fields[1]
    except (OSError, ValueError, IndexError):
        return {}
    out: dict[str, int] = {}
    for name, pid in pids.items():
        if not name.startswith("frontend"):
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        count = 0
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:   # closed since listed
                continue
            count += link.startswith("socket:[") and link[8:-1] in inodes
        out[name] = count
    return out


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


# --- the run ---------------------------------------------------------------------------

BOOKMARK_KEY = (common_pb2.BOOKMARK, -1)


def channel_options(index: int) -> list[tuple[str, int]]:
    """Arguments of request channel ``index`` (-1: the watch's): a local subchannel
    pool and an argument of its own, so that no two channels share a connection."""
    return [("grpc.use_local_subchannel_pool", 1), ("quanta.bench.channel", index)]


def event_kind(key: tuple[int, int]) -> str:
    """"TYPE/STATE" (or "BOOKMARK") of a watch_events key."""
    kind, state = key
    if key == BOOKMARK_KEY:
        return "BOOKMARK"
    return f"{common_pb2.EventType.Name(kind)}/{vm_pb2.Vm.State.Name(state)}"

class Bench:
    def __init__(self, endpoint: str, *, vms: int, concurrency: int, channels: int, flavor: str, image: str,
                 tenant: str, project: str, token: str, rate: float = 0.0, user_data_bytes: int = 0,
                 stop_mode: str = "soft", batch: int = 1, all_or_nothing: bool = False,
                 resend_limit: int = 30, backoff: Backoff | None = None,
                 batch_timeout_s: float = RPC_TIMEOUT_S * 6, balance_over: Sequence[str] = (),
                 batched_watch: bool = True):
        self.rate = rate
        self.batched_watch = batched_watch  # WatchVmBatches (several events a message), else WatchVms
        self.batch = batch
        self.all_or_nothing = all_or_nothing
        self.user_data_bytes = user_data_bytes
        self.stop_mode = vm_pb2.HARD if stop_mode == "hard" else vm_pb2.SOFT
        self.endpoint = endpoint
        self.vms = vms
        self.concurrency = concurrency
        self.flavor = flavor
        self.image = image
        self.parent = f"tenants/{tenant}/projects/{project}"
        self.errors: dict[str, Counter] = {m: Counter() for m in ("CreateVm", "CreateVms", "DeleteVm", "WatchVms",
                                                                   "ListVms", "StopVm", "StartVm")}
        self.resends = Resends(limit=resend_limit)
        self.backoff = backoff or Backoff()
        self.batch_timeout_s = batch_timeout_s
        self.watch_restarts = 0   # streams started again after they broke (not re-lists)
        self.relists = 0          # OUT_OF_RANGE (compacted): listed again, then watched from the listing
        self.relisted_vms = 0     # VMs read in those listings
        self.create = Phase()
        self.last_seen: dict[str, tuple[int, str]] = {}   # vm_id -> (state, reason) of its last event
        self.scheduled: dict[str, float] = {}     # vm_id -> SCHEDULED first seen (a create's midpoint)
        # From the servers' own timestamps (wall clock; comparable to ours on one machine):
        self.server_scheduled_s: list[float] = []  # create_time -> update_time of the SCHEDULED status
        self.server_running_s: list[float] = []    # create_time -> update_time of the RUNNING status
        self.delivery_s: list[float] = []          # RUNNING status written -> its watch event read here
        self.server_span_ns = [2**63, 0]           # first create_time, last RUNNING update_time
        self.delete = Phase()
        self.stop = Phase()
        self.start = Phase()
        self.stopping: set[str] = set()   # asked to stop (a STOPPED event may beat the answer)
        self.starting: set[str] = set()
        self.deleting: set[str] = set()   # asked to delete (absent from a re-listing: gone)
        self.watch_events: Counter = Counter()   # by (event type, state); BOOKMARK: (BOOKMARK, -1)
        # One TCP connection per channel: its own subchannel pool and distinct channel
        # arguments (gRPC shares a subchannel between channels of equal arguments), so
        # that SO_REUSEPORT may land the channels on different frontends. With
        # ``balance_over`` (the frontends' own addresses) each channel instead reaches
        # every frontend and sends its calls round robin: calls spread, not connections.
        target, options = endpoint, channel_options
        if balance_over:
            target = "ipv4:" + ",".join(balance_over)
            options = lambda i: [*channel_options(i), ("grpc.lb_policy_name", "round_robin")]  # noqa: E731
        self._channels = [grpc.aio.insecure_channel(target, options=options(i)) for i in range(max(1, channels))]
        self._watch_channel = grpc.aio.insecure_channel(endpoint, options=channel_options(-1))
        self._stubs = [vm_pb2_grpc.VmServiceStub(c) for c in self._channels]
        self._watch_stub = vm_pb2_grpc.VmServiceStub(self._watch_channel)
        self._md = (("authorization", f"Bearer {token}"),)
        self._revision = 0
        self._events_read = 0
        self._name_prefix = len(self.parent) + len("/vms/")
        self._ids = [f"vm-{i:06d}" for i in range(vms)]
        # One request_id per VM, the same on every resend (so a resend never makes a
        # second VM), derived rather than stored: a million uuids cost ~150 MB.
        self._request_prefix = uuid.uuid4().hex[:16]

    def request_id(self, vm_id: str) -> str:
        return f"{self._request_prefix}-{vm_id}"

    async def close(self) -> None:
        for channel in (*self._channels, self._watch_channel):
            await channel.close()

    def name(self, vm_id: str) -> str:
        return f"{self.parent}/vms/{vm_id}"

    async def start_revision(self) -> int:
        """The store revision now (an empty project's list), to watch after."""
        response = await self._stubs[0].ListVms(vm_pb2.ListVmsRequest(parent=self.parent, page_size=1),
                                                timeout=RPC_TIMEOUT_S, metadata=self._md)
        if response.vms:
            raise SystemExit(f"{self.parent} is not empty; the benchmark needs a fresh project")
        return response.resource_version

    # watch ---------------------------------------------------------------------------

    async def watch(self, revision: int) -> None:
        """Record, per VM, when RUNNING (or ERROR), STOPPED and DELETED were first seen.
        Resumes after the last revision seen when the stream breaks or ends; on
        OUT_OF_RANGE (the revision was compacted: this client fell behind) lists the
        project at a revision, counts the states listed, and watches from there.
        Raises RuntimeError after MAX_WATCH_FAILURES failures in a row without an event."""
        self._revision = revision
        failures = 0
        while True:
            events_before = self._events_read
            if self.batched_watch:
                stream = self._watch_stub.WatchVmBatches(vm_pb2.WatchVmBatchesRequest(
                    parent=self.parent, resource_version=self._revision), metadata=self._md)
            else:
                stream = self._watch_stub.WatchVms(vm_pb2.WatchVmsRequest(
                    parent=self.parent, resource_version=self._revision), metadata=self._md)
            try:
                async for message in stream:
                    now = time.monotonic()
                    for event in message.events if self.batched_watch else (message,):
                        self._on_event(event, now)
                code = "stream ended"
            except grpc.aio.AioRpcError as err:
                if err.code() == grpc.StatusCode.CANCELLED:
                    raise
                code = err.code().name
            finally:
                stream.cancel()
            self.errors["WatchVms"][code] += 1
            failures = 0 if self._events_read > events_before else failures + 1
            if failures >= MAX_WATCH_FAILURES:
                raise RuntimeError(f"WatchVms failed {failures} times in a row; last: {code}")
            if code == "OUT_OF_RANGE":
                self.relists += 1
                try:
                    self._revision = await self.relist()
                except grpc.aio.AioRpcError as err:   # e.g. the listing's own revision compacted
                    if err.code() == grpc.StatusCode.CANCELLED:
                        raise
                    self.errors["ListVms"][err.code().name] += 1
                else:
                    continue
            else:
                self.watch_restarts += 1
            await asyncio.sleep(self.backoff.delay(failures))

    async def relist(self) -> int:
        """List every VM of the project (pages, all at one revision), record each as
        its watch event would, and return that revision (to watch from). A VM asked to
        be deleted and absent from the listing is gone. Idempotent: what was counted
        already is not counted again."""
        token, listed, revision = "", set(), 0
        while True:
            page = await self._stubs[0].ListVms(
                vm_pb2.ListVmsRequest(parent=self.parent, page_size=1000, page_token=token),
                timeout=RPC_TIMEOUT_S * 6, metadata=self._md)
            now = time.monotonic()
            for vm in page.vms:
                listed.add(self._on_vm(common_pb2.ADDED, vm, now))
            self.relisted_vms += len(page.vms)
            revision, token = page.resource_version, page.next_page_token
            if not token:
                break
        now = time.monotonic()
        for vm_id in self.deleting - listed:
            self.delete.finish(vm_id, now)
        return revision

    def _on_event(self, event: vm_pb2.VmEvent, now: float) -> None:
        self._events_read += 1
        if event.resource_version > self._revision:
            self._revision = event.resource_version
        if event.type == common_pb2.BOOKMARK:
            self.watch_events[BOOKMARK_KEY] += 1
            return
        self._on_vm(event.type, event.vm, now)

    def _on_vm(self, kind: int, vm: vm_pb2.Vm, now: float) -> str:
        """Record what one VM's event (or listing) shows; returns its id."""
        state = vm.state
        self.watch_events[(kind, state)] += 1
        vm_id = vm.name[self._name_prefix:]
        conditions = vm.conditions
        reason = conditions[-1].reason if conditions else ""
        self.last_seen[vm_id] = (state, reason)
        if kind == common_pb2.DELETED:
            self.delete.finish(vm_id, now)
        elif state == SCHEDULED:
            if vm_id not in self.scheduled:
                self.scheduled[vm_id] = now
                self.server_scheduled_s.append(_since_create(vm))
        elif state == STOPPED:
            if vm_id in self.stopping:
                self.stop.finish(vm_id, now)
        elif state == RUNNING and vm_id in self.starting:
            self.start.finish(vm_id, now)
        elif state == RUNNING:
            if self.create.finish(vm_id, now):
                created_ns, updated_ns = _nanos(vm.create_time), _nanos(vm.update_time)
                self.server_running_s.append((updated_ns - created_ns) / 1e9)
                first, last = self.server_span_ns
                self.server_span_ns = [min(first, created_ns), max(last, updated_ns)]
                self.delivery_s.append(time.time() - updated_ns / 1e9)
        elif state == ERROR:
            self.create.fail(vm_id, f"ERROR {reason}".strip())
        return vm_id

    # requests ------------------------------------------------------------------------

    async def _call(self, method: str, phase: Phase, key: str, stub_index: int, make_call,
                    members: list[str] | None = None) -> None:
        """One request, sent until each of its VMs has an answer that is not transient
        (UNAVAILABLE, DEADLINE_EXCEEDED), with the same request each time, after a
        jittered backoff, at most ``resends.limit`` times (see bench.tally).
        ``make_call(stub, ids)`` sends it for ``ids``. ``members``: the request is a
        CreateVms of these VMs (``key`` names the batch): its answer is recorded VM
        by VM, its latency once per call; only the members refused transiently are
        sent again (an all-or-nothing set: all). Otherwise ``key`` is the VM."""
        ids = members if members is not None else [key]
        sends = 0
        while ids:
            sends += 1
            sent = time.monotonic()
            if phase.first_sent is None:
                phase.first_sent = sent
            try:
                response = await make_call(self._stubs[stub_index % len(self._stubs)], ids)
            except grpc.aio.AioRpcError as err:
                code = err.code()
                self.errors[method][code.name] += 1
                if method == "DeleteVm" and code == grpc.StatusCode.NOT_FOUND:
                    phase.finish(key, time.monotonic())   # already gone
                    outcomes = [(OK, "")]
                else:
                    outcomes = [(code, code.name)] * len(ids)
            else:
                answered = time.monotonic()
                phase.last_answered = answered
                phase.api_latency_s.append(answered - sent)
                outcomes = ([(OK, "")] if members is None else
                            [(_CODES.get(r.code, grpc.StatusCode.UNKNOWN), r.reason) for r in response.results])
            ids = self.resends.settle(phase, ids, outcomes, now=time.monotonic(), sends=sends,
                                      whole=self.all_or_nothing and members is not None)
            if ids:
                await asyncio.sleep(self.backoff.delay(sends - 1))

    async def _run_requests(self, method: str, phase: Phase, ids: list[str], make_call,
                            rate: float = 0.0, batches: dict[str, list[str]] | None = None) -> None:
        """``make_call(stub, key, ids)`` for every key, ``concurrency`` at a time (a
        worker resending a request holds its place: resends slow the sending down);
        with ``rate`` (requests per second) each request waits for its slot on a
        fixed schedule (open loop, capped by the concurrency) and
        ``phase.schedule_lag_s`` records how far the sends fell behind that schedule.
        ``batches``: each key names a CreateVms of these VMs (the phase counts VMs,
        ``rate`` calls)."""
        phase.requested = sum(map(len, batches.values())) if batches is not None else len(ids)
        it = iter(enumerate(ids))
        start = time.monotonic()

        async def worker(index: int) -> None:
            for i, key in it:       # shared iterator: each key is taken by exactly one worker
                if rate:
                    delay = start + i / rate - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    else:
                        phase.schedule_lag_s = max(phase.schedule_lag_s, -delay)
                await self._call(method, phase, key, index, lambda stub, sending, k=key: make_call(stub, k, sending),
                                 batches[key] if batches is not None else None)

        async with asyncio.TaskGroup() as tg:
            for i in range(min(self.concurrency, len(ids)) or 1):
                tg.create_task(worker(i))
        phase.requests_done = True
        phase.check()

    async def create_all(self) -> None:
        def vm_of(vm_id: str) -> vm_pb2.Vm:
            vm = vm_pb2.Vm(flavor=self.flavor, image=self.image)
            if self.user_data_bytes:
                vm.bootstrap.user_data = user_data(vm_id, self.user_data_bytes)
            return vm

        def make_create(stub, vm_id, _ids):
            return stub.CreateVm(vm_pb2.CreateVmRequest(
                parent=self.parent, vm_id=vm_id, request_id=self.request_id(vm_id), vm=vm_of(vm_id)),
                timeout=RPC_TIMEOUT_S, metadata=self._md)

        if self.batch <= 1:
            await self._run_requests("CreateVm", self.create, self._ids, make_create, self.rate)
            await self.create.complete.wait()
            return
        # --batch N: CreateVms of N VMs per call.
        batches = {f"batch-{i // self.batch:06d}": self._ids[i:i + self.batch]
                   for i in range(0, len(self._ids), self.batch)}
        # INDEPENDENT: each VM's request_id; all or nothing: the set's, which covers its members.
        aon = self.all_or_nothing

        def make_batch(stub, key, ids):
            requests = [vm_pb2.CreateVmRequest(vm_id=vm_id, request_id="" if aon else self.request_id(vm_id),
                                               vm=vm_of(vm_id)) for vm_id in ids]
            if aon:
                request = vm_pb2.CreateVmsRequest(
                    parent=self.parent, mode=vm_pb2.CreateVmsRequest.ALL_OR_NOTHING, requests=requests,
                    request_id=self.request_id(key), set_id=f"set-{key.removeprefix('batch-')}")
            else:
                request = vm_pb2.CreateVmsRequest(parent=self.parent, mode=vm_pb2.CreateVmsRequest.INDEPENDENT,
                                                  requests=requests)
            return stub.CreateVms(request, timeout=self.batch_timeout_s, metadata=self._md)

        await self._run_requests("CreateVms", self.create, list(batches), make_batch, self.rate / self.batch,
                                 batches)
        await self.create.complete.wait()

    async def stop_all(self) -> None:
        def make_stop(stub, vm_id, _ids):
            return stub.StopVm(vm_pb2.StopVmRequest(name=self.name(vm_id), mode=self.stop_mode),
                               timeout=RPC_TIMEOUT_S, metadata=self._md)

        ids = [vm_id for vm_id in self._ids if vm_id in self.create.done]
        self.stopping = set(ids)
        await self._run_requests("StopVm", self.stop, ids, make_stop)
        await self.stop.complete.wait()

    async def start_all(self) -> None:
        def make_start(stub, vm_id, _ids):
            return stub.StartVm(vm_pb2.StartVmRequest(name=self.name(vm_id)), timeout=RPC_TIMEOUT_S,
                                metadata=self._md)

        ids = [vm_id for vm_id in self._ids if vm_id in self.stop.done]
        self.starting = set(ids)
        await self._run_requests("StartVm", self.start, ids, make_start)
        await self.start.complete.wait()

    async def delete_all(self) -> None:
        def make_delete(stub, vm_id, _ids):
            return stub.DeleteVm(vm_pb2.DeleteVmRequest(name=self.name(vm_id)), timeout=RPC_TIMEOUT_S,
                                 metadata=self._md)

        ids = [vm_id for vm_id in self._ids if vm_id in self.create.answered]
        self.deleting = set(ids)
        await self._run_requests("DeleteVm", self.delete, ids, make_delete)
        await self.delete.complete.wait()

    async def progress(self, every_s: float, pids: dict[str, int]) -> None:
        """Every ``every_s`` seconds, one line to stderr: VMs accepted and RUNNING so
        far, RUNNING/s over the interval, those refused for good (by code and reason, the
        three most), resends, re-lists, the watch's delay (how long
        ago the last RUNNING it read was written), and the RSS of etcd and this client."""
        started = last_t = time.monotonic()
        last_running = 0
        while True:
            await asyncio.sleep(every_s)
            now = time.monotonic()
            running = len(self.create.done)
            delay = self.delivery_s[-1] if self.delivery_s else None
            rss = "  ".join(f"{name} {fmt(rss_mib(pid), ' MiB')}" for name, pid in pids.items()
                            if name in ("etcd", "bench-client"))
            print(f"[{now - started:7.0f} s] accepted {len(self.create.answered)}/{self.create.requested or self.vms}"
                  f"  RUNNING {running} ({(running - last_running) / (now - last_t):.0f}/s)"
                  f"  failed {len(self.create.failed)}"
                  + (f" {dict(self.resends.refused.most_common(3))}" if self.resends.refused else "")
                  + f"  resent {sum(self.resends.vms.values())} VMs"
                  f" in {self.resends.calls} calls  re-lists {self.relists}"
                  f"  watch delay {fmt(round(delay, 1) if delay is not None else None, ' s')}  RSS {rss}",
                  file=sys.stderr, flush=True)
            last_t, last_running = now, running

    # figures -------------------------------------------------------------------------

    def figures(self, phase: Phase, done_word: str) -> dict:
        accepted = len(phase.answered)
        done = len(phase.done)
        out: dict = {"requested": phase.requested, "accepted": accepted, done_word: done,
                     "failed": len(phase.failed)}
        if phase.first_sent is not None and phase.last_answered is not None:
            span = phase.last_answered - phase.first_sent
            out["api_seconds"] = round(span, 3)
            out["accepted_per_s"] = round(accepted / span, 1) if span > 0 else None
        if phase.first_sent is not None and phase.done:
            span = max(phase.done.values()) - phase.first_sent
            out[f"{done_word}_seconds"] = round(span, 3)
            out[f"{done_word}_per_s"] = round(done / span, 1) if span > 0 else None
        out["api_latency_ms"] = {"p50": ms(percentile(phase.api_latency_s, 50)),
                                 "p99": ms(percentile(phase.api_latency_s, 99)),
                                 "max": ms(max(phase.api_latency_s, default=None))}
        # The watch event may be read before the create's answer: count that as 0.
        lag = [max(0.0, phase.done[v] - phase.answered[v]) for v in phase.done if v in phase.answered]
        out[f"accepted_to_{done_word}_ms"] = {"p50": ms(percentile(lag, 50)), "p99": ms(percentile(lag, 99)),
                                               "max": ms(max(lag, default=None))}
        if phase.schedule_lag_s:
            out["schedule_lag_ms"] = ms(phase.schedule_lag_s)
        if phase.failed:
            out["failures"] = dict(Counter(phase.failed.values()).most_common(10))
        return out


def user_data(vm_id: str, size: int) -> bytes:
    """``size`` bytes of cloud-config, different for every VM."""
    head = f"#cloud-config\n# {vm_id}\nwrite_files:\n- path: /etc/bench\n  content: ".encode()
    return (head + (uuid.uuid4().hex * (size // 32 + 1)).encode())[:size]


def _nanos(timestamp) -> int:
    """A Timestamp in nanoseconds (without ToNanoseconds' validation, ~4x its speed)."""
    return timestamp.seconds * 1_000_000_000 + timestamp.nanos


def _since_create(vm: vm_pb2.Vm) -> float:
    """Seconds from the VM's create_time to its update_time (both set by the servers)."""
    return (_nanos(vm.update_time) - _nanos(vm.create_time)) / 1e9


def p50_p99(values: list[float]) -> dict:
    return {"p50": ms(percentile(values, 50)), "p99": ms(percentile(values, 99))}


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def ensure_project(endpoint: str, token: str, tenant: str, project: str) -> None:
    """Make the benchmark's project (unlimited) if it is not there yet."""
    from controlplane.api.errors import ApiError
    from quanta.client import Client

    with Client(endpoint, token=token, tenant=tenant) as client:
        try:
            client.create_project(project)
        except ApiError as err:
            if err.code is not grpc.StatusCode.ALREADY_EXISTS:
                raise


async def probe_health(addresses: Sequence[str], every_s: float, seen: dict[str, list[float]],
                       failed: Counter) -> None:
    """Until cancelled: every ``every_s`` seconds (per frontend, each on its own), one
    grpc.health Check to each of ``addresses`` (the frontends' own), its latency
    appended to ``seen[address]`` if it answered, else ``failed[address]`` counted
    (refused, or no answer within 30 s): how long a frontend under the benchmark's
    load takes to answer anything at all (its event loop's responsiveness, which every
    call and watch on it shares)."""
    async def probe(address: str) -> None:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                started = time.monotonic()
                try:
                    await stub.Check(health_pb2.HealthCheckRequest(), timeout=30)
                except grpc.aio.AioRpcError:
                    failed[address] += 1
                else:
                    seen.setdefault(address, []).append(time.monotonic() - started)
                await asyncio.sleep(max(0.0, every_s - (time.monotonic() - started)))
    await asyncio.gather(*(probe(a) for a in addresses))


async def run(args: argparse.Namespace, endpoint: str, pids: dict[str, int], token: str) -> dict:
    project = args.project or f"bench-{uuid.uuid4().hex[:8]}"
    await asyncio.to_thread(ensure_project, endpoint, token, args.tenant, project)
    bench = Bench(endpoint, vms=args.vms, concurrency=args.concurrency, channels=args.channels,
                  flavor=args.flavor, image=args.image, tenant=args.tenant, project=project, token=token,
                  rate=args.rate, user_data_bytes=args.user_data_bytes, stop_mode=args.stop_mode,
                  batch=args.batch, all_or_nothing=args.all_or_nothing, resend_limit=args.resend_limit,
                  backoff=Backoff(cap_s=args.resend_cap), batch_timeout_s=args.batch_timeout,
                  balance_over=args.balance_over, batched_watch=args.watch == "batched")
    report: dict = {"project": f"tenants/{args.tenant}/projects/{project}", "timed_out": False}
    pids = {**pids, "bench-client": os.getpid()}
    cpu: dict[str, dict] = {}
    watch_task: asyncio.Task | None = None
    work: asyncio.Task | None = None
    before: dict | None = None
    phase = "create"
    progress = asyncio.create_task(bench.progress(args.progress, pids)) if args.progress else None
    health: dict[str, list[float]] = {}
    unhealthy: Counter = Counter()
    prober = (asyncio.create_task(probe_health(args.balance_over, args.health_probe, health, unhealthy))
              if args.balance_over and args.health_probe else None)
    try:
        async with asyncio.timeout(args.timeout):
            revision = await bench.start_revision()
            watch_task = asyncio.create_task(bench.watch(revision))
            before = cpu_snapshot(pids)
            work = asyncio.create_task(bench.create_all())
            # A dead watch would leave us waiting for events that never come: stop on it.
            await asyncio.wait({work, watch_task}, return_when=asyncio.FIRST_COMPLETED)
            if not work.done():
                watch_task.result()  # raises what ended the watch
                raise RuntimeError("the watch ended early")
            work.result()
            cpu["create"] = cpu_delta(before, cpu_snapshot(pids))
            report["connections"] = connections_per_process(endpoint, pids)
            for phase, go in ((("stop", bench.stop_all), ("start", bench.start_all)) if args.power else ()):
                before = cpu_snapshot(pids)
                work = asyncio.create_task(go())
                await asyncio.wait({work, watch_task}, return_when=asyncio.FIRST_COMPLETED)
                if not work.done():
                    watch_task.result()
                    raise RuntimeError("the watch ended early")
                work.result()
                cpu[phase] = cpu_delta(before, cpu_snapshot(pids))
            if args.delete:
                phase = "delete"
                before = cpu_snapshot(pids)
                work = asyncio.create_task(bench.delete_all())
                await asyncio.wait({work, watch_task}, return_when=asyncio.FIRST_COMPLETED)
                if not work.done():
                    watch_task.result()
                    raise RuntimeError("the watch ended early")
                work.result()
                cpu["delete"] = cpu_delta(before, cpu_snapshot(pids))
    except TimeoutError:
        report["timed_out"] = True
    except Exception as err:  # noqa: BLE001 - report what finished, then fail
        detail = f"{err.code().name}: {err.details()}" if isinstance(err, grpc.aio.AioRpcError) else err
        report["aborted"] = f"{type(err).__name__}: {detail}"
    finally:
        if before is not None and phase not in cpu:
            cpu[phase] = cpu_delta(before, cpu_snapshot(pids))
        for task in (work, watch_task, progress, prober):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await bench.close()
    report["create"] = bench.figures(bench.create, "running")
    answered = bench.create.answered
    lag = [max(0.0, t - answered[v]) for v, t in bench.scheduled.items() if v in answered]
    report["create"]["accepted_to_scheduled_ms"] = p50_p99(lag)
    first_ns, last_ns = bench.server_span_ns
    if last_ns > first_ns:
        span_s = (last_ns - first_ns) / 1e9
        report["create"]["running_per_s_server"] = round(len(bench.server_running_s) / span_s, 1)
    report["create"]["server_timestamps_ms"] = {
        "create_to_scheduled": p50_p99(bench.server_scheduled_s),
        "create_to_running": p50_p99(bench.server_running_s),
        "running_written_to_watch_event_read": p50_p99(bench.delivery_s),
    }
    if args.power:
        report["stop"] = bench.figures(bench.stop, "stopped")
        report["start"] = bench.figures(bench.start, "running")
    if phase == "delete":
        report["delete"] = bench.figures(bench.delete, "deleted")
    unfinished = Counter(seen_as(bench.last_seen.get(v)) for v in bench.create.answered
                         if v not in bench.create.done and v not in bench.create.failed)
    if unfinished:
        report["create"]["unfinished_last_seen"] = dict(unfinished.most_common(10))
    if args.batch > 1:
        calls = len(bench.create.api_latency_s)
        report["create"]["calls"] = calls
        span = report["create"].get("api_seconds")
        report["create"]["calls_per_s"] = round(calls / span, 1) if span else None
    report["errors"] = {method: dict(codes) for method, codes in bench.errors.items() if codes}
    report["resends"] = bench.resends.summary()
    report["refused"] = dict(bench.resends.refused.most_common(10))
    report["watch_restarts"] = bench.watch_restarts
    report["relists"] = {"count": bench.relists, "vms_listed": bench.relisted_vms}
    report["watch_events"] = {event_kind(k): n for k, n in bench.watch_events.most_common()}
    report["cpu_seconds"] = {p: {n: (round(s, 2) if s is not None else None) for n, s in d.items()}
                             for p, d in cpu.items()}
    report["health_check_ms"] = {address: {**p50_p99(health.get(address, [])),
                                           "max": ms(max(health.get(address, []), default=None)),
                                           "checks": len(health.get(address, [])), "failed": unhealthy[address]}
                                 for address in sorted({*health, *unhealthy})}
    return report


# --- printing --------------------------------------------------------------------------

def seen_as(last: tuple[int, str] | None) -> str:
    """"STATE reason" of a last_seen entry."""
    if last is None:
        return "no event seen"
    state, reason = last
    return f"{vm_pb2.Vm.State.Name(state)} {reason}".strip()


def fmt(value, unit: str = "") -> str:
    return "n/a" if value is None else f"{value:g}{unit}"


def print_report(r: dict) -> None:
    c = r["create"]
    system = (f"hosts {r['hosts']}  frontends {r['frontends']}  "
              f"schedulers {r['schedulers']}x{r['shards']} shards" if r["hosts"] is not None
              else f"endpoint {r['endpoint']}")
    rate = f"rate {r['rate']:g}/s  " if r["rate"] else ""
    batch = r.get("batch") or 1
    batched = (f"batch {batch} VMs per CreateVms{' (all or nothing)' if r.get('all_or_nothing') else ''}  "
               if batch > 1 else "")
    print(f"VMs {r['vms']}  {system}  concurrency {r['concurrency']}  {rate}{batched}flavor {r['flavor']}  "
          f"({r['project']})")
    print(f"machine: {r['machine']['nproc']} CPUs, load average at start {r['machine']['loadavg_at_start']}")
    print(f"accepted            {c['accepted']}/{c['requested']} in {fmt(c.get('api_seconds'), ' s')}"
          f"  -> {fmt(c.get('accepted_per_s'))} accepted/s")
    per_s = c.get("running_per_s")
    print(f"RUNNING             {c['running']}/{c['requested']} in {fmt(c.get('running_seconds'), ' s')}"
          f"  -> {fmt(per_s)} RUNNING/s = {fmt(round(per_s * 60) if per_s else None)} creations/min")
    lat, lag = c["api_latency_ms"], c["accepted_to_running_ms"]
    if batch > 1:
        print(f"API CreateVms calls {c.get('calls')} -> {fmt(c.get('calls_per_s'))} calls/s of {batch} VMs;"
              f" per-call latency p50 {fmt(lat['p50'], ' ms')}  p99 {fmt(lat['p99'], ' ms')}"
              f"  max {fmt(lat['max'], ' ms')}")
    else:
        print(f"API create latency  p50 {fmt(lat['p50'], ' ms')}  p99 {fmt(lat['p99'], ' ms')}"
              f"  max {fmt(lat['max'], ' ms')}")
    print(f"accepted->RUNNING   p50 {fmt(lag['p50'], ' ms')}  p99 {fmt(lag['p99'], ' ms')}"
          f"  max {fmt(lag['max'], ' ms')}")
    sched = c["accepted_to_scheduled_ms"]
    print(f"  of which ->SCHED. p50 {fmt(sched['p50'], ' ms')}  p99 {fmt(sched['p99'], ' ms')}"
          "  (SCHEDULED seen; the rest is the agent)")
    st = c["server_timestamps_ms"]
    print(f"server timestamps   {fmt(c.get('running_per_s_server'))} RUNNING/s (first create_time -> last "
          "RUNNING update_time, i.e. without the watch's delivery lag)")
    print(f"                    create->SCHEDULED p50 {fmt(st['create_to_scheduled']['p50'])} "
          f"p99 {fmt(st['create_to_scheduled']['p99'])} ms, create->RUNNING "
          f"p50 {fmt(st['create_to_running']['p50'])} p99 {fmt(st['create_to_running']['p99'])} ms, "
          f"RUNNING written->seen here p50 {fmt(st['running_written_to_watch_event_read']['p50'])} "
          f"p99 {fmt(st['running_written_to_watch_event_read']['p99'])} ms")
    if c.get("schedule_lag_ms"):
        print(f"paced sends fell behind their schedule by up to {c['schedule_lag_ms']} ms")
    if c.get("unfinished_last_seen"):
        print(f"not RUNNING, last seen as: {c['unfinished_last_seen']}")
    if c.get("failures"):
        print(f"failed VMs          {c['failed']}: {c['failures']}")
    if "delete" in r:
        d = r["delete"]
        print(f"deleted             {d['deleted']}/{d['requested']} in {fmt(d.get('deleted_seconds'), ' s')}"
              f"  -> {fmt(d.get('deleted_per_s'))} deletions/s  "
              f"(DeleteVm p50 {fmt(d['api_latency_ms']['p50'])}"
              f" p99 {fmt(d['api_latency_ms']['p99'])} ms; requested->gone p50 "
              f"{fmt(d['accepted_to_deleted_ms']['p50'])} p99 {fmt(d['accepted_to_deleted_ms']['p99'])} ms)")
    for word, done in (("stop", "stopped"), ("start", "running")):
        if word in r:
            f = r[word]
            print(f"{word:<20}{f[done]}/{f['requested']} in {fmt(f.get(done + '_seconds'), ' s')}"
                  f"  -> {fmt(f.get(done + '_per_s'))} {done.upper()}/s; accepted {fmt(f.get('accepted_per_s'))}/s  "
                  f"(API p50 {fmt(f['api_latency_ms']['p50'])} p99 {fmt(f['api_latency_ms']['p99'])} ms; "
                  f"requested->{done.upper()} p50 {fmt(f['accepted_to_' + done + '_ms']['p50'])}"
                  f" p99 {fmt(f['accepted_to_' + done + '_ms']['p99'])} ms)")
    errors = ", ".join(f"{m} {code} {n}" for m, codes in r["errors"].items() for code, n in codes.items())
    print(f"errors by code      {errors or 'none'}  (every attempt; watch restarts {r['watch_restarts']})")
    rs = r["resends"]
    print(f"resent              {sum(rs['vms'].values())} VMs in {rs['calls']} calls {rs['vms'] or ''}"
          f"  (same request_id; at most {rs['limit']} sends each)")
    if r["refused"]:
        print(f"refused for good    {r['refused']}")
    print(f"re-lists            {r['relists']['count']} (watch OUT_OF_RANGE: listed again, "
          f"{r['relists']['vms_listed']} VMs read)")
    events = r["watch_events"]
    print(f"watch events        {sum(events.values())}: "
          + ", ".join(f"{kind} {n}" for kind, n in events.items()))
    for phase, figures in r["cpu_seconds"].items():
        count = r[phase].get({"create": "running", "start": "running", "stop": "stopped"}.get(phase, "deleted")) or 0
        total = sum(v for v in figures.values() if v is not None)
        system = sum(v for n, v in figures.items() if v is not None and n != "bench-client")
        parts = "  ".join(f"{n} {fmt(v)}" for n, v in figures.items())
        per = f"{system / count * 1000:.2f} ms" if count else "n/a"
        print(f"CPU s ({phase}):     {parts}  | total {total:.2f}, system without client {system:.2f}"
              f" = {per} per VM")
        frontends = {n: v for n, v in figures.items() if n.startswith("frontend") and v is not None}
        spent = sum(frontends.values())
        if len(frontends) > 1 and spent > 0:
            conns = r.get("connections") or {}
            print("  frontends' share: " + "  ".join(
                f"{n} {100 * v / spent:.0f} %" + (f" ({conns[n]} connections)" if n in conns else "")
                for n, v in frontends.items()))
    for address, h in (r.get("health_check_ms") or {}).items():
        print(f"health checks       {address}: {h['checks']} answered during the run, p50 {fmt(h['p50'], ' ms')}"
              f"  p99 {fmt(h['p99'], ' ms')}  max {fmt(h['max'], ' ms')}, {h['failed']} failed"
              "  (how long the frontend took to answer)")
    if r.get("timed_out"):
        print(f"TIMED OUT after {r['timeout_s']} s")
    if r.get("aborted"):
        print(f"ABORTED: {r['aborted']}")


# --- main ------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--endpoint", help="host:port of a running system (default: start a LocalSystem)")
    p.add_argument("--token", help="with --endpoint: bearer token (default: $QUANTA_TOKEN or `quanta up`'s)")
    p.add_argument("--vms", type=int, default=5000)
    p.add_argument("--concurrency", type=int, default=64, help="requests in flight")
    p.add_argument("--rate", type=float, default=0.0,
                   help="creates per second, paced (open loop, capped by --concurrency); 0: flat out")
    p.add_argument("--balance-over", type=lambda text: [a for a in text.split(",") if a], default=[],
                   metavar="HOST:PORT,...", help="the frontends' own addresses (frontend --also-listen): each "
                   "request channel sends its calls round robin over them (default with a LocalSystem)")
    p.add_argument("--balance-connections", action="store_true",
                   help="with a LocalSystem: use its shared port only (SO_REUSEPORT spreads the channels' "
                   "connections, not their calls), as before --balance-over")
    p.add_argument("--channels", type=int, default=4,
                   help="gRPC channels for the requests, each its own TCP connection (SO_REUSEPORT spreads "
                   "connections, not calls, over the frontends: the report shows each frontend's share of the "
                   "CPU and of the connections); requests go round robin over them by worker")
    p.add_argument("--hosts", type=int, default=100, help="simulated hosts (LocalSystem)")
    p.add_argument("--frontends", type=int, default=2, help="(LocalSystem)")
    p.add_argument("--schedulers", type=int, default=1, help="(LocalSystem)")
    p.add_argument("--shards", type=int, default=1, help="(LocalSystem)")
    p.add_argument("--latency", default="zero", help="sim driver latency profile (LocalSystem)")
    p.add_argument("--no-metrics", action="store_true", help="LocalSystem processes without /metrics")
    p.add_argument("--flavor", default="small")
    p.add_argument("--image", default="ubuntu")
    p.add_argument("--tenant", default="default")
    p.add_argument("--project", help="an empty project to create in (default: a fresh bench-<random>)")
    p.add_argument("--batch", type=int, default=1, metavar="N",
                   help="create N VMs per call (CreateVms, INDEPENDENT; --rate counts VMs); 1: CreateVm each")
    p.add_argument("--watch", choices=("batched", "per-event"), default="batched",
                   help="watch through WatchVmBatches (several events a message; default) or WatchVms (one each)")
    p.add_argument("--all-or-nothing", action="store_true",
                   help="with --batch: each call's VMs form an all-or-nothing set")
    p.add_argument("--user-data-bytes", type=int, default=0,
                   help="give every VM this many bytes of cloud-init user data (bootstrap data)")
    p.add_argument("--power", action="store_true",
                   help="then stop them all (until STOPPED), then start them all (until RUNNING)")
    p.add_argument("--stop-mode", choices=("soft", "hard"), default="soft", help="with --power")
    p.add_argument("--delete", action="store_true", help="then delete them all and wait until gone")
    p.add_argument("--resend-limit", type=int, default=30, metavar="N",
                   help="send a request refused UNAVAILABLE or DEADLINE_EXCEEDED again (same request_id) until "
                   "it was sent N times (default 30); 1: never resend")
    p.add_argument("--resend-cap", type=float, default=10.0, metavar="SECONDS",
                   help="longest backoff before a resend (exponential from 0.2 s, jittered; default 10)")
    p.add_argument("--batch-timeout", type=float, default=RPC_TIMEOUT_S * 6, metavar="SECONDS",
                   help="deadline of a CreateVms call (default 60); a short one makes calls time out "
                   "(DEADLINE_EXCEEDED) and be resent: a check that resends never count a VM twice")
    p.add_argument("--health-probe", type=float, default=0.5, metavar="SECONDS",
                   help="with --balance-over (default with a LocalSystem): a health check to each frontend's own "
                   "address this often, their latencies reported (how responsive the frontends stay under the "
                   "load); 0: none")
    p.add_argument("--progress", type=float, default=0.0, metavar="SECONDS",
                   help="print a progress line to stderr this often (accepted, RUNNING, rate, resends, "
                   "re-lists, watch delay, RSS of etcd and the client); 0: none")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds for the run (after start-up)")
    p.add_argument("--start-timeout", type=float, default=120.0, help="seconds for a LocalSystem to start")
    p.add_argument("--pid", action="append", default=[], metavar="NAME=PID",
                   help="with --endpoint: also report the CPU of this process (repeatable)")
    p.add_argument("--keep-logs", action="store_true", help="keep the LocalSystem's data dir and logs")
    p.add_argument("--json", action="store_true", help="also print the figures as one JSON object")
    args = p.parse_args(argv)
    if args.vms < 1 or args.concurrency < 1 or args.channels < 1 or args.resend_limit < 1:
        p.error("--vms, --concurrency, --channels and --resend-limit must be positive")
    if args.resend_cap <= 0 or args.batch_timeout <= 0 or args.progress < 0:
        p.error("--resend-cap and --batch-timeout must be positive, --progress not negative")
    if not 1 <= args.batch <= 1000:
        p.error("--batch must be within 1..1000 (CreateVms takes at most 1,000 VMs)")
    if args.all_or_nothing and args.batch < 2:
        p.error("--all-or-nothing needs --batch N (N >= 2)")
    if not 0 <= args.user_data_bytes <= 64 * 1024:
        p.error("--user-data-bytes must be within 0..65536 (the API's limit)")
    try:
        args.pids = {name: int(pid) for name, pid in (item.split("=", 1) for item in args.pid)}
    except ValueError:
        p.error("--pid takes NAME=PID")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    exit_on_sigterm()  # `timeout`, kill: the LocalSystem is still stopped
    loadavg = os.getloadavg()[0]
    system = None
    pids = args.pids
    try:
        if args.endpoint:
            from quanta.client import resolve_token

            endpoint = args.endpoint
            token = resolve_token(args.token)
        else:
            from quanta.local import LocalSystem

            data_dir = None
            if args.keep_logs:
                import tempfile

                data_dir = tempfile.mkdtemp(prefix="quanta-bench-")
            system = LocalSystem(hosts=args.hosts, frontends=args.frontends, schedulers=args.schedulers,
                                 shards=args.shards, latency=args.latency, metrics=not args.no_metrics,
                                 data_dir=data_dir)
            started = time.monotonic()
            system.start(timeout=args.start_timeout)
            print(f"started LocalSystem in {time.monotonic() - started:.1f} s (logs in {system.log_dir})",
                  file=sys.stderr)
            endpoint = system.endpoint
            token = system.admin_token
            if not args.balance_over and not args.balance_connections:
                args.balance_over = list(system.frontend_endpoints)
            pids = {"etcd": system.etcd.process.pid,
                    **{name: p.pid for name, p in system.processes.items()}, **pids}
        try:
            import uvloop

            runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
        except ImportError:
            runner = asyncio.Runner()
        with runner:
            report = runner.run(run(args, endpoint, pids, token))
    finally:
        if system is not None:
            if args.keep_logs:
                system.stop()
            else:
                system.cleanup()
    report = {"vms": args.vms, "hosts": args.hosts if system else None, "concurrency": args.concurrency,
              "rate": args.rate or None, "batch": args.batch, "all_or_nothing": args.all_or_nothing,
              "watch": args.watch,
              "frontends": args.frontends if system else None,
              "schedulers": args.schedulers if system else None,
              "shards": args.shards if system else None, "flavor": args.flavor, "endpoint": endpoint,
              "timeout_s": args.timeout,
              "machine": {"nproc": os.cpu_count(), "loadavg_at_start": round(loadavg, 2)}, **report}
    print_report(report)
    if args.json:
        print(json.dumps(report, sort_keys=True))
    if report["timed_out"]:
        return 2
    ok = report["create"]["running"] == args.vms and not report.get("aborted")
    if args.power:
        ok = ok and all(report[p][d] == args.vms for p, d in (("stop", "stopped"), ("start", "running")))
    if args.delete:
        ok = ok and "delete" in report and report["delete"]["deleted"] == report["delete"]["requested"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
