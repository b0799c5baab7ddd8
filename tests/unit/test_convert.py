"""Domain records → API messages (controlplane/api/convert.py)."""

from __future__ import annotations

from controlplane.gen.quanta.v1 import vm_pb2
from controlplane.models import VmState


def test_vm_states_have_the_api_values():
    # vm_to_proto passes a VmState's value as the Vm.State of the same name.
    for state in VmState:
        name = "STATE_UNSPECIFIED" if state is VmState.UNSPECIFIED else state.name
        assert vm_pb2.Vm.State.Value(name) == state.value, state
    assert len(VmState) == len(vm_pb2.Vm.State.keys())


def test_host_networks_reach_the_api_sorted() -> None:
    from controlplane.api.convert import host_to_proto
    from controlplane.models import HostAllocation, HostRegistration, Resources
    from controlplane.store.hosts import HostRecord

    reg = HostRegistration("h-1", "sim", Resources(4, 4096, 100), networks=frozenset({"workers", "VM Network", "cp"}))
    host = host_to_proto(HostRecord("h-1", reg, HostAllocation(), 0, 1))
    assert list(host.networks) == ["VM Network", "cp", "workers"]
    assert list(host_to_proto(HostRecord("h-2", None, HostAllocation(), 0, 1)).networks) == []
