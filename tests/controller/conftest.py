import pytest

from sidecar_agent.schemas import APISIX_SCHEMA_DIR as SCHEMA_DIR  # the schemas the controller ships with

EVERY_PLUGIN = "*,ext-plugin-*,serverless-*"  # the schema tests check every plugin, code-running ones too


@pytest.fixture(scope="session")
def checker():
    from amesh_common.allowlist import Allowlist
    from controller.validation import PluginChecker

    return PluginChecker(SCHEMA_DIR, Allowlist.parse(EVERY_PLUGIN))
