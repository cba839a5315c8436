from pathlib import Path

import pytest

SCHEMA_DIR = Path(__file__).resolve().parents[2] / ".." / "shared" / "apisix-schema" / "3.18"


@pytest.fixture(scope="session")
def checker():
    if not (SCHEMA_DIR / "core" / "route.json").is_file():
        pytest.skip(f"APISIX schemas not found at {SCHEMA_DIR}")
    from controller.validation import PluginChecker

    return PluginChecker(SCHEMA_DIR)
