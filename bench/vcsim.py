"""Creation benchmark through a vcsim-backed system: the esxi driver end to end.

    python bench/vcsim.py --vms 300                      # without, then with vSphere method delays
    python bench/vcsim.py --vms 300 --delays none --json
    python bench/vcsim.py --vms 300 --delays vsphere --per-host-concurrency 16

Starts ``--hosts`` vcsim processes (govmomi's simulator in ESXi mode, one host
each, the image ``quanta-image-ubuntu`` with a snapshot registered on each), and a
LocalSystem (etcd, a frontend, a scheduler) whose agents run ``--driver esxi``
against them, one agent process per simulated ESXi host, TLS verified against each
simulator's certificate, as in production. Then it runs bench/e2e.py's client:
``--vms`` CreateVm calls, one WatchVms stream, creations/s and accepted→RUNNING
p50/p99 on the client's clock, and CPU seconds per process (vcsim included).

``--delays``: ``none`` (vcsim answers at once), ``vsphere`` (per-method delays that
make vcsim look like a real host: CreateVM_Task / CloneVM_Task 200 ms,
PowerOnVM_Task 100 ms, ReconfigVM_Task 50 ms; override with ``--method-delay``), or
``both`` (one run each, a fresh system per run). vcsim completes a task inside the
call that starts it, so a method delay holds one of the agent's vSphere threads
(``--esxi-threads``) for its length, as a real task would hold a creation slot.

After each run the VMs are counted on the vSphere side with an independent pyvmomi
query: every one exists, is powered on, and none is duplicated. Exit status 0 when
every run made all its VMs exactly once.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from bench.e2e import fmt, print_report, run  # noqa: E402
from bench.teardown import exit_on_sigterm  # noqa: E402

VSPHERE_DELAYS_MS = {"CreateVM_Task": 200, "CloneVM_Task": 200, "PowerOnVM_Task": 100, "ReconfigVM_Task": 50}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vms", type=int, default=300)
    p.add_argument("--hosts", type=int, default=2, help="vcsim processes, one ESXi host and one agent each")
    p.add_argument("--delays", choices=("none", "vsphere", "both"), default="both")
    p.add_argument("--method-delay", default="",
                   help="with vsphere delays: Method=ms,... instead of " +
                        ",".join(f"{k}={v}" for k, v in VSPHERE_DELAYS_MS.items()))
    p.add_argument("--concurrency", type=int, default=32, help="CreateVm calls in flight")
    p.add_argument("--channels", type=int, default=2)
    p.add_argument("--per-host-concurrency", type=int, default=8, help="agent: creations at once per host")
    p.add_argument("--esxi-threads", type=int, default=16, help="agent: concurrent vSphere calls")
    p.add_argument("--clone-mode", choices=("auto", "linked", "full"), default="auto")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per run (after start-up)")
    p.add_argument("--json", action="store_true", help="also print each run's figures as one JSON object")
    args = p.parse_args(argv)
    if args.vms < 1 or args.hosts < 1:
        p.error("--vms and --hosts must be positive")
    args.delay_ms = dict(VSPHERE_DELAYS_MS)
    if args.method_delay:
        try:
            items = (item.split("=", 1) for item in args.method_delay.split(","))
            args.delay_ms = {k.strip(): int(v) for k, v in items}
        except ValueError:
            p.error("--method-delay takes Method=milliseconds,...")
    return args


def agent_args(vcsim, index: int, args: argparse.Namespace) -> list[str]:
    # A vcsim host offers 2 threads, 4 GiB and ~251 GiB: overcommit so that every VM fits.
    per_host = -(-args.vms // args.hosts) + 8
    cpu_ratio, memory_ratio, disk_ratio = per_host / 2 + 1, per_host / 4 + 1, per_host * 10 / 250 + 1
    return [*vcsim.agent_args(host_id_prefix=f"esx{index}-"), "--name", f"esxi-agent-{index}",
            "--vcpu-overcommit", f"{cpu_ratio:g}", "--memory-overcommit", f"{memory_ratio:g}",
            "--disk-overcommit", f"{disk_ratio:g}", "--esxi-threads", str(args.esxi_threads),
            "--esxi-clone-mode", args.clone_mode, "--per-host-concurrency", str(args.per_host_concurrency)]


def e2e_args(args: argparse.Namespace) -> argparse.Namespace:
    """What bench/e2e.py's run() reads."""
    return argparse.Namespace(vms=args.vms, concurrency=args.concurrency, channels=args.channels, flavor="small",
                              image="ubuntu", tenant="default", project=None, rate=0.0, timeout=args.timeout,
                              delete=False)


