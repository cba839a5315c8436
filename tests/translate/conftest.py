"""Shared paths: fixtures and APISIX schemas live in ../shared, never in the repo; skip when absent."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO / ".." / "shared"
FIXTURES = SHARED / "fixtures" / "istio-xds"
SCHEMAS = SHARED / "apisix-schema" / "3.18"
GOLDEN = Path(__file__).resolve().parent / "golden"


@pytest.fixture
def schema_dir() -> Path:
    if not (SCHEMAS / "core" / "route.json").is_file():
        pytest.skip("APISIX schemas not found in ../shared/apisix-schema/3.18")
    return SCHEMAS


def fixture(name: str) -> Path:
    path = FIXTURES / name
    if not path.is_file():
        pytest.skip(f"fixture {name} not found in ../shared/fixtures/istio-xds")
    return path
