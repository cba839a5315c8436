"""Goldens: inbound and outbound-stream translation of real Istio dumps, and the config.yaml fragment.

Each golden is the exact JSON output (REFRESH_GOLDEN=1 rewrites; review the diff). Every translated
document is also validated against APISIX 3.18's own schemas.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from sidecar_agent.apisix import datapath
from sidecar_agent.configdump import load_config_dump
from sidecar_agent.schema import validate_document
from sidecar_agent.translate import inbound, stream, translate

GOLDEN = Path(__file__).resolve().parent / "golden"

# fixture -> the pod's INSTANCE_IPS (from the dump's node metadata; the 1.18 dump has none: a test value)
DUMPS = {
    "istio1.18-httpbin-sidecar-listeners.config_dump.json": ("10.244.0.10",),
    "istio1.24-dualstack-sleep-sidecar.config_dump.json": ("10.244.0.12", "fd00:10:244::c"),
    "istio1.9-bookinfo-productpage-sidecar.config_dump.json": ("10.244.2.66",),
}


def check_golden(name: str, data) -> None:
    text = json.dumps(data, indent=1, sort_keys=True) + "\n"
    path = GOLDEN / name
    if os.environ.get("REFRESH_GOLDEN"):
        path.write_text(text)
    assert path.exists(), f"{path} missing: run with REFRESH_GOLDEN=1 and review it"
    assert text == path.read_text(), f"{name} differs from its golden (REFRESH_GOLDEN=1 to rewrite, then review)"


def translate_dump(path: Path, pod_ips):
    resources = load_config_dump(path)
    settings = datapath.DataPathSettings(
        ipv6=any(":" in ip for ip in pod_ips),
        outbound_http_ports=stream.http_ports(resources.listeners),
        inbound_http_ports=inbound.http_ports(resources.listeners["virtualInbound"]))
    ports = datapath.internal_ports(settings)
    by = {d: {p: v for (dd, p), v in ports.items() if dd is d} for d in datapath.Direction}
    out = stream.translate_outbound_stream(resources.listeners, by[datapath.Direction.OUTBOUND])
    into = inbound.translate_inbound(resources.listeners["virtualInbound"], pod_ips,
                                     by[datapath.Direction.INBOUND], resources.clusters)
    return resources, settings, out, into


@pytest.mark.parametrize("dump", sorted(DUMPS))
def test_inbound_and_stream_goldens(dump, fixtures_dir, schema_dir):
    resources, settings, out, into = translate_dump(fixtures_dir / dump, DUMPS[dump])
    stem = dump.split(".config_dump")[0]
    check_golden(f"{stem}.inbound.json", {
        "routes": list(into.routes), "stream_routes": list(into.stream_routes),
        "upstreams": list(into.upstreams), "http_ports": list(into.http_ports),
        "report": [list(e.__dict__.values()) for e in into.report]})
    check_golden(f"{stem}.stream.json", {
        "stream_routes": list(out.stream_routes), "upstreams": list(out.upstreams),
        "http_ports": list(out.http_ports), "policy": out.policy.value,
        "report": [list(e.__dict__.values()) for e in out.report]})
    # the whole document APISIX gets: the Translator wires both parts in, the same objects' content
    document = translate(resources, pod_ips=DUMPS[dump]).document
    assert sorted(r["id"] for r in document["stream_routes"]) == sorted(
        r["id"] for r in out.stream_routes + into.stream_routes)
    by_id = {o["id"]: o for key in ("routes", "stream_routes", "upstreams") for o in document[key]}
    for obj in out.stream_routes + into.stream_routes + into.routes + out.upstreams + into.upstreams:
        assert by_id[obj["id"]] == obj
    problems = validate_document(document, schema_dir)
    if not resources.clusters:
        # a listener-only dump: the tcp_proxy clusters have no CDS entry (upstreams without nodes)
        assert all(u["nodes"] == [] for u in document["upstreams"] if u["id"].startswith("u-outbound_"))
    assert problems == []


def test_inbound_routes_sit_above_every_outbound_band_and_name_the_direction(fixtures_dir):
    _, _, _, into = translate_dump(fixtures_dir / "istio1.9-bookinfo-productpage-sidecar.config_dump.json",
                                   ("10.244.2.66",))
    assert into.http_ports == (9080,)
    for route in into.routes:
        assert route["priority"] > 4000 * 100_000 + 100_000
        assert route["vars"][:2] == [["amesh_direction", "==", "inbound"], ["original_dst_port", "==", 9080]]
    # Istio 1.9's inbound cluster is STATIC 127.0.0.1:9080: kept; the modern ORIGINAL_DST one binds 127.0.0.6
    app = [u for u in into.upstreams if u["name"].startswith("inbound|9080||")]
    assert [n["host"] for u in app for n in u["nodes"]] == ["127.0.0.1"]


def test_modern_inbound_cluster_goes_to_the_pod_address_from_127_0_0_6(fixtures_dir):
    _, _, _, into = translate_dump(fixtures_dir / "istio1.24-dualstack-sleep-sidecar.config_dump.json",
                                   ("10.244.0.12", "fd00:10:244::c"))
    app = [u for u in into.upstreams if u["name"].startswith("inbound|80||")]
    assert app and all(u["nodes"] == [{"host": "10.244.0.12", "port": 80, "weight": 1}] for u in app)
    assert all(u["labels"]["amesh.bind"] == "127.0.0.6" for u in app)
    # one stream route per pod address for the HTTP port and for passthrough
    addrs = sorted(r["server_addr"] for r in into.stream_routes)
    assert addrs == ["10.244.0.12", "10.244.0.12", "fd00:10:244::c", "fd00:10:244::c"]


def test_outbound_policy_from_virtual_outbound_or_mesh_config(fixtures_dir):
    resources = load_config_dump(fixtures_dir / "istio1.24-dualstack-sleep-sidecar.config_dump.json")
    internal = {p: 15100 + i for i, p in enumerate(stream.http_ports(resources.listeners))}
    allow = stream.translate_outbound_stream(resources.listeners, internal)
    assert allow.policy is stream.OutboundPolicy.ALLOW_ANY
    catch_alls = [r for r in allow.stream_routes if r["name"].startswith("virtualOutbound/")]
    assert sorted(r["server_addr"] for r in catch_alls) == ["0.0.0.0/0", "::/0"]
    passthrough = {u["id"]: u for u in allow.upstreams}[catch_alls[0]["upstream_id"]]
    assert passthrough["labels"] == {"amesh.passthrough": "original-dst"} and passthrough["nodes"] == []
    deny = stream.translate_outbound_stream(resources.listeners, internal, stream.OutboundPolicy.REGISTRY_ONLY)
    assert not [r for r in deny.stream_routes if r["name"].startswith("virtualOutbound/")]
    assert len(deny.stream_routes) == len(allow.stream_routes) - 2
    # a TCP service: VIP and port -> its cluster's upstream; an HTTP port -> its internal listener
    by_name = {r["name"]: r for r in allow.stream_routes}
    assert by_name["10.96.0.1_443/tcp"]["server_addr"] == "10.96.0.1"
    assert by_name["10.96.0.1_443/tcp"]["server_port"] == 443
    http = by_name["0.0.0.0_8000/http"]
    hop = {u["id"]: u for u in allow.upstreams}[http["upstream_id"]]
    assert hop["nodes"] == [{"host": "127.0.0.1", "port": internal[8000], "weight": 1}]


def test_missing_internal_listener_is_a_clear_error(fixtures_dir):
    from sidecar_agent.translate import TranslationError

    resources = load_config_dump(fixtures_dir / "istio1.24-dualstack-sleep-sidecar.config_dump.json")
    with pytest.raises(TranslationError, match="HTTP port [0-9]+ has no internal listener"):
        stream.translate_outbound_stream(resources.listeners, {})
    with pytest.raises(TranslationError, match="pod's IP addresses"):
        inbound.translate_inbound(resources.listeners["virtualInbound"], (), {80: 15600})


CONFIGS = {
    "v4-no-http": datapath.DataPathSettings(lua_dir="/usr/local/amesh/lua"),
    "dual-stack": datapath.DataPathSettings(ipv6=True, outbound_http_ports=(9080, 80, 8000),
                                            inbound_http_ports=(9080,), lua_dir="/usr/local/amesh/lua"),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_config_fragment_golden(name):
    check_golden(f"config-{name}.json", datapath.fragment(CONFIGS[name]))


def test_config_fragment_merges_into_the_generated_config():
    from sidecar_agent.apisix import config

    base = config.render(config.ApisixSettings(admin_key="k" * 32))
    merged = datapath.merge(base, datapath.fragment(CONFIGS["dual-stack"]))
    # the capture ports move from HTTP node_listen to the stream front; the Admin API stays on loopback
    assert {item["port"] for item in merged["apisix"]["node_listen"]} == {15099, 15100, 15101, 15102, 15600}
    assert all(item["ip"] == "127.0.0.1" for item in merged["apisix"]["node_listen"])
    assert merged["apisix"]["stream_proxy"]["tcp"] == [
        {"addr": "0.0.0.0:15001"}, {"addr": "[::]:15001"}, {"addr": "0.0.0.0:15006"}, {"addr": "[::]:15006"}]
    assert merged["deployment"]["admin"]["admin_listen"]["ip"] == "127.0.0.1"
    assert merged["nginx_config"]["worker_rlimit_nofile"] == base["nginx_config"]["worker_rlimit_nofile"]
    assert merged["plugin_attr"]["prometheus"] == base["plugin_attr"]["prometheus"]
    assert merged["plugin_attr"]["amesh"]["http_ports"]["15600"] == {"port": 9080, "direction": "inbound"}
    yaml.safe_load(yaml.safe_dump(merged))  # stays plain YAML data


@pytest.mark.parametrize("kwargs,message", [
    ({"outbound_port": 15006}, "must differ"),
    ({"outbound_http_ports": (80, 80)}, "duplicate ports"),
    ({"inbound_http_ports": (0,)}, "not port numbers"),
    ({"internal_base": 15000}, "inside the internal range"),
    ({"internal_base": 65000}, "no room"),
    ({"mirror_port": 0}, "mirror_port 0 is not a port number"),
    ({"mirror_port": 15006}, "mirror_port 15006 is a capture port"),
    ({"mirror_port": 15600}, "mirror_port 15600 inside the internal range 15100-16599"),
    ({"mirror_port": 16200}, "mirror_port 16200 inside the internal range"),  # the inbound TLS listeners' part
    ({"inbound_tls_ports": (8080,)}, "inbound_tls_ports need a workload certificate"),
    ({"inbound_tls_ports": (8080, 8080), "mtls_dir": "/d"}, "inbound_tls_ports: duplicate ports"),
    ({"internal_base": 15050}, "mirror_port 15099 inside the internal range"),
    ({"tcp_mtls_port": 15001, "mtls_dir": "/d"}, "tcp_mtls_port 15001 is a capture port"),
    ({"tcp_mtls_port": 15200, "mtls_dir": "/d"}, "tcp_mtls_port 15200 inside the internal range"),
    ({"tcp_mtls_port": 15099, "mtls_dir": "/d"}, "tcp_mtls_port and mirror_port must differ"),
    ({"tcp_mtls_port": 70000, "mtls_dir": "/d"}, "tcp_mtls_port 70000 is not a port number"),
])
def test_bad_settings_are_refused_naming_the_problem(kwargs, message):
    with pytest.raises(ValueError, match=message):
        datapath.DataPathSettings(**kwargs)


def test_tcp_mtls_origin_server_only_with_a_workload_certificate():
    """The stream server dialling Istio mTLS TCP upstreams (lua/amesh/mtls_origin.lua) exists only with a
    workload certificate; its port is free for other uses without one."""
    assert "amesh_tcp_mtls" not in datapath.fragment(datapath.DataPathSettings())["nginx_config"][
        "stream_configuration_snippet"]
    datapath.DataPathSettings(mirror_port=15098)  # no workload certificate: 15098 is not taken
    with_cert = datapath.fragment(datapath.DataPathSettings(mtls_dir="/d", tcp_mtls_port=15097))
    snippet = with_cert["nginx_config"]["stream_configuration_snippet"]
    assert "listen 127.0.0.1:15097;" in snippet and "proxy_ssl_verify_by_lua_block" in snippet
    assert with_cert["plugin_attr"]["amesh"]["tcp_mtls_port"] == 15097  # where the hook diverts to


def test_mirror_listener_is_always_there_and_says_mirror():
    """proxy-mirror's copies arrive on 127.0.0.1:<mirror_port>: listened on with or without HTTP
    ports, mapped by the hook to direction "mirror" and no original port, and unbound (the map's
    default: only inbound internal listeners bind 127.0.0.6)."""
    for settings in (CONFIGS["v4-no-http"], CONFIGS["dual-stack"],
                     datapath.DataPathSettings(mirror_port=14999, outbound_http_ports=(80,))):
        fragment = datapath.fragment(settings)
        port = settings.mirror_port
        assert {"ip": "127.0.0.1", "port": port} in fragment["apisix"]["node_listen"]
        assert fragment["plugin_attr"]["amesh"]["http_ports"][str(port)] == {"direction": "mirror"}
        snippet = fragment["nginx_config"]["http_configuration_snippet"]
        assert f" {port} " not in snippet and 'default "";' in snippet
    # a new mirror needs no reload: the listener does not depend on the routes
    assert not datapath.needs_reload(CONFIGS["dual-stack"], CONFIGS["dual-stack"])
    assert datapath.needs_reload(CONFIGS["v4-no-http"], datapath.DataPathSettings(
        lua_dir="/usr/local/amesh/lua", mirror_port=14999))


def test_hook_name_is_one_apisix_accepts():
    import re

    assert re.fullmatch(r"[a-zA-Z._-]+", datapath.HOOK)
    path = Path(datapath.LUA_DIR, *datapath.HOOK.split(".")).with_suffix(".lua")
    assert path.is_file(), path
