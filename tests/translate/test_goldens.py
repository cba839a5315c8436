"""Goldens: every real dump in ../shared/fixtures/istio-xds translated to tests/translate/golden/*.json.

`REFRESH_GOLDEN=1` rewrites them. Translated as `amesh-agent translate` does: the data path on and the
pod IPs from the dump's bootstrap (INSTANCE_IPS; the 1.18 dump has none, so its inbound side is reported). Beyond byte equality, every golden document must validate against
APISIX 3.18's schemas, and specific semantics are asserted in test_fixture_semantics.py.
"""

from __future__ import annotations

import json
import os

import pytest

from sidecar_agent.configdump import XdsResources, load_config_dump
from sidecar_agent.schema import validate_document
from sidecar_agent.translate import Translator, translate
from sidecar_agent.translate.render import to_json

from .conftest import GOLDEN, fixture, translate_fixture

FIXTURES = [
    "istio1.9-bookinfo-productpage-sidecar.config_dump.json",
    "istio1.18-httpbin-sidecar-listeners.config_dump.json",
    "istio1.24-dualstack-sleep-sidecar.config_dump.json",
    "istio1.5-bookinfo-pilot-edsz.json",
    "envoygateway-fault-injection.routes.yaml",
    "envoygateway-http-route-mirrors-percentage.routes.yaml",
    "envoygateway-http-route-multiple-matches.routes.yaml",
    "envoygateway-http-route-regex.routes.yaml",
    "envoygateway-http-route-timeout.routes.yaml",
    "envoygateway-http-route-weighted-backend-consistent-hash.routes.yaml",
    "envoygateway-retry.routes.yaml",
]


def golden_name(fixture_name: str) -> str:
    stem = fixture_name
    for suffix in (".config_dump.json", ".routes.yaml", ".json"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return stem + ".json"


def eds_clusters_for(resources: XdsResources) -> XdsResources:
    """The edsz dump is EDS only: give each assignment the plain EDS cluster istiod pairs it with."""
    from envoy.config.cluster.v3 import cluster_pb2

    clusters = {}
    for name in resources.endpoints:
        cluster = cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.EDS)
        cluster.connect_timeout.FromMilliseconds(10_000)
        cluster.eds_cluster_config.service_name = name
        clusters[name] = cluster
    return XdsResources(resources.listeners, resources.route_configs, clusters, resources.endpoints,
                        resources.notes)


def resources_of(fixture_name: str) -> XdsResources:
    resources = load_config_dump(fixture(fixture_name))
    return eds_clusters_for(resources) if fixture_name.endswith("edsz.json") else resources


def golden_text(fixture_name: str) -> str:
    resources = resources_of(fixture_name)
    result = translate_fixture(fixture(fixture_name), resources)
    document = result.document
    if fixture_name.endswith("edsz.json"):
        # no routes send to these clusters, so the document holds none of their upstreams: the golden
        # holds the upstream each becomes once one does (Translator.cluster_upstream)
        translator = Translator().load(resources)
        upstreams = sorted((translator.cluster_upstream(name) for name in resources.clusters), key=lambda u: u["id"])
        document = dict(document, upstreams=upstreams)
    return to_json({"document": document, "report": result.report.to_dict()})


@pytest.mark.parametrize("name", FIXTURES)
def test_golden(name: str) -> None:
    text = golden_text(name)
    path = GOLDEN / golden_name(name)
    if os.environ.get("REFRESH_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.is_file(), f"{path} missing: run with REFRESH_GOLDEN=1"
    assert text == path.read_text(encoding="utf-8"), f"{path.name} differs: review, then REFRESH_GOLDEN=1"


@pytest.mark.parametrize("name", FIXTURES)
def test_golden_validates_against_apisix_schemas(name: str, schema_dir) -> None:
    path = GOLDEN / golden_name(name)
    if not path.is_file():
        pytest.skip("golden not generated yet")
    document = json.loads(path.read_text())["document"]
    assert document["routes"] or document["upstreams"] or name.startswith("istio1.18"), "empty golden"
    assert validate_document(document, schema_dir) == []


@pytest.mark.parametrize("name", FIXTURES)
def test_translation_is_deterministic(name: str) -> None:
    assert golden_text(name) == golden_text(name)


def test_golden_directory_has_no_strays() -> None:
    expected = {golden_name(n) for n in FIXTURES}
    present = {p.name for p in GOLDEN.glob("*.json")}
    assert present <= expected, f"goldens without a fixture: {sorted(present - expected)}"
