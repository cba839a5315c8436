"""Regenerate the committed Python code of `amesh/v1/plugins.proto` and of Istio's certificate service
`istio/v1/auth/ca.proto` (needs grpcio-tools: the test extra).

    .venv/bin/python -m amesh_common.protogen        # rewrites amesh_common/proto/{amesh/v1,istio/v1/auth}/*_pb2*.py

The proto is compiled with the repository root as include path, so the generated gRPC module imports its
messages as `amesh_common.proto.amesh.v1.plugins_pb2`: a normal import, nothing added to sys.path.
tests/controller/test_proto.py regenerates into a temporary directory and fails when the committed files
differ (an edited proto, or a grpcio-tools version other than the one pinned in constraints.txt).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the repository root (holds amesh_common/)
PROTOS = ("amesh_common/proto/amesh/v1/plugins.proto",
          # Istio's IstioCertificateService (no PyPI package ships Istio's generated Python): the sidecar agent's CA client
          "amesh_common/proto/istio/v1/auth/ca.proto")
GENERATED = ("amesh_common/proto/amesh/v1/plugins_pb2.py", "amesh_common/proto/amesh/v1/plugins_pb2_grpc.py",
             "amesh_common/proto/istio/v1/auth/ca_pb2.py", "amesh_common/proto/istio/v1/auth/ca_pb2_grpc.py")


def generate(out: Path) -> list[Path]:
    """Compile the proto into `out` (mirroring the repository layout); returns the generated files."""
    from grpc_tools import protoc

    include = Path(protoc.__file__).resolve().parent / "_proto"  # google/protobuf/*.proto
    code = protoc.main(["grpc_tools.protoc", f"-I{ROOT}", f"-I{include}",
                        f"--python_out={out}", f"--grpc_python_out={out}", *PROTOS])
    if code != 0:
        raise RuntimeError(f"grpc_tools.protoc failed on {', '.join(PROTOS)} in {ROOT} (exit {code})")
    return [out / name for name in GENERATED]


if __name__ == "__main__":
    for path in generate(ROOT):
        print(path, file=sys.stderr)
