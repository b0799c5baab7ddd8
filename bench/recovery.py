"""Recovery of a running system's scheduler and of an agent: each SIGKILLed and
started again, and the seconds until the system works again.

    python bench/recovery.py --endpoint HOST:PORT --token T --scheduler-pid PID --agent-pid PID
    python bench/recovery.py --endpoint HOST:PORT --token T --agent-pid PID --zone zone-1 --log-dir /tmp/r

For a system this script did not start (``bench/million.py`` measures its own
LocalSystem through the same functions): each process named by pid is restarted
with the command line, environment and working directory it was started with
(read from ``/proc``), its output appended to ``--log-dir/NAME.log``, in a session
of its own. **The restarted processes keep running after this script**: their pids
are printed; they belong to whoever runs this script.

- the scheduler: the seconds from the kill, and from the restart, until a VM created
  after the restart is RUNNING (the dead process's shard leases expire first: their
  TTL bounds the figure from below);
- an agent: the seconds from the restart until it has listed its bindings (its log's
  ``bindings listed``), until its hosts (those labelled with ``--zone``) are READY
  again, and until a VM created after the restart on one of them is RUNNING.

The VMs are created in ``--project`` (made if absent), not in any project a
benchmark is watching. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
from collections.abc import Callable

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import grpc  # noqa: E402

from quanta import ApiError, Client  # noqa: E402

ZONE_LABEL = "topology.quanta.io/zone"


def wait(what: str, condition: Callable[[], object], timeout: float,
         seen: Callable[[], object] = lambda: None) -> float:
    """Seconds until ``condition()`` is true; TimeoutError naming ``what`` and ``seen()``."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"{what} not within {timeout:.0f} s; seen: {seen()}")
        time.sleep(0.05)
    return time.monotonic() - start


def recovery_of_scheduler(restart: Callable[[], None], client: Client, timeout: float) -> dict:
    """Time ``restart()`` (kill the scheduler, start it again) until a VM created
    after it is RUNNING."""
    killed = time.monotonic()
    restart()
    started = time.monotonic()
    vm = client.create_vm(flavor="small", image="ubuntu")
    client.wait_for_vm(vm.name.rsplit("/", 1)[-1], timeout=timeout)
    done = time.monotonic()
    return {"kill_to_running_s": round(done - killed, 2), "restart_to_running_s": round(done - started, 2)}


def recovery_of_agent(restart: Callable[[], None], listed: Callable[[], bool], client: Client, zone: str,
                      timeout: float, log_tail: Callable[[], str] = lambda: "") -> dict:
    """Time ``restart()`` (kill the agent of the hosts in ``zone``, start it again)
    until ``listed()`` (its bindings listed), its hosts READY, and a VM created
    after it in ``zone`` RUNNING."""
    killed = time.monotonic()
    restart()
    started = time.monotonic()
    to_listed = wait("the agent lists its bindings", listed, timeout, log_tail)

    def ready() -> bool:
        hosts = [h for h in client.list_hosts() if h.labels.get(ZONE_LABEL) == zone]
        return bool(hosts) and all(h.state == h.READY for h in hosts)
    to_ready = wait(f"the hosts of {zone} READY", ready, timeout)
    vm = client.create_vm(flavor="small", image="ubuntu", node_selector={ZONE_LABEL: zone})
    client.wait_for_vm(vm.name.rsplit("/", 1)[-1], timeout=timeout)
    done = time.monotonic()
    return {"restart_to_bindings_listed_s": round(to_listed, 2),
            "restart_to_hosts_ready_s": round(to_listed + to_ready, 2),
            "kill_to_running_s": round(done - killed, 2), "restart_to_running_s": round(done - started, 2)}


class ForeignProcess:
    """A process this script did not start, known by pid: killed, and started again
    as it was (``/proc/PID/cmdline``, ``environ``, ``cwd``) with its output appended to
    ``log`` and its new pid written to ``log`` with the suffix ``.pid`` at once (so
    whoever runs this can stop it, also when a measurement fails)."""

    def __init__(self, pid: int, log: pathlib.Path):
        proc = pathlib.Path(f"/proc/{pid}")
        self.pid = pid
        self.argv = [os.fsdecode(a) for a in (proc / "cmdline").read_bytes().split(b"\0")[:-1]]
        self.env = {os.fsdecode(k): os.fsdecode(v) for k, _, v in
                    (item.partition(b"=") for item in (proc / "environ").read_bytes().split(b"\0") if b"=" in item)}
        self.cwd = os.readlink(proc / "cwd")
        self.log = log
        self._offset = 0  # where the restarted process's output begins in ``log``
        self._child: subprocess.Popen | None = None

    def _gone(self) -> bool:
        try:
            state = pathlib.Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        return state in ("Z", "X")  # a zombie its parent has not reaped yet is dead

    def restart(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        wait(f"pid {self.pid} gone", self._gone, 30)
        with open(self.log, "ab") as out:
            self._offset = out.tell()
            self._child = subprocess.Popen(self.argv, env=self.env, cwd=self.cwd, stdout=out,
                                           stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self.pid = self._child.pid
        self.log.with_name(self.log.name + ".pid").write_text(f"{self.pid}\n")

    def log_has(self, text: str) -> bool:
        """The restarted process has written ``text`` (not counting what the log held
        before); raises RuntimeError if it has exited instead."""
        if self._child is not None and self._child.poll() is not None:
            raise RuntimeError(f"{self.argv[:3]} exited with {self._child.returncode}: {self.log_tail()}")
        with open(self.log, "rb") as f:
            f.seek(self._offset)
            return text.encode() in f.read()

    def log_tail(self) -> str:
        return self.log.read_bytes()[-500:].decode(errors="replace") if self.log.exists() else ""


def ensure_project(client: Client) -> None:
    try:
        client.create_project(client.project)
    except ApiError as err:
        if err.code is not grpc.StatusCode.ALREADY_EXISTS:
            raise


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--endpoint", required=True)
    p.add_argument("--token", required=True, help="a system admin's bearer token")
    p.add_argument("--tenant", default="default")
    p.add_argument("--project", default="recovery", help="where the probe VMs are created (made if absent)")
    p.add_argument("--scheduler-pid", type=int)
    p.add_argument("--agent-pid", type=int)
    p.add_argument("--zone", default="zone-0", help="the zone label of the agent's hosts")
    p.add_argument("--log-dir", type=pathlib.Path, default=pathlib.Path("."),
                   help="where the restarted processes write their output")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds for each step")
    args = p.parse_args()
    report: dict = {}
    with Client(args.endpoint, token=args.token, tenant=args.tenant, project=args.project, timeout=60) as client:
        ensure_project(client)
        if args.scheduler_pid:
            scheduler = ForeignProcess(args.scheduler_pid, args.log_dir / "scheduler.log")
            report["scheduler_recovery"] = recovery_of_scheduler(scheduler.restart, client, args.timeout)
            report["scheduler_recovery"]["pid"] = scheduler.pid
            print(f"scheduler recovery: {report['scheduler_recovery']}", file=sys.stderr, flush=True)
        if args.agent_pid:
            agent = ForeignProcess(args.agent_pid, args.log_dir / "agent.log")
            report["agent_recovery"] = recovery_of_agent(agent.restart, lambda: agent.log_has("bindings listed"),
                                                         client, args.zone, args.timeout, agent.log_tail)
            report["agent_recovery"]["pid"] = agent.pid
            print(f"agent recovery: {report['agent_recovery']}", file=sys.stderr, flush=True)
    print(json.dumps(report, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
