"""Domain records survive their etcd encoding: what is written is what is read back
(a field a ``to_proto`` forgets, or writes only when not at its default but reads
back wrongly, would change a VM's desired state behind its owner's back)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from controlplane.models import (
    Address,
    BootstrapFormat,
    BootstrapState,
    BootstrapSummary,
    Condition,
    HeldRoom,
    HostAllocation,
    Power,
    PowerOffMode,
    PowerPolicy,
    Resources,
    RestartPolicy,
    Scope,
    VmRef,
    VmSpec,
    VmState,
    VmStatus,
)

ids = st.text("abc-", min_size=1, max_size=6)
resources = st.builds(Resources, st.integers(0, 64), st.integers(0, 1 << 20), st.integers(0, 1 << 12))
labels = st.dictionaries(ids, ids, max_size=3)
summaries = st.builds(BootstrapSummary, st.sampled_from(BootstrapFormat), st.integers(0, 65536),
                      st.binary(min_size=32, max_size=32))

specs = st.builds(
    VmSpec, st.builds(VmRef, ids, ids, ids), ids, ids, ids, resources, labels=labels, request_id=st.just(""),
    create_time_ns=st.integers(0, 1 << 62), delete_time_ns=st.integers(0, 1 << 62), shard=st.integers(0, 63),
    node_selector=labels, anti_affinity_group=st.just("") | ids, restart_policy=st.sampled_from(RestartPolicy),
    anti_affinity_scope=st.sampled_from(Scope), affinity_group=st.just("") | ids,
    affinity_scope=st.sampled_from(Scope), power=st.sampled_from(Power), power_off_mode=st.sampled_from(PowerOffMode),
    power_off_grace_s=st.integers(1, 3600), power_time_ns=st.integers(0, 1 << 62), restarts=st.integers(0, 9),
    restart_request_id=st.just("") | ids, power_policy=st.sampled_from(PowerPolicy),
    bootstrap=st.none() | summaries, vm_set=st.just("") | ids, plan=st.just("") | ids)


@given(specs)
def test_a_spec_reads_back_as_written(spec: VmSpec) -> None:
    assert VmSpec.from_bytes(spec.to_bytes()) == spec


@given(st.builds(VmStatus, st.sampled_from(VmState), ids, ids, ids, st.integers(0, 1 << 62), st.integers(0, 1 << 62),
                 st.lists(st.builds(Address, ids, ids, ids, st.sampled_from([4, 6])), max_size=2).map(tuple),
                 st.lists(st.builds(Condition, ids, st.sampled_from(["True", "False"]), ids, ids,
                                    st.integers(0, 1 << 62)), max_size=2).map(tuple),
                 st.integers(0, 1 << 62), st.integers(0, 9), st.sampled_from(BootstrapState), st.integers(0, 1 << 40)))
def test_a_status_reads_back_as_written(status: VmStatus) -> None:
    assert VmStatus.from_bytes(status.to_bytes()) == status


@given(st.builds(HostAllocation, resources, st.integers(0, 999), st.dictionaries(ids, st.integers(1, 9), max_size=2),
                 st.dictionaries(ids, st.builds(HeldRoom, resources, st.integers(0, 9),
                                                st.dictionaries(ids, st.integers(1, 9), max_size=2)), max_size=2)))
def test_an_allocation_and_its_holds_read_back_as_written(allocation: HostAllocation) -> None:
    assert HostAllocation.from_bytes(allocation.to_bytes()) == allocation
