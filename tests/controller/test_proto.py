"""The committed gRPC code is what grpc_tools makes of the proto today: regenerate and compare."""

from __future__ import annotations

import difflib

from amesh_common.protogen import GENERATED, ROOT, generate


def test_committed_code_matches_the_proto(tmp_path):
    for fresh in generate(tmp_path):
        name = fresh.relative_to(tmp_path)
        committed = (ROOT / name).read_text()
        diff = "".join(difflib.unified_diff(committed.splitlines(True), fresh.read_text().splitlines(True),
                                            f"committed/{name}", f"regenerated/{name}", n=1))
        assert not diff, f"{name} is stale: run `.venv/bin/python -m amesh_common.protogen`\n{diff[:3000]}"
    assert sorted(str(p.relative_to(tmp_path)) for p in generate(tmp_path)) == sorted(GENERATED)


def test_generated_code_is_imported_as_a_normal_package():
    import sys

    from amesh_common import proto

    assert proto.pb2.__name__ == "amesh_common.proto.amesh.v1.plugins_pb2"
    assert proto.pb2_grpc.PluginServiceStub is not None
    assert "amesh" not in sys.modules  # no top-level package planted on sys.path
