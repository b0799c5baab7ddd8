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
