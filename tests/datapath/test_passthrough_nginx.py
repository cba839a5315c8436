"""The amesh-passthrough plugin in a real nginx inside a captured pod: its pure part
(amesh/passthrough.lua: the node from the original destination, v4/v6, refusals) and its access
phase with apisix.core/apisix.upstream replaced by stand-ins (tests/datapath/apisix_stub), driving
a real `balancer_by_lua` so captured requests really reach the original destination.

nginx runs as the capture-exempt UID/GID 1337 (as APISIX's workers do), so its upstream connections
are not captured again. What needs a real APISIX (stream preread, APISIX's balancer honouring
`upstream.set`, the Host fallback's resolver) is listed in docs/data-path.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from netns_tests.pods import OTHER_V4, OTHER_V6, POD_V4
from tests.datapath import testnginx

STUB = Path(__file__).resolve().parent / "apisix_stub"
ORIGIN_PORT = 80  # captured outbound (not in the injected exclusions)

PURE = r"""
    location /pure {
        content_by_lua_block {
            local node, err = require("amesh.passthrough").node(ngx.var.arg_addr, ngx.var.arg_port,
                                                                 { [15001] = true, [15006] = true })
            if node then
                ngx.say(string.format('{"host":"%s","port":%d,"weight":%d,"priority":%d}',
                                      node.host, node.port, node.weight, node.priority))
            else
                ngx.say(string.format('{"refused":"%s"}', err))
            end
        }
    }
"""
# The plugin's access phase as APISIX runs it (ctx.var reads the hook's registered variables
# first, as APISIX's ctx does), then the node it set is what the balancer connects to.
PROXY = r"""
        access_by_lua_block {
            local vars = require("apisix.core").vars
            local ctx = {
                var = setmetatable({}, { __index = function(_, name)
                    local getter = vars[name]
                    if getter then return getter() end
                    return ngx.var[name]
                end }),
                matched_route = { value = { id = "r-passthrough", upstream_id = "u-PassthroughCluster" } },
                conf_version = 1,
            }
            local code = require("apisix.plugins.amesh-passthrough").access({}, ctx)
            if code then
                return ngx.exit(code)
            end
            ngx.ctx.node = ctx.upstream_conf.nodes[1]
            ngx.req.set_header("X-Amesh-Upstream-Key", ctx.upstream_key)
            ngx.req.set_header("X-Amesh-Timeout", tostring(ctx.upstream_conf.timeout.connect))
        }
        proxy_pass http://amesh_passthrough;
"""
BALANCER = r"""
    upstream amesh_passthrough {
        server 0.0.0.1;
        balancer_by_lua_block {
            local node = ngx.ctx.node
            assert(require("ngx.balancer").set_current_peer(node.host, node.port))
        }
    }
"""
ORIGIN = r"""
        default_type application/json;
        return 200 '{"origin":"$server_addr","port":$server_port,"key":"$http_x_amesh_upstream_key","timeout":"$http_x_amesh_timeout","peer":"$remote_addr"}';
