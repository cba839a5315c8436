"""Bookinfo traffic-management scenarios: istiod-like xDS -> translate -> what APISIX does with requests.

For each scenario the xDS comes from ``amesh_testing.istiogen`` (the way istiod builds it), is
translated with the project's translator and checked three ways:

1. the APISIX document validates against APISIX 3.18's schemas and references only objects it holds;
2. the APISIX semantics (``tests/translate/apisix_router.py``) give the expected upstream, split,
   fault, timeout, retries, mirror and load balancing for sample requests;
3. a small Envoy picker over the same RouteConfiguration (virtual host by domain, first matching
   route) agrees with APISIX on every sample request.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from pathlib import Path

import pytest

from sidecar_agent.configdump import XdsResources, load_config_dump
from amesh_testing import istiogen
from sidecar_agent.translate import Translator, translate
from tests.translate.apisix_router import (
    Request, Router, fault_for, route_upstream, traffic_split_arm, upstream_path,
)

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT / ".." / "shared"
SCHEMAS = SHARED / "apisix-schema" / "3.18"
FIXTURES = SHARED / "fixtures" / "istio-xds"

NS = "default.svc.cluster.local"


def cluster(service: str, subset: str = "", port: int = 9080) -> str:
    return f"outbound|{port}|{subset}|{service}.{NS}"


# --------------------------------------------------------------------------------------------------
# Envoy's routing, over xds-protos RouteConfiguration messages.


def _envoy_header(req: Request, name: str) -> str | None:
    lowered = name.lower()
    if lowered in (":authority", "host"):
        return req.host
    if lowered == ":method":
        return req.method.upper()
    if lowered == ":path":
        return req.path
    if lowered == ":scheme":
        return req.scheme
    values = [v for k, v in req.headers.items() if k.lower() == lowered]
    if lowered == "cookie" and req.cookies:
        values.append("; ".join(f"{k}={v}" for k, v in req.cookies.items()))
    return ",".join(values) if values else None


def _string_matches(m, value: str) -> bool:
    kind = m.WhichOneof("match_pattern")
    if kind == "safe_regex":
        return re.fullmatch(m.safe_regex.regex, value) is not None
    want = getattr(m, kind)
    if m.ignore_case:
        value, want = value.lower(), want.lower()
    if kind == "exact":
        return value == want
    if kind == "prefix":
        return value.startswith(want)
    if kind == "suffix":
        return value.endswith(want)
    if kind == "contains":
        return want in value
    raise NotImplementedError(kind)


def _header_matches(h, req: Request) -> bool:
    value = _envoy_header(req, h.name)
    kind = h.WhichOneof("header_match_specifier")
    if kind is None or kind == "present_match":
        wants_present = h.present_match if kind else True
        return ((value is not None) == wants_present) != h.invert_match
    if value is None:
        return False  # Envoy: a missing header never matches a value matcher, inverted or not
    if kind == "string_match":
        ok = _string_matches(h.string_match, value)
    elif kind == "exact_match":
        ok = value == h.exact_match
    elif kind == "prefix_match":
        ok = value.startswith(h.prefix_match)
    elif kind == "suffix_match":
        ok = value.endswith(h.suffix_match)
    elif kind == "contains_match":
        ok = h.contains_match in value
    elif kind == "safe_regex_match":
        ok = re.fullmatch(h.safe_regex_match.regex, value) is not None
    else:
        raise NotImplementedError(kind)
    return ok != h.invert_match


def _query(req: Request) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in (req.query or "").split("&"):
        if part:
            k, _, v = part.partition("=")
            out.setdefault(k, v)
    return out


def _route_matches(r, req: Request) -> bool:
    m = r.match
    path = req.raw_path
    kind = m.WhichOneof("path_specifier")
    sensitive = m.case_sensitive.value if m.HasField("case_sensitive") else True
    p = path if sensitive else path.lower()
    if kind == "prefix":
        ok = p.startswith(m.prefix if sensitive else m.prefix.lower())
    elif kind == "path":
        ok = p == (m.path if sensitive else m.path.lower())
    elif kind == "safe_regex":
        ok = re.fullmatch(m.safe_regex.regex, path) is not None
    elif kind == "path_separated_prefix":
        pre = m.path_separated_prefix
        ok = path == pre or path.startswith(pre + "/")
    else:
        raise NotImplementedError(kind)
    if not ok or not all(_header_matches(h, req) for h in m.headers):
        return False
    q = _query(req)
    for qp in m.query_parameters:
        if qp.name not in q:
            return False
        if qp.WhichOneof("query_parameter_match_specifier") == "string_match" and not _string_matches(
                qp.string_match, q[qp.name]):
            return False
    return True


def envoy_vhost(rc, host: str):
    """Envoy's virtual host choice: exact domain, longest ``*suffix``, longest ``prefix*``, then ``*``."""
    host = host.lower()
    if rc.ignore_port_in_host_matching:  # from the last colon with no `]` after it (getPortStart)
        colon = host.rfind(":")
        if colon >= 0 and host.rfind("]") < colon:
            host = host[:colon]
    exact, suffix, prefix, star = None, [], [], None
    for vh in rc.virtual_hosts:
        for d in vh.domains:
            d = d.lower()
            if d == "*":
                star = star or vh
            elif d.startswith("*"):
                if host.endswith(d[1:]) and len(host) > len(d) - 1:
                    suffix.append((len(d), vh))
            elif d.endswith("*"):
                if host.startswith(d[:-1]) and len(host) > len(d) - 1:
                    prefix.append((len(d), vh))
            elif d == host:
                exact = exact or vh
    if exact is not None:
        return exact
    for group in (suffix, prefix):
        if group:
            return max(group, key=lambda x: x[0])[1]
    return star


