"""gRPC server reflection, in its stable version (``grpc.reflection.v1``) and in ``v1alpha``.

grpcio-reflection (1.85) implements only ``grpc.reflection.v1alpha``. The stable
``grpc.reflection.v1`` has the same messages, field for field, under another package
name, so the v1alpha servicer answers v1 calls too: its handler is registered under the
v1 service name with the v1alpha message (de)serializers. Clients that ask for v1
(``buf curl``, grpcurl, Postman) and those that still ask for v1alpha both get answers.
v1's own file descriptor (v1alpha's, renamed) is added to the default descriptor pool,
so a client listing every method can also describe the v1 service it was told about.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, text_format
from grpc_reflection.v1alpha import reflection, reflection_pb2

V1_SERVICE = "grpc.reflection.v1.ServerReflection"
V1ALPHA_SERVICE = reflection.SERVICE_NAME
_V1_FILE = "grpc/reflection/v1/reflection.proto"


def _add_v1_descriptor(pool: descriptor_pool.DescriptorPool) -> None:
    """Add ``grpc/reflection/v1/reflection.proto`` to ``pool`` unless it has it. Idempotent."""
    try:
        pool.FindFileByName(_V1_FILE)
        return
    except KeyError:
        pass
    v1alpha = descriptor_pb2.FileDescriptorProto.FromString(reflection_pb2.DESCRIPTOR.serialized_pb)
    text = text_format.MessageToString(v1alpha).replace(reflection_pb2.DESCRIPTOR.name, _V1_FILE)
    # Package, type references and language options all name the version the same way.
    pool.Add(text_format.Parse(text.replace("v1alpha", "v1"), descriptor_pb2.FileDescriptorProto()))


def enable_server_reflection(service_names: Iterable[str], server: grpc.aio.Server) -> tuple[str, ...]:
    """Serve reflection (v1 and v1alpha) on ``server`` for ``service_names`` plus both
    reflection services themselves; returns every name it lists. Call before start."""
    names = (*service_names, V1_SERVICE, V1ALPHA_SERVICE)
    _add_v1_descriptor(descriptor_pool.Default())
    reflection.enable_server_reflection(names, server)
    servicer = reflection.aio.ReflectionServicer(names)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(V1_SERVICE, {
        "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo,
            request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString),
    }),))
    return names