"""


@pytest.fixture(scope="module")
def passthrough(captured_pod):
    reason = testnginx.unavailable()
    if reason:
        pytest.skip(reason)
    network = captured_pod
    origin = testnginx.Nginx(network.other, [f"{ORIGIN_PORT}", f"[::]:{ORIGIN_PORT} ipv6only=on", "9080"],
                             ready_port=ORIGIN_PORT, answer=ORIGIN, init="")
    try:
        proxy = testnginx.Nginx(network.pod, ["15001", "[::]:15001 ipv6only=on", "127.0.0.1:15100"],
                                ready_port=15001, uid=1337,
                                lua_path=(str(STUB),), init='require("amesh.hook")', answer=PROXY,
                                http_extra=BALANCER, server_extra=PURE)
    except Exception:
        origin.stop()
        raise
    yield network, proxy
    proxy.stop()
    origin.stop()


def get(ns: str, host: str, port: int, path: str = "/", uid: int = 1000, host_header: str = "svc") -> tuple[int, str]:
    """One request from inside `ns` as `uid` (1000: captured like the app): (status, body)."""
    script = ("import http.client, os, sys, encodings.idna\n"
              f"os.setgroups([]); os.setgid({uid}); os.setuid({uid})\n"
              f"c = http.client.HTTPConnection({host!r}, {port}, timeout=5)\n"
              f"c.request('GET', {path!r}, headers={{'Host': {host_header!r}}})\n"
              "r = c.getresponse(); sys.stdout.write(str(r.status) + '\\n' + r.read().decode())\n")
    out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", script],
                         capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    status, _, body = out.stdout.partition("\n")
    return int(status), body


@pytest.mark.parametrize("addr,port,expected", [
    ("10.20.2.2", "80", {"host": "10.20.2.2", "port": 80, "weight": 1, "priority": 0}),
    ("fd00:20:2::2", "8080", {"host": "[fd00:20:2::2]", "port": 8080, "weight": 1, "priority": 0}),
    ("[fd00:20:2::2]", "8080", {"host": "[fd00:20:2::2]", "port": 8080, "weight": 1, "priority": 0}),
    ("127.0.0.1", "80", {"refused": "original destination 127.0.0.1 is loopback"}),
    ("127.9.9.9", "80", {"refused": "original destination 127.9.9.9 is loopback"}),
    ("::1", "80", {"refused": "original destination ::1 is loopback"}),
    ("::ffff:127.0.0.1", "80", {"refused": "original destination ::ffff:127.0.0.1 is loopback"}),
    ("0.0.0.0", "80", {"refused": "original destination 0.0.0.0 is unspecified"}),
    ("::", "80", {"refused": "original destination :: is unspecified"}),
    ("10.20.2.2", "15001", {"refused": "original port 15001 is a capture port (would loop into the proxy)"}),
    ("fd00:20:2::2", "15006", {"refused": "original port 15006 is a capture port (would loop into the proxy)"}),
    ("10.20.2.2", "0", {"refused": "original port 0 is not a port number"}),
    ("10.20.2.2", "65536", {"refused": "original port 65536 is not a port number"}),
    ("10.20.2.2", "8.5", {"refused": "original port 8.5 is not a port number"}),
    ("origin.test", "80", {"refused": "original address origin.test is not an IP address"}),
    ("", "80", {"refused": "no original destination"}),
])
def test_pure_part_builds_the_node_or_names_the_refusal(passthrough, addr, port, expected):
    network, _ = passthrough
    status, body = get(network.pod, "127.0.0.1", 15001, f"/pure?addr={addr}&port={port}", uid=1337)
    assert status == 200 and json.loads(body) == expected


@pytest.mark.parametrize("origin", [OTHER_V4, OTHER_V6], ids=["v4", "v6"])
def test_captured_request_to_an_unknown_destination_reaches_it(passthrough, origin):
    network, _ = passthrough
    status, body = get(network.pod, origin, ORIGIN_PORT)
    assert status == 200, body
    answer = json.loads(body)
    # the origin saw the proxy's connection to the address the app dialled, from the pod
    assert (answer["origin"], answer["port"]) == (origin, ORIGIN_PORT)
    assert answer["peer"] in (POD_V4, "fd00:20:1::2")
    host = f"[{origin}]" if ":" in origin else origin
    assert answer["key"] == f"amesh-passthrough#r-passthrough#{host}:{ORIGIN_PORT}"
    assert answer["timeout"] == "5", "the route's own upstream settings are kept"


def test_connection_without_original_destination_is_refused_with_502(passthrough):
    network, proxy = passthrough
    # dialled at the capture port itself: nothing redirected it, no original destination
    status, _ = get(network.pod, "127.0.0.1", 15001, uid=1337)
    assert status == 502
    assert "amesh-passthrough refused" in proxy.log()


def test_internal_listener_without_original_address_passes_through_by_host(passthrough):
    network, _ = passthrough
    # 127.0.0.1:15100 stands for outbound port 9080 (the stub's plugin_attr.amesh.http_ports): the
    # stream front's hop knows no address, so the Host (resolved by the stand-in DNS) is used
    status, body = get(network.pod, "127.0.0.1", 15100, uid=1337, host_header="origin.test:9080")
    assert status == 200, body
    assert (json.loads(body)["origin"], json.loads(body)["port"]) == (OTHER_V4, 9080)
    status, _ = get(network.pod, "127.0.0.1", 15100, uid=1337, host_header="unknown.test")
    assert status == 502
