"""Layering is a rule, not a hope (STYLE.md): checked on every import statement.

- quanta (the SDK, CLI and `quanta up`, on a user's machine) sits on top: nothing
  else imports it;
- controlplane owns the shared foundations (etcd client, store, models, work queue,
  placement) and the frontend (api, auth, frontend); it never imports scheduler or agents;
- the foundations never import the frontend, and scheduler and agents import only
  the foundations: never the frontend, never each other;
- placement (controlplane/placement, a foundation: the scheduler places with it, the
  frontend plans with it) is pure: no asyncio, grpc, protobuf or etcd;
- only the driver factory imports concrete drivers other than through the Protocol.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def imports(path: pathlib.Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def modules(package: str) -> list[pathlib.Path]:
    """The Python files of a package folder (or the one module file), generated code excluded."""
    path = ROOT / package
    files = [path] if path.suffix == ".py" else path.rglob("*.py")
    return [p for p in files if "gen" not in p.relative_to(ROOT).parts]


#: The frontend's modules: only the frontend (and quanta) may import them.
FRONTEND = ("controlplane.api", "controlplane.auth", "controlplane.frontend")
#: The shared foundations, as files and folders of controlplane/.
FOUNDATIONS = ("controlplane/etcd", "controlplane/store", "controlplane/models.py", "controlplane/workqueue.py",
               "controlplane/logcontext.py", "controlplane/process.py", "controlplane/tenancy.py",
               "controlplane/disks.py",
               "controlplane/placement")

#: Deprecated re-exports of what moved to quanta, kept for one release.
SHIMS = {ROOT / "controlplane/sdk.py"}

RULES = [
    ("controlplane", ("scheduler", "agents", "quanta")),
    *[(foundation, FRONTEND) for foundation in FOUNDATIONS],
    ("scheduler", ("agents", "quanta", *FRONTEND)),
    ("agents", ("scheduler", "quanta", *FRONTEND)),
    ("controlplane/placement", ("asyncio", "grpc", "google.protobuf", "controlplane.etcd", "controlplane.store",
                                "controlplane.gen")),
]


@pytest.mark.parametrize("package, forbidden", RULES, ids=[rule[0] for rule in RULES])
def test_package_does_not_import(package, forbidden):
    offenders = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in modules(package)
        if path not in SHIMS
        for name in imports(path)
        if any(name == f or name.startswith(f + ".") for f in forbidden)
    ]
    assert offenders == []


def test_only_the_factory_imports_concrete_drivers():
    concrete = ("agents.drivers.sim", "agents.drivers.esxi")
    allowed = {ROOT / "agents/drivers/factory.py"}
    offenders = [
        str(path.relative_to(ROOT))
        for package in ("agents", "controlplane", "scheduler", "quanta")
        for path in modules(package)
        if path not in allowed and not path.is_relative_to(ROOT / "agents/drivers")
        and any(name.startswith(concrete) for name in imports(path))
    ]
    assert offenders == []


def test_the_rules_see_real_imports():
    # Guard against a vacuous pass: the scanner must find known imports.
    assert "controlplane.store.keys" in imports(ROOT / "scheduler/shard.py") or \
        "controlplane.store.scheduling" in imports(ROOT / "scheduler/shard.py")


def test_every_foundation_exists():
    # A renamed module must not turn its rule into a vacuous pass.
    missing = [f for f in FOUNDATIONS if not (ROOT / f).exists()]
    assert missing == []
