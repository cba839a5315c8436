"""Hand-built xDS in, APISIX out: matchers, endpoints, errors, incremental updates, configdump, CLI."""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner

from sidecar_agent.apisix.datapath import DataPathSettings
from sidecar_agent.cli import main
from sidecar_agent.configdump import ConfigDumpError, load_config_dump
from sidecar_agent.schema import validate_document
from sidecar_agent.translate import TranslationError, Translator, translate

from .conftest import fixture
from .apisix_router import Request, Router
from .expr import pick

CLUSTER = {"@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster", "name": "outbound|9080||reviews.default.svc.cluster.local",
           "type": "EDS", "edsClusterConfig": {"serviceName": "outbound|9080||reviews.default.svc.cluster.local"},
           "connectTimeout": "10s"}


def rc(routes, domains=("reviews", "reviews:9080"), name="9080", **extra):
    return {"@type": "type.googleapis.com/envoy.config.route.v3.RouteConfiguration", "name": name,
            "virtualHosts": [{"name": "reviews", "domains": list(domains), "routes": routes},
                             {"name": "allow_any", "domains": ["*"],
                              "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "PassthroughCluster"}}]}],
            **extra}


def cla(*hosts, name=CLUSTER["name"], health=None, priority=0):
    eps = [{"endpoint": {"address": {"socketAddress": {"address": h, "portValue": 9080}}}} for h in hosts]
    if health:
        eps[0]["healthStatus"] = health
    return {"@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment", "clusterName": name,
            "endpoints": [{"lbEndpoints": eps, "priority": priority}] if hosts else []}


def route(match, cluster=CLUSTER["name"], **action):
    return {"match": match, "route": {"cluster": cluster, **action}}


def translated(*resources):
    return translate(load_config_dump(list(resources)))


def test_header_invert_needs_the_header_present():
    doc = translated(CLUSTER, rc([route({"prefix": "/", "headers": [
        {"name": "end-user", "stringMatch": {"exact": "jason"}, "invertMatch": True}]})])).document
    chosen = pick(doc["routes"], host="reviews:9080", port=9080, path="/")
    assert chosen["name"].endswith("/404")  # header absent: Envoy's inverted match fails
    chosen = pick(doc["routes"], host="reviews:9080", port=9080, path="/", headers={"end-user": "bob"})
    assert "upstream_id" in chosen


def test_literal_values_are_not_regexes():
    doc = translated(CLUSTER, rc([route({"prefix": "/a.b", "headers": [
        {"name": "x", "stringMatch": {"prefix": "v1.*"}}]})])).document
    r = next(r for r in doc["routes"] if "upstream_id" in r and r["priority"] > 4 * 10**8)
    assert ["uri", "~~", "^/a\\.b"] in r["vars"] and ["http_x", "~~", "^v1\\.\\*"] in r["vars"]
    assert pick(doc["routes"], host="reviews", port=9080, path="/aXb", headers={"x": "v1.*"})["name"].endswith("/404")


def test_first_match_order_is_priority_order():
    doc = translated(CLUSTER, rc([route({"prefix": "/"}, timeout="1s"), route({"path": "/only"})])).document
    chosen = pick(doc["routes"], host="reviews", port=9080, path="/only")
    assert chosen["name"] == "9080/reviews/route0"  # Envoy takes the first match, not the longest


def test_weights_of_zero_are_kept_and_all_zero_is_invalid():
    wc = {"weightedClusters": {"clusters": [{"name": CLUSTER["name"], "weight": 100}, {"name": "v3", "weight": 0}]}}
    doc = translated(CLUSTER, rc([{"match": {"prefix": "/"}, "route": wc}])).document
    split = next(r for r in doc["routes"] if "plugins" in r and "traffic-split" in r["plugins"])
    assert [w["weight"] for w in split["plugins"]["traffic-split"]["rules"][0]["weighted_upstreams"]] == [100, 0]
    wc["weightedClusters"]["clusters"][0]["weight"] = 0
    with pytest.raises(TranslationError, match="weight"):
        translated(CLUSTER, rc([{"match": {"prefix": "/"}, "route": wc}]))


def test_timeout_fraction_and_zero():
    doc = translated(CLUSTER, rc([route({"prefix": "/x"}, timeout="0s"), route({"prefix": "/"}, timeout="0.5s")])).document
    reads = sorted(u["timeout"]["read"] for u in doc["upstreams"] if u["name"].startswith("outbound|9080"))
    assert reads == [0.5, 60.0]  # 0 = no Envoy timeout: APISIX's default, i.e. the plain upstream
    zero = pick(doc["routes"], host="reviews", port=9080, path="/x")
    plain = next(u for u in doc["upstreams"] if u["name"] == CLUSTER["name"])
    assert zero["upstream_id"] == plain["id"]


def test_endpoints_health_priority_and_zero():
    t = Translator().load(load_config_dump([CLUSTER, cla("10.0.0.2", "10.0.0.1", health="UNHEALTHY", priority=1)]))
    assert t.cluster_upstream(CLUSTER["name"])["nodes"] == [{"host": "10.0.0.1", "port": 9080, "weight": 1,
                                                             "priority": -1}]
    empty = Translator().load(load_config_dump([CLUSTER, cla()]))
    assert empty.cluster_upstream(CLUSTER["name"])["nodes"] == []


def test_only_referenced_upstreams_are_in_the_document():
    """A cluster no route or TCP service sends to is translated (and reported) but costs APISIX nothing."""
    alone = translated(CLUSTER, cla("10.0.0.1"))
    assert alone.document["upstreams"] == [] and not alone.report.entries
    routed = translated(CLUSTER, cla("10.0.0.1"), rc([route({"prefix": "/"})])).document
    names = {u["name"] for u in routed["upstreams"]}
    assert CLUSTER["name"] + " [retries=0,read_timeout=15.0]" in names  # the route's policy: a variant
    assert CLUSTER["name"] not in names  # the plain one: no route sends to it as it is


def test_duplicate_domains_are_invalid():
    bad = rc([route({"prefix": "/"})])
    bad["virtualHosts"][1]["domains"] = ["reviews"]
    with pytest.raises(TranslationError, match="domain 'reviews'"):
        translated(CLUSTER, bad)


def test_incremental_eds_touches_only_its_upstreams():
    other = dict(CLUSTER, name="outbound|9080||ratings.default.svc.cluster.local",
                 edsClusterConfig={"serviceName": "outbound|9080||ratings.default.svc.cluster.local"})
    resources = load_config_dump([CLUSTER, other, rc([route({"prefix": "/"})]), cla("10.0.0.1")])
    t = Translator().load(resources)
    before = t.document()
    touched = t.set_endpoints(load_config_dump([cla("10.0.0.9")]).endpoints[CLUSTER["name"]])
    after = t.document()
    changed = {u["id"] for u in after["upstreams"]} - {json.dumps(u, sort_keys=True) and u["id"]
                                                       for u in before["upstreams"] if u in after["upstreams"]}
    assert changed == touched and len(touched) == 1  # the route's variant (no route sends to the plain one)
    assert after["routes"] == before["routes"]
    assert all("10.0.0.9" in json.dumps(u) for u in after["upstreams"] if u["id"] in touched)


def test_incremental_equals_full_translation():
    final = [CLUSTER, rc([route({"prefix": "/v2"})]), cla("10.0.0.3")]
    t = Translator().load(load_config_dump([CLUSTER, rc([route({"prefix": "/"})]), cla("10.0.0.1")]))
    t.set_route_config(load_config_dump([final[1]]).route_configs["9080"])
    t.set_endpoints(load_config_dump([final[2]]).endpoints[CLUSTER["name"]])
    assert t.document() == translated(*final).document


def test_unknown_typed_config_does_not_fail_and_is_reported():
    listener = {"@type": "type.googleapis.com/envoy.config.listener.v3.Listener", "name": "0.0.0.0_9080",
                "filterChains": [{"filters": [{"name": "istio.stats", "typedConfig": {
                    "@type": "type.googleapis.com/stats.PluginConfig", "x": 1}}]}]}
    result = translated(listener)
    assert any("stats.PluginConfig" in e.field for e in result.report.entries)


def test_snake_and_camel_case_give_the_same_messages():
    camel = load_config_dump([cla("10.0.0.1")])
    snake = load_config_dump([{"cluster_name": CLUSTER["name"], "endpoints": [{"lb_endpoints": [
        {"endpoint": {"address": {"socket_address": {"address": "10.0.0.1", "port_value": 9080}}}}]}]}])
    assert camel.endpoints == snake.endpoints


def test_bad_input_names_the_problem(tmp_path):
    with pytest.raises(ConfigDumpError, match="cannot tell"):
        load_config_dump([{"foo": 1}])
    with pytest.raises(ConfigDumpError, match="invalid route_config"):
        load_config_dump([{"name": "x", "virtualHosts": [{"domains": 5}]}])
    with pytest.raises(ConfigDumpError, match="no such file"):
        load_config_dump(tmp_path / "missing.json")


def test_directory_input(tmp_path):
    (tmp_path / "a.clusters.json").write_text(json.dumps([CLUSTER]))
    (tmp_path / "b.endpoints.yaml").write_text(json.dumps(cla("10.0.0.1")))
    resources = load_config_dump(tmp_path)
    assert list(resources.clusters) == [CLUSTER["name"]] and list(resources.endpoints) == [CLUSTER["name"]]


V2 = "outbound|9080|v2|reviews.default.svc.cluster.local"


def test_mirror_goes_through_the_mirror_listener(schema_dir):
    """request_mirror_policies -> proxy-mirror to 127.0.0.1:<mirror port> under /__amesh_mirror/<upstream
    id> (prefix mode: the request's path and query follow), and one internal route taking that prefix
    on the mirror listener to the mirrored subset's upstream, the prefix stripped."""
    v2 = {**CLUSTER, "name": V2, "edsClusterConfig": {"serviceName": V2}}
    mirrored = route({"prefix": "/"}, timeout="3s", retryPolicy={"retryOn": "connect-failure", "numRetries": 2},
                     requestMirrorPolicies=[{"cluster": V2, "runtimeFraction": {
                         "defaultValue": {"numerator": 25, "denominator": "HUNDRED"}}}])
    result = translated(CLUSTER, v2, cla("10.0.0.1"), cla("10.0.0.2", name=V2), rc([mirrored]))
    doc = result.document
    assert validate_document(doc, schema_dir) == []
    main = next(r for r in doc["routes"] if "proxy-mirror" in r.get("plugins", {}))
    up_v2 = next(u for u in doc["upstreams"] if u["name"] == V2)  # the plain upstream: a copy is not retried
    assert main["plugins"]["proxy-mirror"] == {
        "host": "http://127.0.0.1:15099", "path": f"/__amesh_mirror/{up_v2['id']}", "path_concat_mode": "prefix",
        "sample_ratio": 0.25}
    internal = next(r for r in doc["routes"] if r["name"] == f"mirror/{V2}")
    assert internal == {
        "id": internal["id"], "name": f"mirror/{V2}", "priority": 0,
        "uris": [f"/__amesh_mirror/{up_v2['id']}/*"], "vars": [["amesh_direction", "==", "mirror"]],
        "upstream_id": up_v2["id"],
        "plugins": {"proxy-rewrite": {"regex_uri": [
            "^" + re.escape(f"/__amesh_mirror/{up_v2['id']}") + "(/.*)", "$1"]}}}
    assert re.fullmatch(r"r-mirror_outbound_9080_v2_reviews\.default-[0-9a-f]{12}", internal["id"])
    assert up_v2["nodes"] == [{"host": "10.0.0.2", "port": 9080, "weight": 1}]
    # proxy-mirror sends `path .. uri .. ?args`; the internal route's regex gives back the request's path
    pattern, _ = internal["plugins"]["proxy-rewrite"]["regex_uri"]
    copy_uri = main["plugins"]["proxy-mirror"]["path"] + "/reviews/1"
    assert re.sub(pattern, r"\1", copy_uri) == "/reviews/1"
    catch_all = next(r for r in doc["routes"] if r["name"] == "mirror/404")
    assert catch_all["priority"] == 1 and catch_all["vars"] == internal["vars"]
    fields = {e.field for e in result.report.entries}
    assert "virtual_hosts.routes.route.request_mirror_policies[Host not suffixed with -shadow]" in fields
    assert not any("subset" in f for f in fields)
    # the same upstream mirrored by two routes: one internal route
    twice = translated(CLUSTER, v2, rc([mirrored, {**mirrored, "match": {"prefix": "/other"}}])).document
    assert [r["name"] for r in twice["routes"] if r["name"].startswith("mirror/")] == ["mirror/404", f"mirror/{V2}"]


def test_mirror_edge_cases(schema_dir):
    v2 = {**CLUSTER, "name": V2, "edsClusterConfig": {"serviceName": V2}}
    # no shadow suffix wanted: nothing reported; 0 %: no mirror at all (Envoy copies nothing)
    quiet = route({"prefix": "/"}, requestMirrorPolicies=[{"cluster": V2, "disableShadowHostSuffixAppend": True}])
    off = route({"prefix": "/off"}, requestMirrorPolicies=[{"cluster": V2, "runtimeFraction": {
        "defaultValue": {"numerator": 0}}}])
    result = translated(CLUSTER, v2, rc([off, quiet]))
    assert validate_document(result.document, schema_dir) == []
    mirrors = [r for r in result.document["routes"] if "proxy-mirror" in r.get("plugins", {})]
    assert len(mirrors) == 1 and "sample_ratio" not in mirrors[0]["plugins"]["proxy-mirror"]
    assert not any("mirror" in e.field for e in result.report.entries)
    # a mirror of a cluster CDS lacks: the internal route's upstream exists without nodes, reported
    missing = translated(CLUSTER, rc([route({"prefix": "/"}, requestMirrorPolicies=[{"cluster": V2}])]))
    assert validate_document(missing.document, schema_dir) == []
    assert any(e.resource == V2 and "missing" in e.field for e in missing.report.entries)
    # a prefix rewrite: the copy keeps the path before it (proxy-mirror runs first), reported
    rewritten = translated(CLUSTER, v2, rc([route({"prefix": "/api/"}, prefixRewrite="/",
                                                  requestMirrorPolicies=[{"cluster": V2}])]))
    assert any("copy keeps the path before" in e.field for e in rewritten.report.entries)
    # a custom mirror port
    moved = Translator(data_path=DataPathSettings(mirror_port=14999)).load(
        load_config_dump([CLUSTER, v2, rc([quiet])])).document()
    assert {r["plugins"]["proxy-mirror"]["host"] for r in moved["routes"] if "proxy-mirror" in r.get("plugins", {})} \
        == {"http://127.0.0.1:14999"}


def test_validator_rejects_what_apisix_rejects(schema_dir):
    doc = translated(CLUSTER, rc([route({"prefix": "/"})])).document
    assert validate_document(doc, schema_dir) == []
    broken = json.loads(json.dumps(doc))
    broken["routes"][0]["plugins"] = {"no-such-plugin": {}}
    broken["routes"][1]["upstream_id"] = "u-nowhere"
    broken["upstreams"][0]["nodes"] = [{"host": "10.0.0.1", "port": 0, "weight": 1}]
    problems = validate_document(broken, schema_dir)
    assert any("unknown plugin 'no-such-plugin'" in p for p in problems)
    assert any("'u-nowhere' does not exist" in p for p in problems)
    assert any("nodes" in p for p in problems)


def test_cli_json_yaml_report(tmp_path, schema_dir):
    source = fixture("envoygateway-retry.routes.yaml")
    runner = CliRunner()
    out = tmp_path / "apisix.yaml"
    result = runner.invoke(main, ["translate", str(source), "-o", str(out), "--format", "yaml", "--report",
                                  "--schema-dir", str(schema_dir)])
    assert result.exit_code == 0, result.output
    assert out.read_text().endswith("#END\n")
    assert "retry_on[retriable-status-codes]" in result.stderr
    as_json = runner.invoke(main, ["translate", str(source)])
    assert json.loads(as_json.stdout)["routes"]


def test_cli_bad_input_fails_cleanly_and_writes_nothing(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('[{"foo": 1}]')
    out = tmp_path / "out.json"
    result = CliRunner().invoke(main, ["translate", str(bad), "-o", str(out)])
    assert result.exit_code == 1 and "invalid input" in result.output and not out.exists()


# -- the Host condition: one regex per port for Istio-shaped virtual hosts ----------------------------------
def _apisix_admits(hosts, host_vars, http_host: str) -> bool:
    """Does a route with this condition take a request with this Host (the router model: nginx's `$host`
    against `hosts`, the `vars` on the raw Host)?"""
    route = {"id": "r", "uris": ["/*"], "vars": [list(v) for v in host_vars], **({"hosts": hosts} if hosts else {})}
    return Router([route]).match(Request(host=http_host)) is not None


ISTIO_NAMES = ["reviews", "reviews.default", "reviews.default.svc.cluster.local", "10.96.0.7", "[fd00::7]"]


@pytest.mark.parametrize("domains, shared", [
    ([d for n in ISTIO_NAMES for d in (n, f"{n}:9080")], True),           # Istio's outbound virtual host
    ([d.upper() for n in ISTIO_NAMES for d in (n, f"{n}:9080")], True),   # domains compare case-insensitively
    (ISTIO_NAMES, False),                                                 # no `:9080` forms: the port is refused
    ([d for n in ISTIO_NAMES for d in (n, f"{n}:9080")][:-1], False),     # one form missing
    (["reviews", "reviews:9081"], False),                                 # another port
    (["my_svc", "my_svc:9080"], False),                                   # not a plain name
    (["reviews.", "reviews.:9080"], False),                               # a trailing dot is compared as is
    (["*.example.com", "*.example.com:9080"], False),                     # wildcards keep their own
])
def test_host_condition_shares_one_regex_per_port_only_where_it_means_the_same(domains, shared):
    from sidecar_agent.translate.route import host_condition, port_host_regex

    hosts, host_vars = host_condition(domains, False, 9080)
    assert (host_vars == [port_host_regex(9080)]) is shared
    own = host_condition(domains, False)  # no port: always the virtual host's own regex
    assert own[1] != [port_host_regex(9080)]
    wanted = {d.lower() for d in domains}
    names = {Request(host=d).var("host") for d in domains}  # each domain without its port
    for name in sorted(names | {"other", "reviews.default.svc"}):
        for http_host in (name, f"{name}:9080", name.upper(), f"{name}.", f"{name}.:9080", f"{name}:09080",
                          f"{name}:", f"{name}:9080.", f"{name}:9081", f"{name}:9080:9080"):
            if "*" in http_host:
                continue
            exact = http_host.lower() in wanted  # Envoy: the domain list, exactly (no port ignoring)
            for condition in ((hosts, host_vars), own):
                assert _apisix_admits(*condition, http_host) is exact, (domains, http_host, condition)
