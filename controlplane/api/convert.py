"""Domain records → API messages (quanta.v1). The only place that builds them."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from controlplane.gen.quanta.v1 import common_pb2, host_pb2, vm_pb2
from controlplane.models import Resources, VmState
from controlplane.store.hosts import HostRecord
from controlplane.store.vms import VmRecord


def _ts(ns: int) -> Timestamp | None:
    if not ns:
        return None
    ts = Timestamp()
    ts.FromNanoseconds(ns)
    return ts


def resources_to_proto(r: Resources) -> common_pb2.Resources:
    return common_pb2.Resources(vcpus=r.vcpus, memory_mib=r.memory_mib, disk_gib=r.disk_gib)


def vm_to_proto(record: VmRecord) -> vm_pb2.Vm:
    spec, status = record.spec, record.status
    vm = vm_pb2.Vm(
        name=spec.ref.name, uid=spec.uid, flavor=spec.flavor, image=spec.image, labels=dict(spec.labels),
        resources=resources_to_proto(spec.resources), state=int(record.state), host=status.host,
        create_time=_ts(spec.create_time_ns), update_time=_ts(status.update_time_ns or spec.create_time_ns),
        delete_time=_ts(spec.delete_time_ns), etag=record.etag, resource_version=record.resource_version,
    )
    if status.reason:
        condition_type = "Scheduled" if status.state == VmState.PENDING else "Ready"
        vm.conditions.append(common_pb2.Condition(
            type=condition_type, status="False", reason=status.reason, message=status.message,
            last_transition_time=_ts(status.update_time_ns)))
    return vm


def host_to_proto(record: HostRecord) -> host_pb2.Host:
    reg = record.registration
    host = host_pb2.Host(
        name=f"hosts/{record.host}",
        state=host_pb2.Host.READY if record.ready else host_pb2.Host.MISSING,
        allocated=resources_to_proto(record.allocation.resources), vm_count=record.allocation.vm_count,
        resource_version=record.revision,
    )
    if reg is not None:
        host.capacity.CopyFrom(resources_to_proto(reg.capacity))
        host.labels.update(reg.labels)
        host.driver = reg.driver
        if reg.register_time_ns:
            host.register_time.CopyFrom(_ts(reg.register_time_ns))
    return host
