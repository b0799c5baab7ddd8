"""Regenerate the protobuf/gRPC stubs in controlplane/gen/ from proto/.

Usage: python scripts/genproto.py [OUT_DIR]

protoc writes absolute imports (``from quanta.v1 import common_pb2``); they are
rewritten to live under the ``controlplane.gen`` package so that no sys.path
editing is needed. Beside each module goes its .pyi type stub (``--pyi_out``), which
mypy reads (the generated code itself is not type-checked). tests/unit/test_proto_stubs.py
fails when the committed stubs drift from proto/.
"""

from __future__ import annotations

import pathlib
import re
import shutil
import sys
import tempfile

import grpc_tools
from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
PACKAGE = "controlplane.gen"
_TOP_LEVEL = ("quanta", "etcd")
_IMPORT_RE = re.compile(rf"^(from|import) ({'|'.join(_TOP_LEVEL)})(\.[\w.]+)?", re.MULTILINE)


def proto_files() -> list[pathlib.Path]:
    return sorted(PROTO_DIR.rglob("*.proto"))


def generate(out_dir: pathlib.Path) -> None:
    """Compile every .proto under proto/ into out_dir as package ``controlplane.gen``."""
    well_known = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "grpc_tools.protoc",
            f"-I{PROTO_DIR}",
            f"-I{well_known}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *[str(p.relative_to(PROTO_DIR)) for p in proto_files()],
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        shutil.copytree(tmp, out_dir)
    for path in out_dir.rglob("*.py*"):
        text = path.read_text()
        text = _IMPORT_RE.sub(lambda m: f"{m.group(1)} {PACKAGE}.{m.group(2)}{m.group(3) or ''}", text)
        path.write_text(text)
    for directory in [out_dir, *[d for d in out_dir.rglob("*") if d.is_dir()]]:
        (directory / "__init__.py").touch()


if __name__ == "__main__":
    target = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "controlplane" / "gen"
    generate(target)
    print(f"generated stubs in {target}")