def envoy_pick(rc, req: Request):
    """(virtual host, route) Envoy uses; a vhost with no matching route (404) gives (vhost, None)."""
    vh = envoy_vhost(rc, req.host)
    if vh is None:
        return None, None
    return vh, next((r for r in vh.routes if _route_matches(r, req)), None)


def _fraction_pct(p) -> float:
    return p.numerator * 100 / {0: 100, 1: 10_000, 2: 1_000_000}[p.denominator]


def whole_percent(pct: float) -> int:
    """The closest percentage APISIX's fault-injection can hold (an integer; a non-zero one stays >= 1)."""
    value = int(pct + 0.5)
    return 1 if pct > 0 and value == 0 else value


def envoy_outcome(rc, req: Request) -> tuple:
    """What Envoy does, as a comparable tuple: the cluster(s) and the fault applied."""
    from envoy.extensions.filters.http.fault.v3 import fault_pb2

    _, r = envoy_pick(rc, req)
    if r is None:
        return ("status", 404), None
    kind = r.WhichOneof("action")
    if kind == "route":
        ra = r.route
        if ra.WhichOneof("cluster_specifier") == "cluster":
            target = ("cluster", ra.cluster)
        else:
            target = ("weighted", tuple(sorted((c.name, c.weight.value) for c in ra.weighted_clusters.clusters)))
    elif kind == "direct_response":
        target = ("status", r.direct_response.status)
    else:
        target = ("redirect",)
    fault = None
    # Compared at APISIX's resolution: whole percentages (the report names each rounding).
    if "envoy.filters.http.fault" in r.typed_per_filter_config:
        f = fault_pb2.HTTPFault()
        r.typed_per_filter_config["envoy.filters.http.fault"].Unpack(f)
        fault = (f.abort.http_status if f.HasField("abort") else None,
                 whole_percent(_fraction_pct(f.abort.percentage)) if f.HasField("abort") else None,
                 (f.delay.fixed_delay.seconds + f.delay.fixed_delay.nanos / 1e9) if f.HasField("delay") else None,
                 whole_percent(_fraction_pct(f.delay.percentage)) if f.HasField("delay") else None)
    return target, fault


# --------------------------------------------------------------------------------------------------
# APISIX's side of the same comparison.


def cluster_of(upstream) -> str:
    """The xDS cluster an APISIX upstream stands for (its name, before any per-route policy suffix)."""
    return upstream["name"].split(" [", 1)[0]


def apisix_outcome(doc, req: Request) -> tuple:
    """What APISIX does, in the same terms as envoy_outcome."""
    r = Router(doc["routes"]).match(req)
    if r is None:
        return ("status", 404), None
    plugins = r.get("plugins") or {}
    fault = fault_for(r, req)
    own = route_upstream(doc, r)
    arm = traffic_split_arm(doc, r, req)
    if own is None and arm is None:
        # No upstream: APISIX answers by itself (direct response, redirect, the vhost's 404 catch-all).
        if plugins.get("redirect"):
            return ("redirect",), None
        assert fault is not None and fault.abort_status is not None, f"route {r['id']} answers nothing"
        return ("status", fault.abort_status), None
    if arm is not None:
        entries = tuple(sorted((cluster_of(u if u is not None else own), w) for u, w in arm))
        target = ("weighted", entries) if len(entries) > 1 else ("cluster", entries[0][0])
    else:
        target = ("cluster", cluster_of(own))
    f = None
    if fault is not None:
        f = (fault.abort_status, fault.abort_percentage, fault.delay_seconds, fault.delay_percentage)
    return target, f


# --------------------------------------------------------------------------------------------------
# The document: schemas and references.


@functools.lru_cache(maxsize=None)
def _validator(kind: str, name: str):
    from jsonschema import Draft7Validator

    from sidecar_agent.schema import OWN_PLUGINS

    path = OWN_PLUGINS[name] if kind == "plugins" and name in OWN_PLUGINS else SCHEMAS / kind / f"{name}.json"
    if not path.exists():
        pytest.fail(f"no APISIX schema for {kind}/{name} (an unknown plugin would be refused by APISIX)")
    return Draft7Validator(json.loads(path.read_text()), format_checker=Draft7Validator.FORMAT_CHECKER)


