"""The controller's plugin set in the pipeline, sans-IO with the real Translator: the merged document is
what is gated, checked and submitted; a new set re-merges without translating; a refused set changes
nothing; the overlay hands back the same objects for what did not change."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from amesh_common.plugin_model import EMPTY, ControllerPlugin, Direction, PluginSet, PluginType
from sidecar_agent.plugins.overlay import Overlay
from amesh_testing import istiogen
from tests.agent.test_pipeline import Driver
from tests.agent.waiting import eventually

SCHEMAS = Path(__file__).resolve().parents[2] / ".." / "shared" / "apisix-schema" / "3.18"
RATINGS_ABORT = "9080/ratings.default.svc.cluster.local:9080/route0"  # fault-injection from the VirtualService


def plugin(name: str, config: dict, direction: Direction = Direction.OUTBOUND) -> ControllerPlugin:
    return ControllerPlugin(direction, PluginType.PLAIN, name, json.dumps(config, sort_keys=True), "default/c")


def rewrite_set(value: str, *extra: ControllerPlugin) -> PluginSet:
    return PluginSet((plugin("response-rewrite", {"headers": {"set": {"X-Mesh": value}}}), *extra), f"v-{value}")


def routes_by_name(document) -> dict:
    return {r["name"]: r for r in document["routes"]}


def test_a_new_set_re_merges_the_document_in_force_without_translating():
    async def main():
        d = Driver()
        await d.sync(istiogen.bookinfo("ratings-abort-jason"))
        before = d.pipeline.document
        assert before.label == "cds=1,eds=1,lds=1,rds=1"
        assert before.body is d.pipeline.source.body  # no set yet: the translator's own document
        d.spy.calls.clear()

        assert await d.pipeline.on_plugins(rewrite_set("1")) is None
        assert d.spy.calls == []  # nothing translated again
        after = d.pipeline.document
        assert after.label == "cds=1,eds=1,lds=1,rds=1;plugins=v-1" and after.complete
        assert d.pipeline.source.body is before.body
        routes = routes_by_name(after.body)
        assert all(r["plugins"]["response-rewrite"] == {"headers": {"set": {"X-Mesh": "1"}}}
                   for r in routes.values())
        # The VirtualService's abort stays next to the controller's plugin, exactly as translated.
        xds = routes_by_name(before.body)[RATINGS_ABORT]["plugins"]["fault-injection"]
        assert routes[RATINGS_ABORT]["plugins"]["fault-injection"] == xds
        assert "response-rewrite" not in routes_by_name(before.body)[RATINGS_ABORT].get("plugins", {})
        assert d.pipeline.metrics.registry.get_sample_value("amesh_plugin_sets_total", {"result": "applied"}) == 1
        assert d.pipeline.metrics.registry.get_sample_value("amesh_plugins_active") == 1

        # The same set again (a reconnect): nothing new is submitted.
        assert await d.pipeline.on_plugins(rewrite_set("1")) is None
        assert d.pipeline.document is after
        # The next xDS update goes through the set in force too.
        assert await d.send("rds", "2", istiogen.bookinfo("all-v1").route_configs) is None
        third = d.pipeline.document
        assert third.label == "cds=1,eds=1,lds=1,rds=2;plugins=v-1"
        assert all("response-rewrite" in r["plugins"] for r in third.body["routes"])
        # A set without plugins gives the translator's document back, untouched.
        assert await d.pipeline.on_plugins(PluginSet((), "empty")) is None
        assert d.pipeline.document.body is d.pipeline.source.body
        assert not any("response-rewrite" in (r.get("plugins") or {}) for r in d.pipeline.document.body["routes"])

    asyncio.run(main())


def test_a_set_the_gate_refuses_is_not_adopted_and_changes_nothing():
    async def main():
        d = Driver()
        await d.sync(istiogen.bookinfo("all-v1"))
        assert await d.pipeline.on_plugins(rewrite_set("1")) is None
        in_force = d.pipeline.document
        # A traffic-split to an upstream the document does not hold: the gate sees the merged document.
        split = plugin("traffic-split", {"rules": [{"weighted_upstreams": [{"upstream_id": "nowhere", "weight": 1}]}]})
        error = await d.pipeline.on_plugins(rewrite_set("2", split))
        assert error is not None and "plugin set 'v-2' refused" in error
        assert "upstream 'nowhere' does not exist" in error
        assert d.pipeline.plugins == rewrite_set("1") and d.pipeline.plugins_refused == error
        assert d.pipeline.document is in_force
        metric = d.pipeline.metrics.registry.get_sample_value
        assert metric("amesh_plugin_sets_total", {"result": "refused"}) == 1
        # An xDS update after the refusal is merged with the set still in force; the refusal is cleared
        # only by a set that is adopted.
        assert await d.send("rds", "2", istiogen.bookinfo("reviews-jason-v2").route_configs) is None
        assert d.pipeline.document.label.endswith(";plugins=v-1")
        assert await d.pipeline.on_plugins(rewrite_set("3")) is None
        assert d.pipeline.plugins_refused is None

    asyncio.run(main())


def test_the_schema_check_runs_on_the_merged_document():
    if not (SCHEMAS / "core" / "route.json").is_file():
        pytest.skip(f"APISIX schemas not found at {SCHEMAS}")
    from sidecar_agent.app import default_check

    async def main():
        d = Driver(check=default_check(SCHEMAS))
        await d.sync(istiogen.bookinfo("all-v1"))
        # response-rewrite's status_code must be 200-598: APISIX would refuse every route carrying it.
        bad = PluginSet((plugin("response-rewrite", {"status_code": 99}),), "bad")
        error = await d.pipeline.on_plugins(bad)
        assert error is not None and "response-rewrite" in error and d.pipeline.plugins == EMPTY
        assert await d.pipeline.on_plugins(rewrite_set("1")) is None
        # A set adopted before any document is checked with the first one: xDS is refused (NACK) rather
        # than pushed without validation.
        fresh = Driver(check=default_check(SCHEMAS))
        assert await fresh.pipeline.on_plugins(bad) is None and fresh.pipeline.document is None
        x = istiogen.bookinfo("all-v1")
        for short, items in (("cds", x.clusters), ("eds", x.endpoints), ("lds", x.listeners)):
            assert await fresh.send(short, "1", items) is None
        error = await fresh.send("rds", "1", x.route_configs)
        assert error is not None and "response-rewrite" in error and fresh.pipeline.document is None

    asyncio.run(main())


def test_inbound_and_outbound_plugins_go_to_their_routes_only():
    async def main():
        d = Driver()
        x = istiogen.bookinfo("all-v1")
        await d.sync(x)
        inbound = plugin("ip-restriction", {"whitelist": ["10.0.0.0/8"]}, Direction.INBOUND)
        assert await d.pipeline.on_plugins(PluginSet((inbound,), "in")) is None
        # Bookinfo's sidecar has only outbound routes: nothing to add (and nothing was copied).
        assert d.pipeline.document.body["routes"] == d.pipeline.source.body["routes"]
        assert all(a is b for a, b in zip(d.pipeline.document.body["routes"], d.pipeline.source.body["routes"]))

    asyncio.run(main())


def test_overlay_gives_back_the_same_objects_for_what_did_not_change():
    overlay = Overlay()
    route_a = {"id": "a", "name": "9080/a/r", "uri": "/a", "upstream_id": "u"}
    route_b = {"id": "b", "name": "inbound|9080||/b/r", "uri": "/b", "upstream_id": "u"}
    document = {"routes": [route_a, route_b], "upstreams": [{"id": "u"}]}
    assert overlay(document, EMPTY) is document
    one = rewrite_set("1")
    merged = overlay(document, one)
    assert merged is not document and merged["upstreams"] is document["upstreams"]
    assert merged["routes"][0]["plugins"] == {"response-rewrite": {"headers": {"set": {"X-Mesh": "1"}}}}
    assert merged["routes"][1] is route_b  # inbound: the outbound plugin is not added
    assert "plugins" not in route_a  # the translator's objects are never modified
    assert overlay(document, one) is merged
    # A new document sharing route_a: its merged form is the same object, the changed route is merged anew.
    route_b2 = dict(route_b, uri="/b2")
    second = overlay({"routes": [route_a, route_b2], "upstreams": document["upstreams"]}, one)
    assert second["routes"][0] is merged["routes"][0] and second["routes"][1] is route_b2
    # Another set: everything merged again with it.
    third = overlay({"routes": [route_a, route_b2]}, rewrite_set("2"))
    assert third["routes"][0]["plugins"]["response-rewrite"] == {"headers": {"set": {"X-Mesh": "2"}}}


def test_a_new_set_re_merges_the_partial_document_in_force():
    async def main():
        d = Driver(partial_timeout=0.05)
        x = istiogen.bookinfo("all-v1")
        assert await d.send("cds", "1", x.clusters) is None
        assert await d.send("lds", "1", x.listeners) is None
        assert await d.send("rds", "1", x.route_configs) is None  # no EDS: stays incomplete
        partial = await eventually(lambda: d.pipeline.document, what="partial document")
        assert await d.pipeline.on_plugins(rewrite_set("1")) is None
        document = d.pipeline.document
        assert document.label == partial.label + ";plugins=v-1" and partial.label.startswith("partial:")
        assert not document.complete and document.body["routes"]
        assert all("response-rewrite" in r["plugins"] for r in document.body["routes"])

    asyncio.run(main())
