"""Inbound mTLS termination (translate/inbound.py with a workload certificate): istiod's virtualInbound of the
istio 1.24 fixture (port 80 has an mTLS chain and a plaintext twin: PERMISSIVE) and its STRICT form (only the
TLS chains), translated with and without TLS listeners."""

from __future__ import annotations

from sidecar_agent.apisix import datapath
from sidecar_agent.translate import rbac
from sidecar_agent.translate.inbound import tls_ports, translate_inbound

from .test_rbac import INTERNAL, PODS, _inbound, with_filters

TLS_LISTENERS = {80: 16100}


def _front_and_tls(part):
    front = [r for r in part.stream_routes if r["name"].startswith("inbound|80|http/")]
    tls = [r for r in part.stream_routes if r["name"].startswith("inbound|80|http|tls/")]
    return front, tls


def test_the_fixture_port_accepts_mtls():
    assert tls_ports(_inbound()) == (80,)


def test_permissive_sends_tls_to_the_tls_listener_and_keeps_plaintext():
    part = translate_inbound(_inbound(), PODS, INTERNAL, tls_listeners=TLS_LISTENERS)
    front, tls = _front_and_tls(part)
    assert len(front) == len(PODS)
    assert all(r["plugins"][datapath.TLS_PLUGIN] == {"tls_port": 16100, "plaintext": True} for r in front)
    # after termination: the same hop to the inbound HTTP listener, matched on the TLS listener itself
    assert [(r["server_addr"], r["server_port"], r["upstream_id"]) for r in tls] == [
        ("127.0.0.1", 16100, front[0]["upstream_id"])]
    assert not [e for e in part.report if "transport_socket" in e.field]


def test_strict_refuses_plaintext_instead_of_denying_the_port():
    part = translate_inbound(with_filters(strict=True), PODS, INTERNAL, tls_listeners=TLS_LISTENERS)
    front, tls = _front_and_tls(part)
    assert all(r["plugins"][datapath.TLS_PLUGIN] == {"tls_port": 16100, "plaintext": False} for r in front)
    assert all(rbac.PLUGIN not in (r.get("plugins") or {}) for r in front + tls)
    assert not [e for e in part.report if e.effect == "denied" and "80" in e.field]


def test_without_a_workload_certificate_strict_stays_denied():
    part = translate_inbound(with_filters(strict=True), PODS, INTERNAL)
    front, tls = _front_and_tls(part)
    assert tls == [] and all(datapath.TLS_PLUGIN not in r.get("plugins", {}) for r in front)
    assert all(set(r["plugins"][rbac.PLUGIN]) == {"deny"} for r in front)


def test_network_policy_applies_after_termination_too():
    from .test_rbac import SCENARIOS

    part = translate_inbound(SCENARIOS["source-ip"](), PODS, INTERNAL, tls_listeners=TLS_LISTENERS)
    # the fixture's port 80 is HTTP: its network RBAC (TCP version of the policy) guards both routes
    front, tls = _front_and_tls(part)
    assert {str(r.get("plugins", {}).get(rbac.PLUGIN)) for r in front} == {
        str(r.get("plugins", {}).get(rbac.PLUGIN)) for r in tls}


def test_the_translator_wires_tls_listeners_with_a_workload_certificate(schema_dir):
    from sidecar_agent.configdump import load_config_dump
    from sidecar_agent.schema import validate_document
    from sidecar_agent.translate import Translator

    from .conftest import fixture
    from .test_datapath_wiring import DUAL, DUAL_IPS

    resources = load_config_dump(fixture(DUAL))
    base = datapath.DataPathSettings(mtls_dir="/etc/apisix/conf/istio")
    translator = Translator(pod_ips=DUAL_IPS, data_path=base).load(resources)
    settings = translator.data_path_settings
    assert settings.inbound_tls_ports == (80,)
    tls_port = datapath.internal_ports(settings)[(datapath.Direction.INBOUND_TLS, 80)]
    assert tls_port == settings.internal_base + 1000
    document = translator.document()
    assert validate_document(document, schema_dir) == []
    fronts = [r for r in document["stream_routes"] if (r.get("plugins") or {}).get(datapath.TLS_PLUGIN)]
    assert {r["plugins"][datapath.TLS_PLUGIN]["tls_port"] for r in fronts} == {tls_port}
    assert [r["server_port"] for r in document["stream_routes"] if r.get("server_addr") == "127.0.0.1"] == [tls_port]
    conf = datapath.fragment(settings)
    assert {"addr": f"127.0.0.1:{tls_port}", "tls": True} in conf["apisix"]["stream_proxy"]["tcp"]
    assert conf["plugin_attr"]["amesh"]["tls_ports"] == {str(tls_port): 80}
    assert datapath.TLS_PLUGIN in conf["stream_plugins"]
    # without a certificate: no TLS listener, and the document is what it was
    plain = Translator(pod_ips=DUAL_IPS).load(resources)
    assert plain.data_path_settings.inbound_tls_ports == ()
    assert not [r for r in plain.document()["stream_routes"] if (r.get("plugins") or {}).get(datapath.TLS_PLUGIN)]