def check_document(doc) -> None:
    routes, upstreams = doc.get("routes", []), doc.get("upstreams", [])
    ids = [o["id"] for o in routes] + [o["id"] for o in upstreams]
    assert len(ids) == len(set(ids)), "duplicate ids"
    up_ids = {u["id"] for u in upstreams}
    for r in routes:
        if r.get("upstream_id") is not None:
            assert r["upstream_id"] in up_ids, f"route {r['id']} names missing upstream {r['upstream_id']}"
        for rule in ((r.get("plugins") or {}).get("traffic-split") or {}).get("rules", []):
            for wu in rule.get("weighted_upstreams", []):
                assert wu.get("upstream_id") is None or wu["upstream_id"] in up_ids
    if not SCHEMAS.is_dir():
        return
    for kind, objects in (("route", routes), ("upstream", upstreams)):
        for obj in objects:
            errors = [e.message for e in _validator("core", kind).iter_errors(copy.deepcopy(obj))]
            assert not errors, f"{kind} {obj['id']}: {errors}"
    for r in routes:
        for name, conf in (r.get("plugins") or {}).items():
            errors = [e.message for e in _validator("plugins", name).iter_errors(copy.deepcopy(conf))]
            assert not errors, f"route {r['id']} plugin {name}: {errors}"


# --------------------------------------------------------------------------------------------------
# Scenario plumbing.


def resources_of(xds: istiogen.Xds) -> XdsResources:
    return XdsResources(listeners={x.name: x for x in xds.listeners},
                        route_configs={x.name: x for x in xds.route_configs},
                        clusters={x.name: x for x in xds.clusters},
                        endpoints={x.cluster_name: x for x in xds.endpoints})


@functools.lru_cache(maxsize=None)
def scenario(name: str):
    xds = istiogen.bookinfo(name)
    doc = translate(resources_of(xds)).document
    return xds, doc


def rc_of(xds, port: int = 9080):
    return next(rc for rc in xds.route_configs if rc.name == str(port))


def req(host: str, path: str = "/", user: str | None = None, port: int | None = None, **kw) -> Request:
    """A request the productpage app sends; the capture sees its original destination port."""
    headers = dict(kw.pop("headers", {}))
    if user is not None:
        headers["end-user"] = user
    if port is None:
        port = int(host.rsplit(":", 1)[1]) if ":" in host else 9080
    return Request(host=host, path=path, headers=headers,
                   extra_vars={"original_dst_port": port, "server_port": str(port),
                                       "amesh_direction": "outbound"}, **kw)  # as the hook registers them


def outcome(name: str, r: Request) -> tuple:
    return apisix_outcome(scenario(name)[1], r)


def upstream_for(name: str, r: Request):
    doc = scenario(name)[1]
    route = Router(doc["routes"]).match(r)
    assert route is not None, f"{r} matched no route"
    return route, route_upstream(doc, route)


def split_of(name: str, r: Request) -> dict[str, int]:
    doc = scenario(name)[1]
    route = Router(doc["routes"]).match(r)
    arm = traffic_split_arm(doc, route, r)
    assert arm is not None, f"{route['id']} has no traffic-split arm for {r}"
    own = route_upstream(doc, route)
    return {cluster_of(u if u is not None else own): w for u, w in arm}


# --------------------------------------------------------------------------------------------------
# 1. Every scenario translates into a valid, self-consistent document.


@pytest.mark.parametrize("name", istiogen.BOOKINFO_SCENARIOS)
def test_document_is_valid(name):
    check_document(scenario(name)[1])


def test_translation_is_deterministic():
    a = translate(resources_of(istiogen.bookinfo("lb-policies"))).document
    b = translate(resources_of(istiogen.bookinfo("lb-policies"))).document
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


# --------------------------------------------------------------------------------------------------
# 2. APISIX semantics per scenario.

HOSTS = ("reviews:9080", "reviews", "reviews.default", "reviews.default.svc.cluster.local:9080", "10.96.101.112:9080")


@pytest.mark.parametrize("host", HOSTS)
def test_default_routes_to_the_service(host):
    assert outcome("default", req(host))[0] == ("cluster", cluster("reviews"))
    assert outcome("default", req(host, user="jason"))[0] == ("cluster", cluster("reviews"))


@pytest.mark.parametrize("host", HOSTS)
def test_all_v1(host):
    for user in (None, "jason"):
        assert outcome("all-v1", req(host, "/reviews/0", user))[0] == ("cluster", cluster("reviews", "v1"))
    assert outcome("all-v1", req(host.replace("reviews", "ratings").replace("10.96.101.112", "10.96.78.90")))[0] \
        == ("cluster", cluster("ratings", "v1"))


