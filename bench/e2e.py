"""End-to-end creation benchmark: VMs created through the gRPC API until RUNNING.

    python bench/e2e.py --vms 5000 --hosts 100            # starts a LocalSystem (sim, zero latency)
    python bench/e2e.py --endpoint 127.0.0.1:7000 --vms 500  # against a running system
    python bench/e2e.py --vms 500 --delete --json
    python bench/e2e.py --vms 5000 --hosts 100 --user-data-bytes 4096   # bootstrap data on every VM
    python bench/e2e.py --vms 5000 --hosts 100 --power                  # then stop all, start all
    python bench/e2e.py --vms 5000 --hosts 100 --batch 100              # CreateVms of 100 VMs per call

Creates ``--vms`` VMs in a fresh project (``tenants/default/projects/bench-<random>``)
with ``--concurrency`` CreateVm calls in flight, each with its own vm_id and
request_id, while one WatchVms stream (from the revision before the first create)
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
the API latency reported is per call (with calls/s); VMs refused in an answer are
counted by code and reason. Without it (or with 1) nothing changes.

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
from dataclasses import dataclass, field

import grpc

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from controlplane.gen.quanta.v1 import common_pb2, vm_pb2, vm_pb2_grpc  # noqa: E402

SCHEDULED = vm_pb2.Vm.SCHEDULED
RUNNING = vm_pb2.Vm.RUNNING
STOPPED = vm_pb2.Vm.STOPPED
ERROR = vm_pb2.Vm.ERROR
RETRIED_CODES = frozenset({grpc.StatusCode.UNAVAILABLE})
MAX_ATTEMPTS = 4          # per request; retries reuse the request_id
MAX_WATCH_RESTARTS = 20   # per run
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


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


# --- the run ---------------------------------------------------------------------------

@dataclass
class Phase:
    """What one phase (create or delete) saw, on the client's monotonic clock."""
    requested: int = 0
    first_sent: float | None = None
    last_answered: float | None = None
    answered: dict[str, float] = field(default_factory=dict)       # vm_id -> answer time
    api_latency_s: list[float] = field(default_factory=list)
    done: dict[str, float] = field(default_factory=dict)           # vm_id -> RUNNING / DELETED seen
    failed: dict[str, str] = field(default_factory=dict)           # vm_id -> why (ERROR state, gRPC code)
    requests_done: bool = False
    schedule_lag_s: float = 0.0                                    # with --rate: worst send delay
    complete: asyncio.Event = field(default_factory=asyncio.Event)

    def check(self) -> None:
        if self.requests_done and len(self.done) + len(self.failed) >= self.requested:
            self.complete.set()


