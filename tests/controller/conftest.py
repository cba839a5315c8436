import pytest

from sidecar_agent.schemas import APISIX_SCHEMA_DIR as SCHEMA_DIR  # the schemas the controller ships with


@pytest.fixture(scope="session")
def checker():
    from controller.validation import PluginChecker

    return PluginChecker(SCHEMA_DIR)
