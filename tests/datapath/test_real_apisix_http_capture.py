"""The hook's HTTP side on a NATed connection, on a real APISIX 3.18: the agent's config.yaml with the
inbound capture port 15006 served as HTTP instead of stream (a test-only variant: design (a) puts both
capture ports on the stream front), so the HTTP subsystem's fd walk (amesh/origdst.lua: request
signature, connection, fd on APISIX's nginx 1.29) and SO_ORIGINAL_DST run under APISIX's ctx:
routes see `original_dst_addr` / `original_dst_port` of the captured connection, once per connection
(keep-alive), v4 and v6, and nothing for a connection that was not redirected."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from netns_tests.pods import POD_V4, POD_V6
from sidecar_agent.apisix import config as apisix_config
from tests import realapisix

CLIENT = Path(__file__).resolve().parent / "client.py"
REPORT = {"serverless-pre-function": {"phase": "access", "functions": [
    "return function(conf, ctx) require('apisix.core').response.exit(200, {addr = ctx.var.original_dst_addr, "
    "port = ctx.var.original_dst_port, direction = ctx.var.amesh_direction, "
    "connection = tonumber(ngx.var.connection), lookups = require('amesh.origdst').lookups}) end"]}}
DOCUMENT = {
    "routes": [{"id": "r-report", "uri": "/*", "upstream_id": "u-none", "plugins": REPORT}],
    "upstreams": [{"id": "u-none", "type": "roundrobin", "nodes": [{"host": "127.0.0.1", "port": 1, "weight": 1}]}],
}


def http_on_inbound_capture_port(config_yaml: str) -> str:
    conf = yaml.safe_load(config_yaml)
    tcp = conf["apisix"]["stream_proxy"]["tcp"]
    conf["apisix"]["stream_proxy"]["tcp"] = [t for t in tcp if not t["addr"].endswith(":15006")]
    conf["apisix"]["node_listen"] += [{"ip": "0.0.0.0", "port": 15006}, {"ip": "[::]", "port": 15006}]
    return yaml.safe_dump(conf, sort_keys=False)


def keepalive(ns: str, host: str, port: int, count: int = 2, uid: int | None = None) -> list[dict]:
    argv = ["ip", "netns", "exec", ns, sys.executable, str(CLIENT), host, str(port), str(count)]
    if uid is not None:
        argv += ["--uid", str(uid)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def apisix(captured_pod):
    realapisix.skip_unless_available()
    settings, data_path = realapisix.settings(apisix_config.Mode.FILE, ipv6=True)
    config_yaml = http_on_inbound_capture_port(apisix_config.render_yaml(settings, data_path))
    with realapisix.running(config_yaml, ns=captured_pod.pod, document=DOCUMENT) as instance:
        yield captured_pod, instance


@pytest.mark.parametrize("pod_ip,port", [(POD_V4, 8080), (POD_V4, 9080), (POD_V6, 8080)])
def test_captured_http_connection_reports_its_original_destination(apisix, pod_ip, port):
    network, _ = apisix
    answers = keepalive(network.other, pod_ip, port)
    assert [(a["addr"], a["port"], a["direction"]) for a in answers] == [(pod_ip, port, "inbound")] * 2
    assert answers[0]["connection"] == answers[1]["connection"]
    assert answers[1]["lookups"] == answers[0]["lookups"], "one lookup per connection"


def test_connection_that_was_not_redirected_has_no_original_destination(apisix):
    network, instance = apisix
    answer = keepalive(network.pod, "127.0.0.1", 15006, count=1, uid=realapisix.PROXY_UID)[0]
    assert (answer.get("addr"), answer.get("port"), answer["direction"]) == (None, None, "inbound")
    assert not instance.errors(), instance.log()
