"""AuthorizationPolicy / PeerAuthentication on the inbound side (translate/rbac.py, inbound.py): RBAC
filters built as istiod 1.29 sends them (../shared/peers/istiod/FACTS.md) are put into the dual-stack
fixture's virtualInbound; the `amesh-rbac` plugin configurations and the report are compared with
golden/rbac/scenarios.json (`REFRESH_GOLDEN=1` rewrites it), and fail-closed rules asserted."""

from __future__ import annotations

import json
import os

import pytest
from google.protobuf import struct_pb2
from envoy.config.rbac.v3 import rbac_pb2 as rbac_config
from envoy.config.listener.v3 import listener_components_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac

from sidecar_agent.configdump import load_config_dump
from sidecar_agent.schema import Schemas, validate_document
from sidecar_agent.translate import rbac
from sidecar_agent.translate.inbound import translate_inbound
from sidecar_agent.translate.report import Report
from sidecar_agent.translate.render import to_json

from .conftest import GOLDEN, fixture

DUAL = "istio1.24-dualstack-sleep-sidecar.config_dump.json"
PODS = ("10.244.0.12", "fd00:10:244::c")
INTERNAL = {80: 15600}
GOLDEN_FILE = GOLDEN / "rbac" / "scenarios.json"  # not a fixture golden: test_goldens looks at golden/*.json
R = rbac_config


def _inbound():
    return load_config_dump(fixture(DUAL)).listeners["virtualInbound"]


# -- istiod's building blocks -----------------------------------------------------------------------

def path_prefix(p: str) -> R.Permission:
    out = R.Permission()
    out.url_path.path.prefix = p
    return out


def method(m: str) -> R.Permission:
    out = R.Permission()
    out.header.name = ":method"
    out.header.string_match.exact = m
    return out


def any_permission() -> R.Permission:
    return R.Permission(any=True)


def any_principal() -> R.Principal:
    return R.Principal(any=True)


def and_rules(*rules) -> R.Permission:
    out = R.Permission()
    for r in rules:
        out.and_rules.rules.add().CopyFrom(r)
    return out


def or_rules(*rules) -> R.Permission:
    out = R.Permission()
    for r in rules:
        out.or_rules.rules.add().CopyFrom(r)
    return out


def not_rule(rule) -> R.Permission:
    out = R.Permission()
    out.not_rule.CopyFrom(rule)
    return out


def peer_principal(name: str) -> R.Principal:
    out = R.Principal()
    out.filter_state.key = "io.istio.peer_principal"
    out.filter_state.string_match.exact = name
    return out


def source_ip(address: str, length: int) -> R.Principal:
    out = R.Principal()
    out.direct_remote_ip.address_prefix = address
    out.direct_remote_ip.prefix_len.value = length
    return out


def remote_ip(address: str, length: int) -> R.Principal:
    out = R.Principal()
    out.remote_ip.address_prefix = address
    out.remote_ip.prefix_len.value = length
    return out


def jwt_issuer(iss: str) -> R.Principal:
    out = R.Principal()
    out.metadata.filter = "istio_authn"
    out.metadata.path.add().key = "request.auth.principal"
    out.metadata.value.string_match.exact = iss
    return out


def rules(action: str, policies: dict) -> R.RBAC:
    out = R.RBAC(action=getattr(R.RBAC, action))
    for name, (permissions, principals) in policies.items():
        policy = out.policies[name]
        for p in permissions:
            policy.permissions.add().CopyFrom(p)
        for p in principals:
            policy.principals.add().CopyFrom(p)
    return out


