"""Per-pod merge (conflict rule), reconcile (which pods change) and status: table tests on literal objects."""

from __future__ import annotations

import pytest

from controller import crd, status
from controller.merge import merge_for_pod
from controller.reconcile import ConfigStatus, Reconciler, desired
from controller.selection import pod_from
from amesh_common.plugin_model import Direction, PluginType
from tests.controller.objects import ampc, pod, rewrite

WEB = {"matchLabels": {"app": "web"}}


def cfg(*args, **kwargs):
    return crd.parse(ampc(*args, **kwargs))


def names(plugin_set):
    return [(p.direction.value, p.type.value, p.name, p.config, p.source) for p in plugin_set.plugins]


def test_oldest_config_wins_and_the_loser_is_reported():
    old = cfg("zz-old", [rewrite(value="old")], created="2026-01-01T00:00:00Z")
    new = cfg("aa-new", [rewrite(value="new"), {"name": "cors", "config": {}}], created="2026-02-01T00:00:00Z")
    plugin_set, conflicts = merge_for_pod(pod_from(pod("p")), [new, old])
    assert names(plugin_set) == [
        ("outbound", "", "cors", {}, "default/aa-new"),
        ("outbound", "", "response-rewrite", {"headers": {"set": {"X-Mesh": "old"}}}, "default/zz-old")]
    assert [c.describe() for c in conflicts] == [
        "plugin response-rewrite (outbound) on pod default/p comes from default/zz-old"]
    assert conflicts[0].loser == "default/aa-new"


def test_same_creation_time_breaks_ties_by_name():
    b = cfg("b", [rewrite(value="b")])
    a = cfg("a", [rewrite(value="a")])
    assert names(merge_for_pod(pod_from(pod("p")), [b, a])[0])[0][4] == "default/a"


def test_directions_do_not_conflict_and_ext_plugins_combine_in_rank_order():
    first = cfg("first", [rewrite(direction="inbound"), {"name": "auth", "type": "pre-req", "config": {"k": 1}}],
                created="2026-01-01T00:00:00Z")
    second = cfg("second", [rewrite(), {"name": "audit", "type": "pre-req", "config": {}},
                            {"name": "auth", "type": "pre-req", "config": {"k": 2}}], created="2026-01-02T00:00:00Z")
    plugin_set, conflicts = merge_for_pod(pod_from(pod("p")), [second, first])
    assert [(d, t, n, s) for d, t, n, _, s in names(plugin_set)] == [
        ("inbound", "", "response-rewrite", "default/first"),
        ("outbound", "", "response-rewrite", "default/second"),
        ("outbound", "pre-req", "auth", "default/first"),   # rank first, then spec order
        ("outbound", "pre-req", "audit", "default/second")]
    assert [(c.type, c.plugin, c.loser) for c in conflicts] == [(PluginType.PRE_REQ, "auth", "default/second")]


def test_invalid_and_unselecting_configs_contribute_nothing():
    invalid = cfg("bad", [{"name": "response-rewrite", "config": "{}"}])
    other = cfg("other", [rewrite()], selector={"matchLabels": {"app": "db"}})
    plugin_set, _ = merge_for_pod(pod_from(pod("p", {"app": "web"})), [invalid, other])
    assert plugin_set.plugins == ()


def test_merge_is_deterministic_whatever_the_input_order():
    configs = [cfg(f"c{i}", [rewrite(value=str(i)), {"name": f"ext{i % 3}", "type": "post-req", "config": {}}],
                   created=f"2026-01-0{1 + i % 4}T00:00:00Z") for i in range(8)]
    p = pod_from(pod("p"))
    first = merge_for_pod(p, configs)
    assert merge_for_pod(p, list(reversed(configs))) == first
    assert first[0].version and len(first[0].version) == 16


def test_desired_counts_matches_even_for_invalid_configs():
    pods = [pod_from(pod("w1", {"app": "web"})), pod_from(pod("w2", {"app": "web"})), pod_from(pod("d", {"app": "db"}))]
    sets, statuses = desired([cfg("web", [rewrite()], selector=WEB),
                              cfg("bad", [{"name": "nope-plugin-x", "type": "x", "config": {}}], selector=WEB)], pods)
    assert sorted(sets) == [("default", "w1"), ("default", "w2")]
    assert statuses[("default", "web")] == ConfigStatus(1, 2)
    assert statuses[("default", "bad")].matched == 2 and statuses[("default", "bad")].problems


