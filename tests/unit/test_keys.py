"""The key layout's helpers (pure)."""

from __future__ import annotations

from controlplane.models import VmRef
from controlplane.store.keys import Keys, shard_of


def test_bindings_range_covers_every_host_whatever_the_names():
    keys = Keys("/q")
    hosts = ["a", "a-b", "sim-00001", "b.example.com"]
    start, end = keys.bindings_range(hosts)
    assert start < end
    for host in hosts:
        key = keys.binding(host, VmRef("t", "p", "v"))
        assert start <= key < end, host


def test_key_parsers_invert_the_builders():
    keys = Keys("/q/")
    ref = VmRef("t-1", "p-2", "vm-3")
    assert keys.parse_vm_key(keys.vm_spec(ref)) == (ref, "spec")
    assert keys.parse_vm_key(keys.vm_status(ref)) == (ref, "status")
    assert keys.parse_host_key(keys.host_alloc("h.example.com")) == ("h.example.com", "alloc")
    assert keys.host_of_binding(keys.binding("h-1", ref)) == "h-1"
    assert keys.parse_orphan_key(keys.orphan("h.example.com", "ab12")) == ("h.example.com", "ab12")


def test_orphans_range_covers_every_host_and_no_other():
    keys = Keys("/q")
    start, end = keys.orphans_range(["a", "a-b", "sim-00001"])
    for host in ("a", "a-b", "sim-00001"):
        assert start <= keys.orphan(host, "u") < end, host
    assert not start <= keys.tombstone("a", "u") < end


def test_shards_are_stable_and_spread():
    counts = [0] * 4
    for i in range(4000):
        counts[shard_of(f"uid-{i}", 4)] += 1
    assert shard_of("uid-1", 4) == shard_of("uid-1", 4)
    assert min(counts) > 800  # roughly even: 1000 each


def test_refs_read_back_from_names_and_key_ends():
    keys = Keys("/q")
    ref = VmRef("t", "p-1", "vm-2")
    assert VmRef.from_name(ref.name) == ref
    assert VmRef.from_name("tenants/t/projects/p") is None
    assert keys.ref_at_end(keys.queue(3, ref)) == ref == keys.ref_at_end(keys.binding("h-1", ref))
