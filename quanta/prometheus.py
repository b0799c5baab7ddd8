"""A local Prometheus that scrapes every process of a local system (``quanta up --prometheus``).

Runs the ``prometheus`` binary (Debian's ``prometheus`` package, or any on PATH) on
loopback on a free port, with a scrape config generated from the processes'
metrics ports and the alert rules the package ships (``quanta/monitoring/alerts.yml``,
package data, so an installed wheel has them as a checkout does).
Job names match the compose file and the Kubernetes scrape config, so the alerts
and the Grafana dashboard work unchanged against it: ``quanta-frontend``,
``quanta-scheduler``, ``quanta-agent`` and ``etcd``.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping

from controlplane.etcd.server import free_port, terminate

#: Package data: the Prometheus alert rules and the Grafana dashboard (the one copy of
#: each; deploy/compose mounts the rules from here).
MONITORING_DIR = pathlib.Path(__file__).resolve().parent / "monitoring"
ALERT_RULES = MONITORING_DIR / "alerts.yml"
DASHBOARD = MONITORING_DIR / "dashboard.json"


def job_of(process_name: str) -> str:
    """The Prometheus job of a local process: ``frontend-1`` -> ``quanta-frontend``; ``etcd`` -> ``etcd``."""
    component = process_name.rsplit("-", 1)[0] if process_name[-1:].isdigit() else process_name
    return component if component == "etcd" else f"quanta-{component}"


def scrape_config(targets: Mapping[str, str], *, interval: str = "5s",
                  rule_files: tuple[str, ...] = ()) -> dict:
    """A Prometheus config scraping ``targets`` (process name -> host:port), one job per
    component, each target labelled with its process ``name``. Pure; JSON-serialisable."""
    jobs: dict[str, list[dict]] = {}
    for name, address in sorted(targets.items()):
        jobs.setdefault(job_of(name), []).append({"targets": [address], "labels": {"name": name}})
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": list(rule_files),
        "scrape_configs": [{"job_name": job, "static_configs": static} for job, static in jobs.items()],
    }


class PrometheusServer:
    """One Prometheus process on 127.0.0.1 evaluating the alert rules ``rules`` (default:
    the packaged ones). ``start()`` blocks until it is ready; ``stop()`` is idempotent and
    ends the process (SIGTERM, then SIGKILL)."""

    def __init__(self, data_dir: str | pathlib.Path, *, binary: str | None = None, interval: str = "5s",
                 rules: pathlib.Path = ALERT_RULES):
        self.data_dir = pathlib.Path(data_dir)
        self.binary = binary or shutil.which("prometheus") or "/usr/bin/prometheus"
        self.interval = interval
        self.rules = rules
        self.port = 0
        self.process: subprocess.Popen | None = None
        self.config_path = self.data_dir / "prometheus.yml"
        self.log_path = self.data_dir / "prometheus.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, targets: Mapping[str, str], timeout: float = 30.0) -> PrometheusServer:
        """Write the config for ``targets`` (name -> host:port), start Prometheus and wait
        until it is ready with the alert rules loaded. Raises FileNotFoundError without a
        prometheus binary or without the rules file (a broken install), and
        RuntimeError/TimeoutError (after stopping it) when it exits, does not get ready,
        or has loaded no rule group."""
        if not pathlib.Path(self.binary).exists():
            raise FileNotFoundError(f"no prometheus binary ({self.binary}); install Debian's 'prometheus' package")
        if not self.rules.is_file():
            raise FileNotFoundError(f"no alert rules at {self.rules}: the quanta package lacks its data files; "
                                    "reinstall it")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # JSON is YAML: no YAML library needed at run time.
        self.config_path.write_text(json.dumps(
            scrape_config(targets, interval=self.interval, rule_files=(str(self.rules),)), indent=2))
        self.port = free_port()
        argv = [self.binary, f"--config.file={self.config_path}",
                f"--storage.tsdb.path={self.data_dir / 'tsdb'}", "--storage.tsdb.retention.time=1d",
                f"--web.listen-address=127.0.0.1:{self.port}"]
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            self._wait_ready(self.process, timeout)
            # Prometheus loads its rule files before it reports ready, and starts without
            # them (a log line only) when a file has no groups or is not found.
            if not self.rule_groups():
                raise RuntimeError(f"prometheus loaded no alert rule groups from {self.rules}; "
                                   f"log: {self.log_path}")
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, process: subprocess.Popen, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"prometheus exited ({process.returncode}); log: {self.log_path}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"prometheus not ready within {timeout}s; log: {self.log_path}")
            time.sleep(0.1)

    def query(self, expr: str) -> list[dict]:
        """The instant-vector result of a PromQL query (``/api/v1/query``). Raises
        RuntimeError if Prometheus rejects it, URLError if it cannot be reached."""
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = json.load(response)
        except urllib.error.HTTPError as err:  # 400/422: a bad query, with Prometheus' reason
            body = json.loads(err.read() or b"{}")
        if body.get("status") != "success":
            raise RuntimeError(f"query {expr!r} failed: {body}")
        return body["data"]["result"]

    def rule_groups(self) -> list[str]:
        """The names of the rule groups Prometheus has loaded (``/api/v1/rules``)."""
        with urllib.request.urlopen(f"{self.url}/api/v1/rules", timeout=10) as response:
            return [group["name"] for group in json.load(response)["data"]["groups"]]

    def stop(self, timeout: float = 10.0) -> None:
        terminate(self.process, timeout)