def with_filters(http: list | None = None, network: list | None = None, *, strict: bool = False,
                 extra_http: str | None = None):
    """virtualInbound with `http` RBAC configs before each router and `network` ones before each
    tcp_proxy; `strict`: only the TLS-terminating chains left (PeerAuthentication STRICT)."""
    listener = _inbound()
    chains = list(listener.filter_chains)
    del listener.filter_chains[:]
    for chain in chains:
        port = chain.filter_chain_match.destination_port.value if chain.filter_chain_match.HasField(
            "destination_port") else None
        if strict and port != 15006 and not chain.HasField("transport_socket"):
            continue
        new = listener.filter_chains.add()
        new.CopyFrom(chain)
        filters = list(new.filters)
        del new.filters[:]
        for f in filters:
            if f.name == "envoy.filters.network.http_connection_manager" and (http or extra_http):
                hcm = hcm_pb2.HttpConnectionManager()
                f.typed_config.Unpack(hcm)
                http_filters = list(hcm.http_filters)
                del hcm.http_filters[:]
                for hf in http_filters:
                    if hf.name == "envoy.filters.http.router":
                        if extra_http:
                            hcm.http_filters.add(name=extra_http).typed_config.Pack(struct_pb2.Struct())
                        for config in http or ():
                            hcm.http_filters.add(name=rbac.HTTP_RBAC).typed_config.Pack(config)
                    hcm.http_filters.add().CopyFrom(hf)
                f.typed_config.Pack(hcm)
            if f.name == "envoy.filters.network.tcp_proxy" and port != 15006:
                for config in network or ():
                    added = listener_components_pb2.Filter(name=rbac.NETWORK_RBAC)
                    added.typed_config.Pack(config)
                    new.filters.add().CopyFrom(added)
            new.filters.add().CopyFrom(f)
    return listener


def http_filter(action: str, policies: dict) -> http_rbac.RBAC:
    return http_rbac.RBAC(rules=rules(action, policies))


def network_filter(action: str, policies: dict) -> network_rbac.RBAC:
    return network_rbac.RBAC(rules=rules(action, policies), stat_prefix="tcp.")


SCENARIOS = {
    # AuthorizationPolicy DENY paths /admin* (the TCP version: deny all, HTTP-only conditions)
    "deny-admin": lambda: with_filters(
        [http_filter("DENY", {"ns[default]-policy[deny-admin]-rule[0]": ([path_prefix("/admin")], [any_principal()])})],
        [network_filter("DENY", {"ns[default]-policy[deny-admin]-rule[0]": ([any_permission()], [any_principal()])})]),
    # ALLOW methods GET (TCP: an ALLOW without policies denies all)
    "allow-get": lambda: with_filters(
        [http_filter("ALLOW", {"ns[default]-policy[allow-get]-rule[0]": ([and_rules(or_rules(method("GET")))],
                                                                         [any_principal()])})],
        [network_filter("ALLOW", {})]),
    # principals need mTLS; ALLOW with one cannot allow, DENY with one denies
    "principals": lambda: with_filters(
        [http_filter("DENY", {"ns[default]-policy[deny-sa]-rule[0]": (
            [any_permission()], [peer_principal("spiffe://cluster.local/ns/default/sa/bad")])}),
         http_filter("ALLOW", {"ns[default]-policy[allow]-rule[0]": (
             [method("GET")], [peer_principal("spiffe://cluster.local/ns/default/sa/good")]),
             "ns[default]-policy[allow-open]-rule[0]": ([path_prefix("/public")], [any_principal()])})]),
    # ipBlocks: the client's connection, on HTTP the address the inbound front hands over the hop
    "source-ip": lambda: with_filters(
        [http_filter("DENY", {"ns[default]-policy[ips]-rule[0]": ([any_permission()], [source_ip("10.0.0.0", 8)])})],
        [network_filter("DENY", {"ns[default]-policy[ips]-rule[0]": ([any_permission()], [source_ip("10.0.0.0", 8)])})]),
    # remoteIpBlocks: on HTTP X-Forwarded-For's last address first (remote_ip), on TCP the connection's
    "remote-ip": lambda: with_filters(
        [http_filter("ALLOW", {"ns[default]-policy[rips]-rule[0]": ([any_permission()], [remote_ip("10.1.0.0", 16)])})],
        [network_filter("ALLOW", {"ns[default]-policy[rips]-rule[0]": ([any_permission()],
                                                                       [remote_ip("10.1.0.0", 16)])})]),
    # requestPrincipals (JWT) and notPaths
    "jwt-and-not": lambda: with_filters(
        [http_filter("ALLOW", {"ns[default]-policy[jwt]-rule[0]": (
            [not_rule(path_prefix("/private"))], [jwt_issuer("https://issuer/sub")])})]),
    # AUDIT: logged only, nothing denied or reported as denied
    "audit": lambda: with_filters([http_filter("LOG", {"ns[default]-policy[audit]-rule[0]": (
        [path_prefix("/x")], [peer_principal("spiffe://x")])})]),
    # CUSTOM: an ext_authz filter before the router
    "custom": lambda: with_filters(extra_http="envoy.filters.http.ext_authz"),
    # an RBAC filter whose config is not an RBAC message (e.g. a TypedStruct): never "no rules"
    "unreadable": lambda: with_filters(extra_http=rbac.HTTP_RBAC),
    # an RBAC filter with a matcher (not the rules the sidecar evaluates)
    "matcher": lambda: with_filters([_with_matcher()]),
    # PeerAuthentication STRICT: only TLS chains
    "strict": lambda: with_filters(strict=True),
    # no rules at all: Envoy enforces nothing
    "no-rules": lambda: with_filters([http_rbac.RBAC()], [network_rbac.RBAC(stat_prefix="tcp.")]),
}


