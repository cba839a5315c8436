"""The `amesh-rbac` plugin (sidecar_agent/lua/apisix/plugins/amesh-rbac.lua) on a real APISIX 3.18 in a
captured pod (tests/realapisix.py, the fixtures of test_real_apisix.py): configurations shaped as
translate/rbac.py makes them, on inbound HTTP routes (rewrite phase: 403 "RBAC: access denied") and
inbound stream routes (preread: the connection is closed). `other` dials the pod, so on the stream side
the client address is `other`'s own (the connection to 15006 is the client's).

Every configuration used here is also checked with the schema the agent validates documents with.
"""

from __future__ import annotations


import pytest

from netns_tests.pods import OTHER_V4, OTHER_V6, POD_V4, POD_V6
from sidecar_agent.apisix import config as apisix_config
from sidecar_agent.schema import Schemas
from sidecar_agent.translate.stream import precedence
from tests import realapisix

PLUGIN = "amesh-rbac"
SCOPE = [["amesh_direction", "==", "inbound"], ["original_dst_port", "==", 8080]]
ANY = {"any": True}
MTLS = {"unknown": "principals.filter_state: peer principal needs mTLS, not implemented"}


def _filter(action: str, *policies: tuple[list, list]) -> dict:
    return {"action": action, "name": action.lower(),
            "policies": [{"name": f"p{i}", "permissions": perms, "principals": princs}
                         for i, (perms, princs) in enumerate(policies)]}


def method(m: str) -> dict:
    return {"header": ":method", "string": {"exact": m}}


# Host -> amesh-rbac configuration of that inbound route
HTTP_CONFIGS = {
    "deny-admin": {"filters": [_filter("DENY", ([{"path": {"prefix": "/admin"}}], [ANY]))]},
    "allow-get": {"filters": [_filter("ALLOW", ([{"and": [{"or": [method("GET")]}]}], [ANY]))]},
    # DENY needing a principal: undecidable without mTLS, so it denies
    "deny-principal": {"filters": [_filter("DENY", ([ANY], [MTLS]))]},
    # ALLOW needing a principal cannot allow; the open rule still does
    "allow-principal": {"filters": [_filter("ALLOW", ([method("GET")], [MTLS]),
                                            ([{"path": {"prefix": "/public"}}], [ANY]))]},
    # notPaths, headers (present / invert / suffix / regex), host
    "not-path": {"filters": [_filter("ALLOW", ([{"not": {"path": {"exact": "/private"}}}], [ANY]))]},
    "headers": {"filters": [_filter("DENY", ([{"header": "x-block", "present": True}], [ANY]),
                                    ([{"header": "x-user", "string": {"regex": "ev[a-z]+"}}], [ANY]),
                                    ([{"header": ":authority", "string": {"suffix": ".evil"}}], [ANY]))]},
    "ports": {"filters": [_filter("ALLOW", ([{"port": 8080}], [ANY]))]},
    "other-port": {"filters": [_filter("ALLOW", ([{"port_range": [9000, 9100]}], [ANY]))]},
    "audit": {"filters": [_filter("LOG", ([ANY], [ANY]))]},
    # ipBlocks / remoteIpBlocks behind the inbound front: the client address it handed over the hop
    "deny-other-ip": {"filters": [_filter("DENY", ([ANY], [{"source_ip": f"{OTHER_V4}/32"}]))]},
    "allow-other-ip": {"filters": [_filter("ALLOW", ([ANY], [{"source_ip": f"{OTHER_V4}/32"}]))]},
    "allow-elsewhere": {"filters": [_filter("ALLOW", ([ANY], [{"source_ip": "192.0.2.0/24"}]))]},
    "allow-remote": {"filters": [_filter("ALLOW", ([ANY], [{"remote_ip": "10.1.0.0/16"}]))]},
    "refused": {"deny": "port 8080 requires mTLS: inbound mTLS not implemented"},
    "open": None,
}
# inbound TCP port -> amesh-rbac configuration of its stream route
STREAM_CONFIGS = {
    7000: {"filters": [_filter("DENY", ([ANY], [{"source_ip": f"{OTHER_V4}/32"}]))]},
    7001: {"filters": [_filter("DENY", ([ANY], [{"source_ip": "192.0.2.0/24"}]))]},
    7002: {"filters": [_filter("ALLOW")]},  # Istio's TCP ALLOW without policies: deny all
    7003: {"deny": "port 7003 requires mTLS and the sidecar has no workload certificate"},
    7004: {"filters": [_filter("ALLOW", ([{"port": 7004}], [{"source_ip": f"{OTHER_V4}/32"}]))]},
    7005: {"filters": [_filter("DENY", ([ANY], [MTLS]))]},
    7006: None,
}


