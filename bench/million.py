"""The million-VM run: VMs created through CreateVms until RUNNING, then what it costs.

    python bench/million.py                                  # 1,000,000 VMs on 1,000 hosts
    python bench/million.py --vms 100000 --snapshot-count 100000   # a smaller run, etcd's default snapshots
    python bench/million.py --vms 50000 --hosts 100 --no-recovery   # a quick look

Starts a LocalSystem (sim driver at zero latency; two sim agent processes, each with
half of the ``--hosts`` in a zone of its own and a /9 of addresses, hosts big enough
for every VM) whose etcd runs with ``--snapshot-count`` (how many raft entries etcd
keeps in memory between snapshots) and ``GOGC``; runs ``bench/e2e.py --batch N``
against it (its report is printed as it comes; every ``--progress`` seconds it prints
a line to stderr: VMs admitted and RUNNING, the rate over the interval, resends,
re-lists, how late the watch is, etcd's and the client's RSS). The client resends
what the frontends refuse UNAVAILABLE or DEADLINE_EXCEEDED (same request_id; at most
``--resend-limit`` sends) and, should its watch fall behind etcd's compaction
(OUT_OF_RANGE), lists the project again and watches on from there. Then it prints, at
that size:

- etcd's db file size and its own size metrics, and the peak RSS (``VmHWM``) of every
  process of the system and of the benchmark client;
- the scheduler's recovery: SIGKILLed and started again, the seconds until a VM created
  after the restart is RUNNING (from the kill and from the restart; the dead
  process's shard lease expires after ``--lease-ttl`` first);
- an agent's recovery: agent-0 (half the hosts and VMs) SIGKILLed and started again,
  the seconds until it has listed its bindings (its log's ``bindings listed``), until
  its hosts are READY again, and until a VM created after the restart in its zone
  is RUNNING.

Leases (scheduler shards, agents' hosts) last ``--lease-ttl`` seconds, 30 by default:
with 10 s the processes lost their leases under this load (docs/performance.md).

The recoveries are measured whenever the client ran to its end, also when some VMs
were refused or not RUNNING (the report's ``all_running`` says). SIGTERM stops the
client, then the system.

Exit status: 0 when every VM reached RUNNING and both recoveries ended, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import signal
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from bench.procfs import memory_kib  # noqa: E402
from bench.recovery import recovery_of_agent, recovery_of_scheduler  # noqa: E402
from bench.teardown import exit_on_sigterm  # noqa: E402
from quanta.local import LocalSystem  # noqa: E402


def peak_rss_mib(pid: int | None) -> float | None:
    """``VmHWM`` of ``pid`` (its peak resident set) in MiB; None when it is gone
    (or a zombie: a dead benchmark client not reaped yet)."""
    kib = memory_kib(pid, "VmHWM")
    return None if kib is None else kib / 1024


def etcd_metrics(endpoint: str, names: tuple[str, ...]) -> dict[str, float]:
    text = urllib.request.urlopen(endpoint + "/metrics", timeout=30).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in names:
            out[name] = out.get(name, 0.0) + float(line.rpartition(" ")[2])
    return out


def sim_agent(i: int, hosts: int, per_host: int, lease_ttl: int, state_dir: pathlib.Path) -> list[str]:
    return ["--hosts", str(hosts), "--host-prefix", f"sim{i or ''}", "--latency", "zero",
            "--state-dir", str(state_dir), "--lease-ttl", str(lease_ttl),
            "--host-vcpus", str(max(128, per_host)), "--host-memory-mib", str(max(512, per_host) * 1024),
            "--network", f"10.{128 * i}.0.0/9", "--zones", f"zone-{i}"]


def loop_seconds() -> float:
    """Seconds this Python takes for 10,000,000 additions in a loop: how fast this
    machine's core is now, to read CPU figures of different runs and machines against
    (1.7-3.2 s seen on 2026-12-02's AMD EPYC vCPUs)."""
    start = time.perf_counter()
    total = 0
    for i in range(10_000_000):
        total += i
    return round(time.perf_counter() - start, 2)


def log_has(path: pathlib.Path, offset: int, text: str) -> bool:
    with open(path, "rb") as f:
        f.seek(offset)
        return text.encode() in f.read()


def restart_of(system: LocalSystem, name: str, offsets: dict[str, int] | None = None):
    """A callable that SIGKILLs the system's process ``name`` and starts it again;
    ``offsets[name]``, if given, is set to its log's size just before (where what the
    restarted process writes begins)."""
    process = system.processes[name]

    def restart() -> None:
        if offsets is not None:
            offsets[name] = process.log_path.stat().st_size
        process.kill(signal.SIGKILL)
        process.start()
    return restart


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vms", type=int, default=1_000_000)
    p.add_argument("--hosts", type=int, default=1000)
    p.add_argument("--batch", type=int, default=1000, help="VMs per CreateVms call")
    p.add_argument("--concurrency", type=int, default=8, help="CreateVms calls in flight")
    p.add_argument("--frontends", type=int, default=2)
    p.add_argument("--snapshot-count", type=int, default=10000, help="etcd --snapshot-count")
    p.add_argument("--gogc", default="", help="etcd's GOGC (default: Go's, 100)")
    p.add_argument("--lease-ttl", type=int, default=30,
                   help="seconds of the scheduler's and agents' leases (default 30; 10 lost leases under load)")
    p.add_argument("--progress", type=float, default=30.0, metavar="SECONDS",
                   help="the benchmark client's progress line to stderr this often (default 30; 0: none)")
    p.add_argument("--resend-limit", type=int, default=30, metavar="N",
                   help="sends at most of a request refused UNAVAILABLE or DEADLINE_EXCEEDED (default 30)")
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("--no-recovery", action="store_true", help="skip the kill/restart measurements")
    p.add_argument("--json", action="store_true", help="also print the figures as one JSON object")
    args = p.parse_args()
    exit_on_sigterm()  # `timeout`, kill: still stop the system

    per_host = -(-args.vms // args.hosts) * 11 // 10 + 10  # room for the recovery VMs and an uneven spread
    halves = (args.hosts - args.hosts // 2, args.hosts // 2)
    system = LocalSystem(hosts=args.hosts, frontends=args.frontends, latency="zero", metrics=False,
                         lease_ttl=args.lease_ttl, etcd_args=("--snapshot-count", str(args.snapshot_count)),
                         etcd_env={"GOGC": args.gogc} if args.gogc else None)
    system.agents = [sim_agent(i, n, per_host, args.lease_ttl, system.sim_state_dir(i)) for i, n in enumerate(halves)]
    client: subprocess.Popen | None = None
    ok = False
    report: dict = {"vms": args.vms, "hosts": args.hosts, "batch": args.batch, "concurrency": args.concurrency,
                    "etcd": {"snapshot_count": args.snapshot_count, "gogc": args.gogc or "100"}}
    try:  # from the start: a SIGTERM at any point stops what was started
        system.start(timeout=600)
        print(f"started LocalSystem (logs in {system.log_dir})", file=sys.stderr, flush=True)
        report["loop_s_before"] = loop_seconds()
        print(f"calibration: 10M-addition loop {report['loop_s_before']} s", flush=True)
        assert system.etcd is not None
        pids = {"etcd": system.etcd.process.pid, **{n: p.pid for n, p in system.processes.items()}}
        bench = [sys.executable, str(pathlib.Path(__file__).with_name("e2e.py")), "--endpoint", system.endpoint,
                 "--balance-over", ",".join(system.frontend_endpoints),
                 "--token", system.admin_token, "--vms", str(args.vms), "--batch", str(args.batch),
                 "--concurrency", str(args.concurrency), "--timeout", str(args.timeout), "--json",
                 "--progress", str(args.progress), "--resend-limit", str(args.resend_limit),
                 *(f"--pid={n}={pid}" for n, pid in pids.items())]
        client = subprocess.Popen(bench, stdout=subprocess.PIPE, text=True)
        client_peak = 0.0
        lines = []
        assert client.stdout is not None
        for line in client.stdout:  # the report, printed as it comes (the JSON line kept)
            lines.append(line)
            if not line.startswith("{"):
                print(line, end="", flush=True)
            client_peak = max(client_peak, peak_rss_mib(client.pid) or 0.0)
        ok = client.wait() == 0
        e2e = json.loads(next((line for line in reversed(lines) if line.startswith("{")), "{}"))
        report["all_running"] = ok
        report["create"] = e2e.get("create", {})
        db = pathlib.Path(system.etcd.data_dir, "member", "member", "snap", "db")
        sizes = etcd_metrics(system.etcd.endpoint, ("etcd_mvcc_db_total_size_in_bytes",
                                                    "etcd_mvcc_db_total_size_in_use_in_bytes",
                                                    "etcd_debugging_mvcc_keys_total",
                                                    "go_memstats_heap_inuse_bytes"))
        report["etcd_db_file_mib"] = round(db.stat().st_size / 2**20)
        report["etcd_metrics_mib"] = {k: round(v / 2**20) if "bytes" in k else v for k, v in sizes.items()}
        report["peak_rss_mib"] = {n: round(peak_rss_mib(pid) or 0) for n, pid in pids.items()}
        report["peak_rss_mib"]["bench-client"] = round(client_peak)
        print(f"etcd db file {report['etcd_db_file_mib']} MiB; {report['etcd_metrics_mib']}")
        print("peak RSS (MiB): " + ", ".join(f"{n} {v}" for n, v in report["peak_rss_mib"].items()))
        report["loop_s_after"] = loop_seconds()
        print(f"calibration after: 10M-addition loop {report['loop_s_after']} s", flush=True)
        if e2e and not args.no_recovery:  # the client ran to its end (if not every VM got RUNNING: at that size)
            agent = system.processes["agent-0"]
            offsets: dict[str, int] = {}
            with system.client() as probe:
                report["scheduler_recovery"] = {**recovery_of_scheduler(restart_of(system, "scheduler-0"), probe,
                                                                        timeout=600),
                                                "lease_ttl_s": system.lease_ttl}
                print(f"scheduler recovery: {report['scheduler_recovery']}", flush=True)
                report["agent_recovery"] = recovery_of_agent(
                    restart_of(system, "agent-0", offsets),
                    lambda: log_has(agent.log_path, offsets["agent-0"], "bindings listed"),
                    probe, "zone-0", timeout=900,
                    log_tail=lambda: agent.log_path.read_bytes()[offsets["agent-0"]:][-500:])
                print(f"agent-0 recovery: {report['agent_recovery']}", flush=True)
            report["peak_rss_mib_after_recovery"] = {n: round(peak_rss_mib(p.pid) or 0)
                                                     for n, p in system.processes.items()}
            print("peak RSS after the restarts (MiB): "
                  + ", ".join(f"{n} {v}" for n, v in report["peak_rss_mib_after_recovery"].items()))
    finally:
        if client is not None and client.poll() is None:  # stopped early (SIGTERM, an error): its system goes
            client.terminate()  # e2e exits on SIGTERM
            try:
                client.wait(60)
            except subprocess.TimeoutExpired:
                client.kill()
                client.wait(30)
        system.cleanup()
    if args.json:
        print(json.dumps(report, sort_keys=True))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
