"""What routes inherit from the HttpConnectionManager and Listener serving them, and what is reported.

- websocket: `upgrade_configs: [websocket]` on the manager (Istio sets it everywhere) gives every
  forwarding route of its route configurations `enable_websocket`; a route's own upgrade_configs wins;
  a listener change re-derives held route configurations, equal to a fresh translation.
- every other set field of the manager and the listener is reported (never silently dropped).
- the filter-chain walker is the one place that finds managers and TCP proxies.
"""

from __future__ import annotations

import copy

from sidecar_agent.configdump import load_config_dump
from sidecar_agent.translate import Translator, translate
from sidecar_agent.translate.render import to_json
from sidecar_agent.xds import references
from sidecar_agent.xds.chains import HTTP, TCP, listener_filters

from .test_units import CLUSTER, rc, route

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"


def listener(name="0.0.0.0_9080", rds="9080", **manager):
    return {"@type": "type.googleapis.com/envoy.config.listener.v3.Listener", "name": name,
            "address": {"socketAddress": {"address": "0.0.0.0", "portValue": 9080}},
            "listenerFilters": [{"name": "envoy.filters.listener.tls_inspector"},
                                {"name": "envoy.filters.listener.original_dst"}],
            "filterChains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typedConfig": {
                "@type": HCM, "statPrefix": "outbound_0.0.0.0_9080", "rds": {"routeConfigName": rds},
                "httpFilters": [{"name": "envoy.filters.http.router"}], **manager}}]}]}


WEBSOCKET = {"upgradeConfigs": [{"upgradeType": "websocket"}]}


def routes_by_name(document):
    return {r["name"]: r for r in document["routes"]}


def test_manager_websocket_reaches_forwarding_routes_only():
    config = rc([route({"prefix": "/"})])
    doc = translate(load_config_dump([listener(**WEBSOCKET), config, CLUSTER])).document
    by = routes_by_name(doc)
    assert by["9080/reviews/route0"]["enable_websocket"] is True
    assert by["9080/allow_any/route0"]["enable_websocket"] is True  # passthrough forwards too
    assert "enable_websocket" not in by["9080/reviews/404"]  # answers itself
    plain = translate(load_config_dump([listener(), config, CLUSTER])).document
    assert not any(r.get("enable_websocket") for r in plain["routes"] if r["name"].startswith("9080/"))


def test_a_routes_own_upgrade_config_wins():
    off = route({"prefix": "/off"}, upgradeConfigs=[{"upgradeType": "websocket", "enabled": False}])
    on = route({"prefix": "/on"}, upgradeConfigs=[{"upgradeType": "websocket"}])
    connect = route({"prefix": "/c"}, upgradeConfigs=[{"upgradeType": "CONNECT"}])
    with_ws = translate(load_config_dump([listener(**WEBSOCKET), rc([off, on, connect]), CLUSTER]))
    by = routes_by_name(with_ws.document)
    assert "enable_websocket" not in by["9080/reviews/route0"]
    assert by["9080/reviews/route1"]["enable_websocket"] is True
    assert by["9080/reviews/route2"]["enable_websocket"] is True
    assert any(e.field == "virtual_hosts.routes.route.upgrade_configs[CONNECT]" for e in with_ws.report.entries)
    without = routes_by_name(translate(load_config_dump([listener(), rc([off, on]), CLUSTER])).document)
    assert "enable_websocket" not in without["9080/reviews/route0"]
    assert without["9080/reviews/route1"]["enable_websocket"] is True