@pytest.mark.parametrize("host", HOSTS)
def test_jason_gets_reviews_v2(host):
    assert outcome("reviews-jason-v2", req(host, "/reviews/0", "jason"))[0] == ("cluster", cluster("reviews", "v2"))
    assert outcome("reviews-jason-v2", req(host, "/reviews/0"))[0] == ("cluster", cluster("reviews", "v1"))
    # Header names are case-insensitive, values are not.
    assert outcome("reviews-jason-v2", req(host, headers={"End-User": "jason"}))[0] == \
        ("cluster", cluster("reviews", "v2"))
    assert outcome("reviews-jason-v2", req(host, user="Jason"))[0] == ("cluster", cluster("reviews", "v1"))


@pytest.mark.parametrize("name,weights", [("reviews-50-v3", {"v1": 50, "v3": 50}),
                                          ("reviews-80-20", {"v1": 80, "v3": 20})])
def test_weighted_shift(name, weights):
    expected = {cluster("reviews", s): w for s, w in weights.items()}
    for user in (None, "jason"):
        assert split_of(name, req("reviews:9080", user=user)) == expected


def test_weights_are_smooth_80_20():
    """APISIX's weighted round robin is exact and smooth (facts): 16/4 out of 20 requests."""
    weights = split_of("reviews-80-20", req("reviews:9080"))
    current = {k: 0 for k in weights}
    picks = {k: 0 for k in weights}
    for _ in range(20):  # nginx's smooth weighted round robin
        for k in current:
            current[k] += weights[k]
        best = max(current, key=current.get)
        current[best] -= sum(weights.values())
        picks[best] += 1
    assert picks == {cluster("reviews", "v1"): 16, cluster("reviews", "v3"): 4}


@pytest.mark.parametrize("name,expected", [
    ("ratings-delay-jason", (None, None, 7.0, 100)),
    ("ratings-abort-jason", (500, 100, None, None)),
])
def test_ratings_fault_for_jason_only(name, expected):
    target, fault = outcome(name, req("ratings:9080", "/ratings/0", "jason"))
    assert target == ("cluster", cluster("ratings", "v1"))
    assert fault == expected
    assert outcome(name, req("ratings:9080", "/ratings/0")) == (("cluster", cluster("ratings", "v1")), None)
    # The same task keeps jason on reviews v2.
    assert outcome(name, req("reviews:9080", user="jason"))[0] == ("cluster", cluster("reviews", "v2"))


def test_reviews_timeout_half_a_second():
    route, up = upstream_for("reviews-timeout", req("reviews:9080"))
    assert cluster_of(up) == cluster("reviews", "v2")
    timeout = {**(up.get("timeout") or {}), **(route.get("timeout") or {})}
    assert timeout.get("read") == 0.5 and timeout.get("send") == 0.5
    # ratings answers after the 2 s delay of the same task, for everyone.
    assert outcome("reviews-timeout", req("ratings:9080"))[1] == (None, None, 2.0, 100)


def test_ratings_retries():
    _, up = upstream_for("ratings-retries", req("ratings:9080"))
    assert cluster_of(up) == cluster("ratings", "v1")
    assert up["retries"] == 3
    # Envoy's per-try timeout (2 s) bounds each attempt's read.
    assert up["timeout"]["read"] == 2.0
    # istiod's default policy elsewhere: 2 retries.
    _, default_up = upstream_for("ratings-retries", req("reviews:9080"))
    assert default_up["retries"] == 2


def mirror_leg(doc: dict, route: dict, r: Request) -> tuple[dict, dict, str]:
    """What the copy of `r` does, as APISIX runs it: proxy-mirror (path_concat_mode prefix) sends
    `<host><path><uri>?<args>` to the mirror listener, where the hook says `amesh_direction` "mirror"
    and no original port; the matching route's proxy-rewrite regex_uri gives the upstream URI (the
    query re-appended). (mirror-listener route, its upstream, the URI the upstream sees)"""
    conf = route["plugins"]["proxy-mirror"]
    assert conf["path_concat_mode"] == "prefix"
    uri = r.raw_path + (f"?{r.query}" if r.query is not None else "")
    path, _, query = (conf["path"] + uri).partition("?")
    copy_req = Request(host=r.host, path=conf["path"] + uri, headers=r.headers, method=r.method,
                       server_port=int(conf["host"].rsplit(":", 1)[1]), extra_vars={"amesh_direction": "mirror"})
    leg = Router(doc["routes"]).match(copy_req)
    assert leg is not None, f"the copy {copy_req} matched no route on the mirror listener"
    pattern, replacement = leg["plugins"]["proxy-rewrite"]["regex_uri"]
    rewritten = re.sub(pattern, replacement.replace("$1", r"\1"), path, count=1)
    return leg, route_upstream(doc, leg), rewritten + (f"?{query}" if query else "")


