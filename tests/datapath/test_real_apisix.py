"""The data path on a real APISIX 3.18 (tests/realapisix.py) in a pod captured by amesh-iptables.

APISIX runs with the agent's own `conf/config.yaml` (`config.render_yaml`, file mode; outbound HTTP
port 9080 -> internal listener 15100, inbound HTTP port 8080 -> 15600) as the capture-exempt UID
1337, and the document below, shaped as the translator makes it (stream routes in `stream.precedence`
order; passthrough upstreams without nodes, `amesh.passthrough` label, `amesh-passthrough` plugin).
Echo upstreams that name themselves (tests/echo_server.py) stand for the app, remote services and
the origins behind passthrough. What each test shows:

- the hook (`amesh.hook`, `lua_module_hook`): in stream, `server_addr`/`server_port` are the original
  destination, so unmodified stream routes route captured connections (APISIX looks registered
  variables up before ngx.var); in HTTP, `original_dst_port`/`amesh_direction` are what the internal
  listener stands for and routes match them in `vars`;
- the passthrough plugin in both subsystems (stream preread, HTTP access with the Host fallback):
  unknown destinations reached, loopback / capture ports / no destination refused;
- stream route precedence: APISIX takes the first matching stream route in document order.
"""

from __future__ import annotations

import json

import pytest

from netns_tests.pods import NETNS_ETC, OTHER_V4, OTHER_V6, POD_V4, POD_V6, SERVICE_V4
from sidecar_agent.apisix import config as apisix_config
from sidecar_agent.translate.stream import precedence
from tests import realapisix

APP_UID = 1000  # captured like the app
PASS_LABELS = {"amesh.passthrough": "original-dst"}

# reports what the hook gives the HTTP route (the route's own id too)
REPORT = {"serverless-pre-function": {"phase": "access", "functions": [
    "return function(conf, ctx) local core = require('apisix.core') "
    "core.response.exit(200, {route = ctx.route_id, addr = ctx.var.original_dst_addr, "
    "port = ctx.var.original_dst_port, direction = ctx.var.amesh_direction, "
    "listener = ngx.var.server_port}) end"]}}


def _upstream(uid: str, *nodes: tuple[str, int], labels: dict | None = None) -> dict:
    out = {"id": uid, "type": "roundrobin", "scheme": "tcp" if uid.startswith("us-") else "http",
           "nodes": [{"host": h, "port": p, "weight": 1} for h, p in nodes]}
    if labels:
        out["labels"] = labels
    if out["scheme"] == "http":
        out.pop("scheme")
    return out


UPSTREAMS = [
    _upstream("u-dummy", ("127.0.0.1", 1)),
    _upstream("u-passthrough", labels=PASS_LABELS),
    _upstream("us-inbound-http", ("127.0.0.1", 15600)),
    _upstream("us-outbound-http", ("127.0.0.1", 15100)),
    _upstream("us-vip", ("127.0.0.1", 19001)),
    _upstream("us-port-only", ("127.0.0.1", 19002)),
    _upstream("us-passthrough-in", labels=PASS_LABELS),
    _upstream("us-passthrough-out", labels=PASS_LABELS),
]
ROUTES = [
    {"id": "r-inbound-8080", "uri": "/*", "priority": 100, "upstream_id": "u-dummy", "plugins": REPORT,
     "vars": [["amesh_direction", "==", "inbound"], ["original_dst_port", "==", 8080]]},
    {"id": "r-reviews-9080", "uri": "/*", "hosts": ["reviews"], "upstream_id": "u-dummy", "plugins": REPORT,
     "vars": [["amesh_direction", "==", "outbound"], ["original_dst_port", "==", 9080]]},
    # fault-injection (rewrite phase) before the passthrough plugin (access, priority 960)
    {"id": "r-faulty-9080", "uri": "/*", "hosts": ["faulty"], "upstream_id": "u-passthrough",
     "plugins": {"amesh-passthrough": {}, "fault-injection": {"abort": {"http_status": 418, "body": "fault"}}},
     "vars": [["amesh_direction", "==", "outbound"], ["original_dst_port", "==", 9080]]},
    # Istio's allow_any virtual host: any other Host on port 9080 goes to PassthroughCluster
    {"id": "r-allow-any-9080", "uri": "/*", "priority": -10, "upstream_id": "u-passthrough",
     "plugins": {"amesh-passthrough": {}},
     "vars": [["amesh_direction", "==", "outbound"], ["original_dst_port", "==", 9080]]},
]
STREAM_ROUTES = sorted([
    {"id": "s-in-8080-v4", "name": "inbound|8080||", "server_addr": POD_V4, "server_port": 8080,
     "upstream_id": "us-inbound-http"},
    {"id": "s-in-8080-v6", "name": "inbound|8080||", "server_addr": POD_V6, "server_port": 8080,
     "upstream_id": "us-inbound-http"},
    {"id": "s-in-passthrough", "name": "inbound|passthrough", "server_addr": POD_V4,
     "upstream_id": "us-passthrough-in", "plugins": {"amesh-passthrough": {}}},
    {"id": "s-vip-9000", "name": "10.20.9.1_9000", "server_addr": SERVICE_V4, "server_port": 9000,
     "upstream_id": "us-vip"},
    {"id": "s-port-9000", "name": "0.0.0.0_9000", "server_port": 9000, "upstream_id": "us-port-only"},
    {"id": "s-http-9080", "name": "0.0.0.0_9080", "server_port": 9080, "upstream_id": "us-outbound-http"},
    {"id": "s-catch-all-v4", "name": "PassthroughCluster", "server_addr": "0.0.0.0/0",
     "upstream_id": "us-passthrough-out", "plugins": {"amesh-passthrough": {}}},
    {"id": "s-catch-all-v6", "name": "PassthroughCluster", "server_addr": "::/0",
     "upstream_id": "us-passthrough-out", "plugins": {"amesh-passthrough": {}}},
], key=precedence)
DOCUMENT = {"routes": ROUTES, "upstreams": UPSTREAMS, "stream_routes": STREAM_ROUTES}