HOP_SQUAT = """return function()
    local hop, dict = require("amesh.hop"), ngx.shared["nacos"]
    local next = (dict:get(hop.NEXT) or 0) + 1
    for n = next, next + 2 do
        dict:set(hop.address(n), "192.0.2.66 1", 60)
    end
    ngx.print(3)
    ngx.exit(200)
end"""


def _document() -> dict:
    upstreams = [{"id": "u-app", "type": "roundrobin", "nodes": [{"host": "127.0.0.1", "port": 17777, "weight": 1}]},
                 {"id": "us-app", "type": "roundrobin", "scheme": "tcp",
                  "nodes": [{"host": "127.0.0.1", "port": 17777, "weight": 1}]},
                 {"id": "us-inbound-http", "type": "roundrobin", "scheme": "tcp",
                  "nodes": [{"host": "127.0.0.1", "port": 15600, "weight": 1}]}]
    routes = []
    for host, conf in HTTP_CONFIGS.items():
        route = {"id": f"r-{host}", "uri": "/*", "hosts": [host], "priority": 100, "upstream_id": "u-app",
                 "vars": SCOPE}
        if conf is not None:
            route["plugins"] = {PLUGIN: conf}
        routes.append(route)
    # answers with APISIX's $remote_addr itself (no upstream)
    routes.append({"id": "r-client-addr", "uri": "/*", "hosts": ["client-addr"], "priority": 100, "vars": SCOPE,
                   "plugins": {"serverless-pre-function": {
                       "phase": "access", "functions": ["return function() ngx.print(ngx.var.remote_addr) "
                                                        "ngx.exit(200) end"]}}})
    # takes the loopback addresses the next hand-overs would use (amesh/hop.lua's counter and addresses), as
    # records whose connections never came; answers how many it took
    routes.append({"id": "r-hop-squat", "uri": "/*", "hosts": ["hop-squat"], "priority": 100, "vars": SCOPE,
                   "plugins": {"serverless-pre-function": {"phase": "access", "functions": [HOP_SQUAT]}}})
    stream_routes = [{"id": "s-in-8080", "server_addr": POD_V4, "server_port": 8080,
                      "upstream_id": "us-inbound-http"},
                     {"id": "s-in-8080-v6", "server_addr": POD_V6, "server_port": 8080,
                      "upstream_id": "us-inbound-http"}]
    for port, conf in STREAM_CONFIGS.items():
        route = {"id": f"s-in-{port}", "server_addr": POD_V4, "server_port": port, "upstream_id": "us-app"}
        if conf is not None:
            route["plugins"] = {PLUGIN: conf}
        stream_routes.append(route)
    return {"routes": routes, "upstreams": upstreams, "stream_routes": sorted(stream_routes, key=precedence)}


DOCUMENT = _document()


def request(ns: str, port: int, *, host: str = "open", method: str = "GET", path: str = "/",
            headers: dict | None = None) -> tuple[int, str]:
    """One request from `ns` to the pod: (status, body), or (0, why) when the connection was closed."""
    return realapisix.http_from(ns, POD_V4, port, host_header=host, method=method, path=path, headers=headers)


@pytest.fixture(scope="module")
def mesh(captured_pod):
    realapisix.skip_unless_available()
    network = captured_pod
    settings, data_path = realapisix.settings(apisix_config.Mode.FILE, ipv6=True, inbound_http_ports=(8080,))
    app = realapisix.EchoServers(network.pod, [("app", "127.0.0.1", 17777)])
    with app, realapisix.running(apisix_config.render_yaml(settings, data_path), ns=network.pod,
                                 document=DOCUMENT) as apisix:
        apisix.load(DOCUMENT, probe=lambda: request(network.other, 7006)[0] == 200)
        yield network, apisix


def test_configurations_pass_the_agents_schema(schema_dir):
    schemas = Schemas(schema_dir)
    for conf in [*HTTP_CONFIGS.values(), *STREAM_CONFIGS.values()]:
        if conf is not None:
            assert schemas.check_plugin(PLUGIN, conf) == [], conf