def check_on_vsphere(vcsims) -> dict:
    """Count Quanta VMs on the simulators themselves (an independent pyvmomi session each)."""
    seen = [vm for v in vcsims for vm in v.quanta_vms()]
    counts = collections.Counter(vm.uid for vm in seen)
    return {"vms": len(counts), "duplicated": sum(1 for n in counts.values() if n > 1),
            "powered_off": sum(1 for vm in seen if vm.power != "poweredOn"),
            "per_host": [len(v.quanta_vms()) for v in vcsims]}


def one_run(args: argparse.Namespace, delays: dict[str, int]) -> dict:
    from quanta.local import LocalSystem
    from tests.vcsim import Vcsim

    vcsims: list[Vcsim] = []
    system = None
    try:
        for _ in range(args.hosts):
            vcsim = Vcsim(mode="esx", method_delay=delays)
            vcsims.append(vcsim)
            vcsim.start()
            vcsim.make_image("ubuntu")
        system = LocalSystem(hosts=args.hosts, frontends=1, metrics=False,
                             agents=[agent_args(v, i, args) for i, v in enumerate(vcsims)],
                             agent_env={"QUANTA_ESXI_PASSWORD": vcsims[0].password})
        started = time.monotonic()
        system.start(timeout=120)
        print(f"started {args.hosts} vcsim + LocalSystem in {time.monotonic() - started:.1f} s "
              f"(logs in {system.log_dir})", file=sys.stderr)
        pids = {"etcd": system.etcd.process.pid, **{name: p.pid for name, p in system.processes.items()},
                **{f"vcsim-{i}": v.process.pid for i, v in enumerate(vcsims)}}
        report = asyncio.run(run(e2e_args(args), system.endpoint, pids, system.admin_token))
        report["vsphere"] = check_on_vsphere(vcsims)
        return report
    finally:
        if system is not None:
            system.cleanup()
        for vcsim in vcsims:
            vcsim.cleanup()


def print_run(report: dict) -> None:
    print_report(report)
    c, v = report["create"], report["vsphere"]
    lag = c["accepted_to_running_ms"]
    print(f"SUMMARY vcsim delays {report['delays'] or 'none'}: {fmt(c.get('running_per_s'))} creations/s, "
          f"accepted->RUNNING p50 {fmt(lag['p50'], ' ms')} p99 {fmt(lag['p99'], ' ms')}; on vSphere "
          f"{v['vms']} VMs (per host {v['per_host']}), {v['duplicated']} duplicated, {v['powered_off']} not on")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    exit_on_sigterm()
    runs = {"none": [{}], "vsphere": [args.delay_ms], "both": [{}, args.delay_ms]}[args.delays]
    ok = True
    for delays in runs:
        loadavg = os.getloadavg()[0]
        report = one_run(args, delays)
        report.update({"vms": args.vms, "hosts": args.hosts, "frontends": 1, "schedulers": 1, "shards": 1,
                       "concurrency": args.concurrency, "rate": None, "flavor": "small", "delays": delays,
                       "per_host_concurrency": args.per_host_concurrency, "esxi_threads": args.esxi_threads,
                       "clone_mode": args.clone_mode, "timeout_s": args.timeout,
                       "machine": {"nproc": os.cpu_count(), "loadavg_at_start": round(loadavg, 2)}})
        print_run(report)
        if args.json:
            print(json.dumps(report, sort_keys=True))
        v = report["vsphere"]
        ok = ok and (report["create"]["running"] == args.vms and v["vms"] == args.vms and not v["duplicated"]
                     and not v["powered_off"] and not report.get("aborted") and not report["timed_out"])
        print(file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
