"""Two `quanta up` side by side, as a user runs them (HOME and XDG dirs in a temp
dir): each has its own state file and CLI context; the CLI and SDK switch between
them by `quanta context use`, $QUANTA_CONTEXT or --context; a third name clash is
refused; stopping one removes its context and state and leaves the other's alone."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

import quanta
from quanta import config
from tests.conftest import wait_until

QUANTA = os.path.join(os.path.dirname(sys.executable), "quanta")


class Up:
    """One `quanta up --name NAME` child and what it printed."""

    def __init__(self, name: str, env: dict[str, str]) -> None:
        self.name = name
        self.output: list[str] = []
        self.process = subprocess.Popen(
            [QUANTA, "up", "--name", name, "--hosts", "1", "--frontends", "1", "--latency", "zero"], env=env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self._reader = threading.Thread(target=lambda: self.output.extend(self.process.stdout or ()), daemon=True)
        self._reader.start()

    @property
    def text(self) -> str:
        return "".join(self.output)

    def wait_up(self) -> None:
        wait_until(lambda: "Quanta is up" in self.text or self.process.poll() is not None, timeout=90,
                   message=f"quanta up --name {self.name} to report it is up",
                   seen=lambda: f"exit code {self.process.poll()}; output ends: {self.text[-500:]!r}")
        assert self.process.poll() is None, self.text

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()
        finally:
            self._reader.join(10)


@pytest.fixture
def user_env(tmp_path, monkeypatch) -> dict[str, str]:
    """A fresh user: HOME and the XDG dirs in tmp_path, no QUANTA_* settings; this
    test process sees the same (for the SDK)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("QUANTA_")}
    env.update(HOME=str(tmp_path / "home"), XDG_CONFIG_HOME=str(tmp_path / "config"),
               XDG_STATE_HOME=str(tmp_path / "state"))
    for key in [k for k in os.environ if k.startswith("QUANTA_")]:
        monkeypatch.delenv(key)
    for key in ("HOME", "XDG_CONFIG_HOME", "XDG_STATE_HOME"):
        monkeypatch.setenv(key, env[key])
    return env


@contextmanager
def running(name: str, env: dict[str, str]) -> Iterator[Up]:
    up = Up(name, env)
    try:
        up.wait_up()
        yield up
    finally:
        up.stop()


def test_two_systems_side_by_side_with_a_context_each(user_env, tmp_path) -> None:
    def cli(*args: str, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run([QUANTA, *args], env={**user_env, **env}, capture_output=True, text=True, timeout=60)

    def vms(*args: str, **env: str) -> list[str]:
        listed = cli("vm", "list", "-o", "json", *args, **env)
        assert listed.returncode == 0, listed.stderr
        return sorted(vm["name"].rsplit("/", 1)[1] for vm in json.loads(listed.stdout))

    config_file = tmp_path / "config" / "quanta" / "config.yaml"
    with running("a", user_env) as a, running("b", user_env) as b:
        state_a, state_b = config.local_state("a"), config.local_state("b")
        assert state_a and state_b and state_a["endpoint"] != state_b["endpoint"]
        assert "context 'a' (current" in a.text
        assert "the current context stays 'a'" in b.text and "quanta context use b" in b.text
        assert stat.S_IMODE(config_file.stat().st_mode) == 0o600

        listed = cli("context", "list")
        assert listed.returncode == 0, listed.stderr
        rows = {line.split()[0] if not line.startswith("*") else line.split()[1]: line
                for line in listed.stdout.splitlines()[1:]}
        assert set(rows) == {"a", "b"} and rows["a"].startswith("*") and not rows["b"].startswith("*")
        assert state_a["endpoint"] in rows["a"] and state_b["endpoint"] in rows["b"]

        # The current context (a), --context b, and $QUANTA_CONTEXT each reach their own system.
        assert cli("vm", "create", "--name", "on-a", "--flavor", "small", "--image", "ubuntu").returncode == 0
        made = cli("vm", "create", "--context", "b", "--name", "on-b", "--flavor", "small", "--image", "ubuntu")
        assert made.returncode == 0, made.stderr
        assert vms() == ["on-a"] and vms("--context", "b") == ["on-b"] and vms(QUANTA_CONTEXT="b") == ["on-b"]

        assert cli("context", "use", "b").returncode == 0
        assert cli("context", "current").stdout.strip() == "b"
        assert vms() == ["on-b"] and vms(QUANTA_CONTEXT="a") == ["on-a"]

        # The SDK resolves the same way, and knows its context.
        with quanta.Client() as current, quanta.Client(context="a") as other:
            assert (current.context, current.endpoint) == ("b", state_b["endpoint"])
            assert (other.context, other.endpoint) == ("a", state_a["endpoint"])
            assert [vm.name.rsplit("/", 1)[1] for vm in other.list_vms()] == ["on-a"]

        # A context of the user's own, pointing nowhere: the error names it and what to do.
        assert cli("context", "set", "lab", "--endpoint", "127.0.0.1:1", "--tenant", "acme").returncode == 0
        failed = cli("vm", "list", "--context", "lab")
        assert failed.returncode == 1 and "Traceback" not in failed.stderr
        assert "127.0.0.1:1" in failed.stderr and "'lab'" in failed.stderr and "quanta up" in failed.stderr
        unknown = cli("vm", "list", "--context", "nope")
        assert unknown.returncode == 1 and "'nope' not found" in unknown.stderr and "a, b, lab" in unknown.stderr

        # A second system under a name in use is refused, and changes nothing.
        clash = Up("a", user_env)
        assert clash.process.wait(60) == 1 and clash.stop() == 1
        assert "a system named 'a' is running" in clash.text
        assert config.local_state("a") == state_a

        assert b.stop() == 0
        assert config.local_state("b") is None and config.local_state("a") == state_a
        after = config.load_config(config_file)
        assert set(after.contexts) == {"a", "lab"} and after.current == ""  # b was current: now none is
        assert vms(QUANTA_CONTEXT="a") == ["on-a"]
    assert set(config.load_config(config_file).contexts) == {"lab"}
    assert config.local_state("a") is None