def _with_matcher() -> http_rbac.RBAC:
    out = http_rbac.RBAC()
    out.matcher.on_no_match.action.name = "deny"
    return out


def outcome(listener) -> dict:
    part = translate_inbound(listener, PODS, INTERNAL)
    plugins = {}
    for kind, objects in (("route", part.routes), ("stream_route", part.stream_routes)):
        for obj in objects:
            conf = (obj.get("plugins") or {}).get(rbac.PLUGIN)
            if conf is not None:
                plugins[f"{kind} {obj['name']}"] = conf
    report = Report.of([part.report])
    return {"amesh-rbac": plugins,
            "denied": [f"{e.field} x{e.count}" for e in report.denied()]}


def test_scenarios_match_the_golden():
    got = {name: outcome(build()) for name, build in sorted(SCENARIOS.items())}
    text = to_json(got)
    if os.environ.get("REFRESH_GOLDEN"):
        GOLDEN_FILE.write_text(text)
    assert text == GOLDEN_FILE.read_text()


def test_plain_inbound_has_no_rbac_plugin_and_nothing_denied():
    assert outcome(_inbound()) == {"amesh-rbac": {}, "denied": []}
    assert outcome(SCENARIOS["no-rules"]()) == {"amesh-rbac": {}, "denied": []}


def test_deny_admin_guards_every_http_route_and_the_tcp_side():
    got = outcome(SCENARIOS["deny-admin"]())["amesh-rbac"]
    http = [v for k, v in got.items() if k.startswith("route ")]
    assert http and all(v == {"filters": [{"action": "DENY", "name": "deny", "policies": [
        {"name": "ns[default]-policy[deny-admin]-rule[0]", "permissions": [{"path": {"prefix": "/admin"}}],
         "principals": [{"any": True}]}]}]} for v in http)
    assert any(k.startswith("route inbound|80") and "catch-all" in k for k in got), "the 404 route too"
    passthrough = [v for k, v in got.items() if "inbound|passthrough" in k]
    assert len(passthrough) == 2 and passthrough[0]["filters"][0]["policies"][0]["permissions"] == [{"any": True}]


def test_peer_principals_are_matched_and_jwt_fails_closed():
    got = outcome(SCENARIOS["principals"]())
    assert not any("filter_state" in d for d in got["denied"])
    http = [v for k, v in got["amesh-rbac"].items() if k.startswith("route ")]
    principals = [p for conf in http for f in conf["filters"] for pol in f["policies"] for p in pol["principals"]]
    assert {"authenticated": {"exact": "spiffe://cluster.local/ns/default/sa/good"}} in principals
    assert {"authenticated": {"exact": "spiffe://cluster.local/ns/default/sa/bad"}} in principals
    got = outcome(SCENARIOS["jwt-and-not"]())
    assert any("metadata[request principal / JWT not supported" in d for d in got["denied"])