def request(ns: str, host: str, port: int, *, host_header: str = "svc", uid: int = APP_UID) -> tuple[int, dict | str]:
    """One GET from inside `ns` as `uid`: (status, JSON body or text), or (0, why) when the connection
    was closed or reset without an answer."""
    status, body = realapisix.http_from(ns, host, port, host_header=host_header, uid=uid)
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body


@pytest.fixture(scope="module")
def mesh(captured_pod):
    realapisix.skip_unless_available()
    network = captured_pod
    # the Host fallback resolves names through APISIX's resolver: /etc/hosts of the pod first
    (NETNS_ETC / network.pod).mkdir(parents=True, exist_ok=True)
    (NETNS_ETC / network.pod / "hosts").write_text(f"127.0.0.1 localhost\n{OTHER_V4} origin.test\n")
    settings, data_path = realapisix.settings(apisix_config.Mode.FILE, ipv6=True, outbound_http_ports=(9080,),
                                              inbound_http_ports=(8080,))
    origins = realapisix.EchoServers(network.other, [("other", "0.0.0.0", 80), ("other", "[::]", 80),
                                                     ("other", "0.0.0.0", 9080)])
    local = realapisix.EchoServers(network.pod, [("vip", "127.0.0.1", 19001), ("port-only", "127.0.0.1", 19002),
                                                 ("app", POD_V4, 7777)])
    with origins, local, realapisix.running(apisix_config.render_yaml(settings, data_path), ns=network.pod,
                                            document=DOCUMENT) as apisix:
        apisix.load(DOCUMENT, probe=lambda: request(network.pod, SERVICE_V4, 9000)[0] == 200)
        yield network, apisix


def test_document_is_in_precedence_order_and_accepted(mesh):
    _, apisix = mesh
    ids = [r["id"] for r in STREAM_ROUTES]
    assert set(ids[:2]) == {"s-in-8080-v4", "s-in-8080-v6"} and ids[2] == "s-in-passthrough"
    assert ids.index("s-vip-9000") < ids.index("s-port-9000")
    assert STREAM_ROUTES[-2:] == [r for r in STREAM_ROUTES if r["name"] == "PassthroughCluster"]
    assert not apisix.errors(), apisix.log()


@pytest.mark.parametrize("pod_ip", [POD_V4, POD_V6], ids=["v4", "v6"])
def test_inbound_http_port_reaches_inbound_routes_through_the_stream_front(mesh, pod_ip):
    """other -> pod:8080, captured to 15006: the stream router saw server_addr/server_port = the pod's
    address and 8080 (hook), hopped to 15600, where the HTTP route matched original_dst_port 8080."""
    network, _ = mesh
    status, answer = request(network.other, pod_ip, 8080, uid=0)
    assert status == 200, answer
    assert answer == {"route": "r-inbound-8080", "port": 8080, "direction": "inbound", "listener": "15600"}


