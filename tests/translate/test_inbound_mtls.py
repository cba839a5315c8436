"""Inbound mTLS termination (translate/inbound.py with a workload certificate): istiod's virtualInbound of the
istio 1.24 fixture (port 80 has an mTLS chain and a plaintext twin: PERMISSIVE) and its STRICT form (only the
TLS chains), translated with and without TLS listeners."""

from __future__ import annotations

from sidecar_agent.apisix import datapath
from sidecar_agent.translate import rbac
from sidecar_agent.translate.inbound import http_ports, tls_ports, translate_inbound

from .test_rbac import INTERNAL, PODS, _inbound, with_filters

TLS_LISTENERS = {80: 16100}


def _front_and_tls(part):
    front = [r for r in part.stream_routes if r["name"].startswith("inbound|80|http/")]
    tls = [r for r in part.stream_routes if "|tls/" in r["name"]]
    return front, tls


def test_the_fixture_port_accepts_mtls():
    assert tls_ports(_inbound()) == (80,)


def test_permissive_sends_tls_to_the_tls_listener_and_keeps_plaintext():
    part = translate_inbound(_inbound(), PODS, INTERNAL, tls_listeners=TLS_LISTENERS)
    front, tls = _front_and_tls(part)
    assert len(front) == len(PODS)
    assert all(r["plugins"][datapath.TLS_PLUGIN] == {"tls_port": 16100, "plaintext": True} for r in front)
    # an HTTP port's TLS listener is an HTTP listener: its routes are the port's HTTP routes, no stream route
    assert tls == []
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


def _as_tcp(listener):
    """The listener with port 80 declared TCP: each of its chains' HCM replaced by Istio's inbound tcp_proxy."""
    from envoy.config.listener.v3 import listener_components_pb2
    from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

    network_rbac = [f for chain in listener.filter_chains for f in chain.filters
                    if f.name == "envoy.filters.network.rbac"][:1]  # the policy's TCP version, if any
    for chain in listener.filter_chains:
        if chain.filter_chain_match.destination_port.value != 80:
            continue
        filters = list(chain.filters)
        del chain.filters[:]
        for f in filters:
            if f.name == "envoy.filters.network.http_connection_manager":
                for rbac_filter in network_rbac:
                    chain.filters.add().CopyFrom(rbac_filter)
                f = listener_components_pb2.Filter(name="envoy.filters.network.tcp_proxy")
                f.typed_config.Pack(tcp_proxy_pb2.TcpProxy(stat_prefix="inbound|80||", cluster="inbound|80||"))
            chain.filters.add().CopyFrom(f)
    return listener


def test_a_tcp_port_gets_a_route_on_its_stream_tls_listener_with_the_same_policy():
    from .test_rbac import SCENARIOS

    listener = _as_tcp(SCENARIOS["deny-admin"]())  # network RBAC before every tcp_proxy
    ports = tls_ports(listener)
    tcp = [p for p in ports if p not in http_ports(listener)]
    assert tcp == [80]
    listeners = {p: 16100 + i for i, p in enumerate(ports)}
    part = translate_inbound(listener, PODS, {}, tls_listeners=listeners)
    for port in tcp:
        front = [r for r in part.stream_routes if r["name"].startswith(f"inbound|{port}|tcp/")]
        tls = [r for r in part.stream_routes if r["name"].startswith(f"inbound|{port}|tcp|tls/")]
        assert [(r["server_addr"], r["server_port"]) for r in tls] == [("127.0.0.1", listeners[port])]
        assert tls[0]["upstream_id"] == front[0]["upstream_id"]
        assert tls[0]["plugins"][rbac.PLUGIN] == front[0]["plugins"][rbac.PLUGIN]  # the DENY policy, on both


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
    assert [r["server_port"] for r in document["stream_routes"] if r.get("server_addr") == "127.0.0.1"] == []
    conf = datapath.fragment(settings)  # port 80 is HTTP: its TLS listener is an HTTP one
    assert conf["apisix"]["ssl"] == {"enable": True, "listen": [{"ip": "127.0.0.1", "port": tls_port}]}
    assert conf["plugin_attr"]["amesh"]["http_ports"][str(tls_port)] == {"port": 80, "direction": "inbound"}
    assert conf["plugin_attr"]["amesh"]["tls_ports"] == {str(tls_port): 80}
    assert datapath.TLS_PLUGIN in conf["stream_plugins"]
    # without a certificate: no TLS listener, and the document is what it was
    plain = Translator(pod_ips=DUAL_IPS).load(resources)
    assert plain.data_path_settings.inbound_tls_ports == ()
    assert not [r for r in plain.document()["stream_routes"] if (r.get("plugins") or {}).get(datapath.TLS_PLUGIN)]
