"""`apisix_admin`: the Admin API contract tests run against the stand-in (tests/agent/fake_apisix.py)
and against a real APISIX in API-driven standalone mode (tests/realapisix.py, one per module,
restarted between tests so each starts from nothing, as a new pod does)."""

from __future__ import annotations

import pytest

from sidecar_agent.apisix.config import Mode, render_yaml
from tests import realapisix
from tests.agent.fake_apisix import FakeApisix

ADMIN_KEY = "amesh-test-admin-key-0123"


@pytest.fixture(scope="module")
def real_admin():
    realapisix.skip_unless_available()
    settings, data_path = realapisix.settings(Mode.API, key=ADMIN_KEY)
    with realapisix.running(render_yaml(settings, data_path)) as apisix:
        yield realapisix.AdminRecorder(apisix)


@pytest.fixture(params=["fake", "real"])
def apisix_admin(request):
    """An Admin API with the FakeApisix interface: url, api_key, answers, accepted, config, versions, restart()."""
    if request.param == "fake":
        with FakeApisix(ADMIN_KEY) as fake:
            yield fake
        return
    real = request.getfixturevalue("real_admin")
    real.reset()
    yield real
    assert not real.apisix.errors(), real.apisix.log()
