"""The tenancy walkthrough of README.md, through the installed `quanta` command as a
new user types it: a tenant with a ticket, a project with a quota, a scoped token,
VMs made with it, and another tenant's token that sees none of it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from quanta.local import LocalSystem
from tests.conftest import wait_until

QUANTA = os.path.join(os.path.dirname(sys.executable), "quanta")


@pytest.fixture(scope="module")
def system():
    with LocalSystem(hosts=2, frontends=2, latency="zero", metrics=False) as local:
        yield local


def quanta(system: LocalSystem, token: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "QUANTA_ENDPOINT": system.endpoint, "QUANTA_TOKEN": token}
    return subprocess.run([QUANTA, *args], env=env, capture_output=True, text=True, timeout=60)


def test_tenant_project_quota_token_and_vms_from_the_cli(system: LocalSystem) -> None:
    admin = system.admin_token
    for args in (("tenant", "create", "acme", "--quota", "vms=3,vcpus=8"),
                 ("project", "create", "web", "--tenant", "acme", "--quota", "vms=2,vcpus=4"),
                 ("tenant", "create", "globex"),
                 ("project", "create", "app", "--tenant", "globex")):
        done = quanta(system, admin, *args)
        assert done.returncode == 0, done.stderr
    issued = quanta(system, admin, "token", "create", "--subject", "dev@acme", "--grant", "project-member:acme/web")
    assert issued.returncode == 0, issued.stderr
    dev = issued.stdout.strip()
    globex = quanta(system, admin, "token", "create", "--subject", "ops@globex",
                    "--grant", "tenant-admin:globex").stdout.strip()

    whoami = json.loads(quanta(system, dev, "token", "whoami", "-o", "json").stdout)
    assert whoami["subject"] == "dev@acme" and whoami["grants"][0]["role"] == "PROJECT_MEMBER"
    for name in ("web-1", "web-2"):
        made = quanta(system, dev, "vm", "create", "--tenant", "acme", "--project", "web", "--name", name,
                      "--flavor", "small", "--image", "ubuntu", "--wait")
        assert made.returncode == 0, made.stderr
        assert "RUNNING" in made.stdout
    over = quanta(system, dev, "vm", "create", "--tenant", "acme", "--project", "web", "--name", "web-3",
                  "--flavor", "small", "--image", "ubuntu")
    assert over.returncode == 1 and "RESOURCE_EXHAUSTED: QUOTA_EXCEEDED" in over.stderr

    quota = json.loads(quanta(system, dev, "quota", "get", "acme/web", "-o", "json").stdout)
    assert quota["usage"]["vms"] == "2" and quota["limits"]["vms"] == "2"
    listed = quanta(system, dev, "vm", "list", "--tenant", "acme", "--project", "web")
    assert [line.split()[0] for line in listed.stdout.splitlines()] == ["NAME", "web-1", "web-2"]

    # globex's admin sees nothing of acme: not its VMs, not its project, not its tenant.
    spy = quanta(system, globex, "vm", "list", "--tenant", "acme", "--project", "web")
    assert spy.returncode == 1 and "NOT_FOUND" in spy.stderr and "web-1" not in spy.stdout
    tenants = quanta(system, globex, "tenant", "list")
    assert [line.split()[0] for line in tenants.stdout.splitlines()] == ["NAME", "globex"], tenants.stdout
    # The member cannot act outside its project or above its role.
    assert "PERMISSION_DENIED" in quanta(system, dev, "project", "create", "db", "--tenant", "acme").stderr
    # Revoked, the token stops working.
    token_name = whoami["name"]
    assert quanta(system, admin, "token", "revoke", token_name).returncode == 0
    # (Every frontend watches the revocation list: within moments, whichever answers.)
    def listed() -> subprocess.CompletedProcess:
        return quanta(system, dev, "vm", "list", "--tenant", "acme", "--project", "web")

    wait_until(lambda: "UNAUTHENTICATED: TOKEN_REVOKED" in listed().stderr, timeout=30,
               message="the revoked token to be refused",
               seen=lambda: f"vm list answered {(r := listed()).returncode}: {(r.stderr or r.stdout)[-300:]!r}")


def test_a_system_admin_grants_and_revokes_backings_from_the_cli(system: LocalSystem) -> None:
    """`tenant create --backing`, `tenant update --grant-backing/--revoke-backing`
    (keeping the others), `tenant get` shows them; a tenant admin may not grant, a
    network only takes a granted backing, and one in use is not revoked."""
    admin = system.admin_token
    made = quanta(system, admin, "tenant", "create", "initech", "--backing", "pg-a", "--backing", "pg-b")
    assert made.returncode == 0, made.stderr
    done = quanta(system, admin, "tenant", "update", "initech", "--grant-backing", "pg-c", "--revoke-backing", "pg-a",
                  "-o", "json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["network_backings"] == ["pg-b", "pg-c"]
    assert "pg-b, pg-c" in quanta(system, admin, "tenant", "get", "initech").stdout
    boss = quanta(system, admin, "token", "create", "--subject", "boss@initech",
                  "--grant", "tenant-admin:initech").stdout.strip()
    refused = quanta(system, boss, "tenant", "update", "initech", "--grant-backing", "VM Network")
    assert refused.returncode == 1 and "PERMISSION_DENIED" in refused.stderr
    denied = quanta(system, boss, "network", "create", "lan", "--tenant", "initech", "--shared", "--backing", "pg-a")
    assert denied.returncode == 1 and "BACKING_NOT_GRANTED" in denied.stderr, denied.stderr
    lan = quanta(system, boss, "network", "create", "lan", "--tenant", "initech", "--shared", "--backing", "pg-b")
    assert lan.returncode == 0, lan.stderr
    in_use = quanta(system, admin, "tenant", "update", "initech", "--revoke-backing", "pg-b")
    assert in_use.returncode == 1 and "BACKING_IN_USE" in in_use.stderr and "lan" in in_use.stderr, in_use.stderr


def test_an_operator_bootstraps_the_first_admin_token_from_etcd(system: LocalSystem) -> None:
    minted = subprocess.run([QUANTA, "token", "bootstrap", "--etcd", system.etcd_endpoint, "--root", system.root,
                             "--subject", "ops", "--ttl", "1h"], capture_output=True, text=True, timeout=60)
    assert minted.returncode == 0, minted.stderr
    me = json.loads(quanta(system, minted.stdout.strip(), "token", "whoami", "-o", "json").stdout)
    assert me["subject"] == "ops" and me["grants"] == [{"role": "SYSTEM_ADMIN"}] and me["issued_by"] == "bootstrap"
