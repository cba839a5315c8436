"""Python code for our own gRPC service, generated from `amesh/v1/plugins.proto` on first import.

Generated `*_pb2.py` files are not committed (Amesh's committed stubs drifted from their proto). On the
first import, grpc_tools.protoc compiles the proto into a cache directory named after the proto's hash,
so an edited proto is recompiled and a stale stub can never be used:

    $AMESH_PROTO_CACHE, else $XDG_CACHE_HOME/amesh/proto, else ~/.cache/amesh/proto, else <tmp>/amesh-proto
        └── <sha256 of the proto, 16 hex>/amesh/v1/plugins_pb2.py, plugins_pb2_grpc.py

That directory is put on sys.path because protoc's generated grpc module imports `amesh.v1.plugins_pb2`
by its proto path. Image builds run `python -m controller.proto` once so the cache is warm (and a
read-only root file system at run time is fine); it prints the directory used.

Exports `pb2` (messages) and `pb2_grpc` (servicer base, stub, registration helper).
"""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import sys
import tempfile
from pathlib import Path
from types import ModuleType

PROTO_ROOT = Path(__file__).resolve().parent
PROTO_FILE = "amesh/v1/plugins.proto"


class ProtoBuildError(RuntimeError):
    """protoc failed or no cache directory was writable (the message says which)."""


def _candidates() -> list[Path]:
    out = []
    if os.environ.get("AMESH_PROTO_CACHE"):
        out.append(Path(os.environ["AMESH_PROTO_CACHE"]))
    if os.environ.get("XDG_CACHE_HOME"):
        out.append(Path(os.environ["XDG_CACHE_HOME"]) / "amesh" / "proto")
    out.append(Path.home() / ".cache" / "amesh" / "proto")
    out.append(Path(tempfile.gettempdir()) / "amesh-proto")
    return out


def _digest() -> str:
    return hashlib.sha256((PROTO_ROOT / PROTO_FILE).read_bytes()).hexdigest()[:16]


def _compile(target: Path) -> None:
    from grpc_tools import protoc  # build-time tool: only needed when the cache is cold

    include = Path(protoc.__file__).resolve().parent / "_proto"  # google/protobuf/*.proto
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=target.parent))
    try:
        code = protoc.main(["grpc_tools.protoc", f"-I{PROTO_ROOT}", f"-I{include}",
                            f"--python_out={staging}", f"--grpc_python_out={staging}", PROTO_FILE])
        if code != 0:
            raise ProtoBuildError(f"grpc_tools.protoc failed on {PROTO_ROOT / PROTO_FILE} (exit {code})")
        try:
            staging.rename(target)  # atomic: a concurrent importer sees all files or none
        except OSError:
            if not (target / "amesh" / "v1" / "plugins_pb2_grpc.py").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def ensure_generated() -> Path:
    """The directory holding the generated package `amesh.v1`, compiling it if needed."""
    digest = _digest()
    problems = []
    for base in _candidates():
        target = base / digest
        if (target / "amesh" / "v1" / "plugins_pb2_grpc.py").exists():
            return target
        try:
            _compile(target)
            return target
        except OSError as exc:
            problems.append(f"{base}: {exc}")
    raise ProtoBuildError("no writable cache directory for the generated proto code: " + "; ".join(problems))


def _load() -> tuple[ModuleType, ModuleType]:
    root = str(ensure_generated())
    if root not in sys.path:
        sys.path.insert(0, root)
    return importlib.import_module("amesh.v1.plugins_pb2"), importlib.import_module("amesh.v1.plugins_pb2_grpc")


pb2, pb2_grpc = _load()