class Bench:
    def __init__(self, endpoint: str, *, vms: int, concurrency: int, channels: int, flavor: str, image: str,
                 tenant: str, project: str, token: str, rate: float = 0.0, user_data_bytes: int = 0,
                 stop_mode: str = "soft", batch: int = 1, all_or_nothing: bool = False):
        self.rate = rate
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
                                                                   "StopVm", "StartVm")}
        self.refused: Counter = Counter()   # CreateVms: VMs refused in an answer, by code and reason
        self.retries = 0
        self.watch_restarts = 0
        self.create = Phase()
        self.last_seen: dict[str, str] = {}       # vm_id -> "STATE reason" of its last event
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
        self.watch_events: Counter = Counter()   # by "TYPE" or "TYPE/STATE"
        # One connection per channel (no shared subchannel pool), so that SO_REUSEPORT
        # spreads the calls over the frontends that share the port.
        options = [("grpc.use_local_subchannel_pool", 1)]
        self._channels = [grpc.aio.insecure_channel(endpoint, options=options)
                          for _ in range(max(1, channels))]
        self._watch_channel = grpc.aio.insecure_channel(endpoint, options=options)
        self._stubs = [vm_pb2_grpc.VmServiceStub(c) for c in self._channels]
        self._watch_stub = vm_pb2_grpc.VmServiceStub(self._watch_channel)
        self._md = (("authorization", f"Bearer {token}"),)
        self._revision = 0
        self._name_prefix = len(self.parent) + len("/vms/")
        self._ids = [f"vm-{i:06d}" for i in range(vms)]

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
        """Record, per VM, when RUNNING (or ERROR) and DELETED were first seen.
        Resumes after the last revision seen when the stream breaks or ends (bounded)."""
        self._revision = revision
        while True:
            stream = self._watch_stub.WatchVms(
                vm_pb2.WatchVmsRequest(parent=self.parent, resource_version=self._revision), metadata=self._md)
            try:
                async for event in stream:
                    self._on_event(event, time.monotonic())
                code = "stream ended"
            except grpc.aio.AioRpcError as err:
                if err.code() == grpc.StatusCode.CANCELLED:
                    raise
                code = err.code().name
            finally:
                stream.cancel()
            self.errors["WatchVms"][code] += 1
            if self.watch_restarts >= MAX_WATCH_RESTARTS:
                raise RuntimeError(f"WatchVms failed {self.watch_restarts + 1} times; last: {code}")
            self.watch_restarts += 1
            await asyncio.sleep(min(0.1 * 2 ** self.watch_restarts, 2.0))

    def _on_event(self, event: vm_pb2.VmEvent, now: float) -> None:
        self._revision = max(self._revision, event.resource_version)
        if event.type == common_pb2.BOOKMARK:
            self.watch_events["BOOKMARK"] += 1
            return
        vm = event.vm
        state = vm_pb2.Vm.State.Name(vm.state)
        self.watch_events[f"{common_pb2.EventType.Name(event.type)}/{state}"] += 1
        vm_id = vm.name[self._name_prefix:]
        reason = vm.conditions[-1].reason if vm.conditions else ""
        self.last_seen[vm_id] = f"{state} {reason}".strip()
        if event.type == common_pb2.DELETED:
            if vm_id not in self.delete.done:
                self.delete.done[vm_id] = now
                self.delete.check()
        elif vm.state == SCHEDULED:
            if vm_id not in self.scheduled:
                self.scheduled[vm_id] = now
                self.server_scheduled_s.append(_since_create(vm))
        elif vm.state == STOPPED:
            if vm_id in self.stopping and vm_id not in self.stop.done:
                self.stop.done[vm_id] = now
                self.stop.check()
        elif vm.state == RUNNING and vm_id in self.starting:
            if vm_id not in self.start.done:
                self.start.done[vm_id] = now
                self.start.check()
        elif vm.state == RUNNING:
            if vm_id not in self.create.done:
                self.create.done[vm_id] = now
                created_ns, updated_ns = vm.create_time.ToNanoseconds(), vm.update_time.ToNanoseconds()
                self.server_running_s.append((updated_ns - created_ns) / 1e9)
                first, last = self.server_span_ns
                self.server_span_ns = [min(first, created_ns), max(last, updated_ns)]
                self.delivery_s.append(time.time() - updated_ns / 1e9)
                self.create.check()
        elif vm.state == ERROR and vm_id not in self.create.done:
            self.create.failed.setdefault(vm_id, f"ERROR {reason}".strip())
            self.create.check()

    # requests ------------------------------------------------------------------------

    async def _call(self, method: str, phase: Phase, vm_id: str, stub_index: int, make_call,
                    members: list[str] | None = None) -> None:
        """One request, retried with the same request on UNAVAILABLE (bounded).
        ``members``: the request is a CreateVms of these VMs (``vm_id`` names the
        batch): its answer is recorded VM by VM, its latency once per call."""
        for attempt in range(MAX_ATTEMPTS):
            sent = time.monotonic()
            if phase.first_sent is None:
                phase.first_sent = sent
            try:
                response = await make_call(self._stubs[stub_index % len(self._stubs)])
            except grpc.aio.AioRpcError as err:
                self.errors[method][err.code().name] += 1
                if err.code() in RETRIED_CODES and attempt + 1 < MAX_ATTEMPTS:
                    self.retries += 1
                    await asyncio.sleep(0.05 * 2 ** attempt)
                    continue
                if method == "DeleteVm" and err.code() == grpc.StatusCode.NOT_FOUND:
                    phase.done.setdefault(vm_id, time.monotonic())  # already gone
                else:
                    for failed_id in members if members is not None else [vm_id]:
                        phase.failed.setdefault(failed_id, err.code().name)
                phase.check()
                return
            answered = time.monotonic()
            phase.last_answered = answered
            phase.api_latency_s.append(answered - sent)
            if members is None:
                phase.answered[vm_id] = answered
                return
            for member, result in zip(members, response.results, strict=False):
                if result.code == 0:
                    phase.answered[member] = answered
                else:
                    why = f"{_CODES.get(result.code, grpc.StatusCode.UNKNOWN).name} {result.reason}"
                    self.refused[why] += 1
                    phase.failed.setdefault(member, why)
            phase.check()
            return

    async def _run_requests(self, method: str, phase: Phase, ids: list[str], make_call,
                            rate: float = 0.0, batches: dict[str, list[str]] | None = None) -> None:
        """``make_call`` for every id, ``concurrency`` at a time; with ``rate`` (requests
        per second) each request waits for its slot on a fixed schedule (open loop,
        capped by the concurrency) and ``phase.schedule_lag_s`` records how far the
        sends fell behind that schedule. ``batches``: each id names a CreateVms of
        these VMs (the phase counts VMs, ``rate`` calls)."""
        phase.requested = sum(map(len, batches.values())) if batches is not None else len(ids)
        it = iter(enumerate(ids))
        start = time.monotonic()

        async def worker(index: int) -> None:
            for i, vm_id in it:       # shared iterator: each id is taken by exactly one worker
                if rate:
                    delay = start + i / rate - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    else:
                        phase.schedule_lag_s = max(phase.schedule_lag_s, -delay)
                await self._call(method, phase, vm_id, index, lambda stub, v=vm_id: make_call(stub, v),
                                 batches[vm_id] if batches is not None else None)

        async with asyncio.TaskGroup() as tg:
            for i in range(min(self.concurrency, len(ids)) or 1):
                tg.create_task(worker(i))
        phase.requests_done = True
        phase.check()

    async def create_all(self) -> None:
        # One request_id per VM, kept across retries, so a retry never makes a second VM.
        request_ids = {vm_id: uuid.uuid4().hex for vm_id in self._ids}

        def vm_of(vm_id: str) -> vm_pb2.Vm:
            vm = vm_pb2.Vm(flavor=self.flavor, image=self.image)
            if self.user_data_bytes:
                vm.bootstrap.user_data = user_data(vm_id, self.user_data_bytes)
            return vm

        def make_create(stub, vm_id):
            return stub.CreateVm(vm_pb2.CreateVmRequest(
                parent=self.parent, vm_id=vm_id, request_id=request_ids[vm_id], vm=vm_of(vm_id)),
                timeout=RPC_TIMEOUT_S, metadata=self._md)

        if self.batch <= 1:
            await self._run_requests("CreateVm", self.create, self._ids, make_create, self.rate)
            await self.create.complete.wait()
            return
        # --batch N: CreateVms of N VMs per call.
        batches = {f"batch-{i // self.batch:06d}": self._ids[i:i + self.batch]
                   for i in range(0, len(self._ids), self.batch)}
        # INDEPENDENT: each VM's request_id; all or nothing: the set's, which covers its members.
        set_ids = {key: uuid.uuid4().hex for key in batches}
        aon = self.all_or_nothing

        def make_batch(stub, key):
            requests = [vm_pb2.CreateVmRequest(vm_id=vm_id, request_id="" if aon else request_ids[vm_id],
                                               vm=vm_of(vm_id)) for vm_id in batches[key]]
            if aon:
                request = vm_pb2.CreateVmsRequest(
                    parent=self.parent, mode=vm_pb2.CreateVmsRequest.ALL_OR_NOTHING, requests=requests,
                    request_id=set_ids[key], set_id=f"set-{key.removeprefix('batch-')}")
            else:
                request = vm_pb2.CreateVmsRequest(parent=self.parent, mode=vm_pb2.CreateVmsRequest.INDEPENDENT,
                                                  requests=requests)
            return stub.CreateVms(request, timeout=RPC_TIMEOUT_S * 6, metadata=self._md)

        await self._run_requests("CreateVms", self.create, list(batches), make_batch, self.rate / self.batch,
                                 batches)
        await self.create.complete.wait()

    async def stop_all(self) -> None:
        def make_stop(stub, vm_id):
            return stub.StopVm(vm_pb2.StopVmRequest(name=self.name(vm_id), mode=self.stop_mode),
                               timeout=RPC_TIMEOUT_S, metadata=self._md)

        ids = [vm_id for vm_id in self._ids if vm_id in self.create.done]
        self.stopping = set(ids)
        await self._run_requests("StopVm", self.stop, ids, make_stop)
        await self.stop.complete.wait()

    async def start_all(self) -> None:
        def make_start(stub, vm_id):
            return stub.StartVm(vm_pb2.StartVmRequest(name=self.name(vm_id)), timeout=RPC_TIMEOUT_S,
                                metadata=self._md)

        ids = [vm_id for vm_id in self._ids if vm_id in self.stop.done]
        self.starting = set(ids)
        await self._run_requests("StartVm", self.start, ids, make_start)
        await self.start.complete.wait()

    async def delete_all(self) -> None:
        def make_delete(stub, vm_id):
            return stub.DeleteVm(vm_pb2.DeleteVmRequest(name=self.name(vm_id)), timeout=RPC_TIMEOUT_S,
                                 metadata=self._md)

        ids = [vm_id for vm_id in self._ids if vm_id in self.create.answered]
        await self._run_requests("DeleteVm", self.delete, ids, make_delete)
        await self.delete.complete.wait()

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


