"""Semantics of the real fixtures' translation: which route wins for a request, and what it does."""

from __future__ import annotations

import pytest

from sidecar_agent.configdump import load_config_dump

from .conftest import fixture, translate_fixture
from .expr import pick


def doc(name: str) -> dict:
    return translate_fixture(fixture(name)).document


def report_fields(name: str) -> set[str]:
    return {e.field for e in translate_fixture(fixture(name)).report.entries}


def upstream(document: dict, upstream_id: str) -> dict:
    return next(u for u in document["upstreams"] if u["id"] == upstream_id)


class TestBookinfoProductpage:
    NAME = "istio1.9-bookinfo-productpage-sidecar.config_dump.json"

    def test_host_port_is_kept(self):
        routes = doc(self.NAME)["routes"]
        with_port = pick(routes, host="reviews:9080", port=9080, path="/reviews/0")
        assert with_port["name"] == "9080/reviews.default.svc.cluster.local:9080/default"
        bare = pick(routes, host="reviews", port=9080, path="/")
        assert bare["name"] == with_port["name"]  # Envoy lists both forms
        other_port = pick(routes, host="reviews:8080", port=9080, path="/reviews/0")
        assert "reviews" not in other_port["name"]  # no virtual host lists reviews:8080

    def test_every_route_on_one_tree_node(self):
        assert {tuple(r["uris"]) for r in doc(self.NAME)["routes"]} == {("/*",)}

    def test_subset_clusters_are_translated_and_only_routed_ones_are_upstreams(self):
        from sidecar_agent.translate import Translator

        document = doc(self.NAME)
        details = [u for u in document["upstreams"]
                   if u.get("labels", {}).get("istio.host") == "details.default.svc.cluster.local"]
        # no VirtualService for details: its routes send to the service with Istio's retries, not to a subset
        assert [u["labels"].get("istio.subset") for u in details] == [None]
        translator = Translator().load(load_config_dump(fixture(self.NAME)))
        subset = translator.cluster_upstream("outbound|9080|v1|details.default.svc.cluster.local")
        assert subset["labels"]["istio.subset"] == "v1" and subset["nodes"] == []  # a dump without EDS

    def test_istio_default_retry_policy(self):
        document = doc(self.NAME)
        route = pick(document["routes"], host="details:9080", port=9080, path="/details/0")
        assert upstream(document, route["upstream_id"])["retries"] == 2

    def test_no_eds_means_no_nodes(self):
        document = doc(self.NAME)
        assert all(u["nodes"] == [] for u in document["upstreams"]
                   if u["name"].startswith("outbound|9080"))

    def test_inbound_and_tcp_are_translated_not_reported(self):
        fields = report_fields(self.NAME)
        assert not any("inbound" in f and "not translated" in f for f in fields)
        assert not any(f.startswith("filter_chains.filters[tcp_proxy") for f in fields)
        assert "type[ORIGINAL_DST]" in fields  # the cluster itself: the plugin stands in for it
        document = doc(self.NAME)
        # INSTANCE_IPS 10.244.2.66: inbound port 9080 -> its internal listener, the rest passed through
        inbound = [r for r in document["stream_routes"] if r.get("server_addr") == "10.244.2.66"]
        assert sorted(((r.get("server_port") or 0), "amesh-passthrough" in r.get("plugins", {})) for r in inbound
                      ) == [(0, True), (9080, False)]
        passthrough = [r for r in document["routes"] if r.get("upstream_id") == "u-PassthroughCluster-7f861f14c0eb"]
        assert passthrough and all(r["plugins"]["amesh-passthrough"] == {} for r in passthrough)

    def test_without_pod_ips_inbound_is_reported(self):
        from sidecar_agent.translate import translate

        fields = {e.field for e in translate(load_config_dump(fixture(self.NAME))).report.entries}
        assert "listener[inbound: pod IPs unknown (INSTANCE_IPS), not translated]" in fields


class TestDualStackSleep:
    NAME = "istio1.24-dualstack-sleep-sidecar.config_dump.json"

    def test_eds_nodes_with_ipv6_brackets(self):
        document = doc(self.NAME)
        route = pick(document["routes"], host="httpbin.test.svc.cluster.local:8000", port=8000, path="/get")
        nodes = upstream(document, route["upstream_id"])["nodes"]
        assert nodes and all(n["host"].startswith("[") and n["port"] == 8080 for n in nodes)

    def test_unknown_host_goes_to_allow_any(self):
        route = pick(doc(self.NAME)["routes"], host="example.org:8000", port=8000, path="/")
        assert route["name"] == "8000/allow_any/allow_any"


