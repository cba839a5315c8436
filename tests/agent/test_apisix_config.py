"""APISIX's config.yaml for the sidecar: goldens (REFRESH_GOLDEN=1 rewrites them) and validation."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from sidecar_agent.apisix.config import ApisixSettings, Mode, new_admin_key, render, render_yaml

GOLDEN = Path(__file__).parent / "golden"
KEY = "0123456789abcdef0123456789abcdef"
CASES = {
    "api-mode": ApisixSettings(admin_key=KEY),
    "file-mode": ApisixSettings(admin_key=KEY, mode=Mode.FILE),
    "low-nofile": ApisixSettings(admin_key=KEY, nofile_limit=4096, worker_processes=1),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden(name):
    text = render_yaml(CASES[name])
    path = GOLDEN / f"apisix-config-{name}.yaml"
    if os.environ.get("REFRESH_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text()


def test_what_the_sidecar_needs():
    api = render(CASES["api-mode"])
    assert [l["port"] for l in api["apisix"]["node_listen"]] == [15001, 15006]
    assert api["deployment"]["role"] == "traditional"
    assert api["deployment"]["role_traditional"]["config_provider"] == "yaml"
    assert api["deployment"]["admin"]["admin_listen"]["ip"] == "127.0.0.1"
    assert api["deployment"]["admin"]["admin_key"][0]["key"] == KEY
    assert api["plugin_attr"]["prometheus"]["export_addr"]["ip"] == "127.0.0.1"
    assert api["nginx_config"]["user"] == "istio-proxy istio-proxy"
    low = render(CASES["low-nofile"])["nginx_config"]
    assert low["worker_rlimit_nofile"] == 4096 and low["event"]["worker_connections"] == 2048
    file = render(CASES["file-mode"])
    assert file["deployment"] == {"role": "data_plane", "role_data_plane": {"config_provider": "yaml"}}
    assert file["apisix"]["enable_admin"] is False
    assert yaml.safe_load(render_yaml(CASES["api-mode"])) == api


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