def _since_create(vm: vm_pb2.Vm) -> float:
    """Seconds from the VM's create_time to its update_time (both set by the servers)."""
    return (vm.update_time.ToNanoseconds() - vm.create_time.ToNanoseconds()) / 1e9


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


async def run(args: argparse.Namespace, endpoint: str, pids: dict[str, int], token: str) -> dict:
    project = args.project or f"bench-{uuid.uuid4().hex[:8]}"
    await asyncio.to_thread(ensure_project, endpoint, token, args.tenant, project)
    bench = Bench(endpoint, vms=args.vms, concurrency=args.concurrency, channels=args.channels,
                  flavor=args.flavor, image=args.image, tenant=args.tenant, project=project, token=token,
                  rate=args.rate, user_data_bytes=args.user_data_bytes, stop_mode=args.stop_mode,
                  batch=args.batch, all_or_nothing=args.all_or_nothing)
    report: dict = {"project": f"tenants/{args.tenant}/projects/{project}", "timed_out": False}
    pids = {**pids, "bench-client": os.getpid()}
    cpu: dict[str, dict] = {}
    watch_task: asyncio.Task | None = None
    work: asyncio.Task | None = None
    before: dict | None = None
    phase = "create"
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
        for task in (work, watch_task):
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
    unfinished = Counter(bench.last_seen.get(v, "no event seen") for v in bench.create.answered
                         if v not in bench.create.done and v not in bench.create.failed)
    if unfinished:
        report["create"]["unfinished_last_seen"] = dict(unfinished.most_common(10))
    if args.batch > 1:
        calls = len(bench.create.api_latency_s)
        report["create"]["calls"] = calls
        span = report["create"].get("api_seconds")
        report["create"]["calls_per_s"] = round(calls / span, 1) if span else None
        if bench.refused:
            report["create"]["refused_in_answers"] = dict(bench.refused.most_common(10))
    report["errors"] = {method: dict(codes) for method, codes in bench.errors.items() if codes}
    report["retries"] = bench.retries
    report["watch_restarts"] = bench.watch_restarts
    report["watch_events"] = dict(bench.watch_events.most_common())
    report["cpu_seconds"] = {p: {n: (round(s, 2) if s is not None else None) for n, s in d.items()}
                             for p, d in cpu.items()}
    return report


