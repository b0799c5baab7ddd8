"""The public API (proto/quanta/v1) as a contract, checked with buf (settings in buf.yaml).

- ``buf lint``: Google's API conventions, with the exceptions buf.yaml gives reasons
  for; each exception is still needed (a rule excepted for nothing hides future findings).
- ``buf breaking`` against ``proto-released/`` (the API of the last release): no
  change breaks a client by accident; and the check does catch a breaking change.

Skipped where buf is not installed (scripts/deps installs it; in CI it must be there).
"""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess

import pytest
import yaml

from tests.conftest import buf_binary

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def buf() -> str:
    return buf_binary()


def run_buf(buf: str, *args: str, cwd: pathlib.Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([buf, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def workspace_copy(tmp_path: pathlib.Path) -> pathlib.Path:
    """A copy of buf.yaml, proto/ and proto-released/ to change without touching the checkout."""
    for name in ("proto", "proto-released"):
        shutil.copytree(ROOT / name, tmp_path / name)
    shutil.copy(ROOT / "buf.yaml", tmp_path / "buf.yaml")
    return tmp_path


def test_api_passes_buf_lint(buf):
    result = run_buf(buf, "lint")
    assert result.returncode == 0, f"buf lint:\n{result.stdout}{result.stderr}"


def test_every_lint_exception_is_still_needed(buf, tmp_path):
    workspace = workspace_copy(tmp_path)
    config = yaml.safe_load((workspace / "buf.yaml").read_text())
    excepted = set(config["lint"].pop("except"))
    (workspace / "buf.yaml").write_text(yaml.safe_dump(config))
    result = run_buf(buf, "lint", "--error-format=json", cwd=workspace)
    found = {json.loads(line)["type"] for line in result.stdout.splitlines() if line.strip()}
    assert found == excepted, f"findings without the exceptions: {found}; excepted: {excepted}\n{result.stderr}"


def test_api_has_no_breaking_change_since_the_last_release(buf):
    result = run_buf(buf, "breaking", "--against", "proto-released")
    assert result.returncode == 0, (
        f"buf breaking --against proto-released:\n{result.stdout}{result.stderr}\n"
        "A change that breaks clients needs a new API version (quanta.v2), not an edit of v1.")


def test_buf_breaking_catches_a_renamed_field_and_a_removed_method(buf, tmp_path):
    workspace = workspace_copy(tmp_path)
    common = workspace / "proto" / "quanta" / "v1" / "common.proto"
    common.write_text(common.read_text().replace("  string reason = 3;", "  string cause = 3;", 1))
    vm = workspace / "proto" / "quanta" / "v1" / "vm.proto"
    vm.write_text(vm.read_text().replace("  rpc GetVm(GetVmRequest) returns (Vm);\n", "", 1))
    result = run_buf(buf, "breaking", "--against", "proto-released", cwd=workspace)
    assert result.returncode != 0
    assert '"reason" to "cause"' in result.stdout, result.stdout + result.stderr
    assert '"GetVm" on service "VmService" was deleted' in result.stdout, result.stdout


def test_released_api_is_a_copy_of_the_public_protos_only():
    released = {p.relative_to(ROOT / "proto-released") for p in (ROOT / "proto-released").rglob("*.proto")}
    assert released, "proto-released/ holds no .proto"
    assert all(path.parts[:2] == ("quanta", "v1") for path in released), released
