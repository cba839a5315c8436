"""The pipeline's schema check skips only what it has really seen valid (identity), never a changed part."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar_agent.apisix.validation import SchemaCheck
from sidecar_agent.schemas import APISIX_SCHEMA_DIR

UPSTREAM = {"id": "u1", "type": "roundrobin", "nodes": [{"host": "10.0.0.1", "port": 9080, "weight": 1}]}
ROUTE = {"id": "r1", "uris": ["/*"], "upstream_id": "u1", "priority": 3, "vars": [["http_host", "==", "reviews"]]}


@pytest.fixture
def check() -> SchemaCheck:
    assert Path(APISIX_SCHEMA_DIR, "core", "route.json").is_file()
    return SchemaCheck(APISIX_SCHEMA_DIR)


def with_plugins(route: dict, **plugins) -> dict:
    return dict(route, plugins={**(route.get("plugins") or {}), **plugins})


def test_a_new_plugin_config_is_validated_even_when_the_route_is_otherwise_known(check) -> None:
    assert check({"routes": [ROUTE], "upstreams": [UPSTREAM]}) == []
    good = {"headers": {"set": {"x-mesh": "amesh"}}}
    assert check({"routes": [with_plugins(ROUTE, **{"response-rewrite": good})], "upstreams": [UPSTREAM]}) == []
    bad = {"status_code": "two hundred"}
    problems = check({"routes": [with_plugins(ROUTE, **{"response-rewrite": bad})], "upstreams": [UPSTREAM]})
    assert problems and "response-rewrite" in problems[0]


def test_a_changed_field_beside_known_plugins_gets_the_core_schema_again(check) -> None:
    conf = {"headers": {"set": {"x-mesh": "amesh"}}}
    route = with_plugins(ROUTE, **{"response-rewrite": conf})
    assert check({"routes": [route], "upstreams": [UPSTREAM]}) == []
    broken = dict(route, priority="high")  # same plugin config object, a new (invalid) priority
    problems = check({"routes": [broken], "upstreams": [UPSTREAM]})
    assert problems and "priority" in " ".join(problems)


def test_a_refused_document_does_not_teach_the_cache(check) -> None:
    bad = {"status_code": "two hundred"}
    route = with_plugins(ROUTE, **{"response-rewrite": bad})
    assert check({"routes": [route], "upstreams": [UPSTREAM]})
    assert check({"routes": [route], "upstreams": [UPSTREAM]})  # still refused the second time
