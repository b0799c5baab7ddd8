"""The fingerprint that tells a create's retry from another request with its request_id."""

from __future__ import annotations

import dataclasses

import pytest

from controlplane.models import (
    BootstrapFormat,
    BootstrapSummary,
    Power,
    PowerPolicy,
    Resources,
    RestartPolicy,
    Scope,
    VmRef,
    VmSpec,
)
from controlplane.store.idempotency import FINGERPRINTED, NOT_FINGERPRINTED, fingerprint, metadata_digest

BASE = VmSpec(VmRef("t", "p", "vm-1"), "uid-1", "small", "ubuntu", Resources(1, 1024, 10),
              labels={"a": "1", "b": "2"}, request_id="req-1", create_time_ns=5, shard=1)


def test_every_spec_field_is_classified() -> None:
    """A field added to VmSpec must be put in one set or the other (the caller's choice, or the server's)."""
    fields = {f.name for f in dataclasses.fields(VmSpec)}
    assert fields == FINGERPRINTED | NOT_FINGERPRINTED
    assert not FINGERPRINTED & NOT_FINGERPRINTED


def test_what_the_server_makes_does_not_count() -> None:
    retry = dataclasses.replace(BASE, uid="uid-2", create_time_ns=9, shard=3, resources=Resources(2, 2048, 20),
                                labels={"b": "2", "a": "1"})
    assert fingerprint(retry, chosen_id=True) == fingerprint(BASE, chosen_id=True)


def test_a_server_assigned_id_does_not_count_a_chosen_one_does() -> None:
    other_id = dataclasses.replace(BASE, ref=VmRef("t", "p", "vm-2"))
    assert fingerprint(other_id, chosen_id=False) == fingerprint(BASE, chosen_id=False)
    assert fingerprint(other_id, chosen_id=True) != fingerprint(BASE, chosen_id=True)
    assert fingerprint(BASE, chosen_id=False) != fingerprint(BASE, chosen_id=True)


@pytest.mark.parametrize("change", [
    {"flavor": "large"}, {"image": "debian"}, {"labels": {"a": "1"}}, {"labels": {"a": "1", "b": "3"}},
    {"node_selector": {"zone": "a"}}, {"anti_affinity_group": "g"}, {"anti_affinity_scope": Scope.ZONE},
    {"affinity_group": "g"}, {"affinity_scope": Scope.ZONE}, {"restart_policy": RestartPolicy.NEVER},
    {"power": Power.OFF}, {"power_policy": PowerPolicy.KEEP_RUNNING},
    {"bootstrap": BootstrapSummary(BootstrapFormat.CLOUD_INIT, 3, b"\1" * 32)},
    {"bootstrap": BootstrapSummary(BootstrapFormat.IGNITION, 0, b"\0" * 32)},
])
def test_each_choice_of_the_caller_counts(change: dict) -> None:
    assert set(change) <= FINGERPRINTED
    assert fingerprint(dataclasses.replace(BASE, **change), chosen_id=True) != fingerprint(BASE, chosen_id=True)


META = {"instance_id": "i-1", "hostname": "node-1", "ssh_authorized_keys": ["ssh-ed25519 AAAA one"],
        "values": {"role": "worker", "zone": "a"}}


@pytest.mark.parametrize("change", [
    {"instance_id": "i-2"}, {"hostname": "node-2"}, {"ssh_authorized_keys": ["ssh-ed25519 AAAA two"]},
    {"ssh_authorized_keys": ["ssh-ed25519 AAAA one", "ssh-ed25519 AAAA two"]},
    {"values": {"role": "worker"}}, {"values": {"role": "control", "zone": "a"}},
])
def test_the_bootstrap_metadata_counts(change: dict) -> None:
    with_data = dataclasses.replace(BASE, bootstrap=BootstrapSummary(BootstrapFormat.CLOUD_INIT, 3, b"\1" * 32))
    first = fingerprint(with_data, chosen_id=True, metadata=metadata_digest(**META))
    assert fingerprint(with_data, chosen_id=True, metadata=metadata_digest(**{**META, **change})) != first
    # The same metadata (values in another order) is the same request.
    again = {**META, "values": dict(reversed(list(META["values"].items())))}
    assert fingerprint(with_data, chosen_id=True, metadata=metadata_digest(**again)) == first


def test_no_metadata_leaves_the_fingerprint_as_it_was() -> None:
    none = metadata_digest(instance_id="", hostname="", ssh_authorized_keys=[], values={})
    assert none == b""
    assert fingerprint(BASE, chosen_id=True, metadata=none) == fingerprint(BASE, chosen_id=True)
    assert len(metadata_digest(**META)) == 32
