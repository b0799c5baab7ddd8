"""The pure rules of network backings granted to tenants (controlplane/backings.py)
and the tenant model that carries them."""

from __future__ import annotations

import pytest

from controlplane import backings
from controlplane.gen.quanta.store.v1 import tenancy_pb2 as trec
from controlplane.tenancy import Limits, Tenant

FIELD = "tenant.network_backings"


@pytest.mark.parametrize(("name", "ok"), [
    ("VM Network", True),
    ("dvpg-10 (prod)", True),
    ("x" * backings.MAX_NAME, True),
    ("", False),
    ("x" * (backings.MAX_NAME + 1), False),
    (" leading", False),
    ("trailing ", False),
    ("tab\there", False),
    ("new\nline", False),
    ("nul\0", False),
])
def test_a_backing_name_is_1_to_80_printable_characters_without_surrounding_spaces(name: str, ok: bool) -> None:
    assert (backings.name_problem(name) is None) == ok


def test_grants_report_each_bad_name_and_each_duplicate_by_index() -> None:
    assert backings.grant_problems(["VM Network", "cp", "workers"], FIELD) == []
    assert backings.grant_problems([], FIELD) == []
    problems = backings.grant_problems(["cp", "", "cp", "bad\n", "workers", "cp"], FIELD)
    assert [path for path, _ in problems] == [f"{FIELD}[1]", f"{FIELD}[2]", f"{FIELD}[3]", f"{FIELD}[5]"]
    assert "twice" in dict(problems)[f"{FIELD}[2]"] and "empty" in dict(problems)[f"{FIELD}[1]"]


def test_at_most_256_grants_per_tenant() -> None:
    names = [f"pg-{i}" for i in range(backings.MAX_PER_TENANT)]
    assert backings.grant_problems(names, FIELD) == []
    too_many = backings.grant_problems([*names, "one-more"], FIELD)
    assert too_many == [(FIELD, f"{backings.MAX_PER_TENANT + 1} backings; at most {backings.MAX_PER_TENANT} "
                                "per tenant")]


def test_revoked_is_what_was_granted_and_is_not_any_more_in_its_order() -> None:
    assert backings.revoked(("a", "b", "c"), ("c", "d")) == ("a", "b")
    assert backings.revoked(("a",), ("a", "b")) == ()
    assert backings.revoked((), ()) == ()


def test_networks_on_revoked_backings_are_named_sorted() -> None:
    networks = [("tenants/t/networks/z", "a"), ("tenants/t/projects/p/networks/b", "b"),
                ("tenants/t/projects/p/networks/a", "a")]
    assert backings.networks_on({"a"}, networks) == ["tenants/t/networks/z", "tenants/t/projects/p/networks/a"]
    assert backings.networks_on(set(), networks) == []


def test_a_tenant_keeps_its_grants_through_its_record() -> None:
    tenant = Tenant("acme", "Acme", {"k": "v"}, Limits(vms=3), create_time_ns=1, update_time_ns=2,
                    network_backings=("VM Network", "cp"))
    assert Tenant.from_bytes(tenant.to_bytes()) == tenant


def test_a_tenant_record_from_before_grants_reads_as_none_granted() -> None:
    old = trec.TenantRecord(tenant_id="acme", display_name="Acme").SerializeToString()
    assert Tenant.from_bytes(old).network_backings == ()