# --- printing --------------------------------------------------------------------------

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
        if c.get("refused_in_answers"):
            print(f"VMs refused in answers: {c['refused_in_answers']}")
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
    print(f"errors by code      {errors or 'none'}  (retries {r['retries']}, watch restarts "
          f"{r['watch_restarts']})")
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
    p.add_argument("--channels", type=int, default=4,
                   help="gRPC connections for the requests (spread over frontends by SO_REUSEPORT)")
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
    p.add_argument("--all-or-nothing", action="store_true",
                   help="with --batch: each call's VMs form an all-or-nothing set")
    p.add_argument("--user-data-bytes", type=int, default=0,
                   help="give every VM this many bytes of cloud-init user data (bootstrap data)")
    p.add_argument("--power", action="store_true",
                   help="then stop them all (until STOPPED), then start them all (until RUNNING)")
    p.add_argument("--stop-mode", choices=("soft", "hard"), default="soft", help="with --power")
    p.add_argument("--delete", action="store_true", help="then delete them all and wait until gone")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds for the run (after start-up)")
    p.add_argument("--start-timeout", type=float, default=120.0, help="seconds for a LocalSystem to start")
    p.add_argument("--pid", action="append", default=[], metavar="NAME=PID",
                   help="with --endpoint: also report the CPU of this process (repeatable)")
    p.add_argument("--keep-logs", action="store_true", help="keep the LocalSystem's data dir and logs")
    p.add_argument("--json", action="store_true", help="also print the figures as one JSON object")
    args = p.parse_args(argv)
    if args.vms < 1 or args.concurrency < 1 or args.channels < 1:
        p.error("--vms, --concurrency and --channels must be positive")
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
