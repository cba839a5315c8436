"""The APISIX routing evaluator against APISIX's documented and measured behaviour.

Sources: ../shared/docs/apisix-facts.md (measured on APISIX 3.18), APISIX's router-radixtree page
(match priority table) and lua-resty-expr's operator semantics.
"""

import pytest

from tests.translate.apisix_router import (
    AmbiguousMatch, ExprError, Request, Router, eval_vars, fault_for, route_upstream, traffic_split_arm,
    upstream_path,
)


def route(rid, uri="/*", **kw):
    return {"id": rid, "uri": uri, **kw}


def winner(routes, req, mode="radixtree_host_uri"):
    r = Router(routes, mode).match(req)
    return None if r is None else r["id"]


# --- hosts and ports (facts: "hosts is compared with nginx's $host, which never carries a port") ---------


@pytest.mark.parametrize("mode", ["radixtree_host_uri", "radixtree_uri"])
def test_host_with_port_matches_nothing(mode):
    routes = [route("r", hosts=["reviews:9080"])]
    assert winner(routes, Request(host="reviews:9080"), mode) is None
    assert winner(routes, Request(host="reviews"), mode) is None


@pytest.mark.parametrize("mode", ["radixtree_host_uri", "radixtree_uri"])
def test_host_without_port_answers_both(mode):
    routes = [route("r", hosts=["ratings"])]
    assert winner(routes, Request(host="ratings"), mode) == "r"
    assert winner(routes, Request(host="ratings:9080"), mode) == "r"
    assert winner(routes, Request(host="RATINGS:9080"), mode) == "r"  # $host is lower-cased
    assert winner(routes, Request(host="ratings2"), mode) is None


def test_port_told_apart_through_http_host():
    routes = [route("p9080", hosts=["reviews"], vars=[["http_host", "==", "reviews:9080"]]),
              route("p8080", hosts=["reviews"], vars=[["http_host", "==", "reviews:8080"]])]
    assert winner(routes, Request(host="reviews:9080")) == "p9080"
    assert winner(routes, Request(host="reviews:8080")) == "p8080"
    assert winner(routes, Request(host="reviews")) is None


def test_wildcard_host():
    routes = [route("w", hosts=["*.example.com"])]
    assert winner(routes, Request(host="a.example.com")) == "w"
    assert winner(routes, Request(host="a.b.example.com:80")) == "w"
    assert winner(routes, Request(host="example.com")) is None


def test_apisix_falls_through_between_hosts():
    """facts: a request for example.com that misses its routes can land on *.com or a host-less route."""
    routes = [route("exact", uri="/api/*", hosts=["example.com"]),
              route("wild", uri="/other/*", hosts=["*.com"]),
              route("hostless", uri="/*")]
    assert winner(routes, Request(host="example.com", path="/api/x")) == "exact"
    assert winner(routes, Request(host="example.com", path="/other/x")) == "wild"
    assert winner(routes, Request(host="example.com", path="/nothing")) == "hostless"


def test_host_routes_win_over_hostless_regardless_of_priority():
    routes = [route("host", hosts=["reviews"], priority=0), route("any", priority=100)]
    assert winner(routes, Request(host="reviews")) == "host"
    assert winner(routes, Request(host="other")) == "any"
    # One tree (radixtree_uri): only uri then priority decide.
    assert winner(routes, Request(host="reviews"), "radixtree_uri") == "any"


def test_exact_host_before_longer_and_shorter_wildcards():
    routes = [route("short", hosts=["*.com"]), route("long", hosts=["*.example.com"]),
              route("exact", hosts=["www.example.com"], vars=[["http_x", "==", "1"]])]
    assert winner(routes, Request(host="www.example.com", headers={"x": "1"})) == "exact"
    assert winner(routes, Request(host="www.example.com")) == "long"
    assert winner(routes, Request(host="www.other.com")) == "short"


# --- uri and priority (router-radixtree: "Full match has a higher priority than deep prefix matching") ----


def test_radixtree_match_priority_table():
    routes = [route("foo", "/blog/foo/*"), route("a", "/blog/foo/a/*"), route("c", "/blog/foo/c/*"),
              route("bar", "/blog/foo/bar")]
    assert winner(routes, Request(path="/blog/foo/bar")) == "bar"
    assert winner(routes, Request(path="/blog/foo/a/b/c")) == "a"
    assert winner(routes, Request(path="/blog/foo/c/d")) == "c"
    assert winner(routes, Request(path="/blog/foo/gloo")) == "foo"
    assert winner(routes, Request(path="/blog/bar")) is None


