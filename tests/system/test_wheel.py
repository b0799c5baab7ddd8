"""The wheel, installed outside the checkout, carries what the checkout has.

The package is built with ``pip wheel`` from a copy of the files the Dockerfile copies
(so nothing the build leaves behind lands in the checkout), installed with ``--no-deps``
into a fresh venv in a temporary folder, and imported from there: the alert rules and
the Grafana dashboard are in the wheel, ``quanta.prometheus`` finds them inside the
installed package (not in the checkout), and a Prometheus started by the installed
package has loaded their rule groups (what ``quanta up --prometheus`` runs).

The new venv reaches the test venv's dependencies (grpcio, protobuf, ...) through a
``.pth`` file naming its site-packages; a ``.pth`` line only adds a folder to
``sys.path`` (the editable install's own ``.pth`` hooks there are not run), and the
venv's own site-packages comes first, so ``quanta`` is imported from the wheel.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGE_FILES = ("pyproject.toml", "README.md", "quanta", "controlplane", "scheduler", "agents")
PACKAGED = ("quanta/monitoring/alerts.yml", "quanta/monitoring/dashboard.json")


def run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300, **kwargs)
    assert result.returncode == 0, f"{' '.join(argv)}:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> pathlib.Path:
    source = tmp_path_factory.mktemp("source")
    for name in PACKAGE_FILES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
        else:
            shutil.copy(ROOT / name, source / name)
    out = tmp_path_factory.mktemp("wheels")
    # No build isolation: the test venv's setuptools builds it, without reaching an index.
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "--quiet", "--wheel-dir", str(out), str(source)])
    wheel, = out.glob("quanta-*.whl")
    return wheel


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> pathlib.Path:
    """The python of a fresh venv (outside the checkout) with the wheel installed."""
    venv = tmp_path_factory.mktemp("venv")
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
         "--quiet", str(wheel)])
    site = pathlib.Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"])
                        .stdout.strip())
    (site / "test-dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return python


def in_venv(python: pathlib.Path, code: str, cwd: pathlib.Path) -> str:
    """Run ``code`` with the installed package, outside the checkout, and return its output."""
    return run([str(python), "-c", textwrap.dedent(code)], cwd=cwd,
               env={"PATH": "/usr/bin:/bin", "HOME": str(cwd)}).stdout


def test_wheel_carries_the_alert_rules_and_the_dashboard(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        assert set(PACKAGED) <= names, f"not in the wheel: {set(PACKAGED) - names}"
        rules = yaml.safe_load(archive.read("quanta/monitoring/alerts.yml"))
        dashboard = json.loads(archive.read("quanta/monitoring/dashboard.json"))
    assert rules == yaml.safe_load((ROOT / PACKAGED[0]).read_text())
    assert len(rules["groups"]) >= 1
    assert dashboard["panels"]


def test_installed_package_finds_its_rules_and_dashboard_and_prometheus_loads_them(installed, tmp_path):
    output = in_venv(installed, """
        import json, quanta, quanta.prometheus as p
        server = p.PrometheusServer("prometheus").start({})
        try:
            groups = server.rule_groups()
        finally:
            server.stop()
        print(json.dumps({"package": quanta.__file__, "rules": str(p.ALERT_RULES), "dashboard": str(p.DASHBOARD),
                          "dashboard_ok": p.DASHBOARD.is_file(), "groups": groups}))
        """, cwd=tmp_path)
    found = json.loads(output.splitlines()[-1])
    site = installed.parent.parent.resolve()
    for key in ("package", "rules", "dashboard"):
        path = pathlib.Path(found[key]).resolve()
        assert path.is_relative_to(site) and not path.is_relative_to(ROOT), f"{key} not from the wheel: {path}"
    assert found["dashboard_ok"]
    expected = [group["name"] for group in yaml.safe_load((ROOT / PACKAGED[0]).read_text())["groups"]]
    assert sorted(found["groups"]) == sorted(expected)
