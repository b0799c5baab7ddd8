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
    assert keys.parse_disk_work_key(keys.disk_work_detaching("t-1", "p-2", "d-3")) == ("t-1", "p-2", "d-3")
    assert keys.parse_disk_work_key(keys.disk_work_deleting("fast", "t-1", "p-2", "d-3")) == ("t-1", "p-2", "d-3")


def test_disk_work_is_apart_from_disks_and_each_class_from_the_others():
    """An agent's range of its work (one class) holds none of disks/ and no other class's."""
    keys = Keys("/q")
    prefix = keys.disk_work_deleting_prefix("fast")
    inside = [keys.disk_work_deleting("fast", "t", "p", "d")]
    outside = [keys.disk("t", "p", "d"), keys.disk_attachment("t", "p", "d"), keys.disk_work_detaching("t", "p", "d"),
               keys.disk_work_deleting("fast-2", "t", "p", "d"), keys.disk_work_deleting("fas", "t", "p", "d")]
    assert all(key.startswith(prefix) for key in inside)
    assert not [key for key in outside if key.startswith(prefix)]
    assert not keys.disk("t", "p", "d").startswith(keys.disk_work_detaching_prefix())


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


def test_holds_and_hosts_are_one_range_with_nothing_else_between():
    """Every prefix of the layout sorts outside [holds/, end of hosts/) but those two,
    so the scheduler's one watch of that range sees only holds and hosts."""
    keys = Keys("/q")
    start, end = keys.holds_and_hosts()
    ref = VmRef("t", "p", "v")
    inside = [keys.hold("p-1"), keys.hold(""), keys.host_reg("a"), keys.host_alloc("zz~"), keys.host_dead("h"),
              keys.host_maintenance("a-b"), keys.host_drain("h.example.com")]
    assert all(start <= key < end for key in inside)
    outside = [keys.vm_spec(ref), keys.vm_status(ref), keys.bootstrap(ref), keys.vm_set("t", "p", "s"),
               keys.queue(0, ref), keys.binding("h", ref), keys.tombstone("h", "u"), keys.orphan("h", "u"),
               keys.zone_group("z", "t/p/g"), keys.flavor("f"), keys.image("i"), keys.tenant_flavor("t", "f"),
               keys.tenant("t"), keys.project("t", "p"), keys.usage("t", "p", 0), keys.signing_key(),
               keys.token("x"), keys.revocation("x"), keys.audit("t", 1, "x"), keys.rate_demand("f"),
               keys.request("t", "p", "r"), keys.cluster_config(), keys.shard(0), keys.shard_member("m"),
               keys.disk("t", "p", "d"), keys.disk_work_detaching("t", "p", "d"),
               keys.disk_work_deleting("c", "t", "p", "d")]
    outside += [keys.vms_prefix(), keys.vm_sets_prefix(), keys.queue_prefix(0), keys.bindings_prefix(),
                keys.orphans_prefix(), keys.zones_prefix(), keys.flavors_prefix(), keys.images_prefix(),
                keys.tenant_flavors_prefix(), keys.tenants_prefix(), keys.projects_prefix(),
                keys.usage_prefix("t"), keys.tokens_prefix(), keys.revocations_prefix(), keys.audit_prefix(),
                keys.rate_demand_prefix(), keys.shards_prefix()]
    assert not [key for key in outside if start <= key < end]
