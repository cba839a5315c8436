"""AmeshPluginConfig parsing and validation against APISIX's plugin schemas: table tests."""

from __future__ import annotations

import pytest

from controller import crd
from controller.crd import Direction, PluginType
from controller.selection import Pod, pod_from, selects
from tests.controller.objects import ampc, pod, rewrite

BAD = [
    ("no plugins", ampc("a", []), ["spec.plugins: needs at least one plugin"]),
    ("config as a JSON string (Amesh's form)",
     ampc("a", [{"name": "response-rewrite", "config": '{"body": "x"}'}]),
     ["spec.plugins[0].config: must be an object, not a JSON string"]),
    ("unknown type", ampc("a", [{**rewrite(), "type": "pre"}]),
     ['spec.plugins[0].type: \'pre\' is not one of "", pre-req, post-req']),
    ("bad direction", ampc("a", [rewrite(direction="sideways")]),
     ["spec.plugins[0].direction: 'sideways' is not one of outbound, inbound, both"]),
    ("empty name", ampc("a", [{"name": "", "config": {}}]), ["spec.plugins[0].name: must be a non-empty string"]),
    ("duplicate in one config", ampc("a", [rewrite(), rewrite(direction="both")]),
     ["spec.plugins[1]: plugin 'response-rewrite' (outbound) is already set by spec.plugins[0]"]),
    ("selector operator", ampc("a", [rewrite()], selector={"matchExpressions": [{"key": "a", "operator": "Is"}]}),
     ["spec.selector.matchExpressions[0]: operator 'Is' is not one of In, NotIn, Exists, DoesNotExist"]),
    ("In without values", ampc("a", [rewrite()], selector={"matchExpressions": [{"key": "a", "operator": "In"}]}),
     ["spec.selector.matchExpressions[0]: operator In needs at least one value"]),
    ("Exists with values",
     ampc("a", [rewrite()], selector={"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}),
     ["spec.selector.matchExpressions[0]: operator Exists takes no values"]),
    ("matchLabels not strings", ampc("a", [rewrite()], selector={"matchLabels": {"a": 1}}),
     ["spec.selector.matchLabels: must map label names to string values"]),
    ("unknown selector field", ampc("a", [rewrite()], selector={"matchLabel": {"a": "b"}}),
     ["spec.selector: unknown fields ['matchLabel']"]),
]


@pytest.mark.parametrize("name,obj,problems", BAD, ids=[b[0] for b in BAD])
def test_structural_problems_are_reported_not_raised(name, obj, problems):
    assert list(crd.parse(obj).problems) == problems


SCHEMA_CASES = [
    ("valid response-rewrite", [rewrite()], []),
    ("valid limit-req (defaults filled like APISIX)",
     [{"name": "limit-req", "config": {"rate": 1, "burst": 1, "key": "remote_addr"}}], []),
    ("fault-injection status out of range", [{"name": "fault-injection", "config": {"abort": {"http_status": 99}}}],
     ["spec.plugins[0] (fault-injection): plugin fault-injection: abort/http_status: 99 is less than the minimum of 200"]),
    ("unknown plugin", [{"name": "no-such-plugin", "config": {}}],
     ["spec.plugins[0] (no-such-plugin): unknown plugin 'no-such-plugin'"]),
    ("pre-req with an object config is fine", [{"name": "my-auth", "type": "pre-req", "config": {"a": 1}}], []),
    ("ext-plugin name too long", [{"name": "x" * 129, "type": "post-req", "config": {}}],
     [f"spec.plugins[0] ({'x' * 129}): plugin ext-plugin-post-req: conf/0/name: '{'x' * 129}' is too long"]),
    ("ext-plugin-pre-req used directly", [{"name": "ext-plugin-pre-req", "config": {"conf": []}}],
     ["spec.plugins[0] (ext-plugin-pre-req): use type pre-req/post-req instead of the plugin "
      "'ext-plugin-pre-req' itself"]),
]


@pytest.mark.parametrize("name,plugins,problems", SCHEMA_CASES, ids=[c[0] for c in SCHEMA_CASES])
def test_plugin_configs_are_checked_against_apisix_schemas(checker, name, plugins, problems):
    assert list(crd.parse(ampc("a", plugins), checker).problems) == problems


def test_defaults_filled_while_validating_do_not_leak_into_the_delivered_config(checker):
    config = crd.parse(ampc("a", [{"name": "limit-req", "config": {"rate": 1, "burst": 1, "key": "remote_addr"}}]),
                       checker)
    assert config.plugins[0].config == {"rate": 1, "burst": 1, "key": "remote_addr"}


def test_parsed_values():
    obj = ampc("a", [rewrite(direction="both"), {"name": "runner", "type": "pre-req", "config": {"k": "v"}}],
               selector={"matchLabels": {"app": "web"}}, generation=4)
    config = crd.parse(obj)
    assert config.valid and config.key == ("default", "a") and config.generation == 4
    assert config.plugins[0].directions == (Direction.OUTBOUND, Direction.INBOUND)
    assert config.plugins[1].directions == (Direction.OUTBOUND,)  # the default
    assert config.plugins[1].type is PluginType.PRE_REQ
    assert config.created.isoformat() == "2026-01-01T00:00:00+00:00"


def test_unidentifiable_object_raises():
    with pytest.raises(crd.CrdError, match="metadata.namespace and metadata.name"):
        crd.parse({"metadata": {"name": "a"}, "spec": {}})


SELECTORS = [
    ("absent selects all", None, {"app": "x"}, True),
    ("empty selects all", {}, {}, True),
    ("matchLabels hit", {"matchLabels": {"app": "web"}}, {"app": "web", "v": "1"}, True),
    ("matchLabels miss", {"matchLabels": {"app": "web"}}, {"app": "db"}, False),
    ("matchLabels absent key", {"matchLabels": {"app": "web"}}, {}, False),
    ("In", {"matchExpressions": [{"key": "v", "operator": "In", "values": ["1", "2"]}]}, {"v": "2"}, True),
    ("In absent", {"matchExpressions": [{"key": "v", "operator": "In", "values": ["1"]}]}, {}, False),
    ("NotIn absent matches", {"matchExpressions": [{"key": "v", "operator": "NotIn", "values": ["1"]}]}, {}, True),
    ("NotIn hit", {"matchExpressions": [{"key": "v", "operator": "NotIn", "values": ["1"]}]}, {"v": "1"}, False),
    ("Exists", {"matchExpressions": [{"key": "v", "operator": "Exists"}]}, {"v": ""}, True),
    ("DoesNotExist", {"matchExpressions": [{"key": "v", "operator": "DoesNotExist"}]}, {"v": "1"}, False),
    ("labels AND expressions", {"matchLabels": {"app": "web"},
                                "matchExpressions": [{"key": "v", "operator": "In", "values": ["2"]}]},
     {"app": "web", "v": "1"}, False),
]


@pytest.mark.parametrize("name,selector,labels,expected", SELECTORS, ids=[s[0] for s in SELECTORS])
def test_selection(name, selector, labels, expected):
    config = crd.parse(ampc("a", [rewrite()], selector=selector))
    assert config.valid
    assert selects(config, pod_from(pod("p", labels))) is expected


def test_selection_is_namespaced_and_skips_finished_pods():
    config = crd.parse(ampc("a", [rewrite()]))
    assert not selects(config, Pod("other", "p"))
    assert pod_from(pod("done", phase="Succeeded")) is None
    assert pod_from({"metadata": {"name": "x"}}) is None