def test_mirror_copies_reviews_traffic_to_the_subset():
    """Mirroring task: live traffic to v1, a copy to v2. The copy goes to the loopback mirror listener
    (APISIX's own copy is not captured), whose route sends it to the v2 subset's upstream with the
    request's path and query."""
    r = req("reviews:9080", "/reviews/0?user=jason&x=1")
    route, up = upstream_for("reviews-mirror", r)
    assert cluster_of(up) == cluster("reviews", "v1")
    mirror = route["plugins"]["proxy-mirror"]
    assert mirror.get("sample_ratio", 1) == 1
    assert mirror["host"] == "http://127.0.0.1:15099"
    doc = scenario("reviews-mirror")[1]
    leg, leg_up, uri = mirror_leg(doc, route, r)
    assert cluster_of(leg_up) == cluster("reviews", "v2")
    assert uri == "/reviews/0?user=jason&x=1"
    assert leg["vars"] == [["amesh_direction", "==", "mirror"]]  # no original_dst_port there
    # an app's request with that path on the outbound listener is an ordinary one (to v1)
    ordinary = Router(doc["routes"]).match(req("reviews:9080", mirror["path"] + "/reviews/0"))
    assert ordinary["id"] == route["id"]
    # what else reaches the mirror listener answers 404, never the virtualOutbound fallback
    stray = Router(doc["routes"]).match(Request(host="reviews:9080", path="/reviews/0",
                                                extra_vars={"amesh_direction": "mirror"}))
    assert stray["name"] == "mirror/404" and fault_for(stray, r).abort_status == 404
    report = translate(resources_of(scenario("reviews-mirror")[0])).report
    fields = {e.field for e in report.entries}
    assert not any("subset" in f for f in fields), "the subset is kept now"
    assert any("-shadow" in f for f in fields), "the Host suffix Envoy adds is not: reported"
    ratings, _ = upstream_for("reviews-mirror", req("ratings:9080"))
    assert "proxy-mirror" not in (ratings.get("plugins") or {})
    from sidecar_agent.translate.summary import summarize

    assert "default → v1 + copy to v2" in summarize(doc, report)


def test_load_balancing_policies():
    name = "lb-policies"
    _, v3 = upstream_for(name, req("reviews:9080"))
    assert cluster_of(v3) == cluster("reviews", "v3")
    assert (v3["type"], v3["hash_on"], v3["key"]) == ("chash", "cookie", "user")
    # no route sends to v1 or v2 here: their upstreams are not in the document, the clusters are translated
    translator = Translator().load(resources_of(scenario(name)[0]))
    assert not {cluster("reviews", "v1"), cluster("reviews", "v2")} & {cluster_of(u) for u in scenario(name)[1]["upstreams"]}
    for subset in ("v1", "v2"):
        assert translator.cluster_upstream(cluster("reviews", subset))["type"] == "roundrobin"  # LEAST_REQUEST: see translate/cluster.py
    # outlier detection -> passive health checks on the reviews clusters
    assert "passive" in translator.cluster_upstream(cluster("reviews", "v1"))["checks"]
    _, ratings = upstream_for(name, req("ratings:9080"))
    assert (ratings["type"], ratings["hash_on"], ratings["key"]) == ("chash", "header", "x-user")
    _, details = upstream_for(name, req("details:9080"))
    assert (details["type"], details["hash_on"], details["key"]) == ("chash", "vars", "remote_addr")


def test_endpoints_and_tls():
    _, up = upstream_for("all-v1", req("reviews:9080"))
    assert [(n["host"], n["port"]) for n in up["nodes"]] == [("10.244.0.13", 9080)]
    _, default = upstream_for("default", req("reviews:9080"))
    assert sorted(n["host"] for n in default["nodes"]) == ["10.244.0.13", "10.244.1.14", "10.244.1.15"]
    # Every Bookinfo pod has a sidecar (tlsMode=istio): the upstream is marked for workload certificates.
    assert default["scheme"] == "https"


@pytest.mark.parametrize("host", ["example.com", "example.com:9080", "www.google.com:80"])
def test_unknown_host_is_passed_through(host):
    assert outcome("reviews-jason-v2", req(host, user="jason"))[0] == ("cluster", "PassthroughCluster")


@pytest.mark.parametrize("host", ["reviews:8080", "reviews.default:15014"])
def test_host_on_the_wrong_port_does_not_match_the_service(host):
    target, _ = outcome("reviews-jason-v2", req(host, user="jason", port=9080))
    assert target == ("cluster", "PassthroughCluster")


def test_port_15014_has_its_own_routes():
    target, _ = outcome("all-v1", req("istiod.istio-system:15014"))
    assert target == ("cluster", "outbound|15014||istiod.istio-system.svc.cluster.local")
    # The short name only exists inside the proxy's namespace.
    assert outcome("all-v1", req("istiod:15014"))[0] == ("cluster", "PassthroughCluster")


