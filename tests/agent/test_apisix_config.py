"""APISIX's config.yaml for the sidecar: goldens (REFRESH_GOLDEN=1 rewrites them) and validation."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from sidecar_agent.apisix import datapath
from sidecar_agent.apisix.config import ApisixSettings, Mode, new_admin_key, render, render_yaml

GOLDEN = Path(__file__).parent / "golden"
KEY = "0123456789abcdef0123456789abcdef"
LUA = "/usr/local/amesh/lua"  # where the image installs the package's lua/ (goldens: not this checkout's path)
CASES = {
    "api-mode": ApisixSettings(admin_key=KEY),
    "file-mode": ApisixSettings(admin_key=KEY, mode=Mode.FILE),
    "low-nofile": ApisixSettings(admin_key=KEY, nofile_limit=4096, worker_processes=1),
    "mtls": ApisixSettings(admin_key=KEY, mode=Mode.FILE),
}
DATA_PATHS = {
    "api-mode": datapath.DataPathSettings(lua_dir=LUA),
    "file-mode": datapath.DataPathSettings(ipv6=True, outbound_http_ports=(80, 9080), inbound_http_ports=(9080,),
                                           lua_dir=LUA),
    "low-nofile": datapath.DataPathSettings(lua_dir=LUA),
    # a CA is configured: the workload certificate's directory turns on Istio mTLS upstreams
    "mtls": datapath.DataPathSettings(outbound_http_ports=(9080,), inbound_http_ports=(9080,),
                                      inbound_tls_ports=(9080, 27017), lua_dir=LUA, mtls_dir="/etc/apisix/conf/istio"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden(name):
    text = render_yaml(CASES[name], DATA_PATHS[name])
    path = GOLDEN / f"apisix-config-{name}.yaml"
    if os.environ.get("REFRESH_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text()


def test_what_the_sidecar_needs():
    api = render(CASES["api-mode"])
    # the capture ports are the stream front; HTTP runs on loopback internal listeners only
    assert api["apisix"]["proxy_mode"] == "http&stream"
    assert api["apisix"]["stream_proxy"]["tcp"] == [{"addr": "0.0.0.0:15001"}, {"addr": "0.0.0.0:15006"}]
    # no HTTP port yet: the mirror listener alone (an http server without `listen` would take *:80)
    assert [(l["ip"], l["port"]) for l in api["apisix"]["node_listen"]] == [("127.0.0.1", 15099)]
    assert api["apisix"]["lua_module_hook"] == "amesh.hook"
    assert "amesh-passthrough" in api["plugins"] and "amesh-passthrough" in api["stream_plugins"]
    file_dp = render(CASES["file-mode"], DATA_PATHS["file-mode"])
    assert [l["port"] for l in file_dp["apisix"]["node_listen"]] == [15099, 15100, 15101, 15600]
    assert {"addr": "[::]:15006"} in file_dp["apisix"]["stream_proxy"]["tcp"]
    assert api["deployment"]["role"] == "traditional"
    assert api["deployment"]["role_traditional"]["config_provider"] == "yaml"
    assert api["deployment"]["admin"]["admin_listen"]["ip"] == "127.0.0.1"
    assert api["deployment"]["admin"]["admin_key"][0]["key"] == KEY
    assert api["plugin_attr"]["prometheus"]["export_addr"]["ip"] == "127.0.0.1"
    assert api["nginx_config"]["user"] == "istio-proxy istio-proxy"
    low = render(CASES["low-nofile"])["nginx_config"]
    assert low["worker_rlimit_nofile"] == 4096 and low["event"]["worker_connections"] == 2048
    file = render(CASES["file-mode"])
    assert file["deployment"] == {"role": "data_plane", "role_data_plane": {"config_provider": "json"}}
    assert file["apisix"]["enable_admin"] is False
    assert yaml.safe_load(render_yaml(CASES["api-mode"])) == api


def test_mirror_listener_in_config_yaml():
    """The mirror listener (translated proxy-mirror sends its copies there): on loopback only, mapped
    by the hook to direction "mirror" without an original port, not bound to the inbound source."""
    for name in CASES:
        conf = render(CASES[name], DATA_PATHS[name])
        assert {"ip": "127.0.0.1", "port": 15099} in conf["apisix"]["node_listen"]
        assert conf["plugin_attr"]["amesh"]["http_ports"]["15099"] == {"direction": "mirror"}
        assert "15099" not in conf["nginx_config"]["http_configuration_snippet"]
        assert "proxy-mirror" in conf["plugins"]
    moved = render(CASES["api-mode"], datapath.DataPathSettings(mirror_port=15098))
    assert [l["port"] for l in moved["apisix"]["node_listen"]] == [15098]
    assert list(moved["plugin_attr"]["amesh"]["http_ports"]) == ["15098"]


def test_data_path_must_agree_with_the_apisix_settings():
    with pytest.raises(ValueError, match="disagree on inbound_port"):
        render(CASES["api-mode"], datapath.DataPathSettings(inbound_port=15007))
    with pytest.raises(ValueError, match="disagree on worker_user"):
        render(CASES["api-mode"], datapath.DataPathSettings(proxy_user="nobody"))
    with pytest.raises(ValueError, match="clash with the admin/prometheus ports"):
        render(CASES["api-mode"], datapath.DataPathSettings(internal_base=9180, outbound_http_ports=(80,)))


def test_plugin_list_is_the_shipped_schema_set_plus_passthrough():
    shipped = Path(datapath.__file__).resolve().parents[1] / "schemas" / "apisix-3.18" / "plugins"
    names = {p.name.split(".")[0] for p in shipped.glob("*.json")}
    assert set(datapath.HTTP_PLUGINS) == names
    assert set(datapath.STREAM_PLUGINS) <= names


def test_keys_are_random_per_pod():
    assert new_admin_key() != new_admin_key() and len(new_admin_key()) == 32


@pytest.mark.parametrize(
    ("change", "message"),
    [({"admin_key": "short"}, "admin_key"), ({"inbound_port": 15001}, "must differ"),
     ({"admin_port": 70000}, "admin_port"), ({"nofile_limit": 10}, "nofile_limit"),
     ({"worker_processes": 0}, "worker_processes")],
)
def test_bad_settings_are_named(change, message):
    with pytest.raises(ValueError, match=message):
        ApisixSettings(**{"admin_key": KEY, **change})


def test_mtls_upstreams_only_with_a_workload_certificate():
    """Without a CA nothing of amesh.mtls is in the file (upstream TLS stays APISIX's own); with one, the
    Lua verdict runs on every upstream handshake and the SNI follows $amesh_sni."""
    plain = render_yaml(CASES["file-mode"], DATA_PATHS["file-mode"])
    assert "amesh.mtls" not in plain and "proxy_ssl_verify" not in plain and "mtls_dir" not in plain
    conf = render(CASES["mtls"], DATA_PATHS["mtls"])
    location = conf["nginx_config"]["http_server_location_configuration_snippet"]
    assert "proxy_ssl_verify on;" in location and 'require("amesh.mtls").verify()' in location
    assert "proxy_ssl_name $amesh_ssl_name;" in location
    assert "map $amesh_sni $amesh_ssl_name" in conf["nginx_config"]["http_configuration_snippet"]
    assert conf["plugin_attr"]["amesh"]["mtls_dir"] == "/etc/apisix/conf/istio"
