"""configdump's fast JSON -> protobuf path gives json_format's messages, or leaves the input to it."""

from __future__ import annotations

import math

import pytest
from google.protobuf import json_format

from sidecar_agent import configdump
from tests.translate.conftest import FIXTURES


def _both(cls, body):
    """(fast message or None when it fell back, json_format's message or its error)."""
    fast = cls()
    try:
        configdump._convert(body, fast)
    except Exception:  # noqa: BLE001
        fast = None
    slow = cls()
    try:
        json_format.ParseDict(body, slow)
    except json_format.ParseError as exc:
        slow = str(exc)
    return fast, slow


def _cluster():
    from envoy.config.cluster.v3 import cluster_pb2
    from envoy.extensions.transport_sockets.tls.v3 import tls_pb2  # noqa: F401  (the Any's type)

    return cluster_pb2.Cluster


@pytest.mark.parametrize("body", [
    {"name": "c", "type": "EDS", "connectTimeout": "10s", "edsClusterConfig": {"edsConfig": {"ads": {}}},
     "circuitBreakers": {"thresholds": [{"maxConnections": 4294967295, "maxRetries": "7"}]},
     "metadata": {"filterMetadata": {"istio": {"services": [{"host": "a"}], "x": None}}},
     "outlierDetection": {}, "lbPolicy": "LEAST_REQUEST", "respectDnsTtl": True,
     "transportSocket": {"name": "tls", "typedConfig": {
         "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
         "sni": "outbound_.9080_._.reviews", "commonTlsContext": {"alpnProtocols": ["istio", "h2"]}}}},
    {"name": "c", "metadata": {"filterMetadata": {"a": {}, "b": {"n": 1, "f": 0.5, "t": True,
                                                        "l": [None, "s", [], {}]}}},
     "connectTimeout": "0.250s", "perConnectionBufferLimitBytes": 32768},
    {"name": "c", "connectTimeout": "5 s"},
    {"name": "c", "connectTimeout": 5},
    {"name": "c", "perConnectionBufferLimitBytes": "32768"},
    {"name": "c", "metadata": {"filterMetadata": {"a": []}}},
    {"name": "c", "lbPolicy": "LEAST_REQUEST", "lb_policy": "ROUND_ROBIN"},  # one field under both names
    {"name": "c", "type": "EDS", "clusterType": {"name": "x"}},  # one oneof twice
    {"name": "c", "lbPolicy": "NO_SUCH_POLICY"},
    {"name": "c", "lbPolicy": 1},
    {"name": "c", "perConnectionBufferLimitBytes": True},
    {"name": "c", "perConnectionBufferLimitBytes": 1.0},
    {"name": "c", "perConnectionBufferLimitBytes": " 5"},
    {"name": "c", "perConnectionBufferLimitBytes": -1},
    {"name": "c", "maxRequestsPerConnection": 5},
    {"name": "c", "loadAssignment": None},
    {"name": "c", "noSuchField": 1},
    {"name": "\ud800"},
    {"name": 5},
    {"name": "c", "commonLbConfig": {"healthyPanicThreshold": {"value": math.nan}}},
    {"name": "c", "commonLbConfig": {"healthyPanicThreshold": {"value": 50}}},
    {"name": "c", "transportSocket": {"typedConfig": {}}},
    {"name": "c", "transportSocket": {"typedConfig": {"@type": "type.googleapis.com/google.protobuf.Struct",
                                                      "value": {"a": 1}}}},
    {"name": "c", "transportSocket": {"typedConfig": {"value": "x"}}},
    [],
])
def test_fast_path_equals_json_format_or_falls_back(body):
    fast, slow = _both(_cluster(), body)
    if body and body.get("transportSocket", {}).get("name") == "tls":
        assert fast is not None, "the common case takes the fast path"
    if fast is not None:
        assert not isinstance(slow, str), f"fast path took what json_format refuses: {slow}"
        assert fast.SerializeToString(deterministic=True) == slow.SerializeToString(deterministic=True)


@pytest.mark.parametrize("name", ["istio1.9-bookinfo-productpage-sidecar.config_dump.json",
                                  "istio1.24-dualstack-sleep-sidecar.config_dump.json",
                                  "istio1.18-httpbin-sidecar-listeners.config_dump.json",
                                  "istio1.5-bookinfo-pilot-edsz.json"])
def test_fixture_dumps_parse_as_with_json_format(name, monkeypatch):
    path = FIXTURES / name
    if not path.exists():
        pytest.skip(f"fixture {name} not found")

    def parsed():
        resources = configdump.load_config_dump(path)
        return sorted((kind, key, m.SerializeToString(deterministic=True))
                      for kind, key, m in configdump.iter_resources(resources)), resources.notes

    fast = parsed()

    def fall_back(value, message):
        raise configdump._Fallback

    monkeypatch.setattr(configdump, "_convert", fall_back)
    assert parsed() == fast