@pytest.mark.parametrize("path", ["/reviews/exact", "/REVIEWS/Exact"])
def test_rewrite_follows_a_case_insensitive_match(path):
    """Envoy's prefix_rewrite replaces what the (case-insensitive) match matched: /reviews/0 either way."""
    route, up = upstream_for("reviews-matches", req("reviews:9080", path))
    assert cluster_of(up) == cluster("reviews", "v2")
    assert upstream_path(route, req("reviews:9080", path)) == "/reviews/0"
    assert route["plugins"]["proxy-rewrite"]["host"] == "reviews-v2"


def test_route_actions():
    doc = scenario("reviews-matches")[1]
    router = Router(doc["routes"])
    debug = router.match(req("reviews:9080", "/reviews/7?debug=1"))
    assert debug["plugins"]["proxy-rewrite"]["headers"]["set"] == {"x-debug": "on"}
    assert debug["plugins"]["response-rewrite"]["headers"]["remove"] == ["server"]
    moved = router.match(req("reviews:9080", "/old/page?a=1"))
    assert moved["plugins"]["redirect"]["ret_code"] == 302
    assert moved["plugins"]["redirect"]["uri"].endswith("/new")
    cors = router.match(req("reviews:9080", "/cors"))["plugins"]["cors"]
    assert (cors["allow_origins"], cors["allow_methods"], cors["max_age"]) == ("https://example.com", "GET,POST", 3600)
    post_route = router.match(req("reviews:9080", method="POST"))
    assert route_upstream(doc, post_route)["retries"] == 0  # retries: {attempts: 0} disables istiod's default
    split = router.match(req("reviews:9080", "/"))
    assert split["plugins"]["proxy-mirror"]["sample_ratio"] == 0.05
    assert split_of("reviews-matches", req("reviews:9080")) == {cluster("reviews", "v1"): 80,
                                                                 cluster("reviews", "v2"): 20}


def test_same_host_on_two_ports_keeps_the_port():
    """One service on 9080 and 8080: Envoy routes by the listener port first (RDS "9080" vs "8080")."""
    multi = istiogen.Service("multi", "10.96.200.1", ports=(istiogen.ServicePort(9080), istiogen.ServicePort(8080)))
    mesh = istiogen.Mesh(istiogen.BOOKINFO_SERVICES + (multi,), istiogen.BOOKINFO_WORKLOADS + (
        istiogen.Workload("multi", "v1", ("10.244.2.20",)),))
    xds = istiogen.generate(mesh)
    doc = translate(resources_of(xds)).document
    check_document(doc)
    for host, port in (("multi", 8080), ("multi", 9080), ("multi:8080", 8080), ("multi:8080", 9080),
                       ("multi.default", 8080)):
        r = req(host, port=port)
        assert apisix_outcome(doc, r) == envoy_outcome(rc_of(xds, port), r), f"Host {host} to port {port}"


def test_endpoint_health_priority_and_scale_to_zero():
    ratings = istiogen.Service("ratings", "10.96.78.90", service_account="bookinfo-ratings")
    mesh = istiogen.Mesh((ratings,), (
        istiogen.Workload("ratings", "v1", ("10.244.0.12",), locality="r1/z1"),
        istiogen.Workload("ratings", "v1", ("10.244.0.13",), locality="r1/z1", health="DRAINING"),
        istiogen.Workload("ratings", "v2", ("10.244.0.14",), locality="r1/z1", health="UNHEALTHY"),
        istiogen.Workload("ratings", "v2", ("10.244.3.15",), locality="r2/z9", priority=1),
    ), destination_rules=(istiogen.DestinationRule("ratings", "ratings", istiogen._subsets("v1", "v2", "v3")),))
    xds = istiogen.generate(mesh)
    translator = Translator().load(resources_of(xds))
    doc = translator.document()
    check_document(doc)
    routed = Router(doc["routes"]).match(req("ratings:9080"))["upstream_id"]  # Istio's retry policy: a variant
    ups = {u["id"]: u for u in doc["upstreams"]}
    nodes = {(n["host"], n.get("priority", 0)) for n in ups[routed]["nodes"]}
    # DRAINING and UNHEALTHY endpoints get no traffic; Envoy's priority 1 is APISIX's lower priority.
    assert nodes == {("10.244.0.12", 0), ("10.244.3.15", -1)}
    assert translator.cluster_upstream(cluster("ratings"))["nodes"] == ups[routed]["nodes"]
    assert translator.cluster_upstream(cluster("ratings", "v3"))["nodes"] == []  # a subset without pods: no nodes (503)
    # Scale to zero: an empty ClusterLoadAssignment empties the upstream, no stale nodes stay; no upstream of
    # the document reads it (no route sends to v1), so none is touched
    empty = next(e for e in xds.endpoints if e.cluster_name == cluster("ratings", "v1"))
    assert translator.cluster_upstream(cluster("ratings", "v1"))["nodes"]
    touched = translator.set_endpoints(type(empty)(cluster_name=empty.cluster_name))
    assert translator.cluster_upstream(cluster("ratings", "v1"))["nodes"] == [] and not touched
    after = {u["id"]: u for u in translator.document()["upstreams"]}
    assert after == ups  # others untouched
    # the routed cluster's set emptied: its upstream in the document empties, and only it is touched
    routed_set = next(e for e in xds.endpoints if e.cluster_name == cluster("ratings"))
    assert translator.set_endpoints(type(routed_set)(cluster_name=routed_set.cluster_name)) == {routed}
    assert {u["id"]: u for u in translator.document()["upstreams"]}[routed]["nodes"] == []