def test_apisix_accepts_the_plugin(mesh):
    _, apisix = mesh
    assert not apisix.errors(), apisix.log()
    assert request(mesh[0].other, 8080)[0] == 200


@pytest.mark.parametrize("host,method,path,headers,expected", [
    ("deny-admin", "GET", "/admin", {}, 403),
    ("deny-admin", "GET", "/admin/users?x=1", {}, 403),
    ("deny-admin", "GET", "/ok", {}, 200),
    ("deny-admin", "GET", "/./admin", {}, 403),  # the normalised path
    ("allow-get", "GET", "/x", {}, 200),
    ("allow-get", "POST", "/x", {}, 403),
    ("deny-principal", "GET", "/", {}, 403),
    ("allow-principal", "GET", "/", {}, 403),
    ("allow-principal", "GET", "/public/a", {}, 200),
    ("not-path", "GET", "/open", {}, 200),
    ("not-path", "GET", "/private", {}, 403),
    ("headers", "GET", "/", {}, 200),
    ("headers", "GET", "/", {"X-Block": "1"}, 403),
    ("headers", "GET", "/", {"X-User": "eve"}, 403),
    ("headers", "GET", "/", {"X-User": "steve"}, 200),  # regex matches the whole value
    ("ports", "GET", "/", {}, 200),
    ("other-port", "GET", "/", {}, 403),
    ("audit", "GET", "/", {}, 200),
    ("refused", "GET", "/", {}, 403),
    ("open", "DELETE", "/admin", {}, 200),
    ("deny-other-ip", "GET", "/", {}, 403),
    ("allow-other-ip", "GET", "/", {}, 200),
    ("allow-elsewhere", "GET", "/", {}, 403),
    ("allow-remote", "GET", "/", {}, 403),  # no X-Forwarded-For: other's own address
    ("allow-remote", "GET", "/", {"X-Forwarded-For": "192.0.2.9, 10.1.2.3"}, 200),  # its last address
    ("allow-remote", "GET", "/", {"X-Forwarded-For": "10.1.2.3, 192.0.2.9"}, 403),
])
def test_http(mesh, host, method, path, headers, expected):
    network, apisix = mesh
    status, body = request(network.other, 8080, host=host, method=method, path=path, headers=headers)
    assert status == expected, (body, apisix.log()[-3000:])
    if expected == 403:
        assert body == "RBAC: access denied"


@pytest.mark.parametrize("pod_ip,client_ip", [(POD_V4, OTHER_V4), (POD_V6, OTHER_V6)], ids=["v4", "v6"])
def test_remote_addr_is_the_client_behind_the_front(mesh, pod_ip, client_ip):
    """Every plugin and log sees the client behind the hop as $remote_addr, on each request of a kept-alive
    connection (the front hands the address over once per client connection), IPv4 and IPv6 clients."""
    network, apisix = mesh
    answers = realapisix.http_exchanges_from(network.other, pod_ip, 8080, host_header="client-addr", count=3)
    assert answers == [(200, client_ip)] * 3, apisix.log()[-3000:]


def test_a_taken_loopback_address_is_skipped(mesh):
    """The hand-over's next addresses are held by records whose connections never came (e.g. a worker that died
    between the two): the front skips them, and the listener still learns this client's own address."""
    network, apisix = mesh
    assert request(network.other, 8080, host="hop-squat") == (200, "3")
    assert request(network.other, 8080, host="client-addr") == (200, OTHER_V4), apisix.log()[-3000:]


def test_audit_only_logs(mesh):
    network, apisix = mesh
    request(network.other, 8080, host="audit")
    assert "amesh-rbac audit: policy p0 matched" in apisix.log()


def test_headers_with_authority_suffix(mesh):
    network, _ = mesh
    assert request(network.other, 8080, host="headers", headers={"Host": "x.evil"})[0] in (403, 404)


@pytest.mark.parametrize("port,served", [(7000, False), (7001, True), (7002, False), (7003, False),
                                         (7004, True), (7005, False), (7006, True)])
def test_stream(mesh, port, served):
    network, apisix = mesh
    status, body = request(network.other, port)
    if served:
        assert status == 200 and '"app"' in body, (body, apisix.log()[-3000:])
    else:
        assert status == 0, body


def test_stream_denial_is_logged_with_the_reason(mesh):
    network, apisix = mesh
    request(network.other, 7003)
    assert "amesh-rbac closed the connection from" in apisix.log()
    assert "port 7003 requires mTLS" in apisix.log()
