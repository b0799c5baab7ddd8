"""The committed stubs in controlplane/gen must match proto/ (regenerate with
``python scripts/genproto.py``). Compares descriptors, and the names the .pyi type
stubs declare, not text, so the check does not depend on the exact grpcio-tools
version that generated them."""

from __future__ import annotations

import ast
import importlib
import pathlib
import tempfile

import grpc_tools
from google.protobuf import descriptor_pb2
from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parents[2]
PROTO = ROOT / "proto"
GEN = ROOT / "controlplane" / "gen"


def _compiled() -> dict[str, descriptor_pb2.FileDescriptorProto]:
    well_known = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    files = sorted(str(p.relative_to(PROTO)) for p in PROTO.rglob("*.proto"))
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp) / "set.pb"
        assert protoc.main(["protoc", f"-I{PROTO}", f"-I{well_known}", f"--descriptor_set_out={out}",
                            *files]) == 0
        descriptor_set = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    for file in descriptor_set.file:
        _strip_json_names(file.message_type)
    return {f.name: f for f in descriptor_set.file}


def _strip_json_names(messages) -> None:
    # protoc fills json_name in descriptor sets but not in the generated Python code.
    for message in messages:
        for field in message.field:
            field.ClearField("json_name")
        _strip_json_names(message.nested_type)


def _module_name(proto_name: str) -> str:
    return "controlplane.gen." + proto_name[: -len(".proto")].replace("/", ".") + "_pb2"


def test_every_proto_has_a_matching_generated_module():
    compiled = _compiled()
    assert compiled, "no .proto files found"
    for name, expected in compiled.items():
        module = importlib.import_module(_module_name(name))
        actual = descriptor_pb2.FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb)
        assert actual == expected, f"{name}: stubs drifted from proto/; run python scripts/genproto.py"


def test_no_generated_module_without_a_proto():
    compiled = {_module_name(name) for name in _compiled()}
    generated = {
        "controlplane.gen." + str(p.relative_to(GEN))[: -len(".py")].replace("/", ".")
        for p in GEN.rglob("*_pb2.py")
    }
    assert generated == compiled


def test_grpc_stubs_cover_every_service_method():
    for name, file in _compiled().items():
        if not file.service:
            continue
        grpc_module = importlib.import_module(_module_name(name) + "_grpc")
        for service in file.service:
            servicer = getattr(grpc_module, f"{service.name}Servicer")
            for method in service.method:
                assert hasattr(servicer, method.name), f"{service.name}.{method.name} missing; regenerate"


def _declared(stub: pathlib.Path) -> set[str]:
    """Dotted names a .pyi declares: classes (nested ones too), their annotated
    attributes (fields, enum values) and each __init__ keyword as ``Class(name)``;
    field-number constants and DESCRIPTOR are left out."""
    names: set[str] = set()

    def visit(body: list[ast.stmt], prefix: str) -> None:
        for node in body:
            if isinstance(node, ast.ClassDef):
                names.add(prefix + node.name)
                visit(node.body, f"{prefix}{node.name}.")
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                if node.target.id != "DESCRIPTOR" and not node.target.id.endswith("_FIELD_NUMBER"):
                    names.add(prefix + node.target.id)
            elif isinstance(node, ast.FunctionDef) and node.name == "__init__":
                names.update(f"{prefix[:-1]}({a.arg})" for a in node.args.args[1:] + node.args.kwonlyargs)

    visit(ast.parse(stub.read_text()).body, "")
    return names


def _expected(file: descriptor_pb2.FileDescriptorProto) -> set[str]:
    """The names protoc's pyi generator declares for ``file``: each message with its
    fields (also as __init__ keywords) and nested types, each enum with its values,
    which also appear in the enclosing scope."""
    names: set[str] = set()

    def enum(e: descriptor_pb2.EnumDescriptorProto, prefix: str) -> None:
        names.add(prefix + e.name)
        for value in e.value:
            names.update({f"{prefix}{e.name}.{value.name}", prefix + value.name})

    def message(m: descriptor_pb2.DescriptorProto, prefix: str) -> None:
        names.add(prefix + m.name)
        inner = f"{prefix}{m.name}."
        for field in m.field:
            names.update({inner + field.name, f"{prefix}{m.name}({field.name})"})
        for e in m.enum_type:
            enum(e, inner)
        for nested in m.nested_type:
            message(nested, inner)

    for e in file.enum_type:
        enum(e, "")
    for m in file.message_type:
        message(m, "")
    return names


def test_every_proto_has_a_matching_type_stub():
    for name, file in _compiled().items():
        stub = GEN / (name[: -len(".proto")] + "_pb2.pyi")
        assert stub.exists(), f"{stub.relative_to(ROOT)} missing; run python scripts/genproto.py"
        declared, expected = _declared(stub), _expected(file)
        assert declared == expected, (
            f"{name}: type stub drifted from proto/ (only in the stub: {sorted(declared - expected)}; "
            f"only in proto/: {sorted(expected - declared)}); run python scripts/genproto.py")


def test_no_type_stub_without_a_proto():
    compiled = {name[: -len(".proto")] + "_pb2.pyi" for name in _compiled()}
    assert {str(p.relative_to(GEN)) for p in GEN.rglob("*.pyi")} == compiled