def test_generator_rejects_bad_models(capsys):
    with pytest.raises(istiogen.ModelError, match="nope"):
        istiogen.generate(istiogen.Mesh(istiogen.BOOKINFO_SERVICES, virtual_services=(
            istiogen.VirtualService("x", ("nope",), (istiogen.HTTPRoute(route=(istiogen._to("nope", ""),)),)),)))
    with pytest.raises(istiogen.ModelError, match="no service"):
        istiogen.generate(istiogen.Mesh(istiogen.BOOKINFO_SERVICES, (istiogen.Workload("ghost", "v1", ("1.2.3.4",)),)))
    assert istiogen.main(["--bookinfo", "no-such-task"]) == 2
    assert "unknown Bookinfo scenario 'no-such-task'" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# 3. Envoy and APISIX agree on sample requests.


# Requests exercising path, case, regex, query, header, method and inverted matches.
VARIANTS = (
    dict(path="/api/v1/x", headers={"x-canary": "a"}), dict(path="/api/v1/x", headers={"x-canary": "ab"}),
    dict(path="/api/v1", headers={"x-canary": "b"}), dict(path="/API/v1/x", headers={"x-canary": "a"}),
    dict(path="/reviews/exact"), dict(path="/REVIEWS/Exact"), dict(path="/reviews/exact/more"),
    dict(path="/reviews/123?debug=1"), dict(path="/reviews/123?debug=2"), dict(path="/reviews/12a?debug=1"),
    dict(path="/reviews/123?x=1&debug=1"), dict(path="/blocked"), dict(path="/blocked", headers={"x-allow": "yes"}),
    dict(path="/blocked", headers={"x-allow": "no"}), dict(path="/", method="POST"), dict(path="/old/page"),
    dict(path="/cors"), dict(path="/oldish"),
)


def _samples(rc) -> list[Request]:
    port = int(rc.name) if rc.name.isdigit() else 9080
    out = []
    for vh in rc.virtual_hosts:
        concrete = [d for d in vh.domains if not (d == "*" or d.startswith("*") or d.endswith("*"))]
        for d in concrete:
            for user in (None, "jason", "Jason"):
                for path in ("/", "/reviews/0?x=1"):
                    out.append(req(d, path, user, port=port))
        for d in concrete[:2]:
            out += [req(d, port=port, **v) for v in VARIANTS]
    for host in ("example.com", "unknown:9080", "reviews:8080", f"10.0.0.1:{port}"):
        out.append(req(host, port=port))
    # what nginx's $host (the name of `hosts`) drops or keeps but Envoy compares exactly: a trailing dot,
    # case, a port that is not the listener's or is spelt differently
    bare = next((d for vh in rc.virtual_hosts for d in vh.domains if d.isalpha()), "reviews")
    for host in (f"{bare}.", f"{bare}.:{port}", f"{bare.upper()}:{port}", f"{bare}:0{port}", f"{bare}:",
                 f"{bare}:{port}.", f"{bare}:{port}:{port}", f"[{bare}]:{port}"):
        out.append(req(host, port=port))
    return out


@pytest.mark.parametrize("name", istiogen.BOOKINFO_SCENARIOS)
def test_envoy_and_apisix_agree(name):
    xds, doc = scenario(name)
    checked = 0
    for rc in xds.route_configs:
        for r in _samples(rc):
            assert apisix_outcome(doc, r) == envoy_outcome(rc, r), f"{name}: {r}"
            checked += 1
    assert checked > 100


@pytest.mark.parametrize("name", ["reviews-jason-v2", "reviews-matches"])
def test_envoy_and_apisix_agree_when_ports_are_ignored(name):
    """istiod 1.20+: port-less domains and ignore_port_in_host_matching (Host reviews:1234 is reviews)."""
    xds = istiogen.bookinfo(name, ignore_port_in_host_matching=True)
    assert "reviews:9080" not in rc_of(xds).virtual_hosts[3].domains
    doc = translate(resources_of(xds)).document
    check_document(doc)
    for rc in xds.route_configs:
        samples = _samples(rc) + [req("reviews:1234", user="jason", port=int(rc.name)),
                                  req("REVIEWS.default:9080", port=int(rc.name))]
        for r in samples:
            assert apisix_outcome(doc, r) == envoy_outcome(rc, r), f"{name}: {r}"