class TestEnvoyGatewayMultipleMatches:
    NAME = "envoygateway-http-route-multiple-matches.routes.yaml"

    @pytest.mark.parametrize("request_, expected", [
        ({"host": "example.com", "path": "/v1/example", "args": {"debug": "yes"}}, "httproute-2"),
        ({"host": "example.com", "path": "/v1/example"}, "httproute-3"),
        ({"host": "example.com", "path": "/v1/examples"}, "404"),  # separated prefix: not a match
        ({"host": "example.com", "path": "/foo"}, "404"),  # no fall-through to *.com
        ({"host": "www.example.com", "path": "/foo"}, "httproute-1/rule/0/match/0/*.com"),
        ({"host": "example.net", "path": "/v1/status", "headers": {"version": "one"}}, "httproute-4"),
        ({"host": "example.net", "path": "/v1/status/x"}, "httproute-5"),
        ({"host": "example.org", "path": "/anything"}, "httproute-1/rule/0/match/0/*"),
        ({"host": "example.com:8443", "path": "/v1/example"}, "httproute-3"),  # ignore_port_in_host_matching
    ])
    def test_which_route_wins(self, request_, expected):
        route = pick(doc(self.NAME)["routes"], **request_)
        assert expected in route["name"]


class TestEnvoyGatewayFeatures:
    def test_weighted_clusters_keep_weights(self):
        route = pick(doc("envoygateway-http-route-weighted-backend-consistent-hash.routes.yaml")["routes"],
                     host="x", path="/")
        weights = [w["weight"] for w in route["plugins"]["traffic-split"]["rules"][0]["weighted_upstreams"]]
        assert weights == [80, 20]
        assert route["upstream_id"] == route["plugins"]["traffic-split"]["rules"][0]["weighted_upstreams"][0]["upstream_id"]

    def test_fault_delay_fraction_and_percentages(self):
        routes = doc("envoygateway-fault-injection.routes.yaml")["routes"]
        second = next(r for r in routes if r["name"].endswith("/second-route"))
        assert second["plugins"]["fault-injection"]["delay"] == {"duration": 5.4, "percentage": 80}
        fields = report_fields("envoygateway-fault-injection.routes.yaml")
        assert any("abort.grpc_status" in f for f in fields)

    def test_regex_is_anchored_full_match(self):
        route = next(r for r in doc("envoygateway-http-route-regex.routes.yaml")["routes"] if "404" not in r["name"])
        assert ["uri", "~~", "^(?:/v1/.*)$"] in route["vars"]

    def test_timeouts_keep_fractions(self):
        document = doc("envoygateway-http-route-timeout.routes.yaml")
        reads = {upstream(document, r["upstream_id"])["timeout"]["read"] for r in document["routes"]
                 if "upstream_id" in r}
        assert any(t != int(t) for t in reads) or reads  # fractions survive when present
        assert all(t > 0 for t in reads)

    def test_retries_and_unsupported_retry_on_reported(self):
        document = doc("envoygateway-retry.routes.yaml")
        retries = sorted(upstream(document, r["upstream_id"])["retries"] for r in document["routes"]
                         if "upstream_id" in r)
        assert retries == [2, 3, 5]
        fields = report_fields("envoygateway-retry.routes.yaml")
        assert "virtual_hosts.routes.route.retry_policy.retry_on[retriable-status-codes]" in fields

    def test_mirror_of_a_non_istio_cluster_goes_through_the_mirror_listener(self):
        # any cluster name is mirrored now (the mirror listener's route references its upstream);
        # disableShadowHostSuffixAppend: nothing to report about the Host
        name = "envoygateway-http-route-mirrors-percentage.routes.yaml"
        document = doc(name)
        mirror = next(r["plugins"]["proxy-mirror"] for r in document["routes"]
                      if "proxy-mirror" in r.get("plugins", {}))
        assert mirror["host"] == "http://127.0.0.1:15099" and mirror["sample_ratio"] == 0.29
        internal = next(r for r in document["routes"] if r["name"] == "mirror/mirror-route-dest")
        assert mirror["path"] == internal["uris"][0][:-2] and internal["upstream_id"] in {
            u["id"] for u in document["upstreams"]}
        fields = report_fields(name)
        assert not any("shadow" in f or "request_mirror_policies.cluster" in f for f in fields)
