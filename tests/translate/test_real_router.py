"""The Python model of APISIX's router (apisix_router.py) against a real APISIX 3.18.

Every Bookinfo scenario of test_scenarios.py is translated as there, loaded into one real APISIX
(tests/realapisix.py, file mode, the agent's config.yaml with internal listeners for the scenarios'
HTTP ports) with every upstream pointed at an echo upstream on loopback that answers with the
upstream's name (tests/echo_server.py), and each scenario's sample requests (test_scenarios._samples,
plus a few for nginx's header-name rules) are sent with their Host, method, headers and cookies to the
internal listener of their port: there the hook gives `original_dst_port` and `amesh_direction`
exactly as the model's requests carry them. A global rule reports the matched route's id.

For every request the real APISIX and the model must agree on the route, and, where APISIX reaches
an upstream, on the cluster (one of the traffic-split arm's for weighted routes); a 100 % abort gives
the model's status. Fault delays are left out of the loaded document (they change no routing, only
the wait).
"""

from __future__ import annotations

import copy
import functools
import http.client
import json

import pytest

from amesh_testing import istiogen
from sidecar_agent.apisix import config as apisix_config
from sidecar_agent.apisix import datapath
from tests import realapisix
from tests.translate.apisix_router import AmbiguousMatch, Request, Router, fault_for, route_upstream, traffic_split_arm
from tests.translate.test_scenarios import _samples, cluster_of, req, scenario
from tests.realapisix import EchoServers

PROBE_PATH = "/__amesh_probe__"
REPORT_ROUTE = {"id": "g-amesh-report-route", "plugins": {"serverless-pre-function": {
    "phase": "header_filter",
    "functions": ["return function(conf, ctx) if ctx.matched_route then "
                  "ngx.header['X-Amesh-Route'] = ctx.matched_route.value.id end end"]}}}


def extra_samples(port: int) -> list[Request]:
    """nginx header rules the model encodes: APISIX turns underscores_in_headers on (its default)."""
    return [req("reviews:9080", user=None, port=port, headers={"end_user": "jason"}),
            req("reviews:9080", user=None, port=port, headers={"END-USER": "jason"}),
            req("reviews:9080", user=None, port=port, headers={"x_canary": "a"}, path="/api/v1/x")]


def loaded(doc: dict, names: dict[str, int], marker: str) -> dict:
    """The document APISIX gets: upstreams to the echo of their name, fault delays left out, the
    route-reporting global rule and a probe route answering `marker` once this document is live."""
    out = copy.deepcopy({k: v for k, v in doc.items() if k in ("routes", "upstreams")})
    for upstream in out["upstreams"]:
        upstream["nodes"] = [{"host": "127.0.0.1", "port": names[cluster_of(upstream)], "weight": 1}]
        upstream["scheme"] = "http"
        for key in ("tls", "checks"):
            upstream.pop(key, None)
    for route in out["routes"]:
        fault = (route.get("plugins") or {}).get("fault-injection")
        if fault and "delay" in fault:
            del fault["delay"]
            if not fault:
                del route["plugins"]["fault-injection"]
    out["routes"].append({"id": "r-amesh-probe", "uri": PROBE_PATH, "hosts": ["probe.test"], "priority": 1 << 30,
                          "plugins": {"serverless-pre-function": {"phase": "access", "functions": [
                              f"return function() ngx.say('{marker}') ngx.exit(200) end"]}}})
    out["global_rules"] = [REPORT_ROUTE]
    return out