def test_rbac_per_route_denies_the_port():
    listener = SCENARIOS["deny-admin"]()
    for chain in listener.filter_chains:
        for f in chain.filters:
            if f.name == "envoy.filters.network.http_connection_manager":
                hcm = hcm_pb2.HttpConnectionManager()
                f.typed_config.Unpack(hcm)
                route = hcm.route_config.virtual_hosts[0].routes[0]
                route.typed_per_filter_config[rbac.HTTP_RBAC].Pack(http_rbac.RBACPerRoute())
                f.typed_config.Pack(hcm)
    got = outcome(listener)
    http = [v for k, v in got["amesh-rbac"].items() if k.startswith("route ")]
    assert http and all(v == {"deny": "RBACPerRoute not supported"} for v in http)
    assert any("RBACPerRoute" in d for d in got["denied"])


def test_audit_reports_nothing_denied():
    assert outcome(SCENARIOS["audit"]())["denied"] == []


@pytest.mark.parametrize("name", ["custom", "matcher", "unreadable"])
def test_unsupported_filters_deny_the_http_routes(name):
    got = outcome(SCENARIOS[name]())
    http = [v for k, v in got["amesh-rbac"].items() if k.startswith("route ")]
    assert http and all(set(v) == {"deny"} for v in http)
    assert got["denied"]


def test_strict_denies_the_port_and_the_passthrough_instead_of_plaintext():
    got = outcome(SCENARIOS["strict"]())
    stream = {k: v for k, v in got["amesh-rbac"].items() if k.startswith("stream_route ")}
    assert {k.split("/")[0] for k in stream} == {"stream_route inbound|80|http", "stream_route inbound|passthrough"}
    assert all(set(v) == {"deny"} for v in stream.values())
    assert any("PeerAuthentication STRICT" in d for d in got["denied"])


def test_report_effect_and_metric_labels():
    part = translate_inbound(SCENARIOS["strict"](), PODS, INTERNAL)
    report = Report.of([part.report])
    effects = {effect for (_, _, effect) in report.by_effect()}
    assert effects == {"denied", "ignored"}
    assert all(e["effect"] == "denied" for e in report.to_dict()["unsupported"] if "effect" in e)
    assert "DENIED" in report.to_text()


def test_documents_validate_with_the_plugin_schema(schema_dir):
    for name, build in SCENARIOS.items():
        part = translate_inbound(build(), PODS, INTERNAL)
        document = {"routes": list(part.routes), "stream_routes": list(part.stream_routes),
                    "upstreams": list(part.upstreams)}
        assert validate_document(document, schema_dir) == [], name


def test_schema_refuses_a_bad_configuration(schema_dir):
    schemas = Schemas(schema_dir)
    assert schemas.check_plugin(rbac.PLUGIN, {"deny": "x"}) == []
    assert schemas.check_plugin(rbac.PLUGIN, {"filters": [{"action": "ALLOW", "policies": []}]}) == []
    assert schemas.check_plugin(rbac.PLUGIN, {})  # neither deny nor filters
    assert schemas.check_plugin(rbac.PLUGIN, {"filters": [{"action": "CUSTOM", "policies": []}]})
    assert schemas.check_plugin(rbac.PLUGIN, {"deny": "x", "other": 1})


def test_golden_is_json():
    json.loads(GOLDEN_FILE.read_text())


def test_authenticated_forms_and_other_filter_states():
    from sidecar_agent.translate.report import Coverage

    where = rbac._Where(Coverage("listener", "x"), "rbac", True)
    any_peer = R.Principal()
    any_peer.authenticated.SetInParent()
    assert rbac._principal(any_peer, where) == {"authenticated": {}}
    named = R.Principal()
    named.authenticated.principal_name.safe_regex.regex = "spiffe://[^/]+/ns/default/.*"  # Istio `namespaces`
    assert rbac._principal(named, where) == {"authenticated": {"regex": "spiffe://[^/]+/ns/default/.*"}}
    other = R.Principal()
    other.filter_state.key = "io.istio.something_else"
    other.filter_state.string_match.exact = "x"
    assert "unknown" in rbac._principal(other, where)