@pytest.mark.parametrize("dump", ["istio1.9-bookinfo-productpage-sidecar.config_dump.json",
                                  "istio1.24-dualstack-sleep-sidecar.config_dump.json"])
def test_envoy_and_apisix_agree_on_real_dumps(dump):
    path = FIXTURES / dump
    if not path.exists():
        pytest.skip(f"{path} absent")
    resources = load_config_dump(path)
    doc = translate(resources).document
    check_document(doc)
    checked = 0
    for rc_name, rc in resources.route_configs.items():
        if not rc_name.isdigit():
            continue
        for r in _samples(rc):
            assert apisix_outcome(doc, r) == envoy_outcome(rc, r), f"{dump} {rc_name}: {r}"
            checked += 1
    assert checked > 0


# --------------------------------------------------------------------------------------------------
# The generator itself: real-dump shapes and the shipped example.


def _real_rc(name: str):
    resources = load_config_dump(FIXTURES / "istio1.9-bookinfo-productpage-sidecar.config_dump.json")
    return resources.route_configs[name]


def test_generated_vhosts_have_istiods_shape():
    if not FIXTURES.is_dir():
        pytest.skip("fixtures absent")
    from google.protobuf import json_format

    real = next(v for v in _real_rc("9080").virtual_hosts if v.name.startswith("reviews."))
    ours = next(v for v in rc_of(istiogen.bookinfo("default")).virtual_hosts if v.name.startswith("reviews."))
    assert ours.name == real.name
    # Same domain variants, in the same order, modulo the ClusterIP.
    assert ours.domains[:-2] == real.domains[:-2]
    real_route, our_route = real.routes[0], ours.routes[0]
    assert (our_route.name, our_route.match, our_route.route.cluster, our_route.decorator) == \
        (real_route.name, real_route.match, real_route.route.cluster, real_route.decorator)
    real_retry = json_format.MessageToDict(real_route.route.retry_policy)
    our_retry = json_format.MessageToDict(our_route.route.retry_policy)
    for pred in our_retry["retryHostPredicate"]:
        pred.pop("typedConfig")  # istiod >= 1.12 adds the typed config; 1.9 names the predicate only
    assert our_retry == real_retry


def test_generated_subset_cluster_has_istiods_shape():
    if not FIXTURES.is_dir():
        pytest.skip("fixtures absent")
    from google.protobuf import json_format

    real = load_config_dump(FIXTURES / "istio1.9-bookinfo-productpage-sidecar.config_dump.json").clusters[
        cluster("details", "v1")]
    ours = next(c for c in istiogen.bookinfo("all-v1").clusters if c.name == cluster("details", "v1"))
    r, o = json_format.MessageToDict(real), json_format.MessageToDict(ours)
    for key in ("name", "type", "edsClusterConfig", "connectTimeout", "metadata"):
        if key == "edsClusterConfig":
            o[key]["edsConfig"].pop("initialFetchTimeout")  # newer istiod
        assert o[key] == r[key], key
    assert [m["name"] for m in o["transportSocketMatches"]] == [m["name"] for m in r["transportSocketMatches"]]


def test_shipped_example_is_current():
    shipped = ROOT / "e2e" / "bookinfo" / "productpage.config_dump.json"
    assert shipped.read_text() == istiogen.config_dump_json(istiogen.bookinfo()), \
        "regenerate: python -m amesh_testing.istiogen --bookinfo > e2e/bookinfo/productpage.config_dump.json"
    resources = load_config_dump(shipped)
    assert set(resources.route_configs) == {"9080", "15014"}
    assert resources.endpoints[cluster("reviews", "v2")].endpoints[0].lb_endpoints[0].endpoint.address \
        .socket_address.address == "10.244.1.14"


def test_synthetic_mesh_shape():
    xds = istiogen.synthetic_mesh(5, endpoints=10, subsets=2)
    assert len(xds.clusters) == 2 + 5 * 3
    rc = xds.route_configs[0]
    assert len(rc.virtual_hosts) == 6 and rc.virtual_hosts[-1].name == "allow_any"
    cla = {e.cluster_name: e for e in xds.endpoints}
    counts = {n: sum(len(le.lb_endpoints) for le in e.endpoints) for n, e in cla.items()}
    assert counts["outbound|9080||svc-00003.mesh.svc.cluster.local"] == 10
    assert counts["outbound|9080|v1|svc-00003.mesh.svc.cluster.local"] == 5
    with pytest.raises(istiogen.ModelError):
        istiogen.synthetic_mesh(0)