def test_uri_beats_priority_and_priority_orders_one_uri():
    routes = [route("catchall", "/*", priority=100), route("deep", "/api/*", priority=1)]
    assert winner(routes, Request(path="/api/v1")) == "deep"
    routes = [route("low", "/*", priority=1, vars=[["http_end_user", "==", "jason"]]),
              route("high", "/*", priority=2, vars=[["http_end_user", "==", "jason"]]),
              route("fallback", "/*", priority=0)]
    assert winner(routes, Request(headers={"end-user": "jason"})) == "high"
    assert winner(routes, Request()) == "fallback"


def test_prefix_is_a_raw_string_prefix():
    routes = [route("p", "/blog/bar*")]
    for path in ("/blog/bar", "/blog/bar/a", "/blog/barx"):
        assert winner(routes, Request(path=path)) == "p"


def test_equal_priority_is_ambiguous():
    routes = [route("a", "/*", priority=5, upstream_id="u1"), route("b", "/*", priority=5, upstream_id="u2")]
    with pytest.raises(AmbiguousMatch):
        Router(routes).match(Request())
    # Equal priority and the same effect: whichever APISIX picks, the request is served alike.
    same = [route("a", "/*", priority=5, upstream_id="u1"), route("b", "/*", priority=5, upstream_id="u1")]
    assert winner(same, Request()) == "a"
    # Not ambiguous when only one of them matches.
    routes[1]["vars"] = [["http_x", "==", "1"]]
    assert winner(routes, Request()) == "a"


def test_uri_is_normalised_and_query_ignored():
    routes = [route("exact", "/a/c")]
    assert winner(routes, Request(path="/a//b/../c?x=1")) == "exact"
    assert winner(routes, Request(path="/a/%63")) == "exact"


def test_methods_remote_addrs_and_status():
    routes = [route("post", methods=["POST"], priority=2), route("lan", remote_addrs=["10.0.0.0/8"], priority=1),
              route("off", status=0, priority=3), route("rest")]
    assert winner(routes, Request(method="POST")) == "post"
    assert winner(routes, Request(remote_addr="10.1.2.3")) == "lan"
    assert winner(routes, Request(remote_addr="192.168.1.1")) == "rest"


# --- variables -----------------------------------------------------------------------------------------


def test_variables():
    req = Request(host="Reviews:9080", path="/p/%41?a=1&a=2&b=x%20y&flag", method="post",
                  headers={"End-User": "jason", "X-Dup": "1", "x-dup": "2", "x_under": "no"},
                  cookies={"session": "abc"}, remote_addr="10.244.0.10", server_port=15001)
    assert req.var("host") == "reviews"
    assert req.var("http_host") == "Reviews:9080"
    assert req.var("http_end_user") == "jason"
    assert req.var("http_x_dup") == "1, 2"
    assert req.var("http_x_under") == "no"  # APISIX sets underscores_in_headers on
    assert req.var("uri") == "/p/A"
    assert req.var("request_uri") == "/p/%41?a=1&a=2&b=x%20y&flag"
    assert req.var("arg_a") == "1"
    assert req.var("arg_b") == "x y"
    assert req.var("arg_flag") is True
    assert req.var("arg_none") is None
    assert req.var("cookie_session") == "abc"
    assert req.var("http_cookie") == "session=abc"
    assert req.var("request_method") == "POST"
    assert req.var("server_port") == "15001"
    assert Request(host="[fd00::1]:8000").var("host") == "[fd00::1]"
    assert Request(extra_vars={"original_dst_port": "9080"}).var("original_dst_port") == "9080"


# --- lua-resty-expr --------------------------------------------------------------------------------------

JASON = Request(headers={"end-user": "jason", "x-n": "10"}, remote_addr="10.1.2.3",
                extra_vars={"original_dst_port": "9080", "port_number": 9080, "groups": ["a", "b"]})