def test_listener_changes_re_derive_held_route_configurations():
    """Route configuration first, then its listener, then the listener without websocket, then gone:
    each document equals a fresh translation of the same resources."""
    resources = load_config_dump([listener(**WEBSOCKET), rc([route({"prefix": "/"})]), CLUSTER])
    bare = load_config_dump([listener(), rc([route({"prefix": "/"})]), CLUSTER])
    t = Translator()
    t.set_cluster(resources.clusters[CLUSTER["name"]])
    t.set_route_config(resources.route_configs["9080"])
    before = copy.deepcopy(t.document())
    touched = t.set_listener(resources.listeners["0.0.0.0_9080"])
    assert touched and to_json(t.document()) == to_json(translate(resources).document)
    assert not any(r.get("enable_websocket") for r in before["routes"])
    t.set_listener(bare.listeners["0.0.0.0_9080"])
    assert to_json(t.document()) == to_json(translate(bare).document)
    t.set_listener(resources.listeners["0.0.0.0_9080"])
    t.remove_listener("0.0.0.0_9080")
    assert not any(r.get("enable_websocket") for r in t.document()["routes"])
    # a route configuration sent again after all that is translated afresh, with what it inherits
    t.set_listener(resources.listeners["0.0.0.0_9080"])
    t.set_route_config(resources.route_configs["9080"])
    assert to_json(t.document()) == to_json(translate(resources).document)


def test_manager_and_listener_fields_are_reported():
    manager = dict(WEBSOCKET, streamIdleTimeout="300s", normalizePath=True, useRemoteAddress=False,
                   forwardClientCertDetails="APPEND_FORWARD", requestIdExtension={},
                   tracing={"clientSampling": {"value": 100}})
    result = translate(load_config_dump([listener(**manager), rc([route({"prefix": "/"})]), CLUSTER]))
    fields = {e.field for e in result.report.entries if e.kind == "listener"}
    path = "filter_chains.filters.http_connection_manager"
    assert {f"{path}.stream_idle_timeout[300s: not applied]", f"{path}.normalize_path", f"{path}.tracing",
            f"{path}.forward_client_cert_details", f"{path}.request_id_extension", f"{path}.stat_prefix",
            f"{path}.use_remote_address", "listener_filters[envoy.filters.listener.tls_inspector]"} <= fields
    # carried: websocket, the router, original_dst (the Lua hook)
    assert not any("upgrade_configs" in f or "router" in f or "original_dst" in f for f in fields)
    assert all(e.effect == "ignored" for e in result.report.entries)
    assert result.report.by_effect()[("listener", f"{path}.normalize_path", "ignored")] == 1
    istio_zero = translate(load_config_dump([listener(streamIdleTimeout="0s"), rc([route({"prefix": "/"})]),
                                             CLUSTER])).report
    assert not any("stream_idle_timeout" in e.field for e in istio_zero.entries)  # 0s: the timer is off


def test_one_walker_finds_managers_and_proxies():
    resources = load_config_dump([listener(rds="8080")])
    message = resources.listeners["0.0.0.0_9080"]
    assert [f.kind for f in listener_filters(message)] == [HTTP]
    assert references.route_names([message]) == {"8080"}
    tcp = copy.deepcopy(message)
    tcp.filter_chains[0].filters[0].name = "envoy.filters.network.tcp_proxy"
    tcp.filter_chains[0].filters[0].typed_config.Pack(
        __import__("envoy.extensions.filters.network.tcp_proxy.v3.tcp_proxy_pb2",
                   fromlist=["TcpProxy"]).TcpProxy(cluster="outbound|3306||db"))
    assert [(f.kind, f.config.cluster) for f in listener_filters(tcp)] == [(TCP, "outbound|3306||db")]
    assert references.route_names([tcp]) == frozenset()


def test_istio_made_routes_take_websocket_upgrades():
    from .conftest import fixture, translate_fixture

    document = translate_fixture(fixture("istio1.24-dualstack-sleep-sidecar.config_dump.json")).document
    forwarding = [r for r in document["routes"] if "upstream_id" in r]
    assert forwarding and all(r.get("enable_websocket") is True for r in forwarding)  # inbound ones too
    assert any(r["name"].startswith("inbound|") for r in forwarding)
    assert not any(r.get("enable_websocket") for r in document["routes"] if "upstream_id" not in r)
