"""End to end on the real pair with APISIX in API-driven standalone mode (PUT /apisix/admin/configs):
request routing, traffic shifting and the stream side (TCP service, passthrough) as in file mode."""

from __future__ import annotations

import pytest

from localmesh import requests as req, tasks
from netns_tests.meshfixture import mesh_up


@pytest.fixture(scope="module")
def mesh():
    yield from mesh_up("api")


@pytest.mark.parametrize("task", [tasks.request_routing, tasks.traffic_shifting, tasks.fault_abort],
                         ids=lambda t: t.__name__)
def test_bookinfo_task(mesh, task):
    tasks.reset(mesh)
    failed = [o for o in task(mesh) if not o.ok]
    tasks.reset(mesh)
    assert not failed, failed


def test_stream_routes_apply_in_api_mode(mesh):
    tcp = req.send(mesh, "productpage-v1", "tcp://mongodb:27017", data="api")
    assert tcp.json() == {"replies": ["mongodb-v1 api"]}, tcp.as_dict()
    outside = req.send(mesh, "productpage-v1", "http://external.example:8080/api")
    assert req.answered_by(outside) == "external v1"