def test_outbound_http_port_reaches_outbound_routes_by_host(mesh):
    network, _ = mesh
    status, answer = request(network.pod, SERVICE_V4, 9080, host_header="reviews")
    assert status == 200, answer
    # the internal listener knows the port it stands for, not the address (design (a))
    assert answer == {"route": "r-reviews-9080", "port": 9080, "direction": "outbound", "listener": "15100"}


def test_stream_router_takes_the_more_specific_route_in_precedence_order(mesh):
    network, _ = mesh
    assert request(network.pod, SERVICE_V4, 9000)[1]["name"] == "vip"  # VIP and port
    assert request(network.pod, OTHER_V4, 9000)[1]["name"] == "port-only"  # any other address, port 9000


def test_stream_router_takes_the_first_match_in_document_order(mesh):
    """Why the translator sorts: with the port-only route first, it wins over the VIP route."""
    network, apisix = mesh
    reversed_order = [r for r in STREAM_ROUTES if r["id"] == "s-port-9000"] + \
                     [r for r in STREAM_ROUTES if r["id"] != "s-port-9000"]
    try:
        apisix.load(dict(DOCUMENT, stream_routes=reversed_order),
                    probe=lambda: request(network.pod, SERVICE_V4, 9000)[1].get("name") == "port-only")
    finally:
        apisix.load(DOCUMENT, probe=lambda: request(network.pod, SERVICE_V4, 9000)[1].get("name") == "vip")


@pytest.mark.parametrize("origin", [OTHER_V4, OTHER_V6], ids=["v4", "v6"])
def test_stream_passthrough_reaches_an_unknown_destination(mesh, origin):
    """app -> other:80 (no service there): the catch-all's preread set the original destination."""
    network, _ = mesh
    status, answer = request(network.pod, origin, 80)
    assert status == 200, answer
    assert (answer["name"], answer["origin"], answer["port"]) == ("other", origin, 80)
    assert answer["peer"] in (POD_V4, POD_V6), "the proxy's connection left from the pod"


def test_inbound_passthrough_reaches_the_app_from_the_inbound_source(mesh):
    network, _ = mesh
    status, answer = request(network.other, POD_V4, 7777, uid=0)
    assert status == 200, answer
    assert (answer["name"], answer["origin"], answer["port"], answer["peer"]) == ("app", POD_V4, 7777, "127.0.0.6")


def test_stream_passthrough_refuses_a_capture_port(mesh):
    network, apisix = mesh
    status, why = request(network.pod, OTHER_V4, 15001)
    assert status == 0, why
    assert "original port 15001 is a capture port" in apisix.log()


def test_connection_without_original_destination_matches_nothing(mesh):
    """dialled at the capture port itself (as the exempt UID): not NATed, so the hook gives no
    server_addr/server_port and not even the catch-all matches."""
    network, _ = mesh
    status, why = request(network.pod, "127.0.0.1", 15001, uid=realapisix.PROXY_UID)
    assert status == 0, why


@pytest.mark.parametrize("host,origin", [(OTHER_V4, OTHER_V4), ("origin.test", OTHER_V4)], ids=["ip", "name"])
def test_http_passthrough_reaches_the_host_at_the_original_port(mesh, host, origin):
    """Any other Host on port 9080: the plugin's access phase passes the request through to the Host
    (an IP literal as is, a name through core.resolver) at the port the listener stands for."""
    network, _ = mesh
    status, answer = request(network.pod, SERVICE_V4, 9080, host_header=host)
    assert status == 200, answer
    assert (answer["name"], answer["origin"], answer["port"]) == ("other", origin, 9080)


@pytest.mark.parametrize("host", ["127.0.0.1", "[::1]"])
def test_http_passthrough_refuses_loopback(mesh, host):
    network, apisix = mesh
    status, _ = request(network.pod, SERVICE_V4, 9080, host_header=host)
    assert status == 502
    assert "is loopback" in apisix.log()


def test_fault_injection_aborts_before_the_passthrough_plugin(mesh):
    network, _ = mesh
    status, body = request(network.pod, SERVICE_V4, 9080, host_header="faulty")
    assert (status, body) == (418, "fault")
