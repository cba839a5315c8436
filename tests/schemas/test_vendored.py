"""The shipped APISIX schemas are exactly the reference set (no drift, no hand edits)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar_agent.schemas import APISIX_SCHEMA_DIR

REFERENCE = Path(__file__).resolve().parents[2] / ".." / "shared" / "apisix-schema" / "3.18"


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_shipped_schemas_equal_the_reference() -> None:
    if not REFERENCE.is_dir():
        pytest.skip(f"reference schemas not found at {REFERENCE}")
    assert files(APISIX_SCHEMA_DIR) == files(REFERENCE)


def test_shipped_schemas_are_complete() -> None:
    names = files(APISIX_SCHEMA_DIR)
    assert "core/route.json" in names and "plugins/traffic-split.json" in names and "index.json" in names
