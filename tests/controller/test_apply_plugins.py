"""Agent-side merge of controller plugins into translated routes (Amesh #19: xDS plugins survive)."""

from __future__ import annotations

import copy
import json

import pytest

from sidecar_agent.plugins.merge import apply_all, apply_plugins, route_direction, shadowed
from amesh_common.plugin_model import ControllerPlugin, Direction, PluginSet, PluginType
from sidecar_agent.schema import validate_document
from tests.controller.conftest import SCHEMA_DIR

OUT, IN = Direction.OUTBOUND, Direction.INBOUND
SPLIT = {"rules": [{"weighted_upstreams": [{"upstream_id": "u2", "weight": 20}, {"weight": 80}]}]}
FAULT = {"abort": {"http_status": 503, "percentage": 10}}


def plugin(name, config, direction=OUT, ptype=PluginType.PLAIN):
    return ControllerPlugin(direction, ptype, name, json.dumps(config, sort_keys=True), "default/c")


def document():
    return {
        "routes": [
            {"id": "r1", "name": "9080/reviews:9080/default", "uris": ["/*"], "upstream_id": "u1",
             "plugins": {"traffic-split": SPLIT, "fault-injection": FAULT}},
            {"id": "r2", "name": "9080/reviews:9080/404", "uris": ["/*"], "upstream_id": "u1"},
            {"id": "r3", "name": "inbound|9080||/inbound|http|9080/default", "uris": ["/*"], "upstream_id": "u1",
             "plugins": {"proxy-rewrite": {"host": "x"}}},
            {"id": "r4", "name": "odd", "labels": {"amesh-direction": "inbound"}, "uris": ["/*"], "upstream_id": "u1"},
        ],
        "upstreams": [{"id": "u1", "type": "roundrobin", "nodes": [{"host": "10.0.0.1", "port": 80, "weight": 1}]},
                      {"id": "u2", "type": "roundrobin", "nodes": [{"host": "10.0.0.2", "port": 80, "weight": 1}]}],
    }


REWRITE = {"headers": {"set": {"X-Mesh": "1"}}}
CASES = [
    ("outbound plain plugin lands on outbound routes only, xDS plugins kept",
     PluginSet((plugin("response-rewrite", REWRITE),)), OUT,
     {"r1": {"traffic-split": SPLIT, "fault-injection": FAULT, "response-rewrite": REWRITE},
      "r2": {"response-rewrite": REWRITE}, "r3": {"proxy-rewrite": {"host": "x"}}, "r4": None}),
    ("controller fault-injection loses to the xDS one; added where absent",
     PluginSet((plugin("fault-injection", {"abort": {"http_status": 418}}),)), OUT,
     {"r1": {"traffic-split": SPLIT, "fault-injection": FAULT}, "r2": {"fault-injection": {"abort": {"http_status": 418}}},
      "r3": {"proxy-rewrite": {"host": "x"}}, "r4": None}),
    ("inbound direction by name prefix and by label",
     PluginSet((plugin("response-rewrite", REWRITE, IN), plugin("cors", {}, OUT))), IN,
     {"r1": {"traffic-split": SPLIT, "fault-injection": FAULT}, "r2": None,
      "r3": {"proxy-rewrite": {"host": "x"}, "response-rewrite": REWRITE}, "r4": {"response-rewrite": REWRITE}}),
    ("pre-req and post-req become ext-plugin conf lists with string values, in set order",
     PluginSet((plugin("auth", {"k": 1}, ptype=PluginType.PRE_REQ), plugin("audit", {}, ptype=PluginType.PRE_REQ),
                plugin("log", {"a": [1, 2]}, ptype=PluginType.POST_REQ))), OUT,
     {"r1": {"traffic-split": SPLIT, "fault-injection": FAULT,
             "ext-plugin-pre-req": {"conf": [{"name": "auth", "value": '{"k":1}'}, {"name": "audit", "value": "{}"}]},
             "ext-plugin-post-req": {"conf": [{"name": "log", "value": '{"a":[1,2]}'}]}},
      "r2": {"ext-plugin-pre-req": {"conf": [{"name": "auth", "value": '{"k":1}'}, {"name": "audit", "value": "{}"}]},
             "ext-plugin-post-req": {"conf": [{"name": "log", "value": '{"a":[1,2]}'}]}},
      "r3": {"proxy-rewrite": {"host": "x"}}, "r4": None}),
    ("empty set changes nothing", PluginSet(), OUT,
     {"r1": {"traffic-split": SPLIT, "fault-injection": FAULT}, "r2": None, "r3": {"proxy-rewrite": {"host": "x"}},
      "r4": None}),
]


@pytest.mark.parametrize("name,plugin_set,direction,expected", CASES, ids=[c[0] for c in CASES])
def test_apply_plugins(name, plugin_set, direction, expected):
    doc = document()
    before = copy.deepcopy(doc)
    out = apply_plugins(doc, plugin_set, direction)
    assert {r["id"]: r.get("plugins") for r in out["routes"]} == expected
    assert doc == before  # the input document is not modified
    assert out["upstreams"] == before["upstreams"]
    assert validate_document(out, SCHEMA_DIR) == []  # APISIX accepts the merged document


def test_plugin_deleted_by_controller_goes_but_xds_plugins_stay():
    """Amesh #19: an update or delete from the controller must not wipe xDS plugins (the merge is re-run
    on the freshly translated document every time, so a removed controller plugin simply isn't added)."""
    with_plugin = apply_all(document(), PluginSet((plugin("fault-injection", {"abort": {"http_status": 418}}),
                                                   plugin("response-rewrite", REWRITE))))
    assert with_plugin["routes"][0]["plugins"]["fault-injection"] == FAULT
    after_delete = apply_all(document(), PluginSet())
    assert after_delete == document()


def test_shadowed_lists_xds_wins():
    s = PluginSet((plugin("fault-injection", {"abort": {"http_status": 418}}),
                   plugin("proxy-rewrite", {"uri": "/"}, IN)))
    assert shadowed(document(), s) == [("r1", "fault-injection"), ("r3", "proxy-rewrite")]


def test_route_direction():
    assert route_direction({"name": "inbound|8080||/x/y"}) is IN
    assert route_direction({"name": "8080/x/y"}) is OUT
    assert route_direction({"name": "inbound|8080||/x/y", "labels": {"amesh-direction": "outbound"}}) is OUT
