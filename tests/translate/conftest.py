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
    """APISIX 3.18's schemas as shipped in the package (tests/schemas checks them against ../shared's copy)."""
    from sidecar_agent.schemas import APISIX_SCHEMA_DIR

    return APISIX_SCHEMA_DIR


def fixture(name: str) -> Path:
    path = FIXTURES / name
    if not path.is_file():
        pytest.skip(f"fixture {name} not found in ../shared/fixtures/istio-xds")
    return path


def pod_ips(path: Path) -> tuple[str, ...]:
    """The pod IPs the dump's bootstrap names (INSTANCE_IPS), as `amesh-agent translate` reads them."""
    import json

    from sidecar_agent.translate.bootstrap import instance_ips

    return instance_ips(json.loads(path.read_text())) if path.suffix == ".json" else ()


def translate_fixture(path: Path, resources=None):
    """The translation `amesh-agent translate` makes of a fixture: data path on, pod IPs from the dump."""
    from sidecar_agent.apisix.datapath import DataPathSettings
    from sidecar_agent.configdump import load_config_dump
    from sidecar_agent.translate import translate

    return translate(resources if resources is not None else load_config_dump(path),
                     pod_ips=pod_ips(path), data_path=DataPathSettings())
