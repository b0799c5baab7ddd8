"""Reflection v1 is served by the v1alpha servicer (controlplane/api/reflection.py): that
holds only while the two versions' messages are the same field for field."""

from __future__ import annotations

from google.protobuf import descriptor_pool
from grpc_reflection.v1alpha import reflection_pb2

from controlplane.api import reflection


def fields(message) -> list[tuple]:
    return [(f.name, f.number, f.type, f.is_repeated, f.message_type.name if f.message_type else None,
             f.containing_oneof.name if f.containing_oneof else None) for f in message.fields]


def test_v1_descriptor_is_v1alpha_under_the_v1_package_and_is_added_once():
    pool = descriptor_pool.DescriptorPool()
    reflection._add_v1_descriptor(pool)
    reflection._add_v1_descriptor(pool)  # idempotent
    service = pool.FindServiceByName(reflection.V1_SERVICE)
    assert service.file.name == "grpc/reflection/v1/reflection.proto"
    method, = service.methods
    assert method.name == "ServerReflectionInfo"
    assert method.input_type.full_name == "grpc.reflection.v1.ServerReflectionRequest"
    assert method.output_type.full_name == "grpc.reflection.v1.ServerReflectionResponse"
    v1alpha = reflection_pb2.DESCRIPTOR
    assert set(pool.FindFileByName(service.file.name).message_types_by_name) == set(v1alpha.message_types_by_name)
    for name, message in v1alpha.message_types_by_name.items():
        assert fields(pool.FindMessageTypeByName(f"grpc.reflection.v1.{name}")) == fields(message), name