# Each step: (event, expected pods pushed with their plugin names). Run in order on one Reconciler.
STEPS = [
    ("pod w1 web", ("pod", pod("w1", {"app": "web"})), {}),
    ("pod d1 db", ("pod", pod("d1", {"app": "db"})), {}),
    ("config selects web", ("config", ampc("c", [rewrite()], selector=WEB)), {"w1": ["response-rewrite"]}),
    ("pod w2 arrives matching", ("pod", pod("w2", {"app": "web"})), {"w2": ["response-rewrite"]}),
    ("same config again (resent, new resourceVersion)", ("config", ampc("c", [rewrite()], selector=WEB)), {}),
    ("selector widened to all", ("config", ampc("c", [rewrite()], generation=2)), {"d1": ["response-rewrite"]}),
    ("selector narrowed to db: web pods told to drop",
     ("config", ampc("c", [rewrite()], selector={"matchLabels": {"app": "db"}}, generation=3)), {"w1": [], "w2": []}),
    ("pod label change stops matching", ("pod", pod("d1", {"app": "web"})), {"d1": []}),
    ("pod label change starts matching", ("pod", pod("w1", {"app": "db"})), {"w1": ["response-rewrite"]}),
    ("config in another namespace touches nothing here",
     ("config", ampc("c", [rewrite()], namespace="other")), {}),
    ("config becomes invalid: its pods lose the plugins",
     ("config", ampc("c", [{"name": "fault-injection", "config": {"abort": {"http_status": 99}}}],
                     selector={"matchLabels": {"app": "db"}}, generation=4)), {"w1": []}),
    ("valid again", ("config", ampc("c", [rewrite()], selector={"matchLabels": {"app": "db"}}, generation=5)),
     {"w1": ["response-rewrite"]}),
    ("config deleted: its pods are told", ("delete-config", ("default", "c")), {"w1": []}),
]


def test_reconcile_sequence(checker):
    r = Reconciler()
    for label, (kind, obj), expected in STEPS:
        if kind == "pod":
            actions = r.pod((obj["metadata"]["namespace"], obj["metadata"]["name"]), pod_from(obj))
        elif kind == "config":
            actions = r.config((obj["metadata"]["namespace"], obj["metadata"]["name"]), crd.parse(obj, checker))
        else:
            actions = r.config(obj, None)
        got = {k[1]: [p.name for p in s.plugins] for k, s in actions.pushes.items() if k[0] == "default"}
        assert got == expected, label


def test_resync_drops_objects_missing_from_a_relist():
    r = Reconciler()
    r.resync(configs=[cfg("c", [rewrite()])], pods=[pod_from(pod("a")), pod_from(pod("b"))])
    assert sorted(r.sets) == [("default", "a"), ("default", "b")]
    actions = r.resync(configs=[])  # the config was deleted while the watch was down
    assert {k: s.plugins for k, s in actions.pushes.items()} == {("default", "a"): (), ("default", "b"): ()}
    assert r.sets == {} and r.statuses == {}


def test_status_only_changes_on_content():
    r = Reconciler()
    r.pod(("default", "a"), pod_from(pod("a")))
    first = r.config(("default", "c"), cfg("c", [rewrite()]))
    assert first.statuses == {("default", "c"): ConfigStatus(1, 1)}
    assert not r.config(("default", "c"), cfg("c", [rewrite()])).statuses


def test_status_body_conditions_and_transition_times():
    s = ConfigStatus(generation=3, matched=2, problems=("spec.plugins[0]: bad",))
    body = status.status_body(s, None, "2026-12-01T00:00:00Z")
    assert body == {"observedGeneration": 3, "matchedPods": 2, "conditions": [
        {"type": "Ready", "status": "False", "reason": "Invalid",
         "message": "not delivered to any sidecar: spec.plugins[0]: bad",
         "observedGeneration": 3, "lastTransitionTime": "2026-12-01T00:00:00Z"},
        {"type": "Conflicted", "status": "False", "reason": "NoConflict", "message": "",
         "observedGeneration": 3, "lastTransitionTime": "2026-12-01T00:00:00Z"}]}
    fixed = status.status_body(ConfigStatus(3, 2, (), ("x lost",)), body, "2026-12-02T00:00:00Z")
    assert [(c["status"], c["lastTransitionTime"]) for c in fixed["conditions"]] == [
        ("True", "2026-12-02T00:00:00Z"), ("True", "2026-12-02T00:00:00Z")]
    again = status.status_body(ConfigStatus(3, 2, (), ("x lost",)), fixed, "2026-12-03T00:00:00Z")
    assert not status.needs_patch(fixed, again)
    assert again["conditions"][0]["lastTransitionTime"] == "2026-12-02T00:00:00Z"
    assert status.needs_patch(fixed, status.status_body(ConfigStatus(3, 5, ()), fixed, "t"))


@pytest.mark.parametrize("direction", list(Direction))
def test_both_expands_to_each_direction(direction):
    plugin_set, _ = merge_for_pod(pod_from(pod("p")), [cfg("c", [rewrite(direction="both")])])
    assert [p.name for p in plugin_set.of(direction)] == ["response-rewrite"]