class Client:
    """Keep-alive HTTP/1.1 to one loopback port (through the namespace forwarder)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def send(self, r: Request) -> tuple[int, dict[str, str], bytes]:
        headers = {"Host": r.host, **r.headers}
        if r.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in r.cookies.items())
        for attempt in (1, 2):
            try:
                self.conn.putrequest(r.method, r.path, skip_host=True, skip_accept_encoding=True)
                for k, v in headers.items():
                    self.conn.putheader(k, v)
                self.conn.endheaders()
                answer = self.conn.getresponse()
                body = answer.read()
                got = {k.lower(): v for k, v in answer.getheaders()}
                if got.get("connection", "").lower() == "close":
                    self.conn.close()
                return answer.status, got, body
            except (http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


@functools.cache
def _ports() -> tuple[int, ...]:
    return tuple(sorted({int(rc.name) for n in istiogen.BOOKINFO_SCENARIOS for rc in scenario(n)[0].route_configs}))


@functools.cache
def _cluster_names() -> tuple[str, ...]:
    return tuple(sorted({cluster_of(u) for n in istiogen.BOOKINFO_SCENARIOS for u in scenario(n)[1]["upstreams"]}))


@pytest.fixture(scope="module")
def real():
    realapisix.skip_unless_available()
    settings, data_path = realapisix.settings(apisix_config.Mode.FILE, outbound_http_ports=_ports())
    internal = datapath.internal_ports(data_path)
    names = {name: 20000 + i for i, name in enumerate(_cluster_names())}
    with realapisix.running(apisix_config.render_yaml(settings, data_path)) as apisix:
        with EchoServers(apisix.ns, [(name, "127.0.0.1", port) for name, port in names.items()]):
            clients = {port: Client(apisix.forward(internal[(datapath.Direction.OUTBOUND, port)]))
                       for port in _ports()}
            yield apisix, names, clients


def _live(clients: dict[int, Client], marker: str) -> bool:
    client = next(iter(clients.values()))
    status, _, body = client.send(Request(host="probe.test", path=PROBE_PATH))
    return status == 200 and body.decode().strip() == marker


def _expected(doc: dict, r: Request):
    """(route id or None, clusters APISIX may reach or None when it answers itself, abort status)."""
    route = Router(doc["routes"]).match(r)
    if route is None:
        return None, None, 404
    fault = fault_for(route, r)
    abort = None
    if fault is not None and fault.abort_status is not None and fault.abort_percentage in (None, 100):
        abort = fault.abort_status
    own = route_upstream(doc, route)
    arm = traffic_split_arm(doc, route, r)
    if arm is not None:
        clusters = {cluster_of(u if u is not None else own) for u, w in arm if w > 0}
    elif own is not None:
        clusters = {cluster_of(own)}
    else:
        clusters = None
    if "amesh-passthrough" in (route.get("plugins") or {}):
        clusters = None  # the plugin replaces the node (Host fallback): only the route is compared
    return route["id"], clusters, abort


@pytest.mark.parametrize("name", istiogen.BOOKINFO_SCENARIOS)
def test_model_and_real_apisix_agree(real, name):
    apisix, names, clients = real
    xds, doc = scenario(name)
    apisix.load(loaded(doc, names, name), probe=lambda: _live(clients, name))
    checked = ambiguous = 0
    disagreements = []
    for rc in xds.route_configs:
        port = int(rc.name)
        for r in _samples(rc) + extra_samples(port):
            try:
                route_id, clusters, abort = _expected(doc, r)
            except AmbiguousMatch:
                ambiguous += 1
                continue
            status, headers, body = clients[port].send(r)
            got_route = headers.get("x-amesh-route")
            problem = None
            if got_route != route_id:
                problem = f"route {got_route!r}, model {route_id!r}"
            elif abort is not None and status != abort:
                problem = f"status {status}, model aborts with {abort}"
            elif abort is None and clusters is not None and status < 300:
                got = json.loads(body)["name"] if body.startswith(b"{") else None
                if got not in clusters:
                    problem = f"cluster {got!r}, model {sorted(clusters)}"
            elif route_id is None and status != 404:
                problem = f"status {status} without a route"
            if problem:
                disagreements.append(f"{r}: {problem}")
            checked += 1
    assert not disagreements, f"{name}: {len(disagreements)} of {checked} disagree:\n" + "\n".join(disagreements[:20])
    assert checked > 100 and ambiguous < checked // 10


def _answering(route_id: str, hosts: list[str] | None, priority: int, **extra) -> dict:
    """A route answering its id and the `host` its plugins see."""
    answer = (f"return function(conf, ctx) require('apisix.core').response.exit(200, {json.dumps(route_id + '@')}"
              " .. ctx.var.host) end")
    return {"id": route_id, "uri": "/*", "priority": priority, **({"hosts": hosts} if hosts else {}),
            "plugins": {"serverless-pre-function": {"phase": "access", "functions": [answer]}}, **extra}


def test_hosts_listing_the_same_routes_share_one_sub_router_and_route_as_before():
    """amesh.host_routers: radixtree_host_uri's per-host sub-routers are shared between hosts holding the very
    same routes (Istio's ~6 names of a service), a set of names listed by the same routes and no others is
    routed under one canonical name, and every host still routes as it did: partly shared host lists, a
    wildcard that could match a name (its set is left alone), priorities within a shared sub-router, routes
    without hosts; plugins see the request's own host."""
    realapisix.skip_unless_available()
    stats = ("return function(conf, ctx) require('apisix.core').response.exit(200, "
             "require('amesh.host_routers').stats) end")
    a_hosts = ["svc-a", "svc-a.ns", "10.96.0.1"]
    routes = [
        _answering("a", a_hosts, 1, vars=[["http_x_a", "~=", "no"]]),
        _answering("a-canary", a_hosts, 2, vars=[["http_x_canary", "==", "yes"]]),
        _answering("b", ["svc-b", "shared"], 1),
        _answering("c", ["svc-c", "shared"], 2),  # "shared" lists b and c: a list of its own
        _answering("wild", ["*.ns"], 1),
        _answering("any", None, 1),
        _answering("d", ["svc-d", "svc-d.other", "10.96.0.4"], 1),  # collapsible: one canonical name
        _answering("d-canary", ["svc-d", "svc-d.other", "10.96.0.4"], 2, vars=[["http_x_canary", "==", "yes"]]),
        {"id": "stats", "uri": "/*", "hosts": ["stats"],
         "plugins": {"serverless-pre-function": {"phase": "access", "functions": [stats]}}},
    ]
    settings, data_path = realapisix.settings(apisix_config.Mode.FILE)
    with realapisix.running(apisix_config.render_yaml(settings, data_path)) as apisix:
        port = apisix.forward(apisix.conf["apisix"]["node_listen"][0]["port"])

        def answer(host: str, headers: dict | None = None) -> str:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/x", headers={"Host": host, **(headers or {})})
            response = connection.getresponse()
            body = response.read().decode()
            if response.status != 200:
                return response.status
            return json.loads(body) if body.startswith("{") else body  # response.exit sends a string as it is

        apisix.load({"routes": routes}, probe=lambda: answer("svc-a") == "a@svc-a")
        expected = {"svc-a": "a", "svc-a.ns": "a", "10.96.0.1": "a", "svc-b": "b", "svc-c": "c",
                    "shared": "c", "other.ns": "wild", "unknown": "any", "svc-d": "d", "svc-d.other": "d",
                    "10.96.0.4": "d", "svc-d.other.ns": "wild", "svc-d.": "d"}  # $host drops one trailing dot
        assert {host: answer(host) for host in expected} == {h: f"{r}@{h.rstrip('.')}" for h, r in expected.items()}
        assert answer("SVC-D") == "d@svc-d"  # nginx's $host is lower-case
        # no route of svc-a takes it: the wildcard is tried next for the name it matches, which is why
        # svc-a's names keep their own entries
        assert {host: answer(host, {"x-a": "no"}) for host in a_hosts} == {
            "svc-a": "any@svc-a", "svc-a.ns": "wild@svc-a.ns", "10.96.0.1": "any@10.96.0.1"}
        d_hosts = ["svc-d", "svc-d.other", "10.96.0.4"]
        assert ({host: answer(host, {"x-canary": "yes"}) for host in a_hosts + d_hosts}
                == {h: f"{'a' if h in a_hosts else 'd'}-canary@{h}" for h in a_hosts + d_hosts})
        # sub-router lists: svc-a's three names (one radixtree), svc-b, shared, svc-c, *.ns, stats and svc-d's
        # canonical name; the host router's and the one of routes without hosts. svc-a's names are not
        # collapsed (the wildcard *.ns could match svc-a.ns), svc-d's are: two aliases
        assert answer("stats") == {"lists": 11, "built": 9, "aliases": 2}
        assert not apisix.errors(), apisix.log()
