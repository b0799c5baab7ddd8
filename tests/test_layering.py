"""Layering is a rule, not a hope (STYLE.md): checked on every import statement.

- controlplane owns the store and API types; it never imports scheduler or agents
  (the CLI runs those as processes);
- scheduler and agents never import each other;
- placement is pure: no asyncio, grpc, protobuf or etcd;
- only the driver factory imports concrete drivers other than through the Protocol.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def imports(path: pathlib.Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def modules(package: str) -> list[pathlib.Path]:
    return [p for p in (ROOT / package).rglob("*.py") if "gen" not in p.relative_to(ROOT).parts]


RULES = [
    ("controlplane", ("scheduler", "agents")),
    ("scheduler", ("agents",)),
    ("agents", ("scheduler",)),
    ("scheduler/placement", ("asyncio", "grpc", "google.protobuf", "controlplane.etcd", "controlplane.store",
                             "controlplane.gen")),
]


@pytest.mark.parametrize("package, forbidden", RULES, ids=[rule[0] for rule in RULES])
def test_package_does_not_import(package, forbidden):
    offenders = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in modules(package)
        for name in imports(path)
        if any(name == f or name.startswith(f + ".") for f in forbidden)
    ]
    assert offenders == []


def test_only_the_factory_imports_concrete_drivers():
    concrete = ("agents.drivers.sim", "agents.drivers.esxi")
    allowed = {ROOT / "agents/drivers/factory.py"}
    offenders = [
        str(path.relative_to(ROOT))
        for package in ("agents", "controlplane", "scheduler")
        for path in modules(package)
        if path not in allowed and not path.is_relative_to(ROOT / "agents/drivers")
        and any(name.startswith(concrete) for name in imports(path))
    ]
    assert offenders == []


def test_the_rules_see_real_imports():
    # Guard against a vacuous pass: the scanner must find known imports.
    assert "controlplane.store.keys" in imports(ROOT / "scheduler/shard.py") or \
        "controlplane.store.scheduling" in imports(ROOT / "scheduler/shard.py")