@pytest.mark.parametrize("rules,expected", [
    ([["http_end_user", "==", "jason"]], True),
    ([["http_end_user", "==", "Jason"]], False),
    ([["http_end_user", "~=", "jason"]], False),
    ([["http_absent", "~=", "jason"]], True),          # nil ~= "jason"
    ([["http_absent", "==", "jason"]], False),
    ([["original_dst_port", "==", 9080]], True),       # numbers compare numerically
    ([["original_dst_port", "==", "9080"]], True),
    ([["original_dst_port", "==", 9081]], False),
    ([["original_dst_port", "~=", 9081]], True),
    ([["http_x_n", ">", 9]], True),
    ([["http_x_n", ">", "9"]], True),                  # both sides tonumber
    ([["http_x_n", "<", 9]], False),
    ([["http_x_n", ">=", 10]], True),
    ([["http_x_n", "<=", 10]], True),
    ([["http_end_user", ">", 1]], False),              # not a number: false
    ([["http_end_user", "~~", "^ja"]], True),
    ([["http_end_user", "~~", "^JA"]], False),
    ([["http_end_user", "~*", "^JA"]], True),
    ([["http_absent", "~~", ".*"]], False),            # nil never matches a regex
    ([["http_absent", "!", "~~", ".*"]], True),        # ...so its negation matches an absent header
    ([["http_end_user", "!", "==", "jason"]], False),
    ([["http_end_user", "in", ["bob", "jason"]]], True),
    ([["original_dst_port", "in", [9080]]], False),    # Lua: "9080" is not 9080
    ([["port_number", "==", "9080"]], False),          # ...nor the other way round (a getter returning a number)
    ([["port_number", "==", 9080]], True),
    ([["groups", "has", "b"]], True),
    ([["http_end_user", "has", "j"]], False),
    ([["remote_addr", "ipmatch", ["10.0.0.0/8"]]], True),
    ([["remote_addr", "ipmatch", "192.168.0.0/16"]], False),
    ([["http_end_user", "jason"]], True),              # two-element compatibility form
    ([["http_end_user", "==", "jason"], ["http_x_n", "==", "11"]], False),  # AND
    (["OR", ["http_end_user", "==", "bob"], ["http_x_n", "==", "10"]], True),
    (["!OR", ["http_end_user", "==", "bob"], ["http_x_n", "==", "10"]], False),
    (["!AND", ["http_end_user", "==", "jason"], ["http_x_n", "==", "11"]], True),
    ([["OR", ["http_end_user", "==", "bob"], ["http_end_user", "==", "jason"]], ["http_x_n", "==", "10"]], True),
    ([], True),
])
def test_expr(rules, expected):
    assert eval_vars(rules, JASON) is expected


@pytest.mark.parametrize("rules", [
    ["http_x", "==", "1"],                   # not wrapped in brackets
    [["http_x", "?", "1", "2"]],             # 4 elements need "!"
    [["http_x", "like", "1"]],               # unknown operator
    ["OR", ["http_x", "==", "1"]],           # logic op with a single operand
    [["remote_addr", "ipmatch", "not-an-ip"]],
    [["http_x", "~~", "("]],
])
def test_invalid_expr(rules):
    with pytest.raises(ExprError):
        eval_vars(rules, JASON)


def test_router_rejects_invalid_vars():
    with pytest.raises(ExprError):
        Router([route("bad", vars=[["http_x", "regex", "a"]])])


# --- plugins and upstreams ------------------------------------------------------------------------------

DOC = {
    "upstreams": [{"id": "v1", "nodes": []}, {"id": "v3", "nodes": []}],
    "routes": [route("r", upstream_id="v1", plugins={
        "traffic-split": {"rules": [
            {"match": [{"vars": [["http_end_user", "==", "jason"]]}], "weighted_upstreams": [{"upstream_id": "v3"}]},
            {"weighted_upstreams": [{"upstream_id": "v3", "weight": 20}, {"weight": 80}]}]},
        "fault-injection": {"abort": {"http_status": 500, "percentage": 100,
                                      "vars": [[["http_end_user", "==", "jason"]]]},
                            "delay": {"duration": 7, "percentage": 50}}})],
}


def test_traffic_split_arms():
    r = Router(DOC["routes"]).match(Request())
    assert route_upstream(DOC, r)["id"] == "v1"
    assert [(u and u["id"], w) for u, w in traffic_split_arm(DOC, r, Request())] == [("v3", 20), (None, 80)]
    jason = Request(headers={"end-user": "jason"})
    assert [(u and u["id"], w) for u, w in traffic_split_arm(DOC, r, jason)] == [("v3", 1)]
    assert traffic_split_arm(DOC, route("plain"), Request()) is None


def test_fault_injection_vars():
    r = DOC["routes"][0]
    jason = fault_for(r, Request(headers={"end-user": "jason"}))
    assert (jason.abort_status, jason.delay_seconds) == (500, 7)
    other = fault_for(r, Request())
    assert (other.abort_status, other.delay_seconds, other.delay_percentage) == (None, 7, 50)
    assert fault_for(route("plain"), Request()) is None


def test_proxy_rewrite_path():
    plain = route("p")
    assert upstream_path(plain, Request(path="/a//b?x=1")) == "/a/b"
    regex = route("r", plugins={"proxy-rewrite": {"regex_uri": ["^/api/(.*)", "/v2/$1", "^/old(.*)", "/new${1}"]}})
    assert upstream_path(regex, Request(path="/api/users?x=1")) == "/v2/users"
    assert upstream_path(regex, Request(path="/old/x")) == "/new/x"
    assert upstream_path(regex, Request(path="/other")) == "/other"   # no pair matches: unchanged
    fixed = route("u", plugins={"proxy-rewrite": {"uri": "/fixed/$arg_id"}})
    assert upstream_path(fixed, Request(path="/x?id=7")) == "/fixed/7"
