r"""Envoy RBAC filters (AuthorizationPolicy) and an inbound chain's security position -> the `amesh-rbac`
plugin's configuration (pure). The plugin (sidecar_agent/lua/apisix/plugins/amesh-rbac.lua) enforces it.

istiod puts `envoy.filters.http.rbac` filters before the router of virtualInbound's HTTP chains and
`envoy.filters.network.rbac` filters before the tcp_proxy of its TCP chains (CUSTOM as an ext_authz
filter, then DENY, ALLOW, AUDIT=LOG). Envoy runs them in order; so does the plugin:

| Envoy RBAC filter                 | `amesh-rbac` `filters[]` entry                                         |
|-----------------------------------|-------------------------------------------------------------------------|
| `rules.action` ALLOW / DENY / LOG | `action`; ALLOW: denied unless a policy matches; DENY: denied if one does; LOG: logged only |
| `rules` absent                    | nothing (Envoy enforces nothing)                                        |
| `rules.policies` (by name, sorted)| `policies[]`: `permissions` (any) and `principals` (any) as match trees |
| `shadow_rules` (dry run)          | nothing (statistics only), reported as ignored                          |
| `matcher`, `condition` (CEL)      | fail closed: the chain is denied, reported (effect denied)              |

A match tree node is one of `{"any": true}`, `{"and": [..]}`, `{"or": [..]}`, `{"not": node}`,
`{"header": name, "string": SM | "present": bool, "invert": bool, "missing_empty": bool}`,
`{"path": SM}`, `{"port": n}`, `{"port_range": [start, end)}`, `{"source_ip": cidr}` (the client's
connection; behind the inbound front the address it handed over, lua/amesh/inbound_client.lua),
`{"remote_ip": cidr}` (HTTP: the last X-Forwarded-For address, else the client's), `{"destination_ip": cidr}`,
`{"authenticated": SM | {}}` (the mTLS peer's SPIFFE id: its verified client certificate's URI SAN; `{}` any
authenticated peer; a plaintext connection has none), or `{"unknown": why}`; SM is `{"exact"|"prefix"|"suffix"|"contains"|
"regex": s, "ignore_case": bool}`. The plugin evaluates in three-valued logic: an `unknown` node (a
matcher it cannot evaluate) is neither true nor false, and a policy whose result is unknown counts as
matching in DENY (it might match: denied) and as not matching in ALLOW (it cannot allow). So the sidecar
never allows what Envoy would deny. Unknown today: request principals / JWT
claims (`metadata istio_authn`), the destination address on HTTP chains, SNI, and every other matcher; at
run time, a client address the front could not hand over.
Every unknown node in an enforcing filter is reported with effect "denied".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from envoy.config.rbac.v3 import rbac_pb2 as rbac_config_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac_pb2

from sidecar_agent.apisix import datapath
from sidecar_agent.translate.report import Coverage
from sidecar_agent.xds import types

PLUGIN = datapath.RBAC_PLUGIN  # lua/apisix/plugins/amesh-rbac.lua (HTTP rewrite phase, stream preread)
HTTP_RBAC = "envoy.filters.http.rbac"
NETWORK_RBAC = "envoy.filters.network.rbac"
_HTTP_RBAC_TYPE = http_rbac_pb2.RBAC.DESCRIPTOR.full_name
_NETWORK_RBAC_TYPE = network_rbac_pb2.RBAC.DESCRIPTOR.full_name
_ACTIONS = {rbac_config_pb2.RBAC.ALLOW: "ALLOW", rbac_config_pb2.RBAC.DENY: "DENY", rbac_config_pb2.RBAC.LOG: "LOG"}
# Filters before the router / tcp_proxy that decide nothing about access (telemetry, peer metadata,
# Istio's authn filter that only records the peer identity): skipped, reported as ignored by the caller.
HARMLESS_HTTP = frozenset({"istio.metadata_exchange", "istio.stats", "istio_authn", "istio.alpn",
                           "envoy.filters.http.grpc_stats", "envoy.filters.http.fault", "envoy.filters.http.cors"})
HARMLESS_NETWORK = frozenset({"istio.metadata_exchange", "istio.stats", "istio_authn"})
_EXT_AUTHZ = ("envoy.filters.http.ext_authz", "envoy.ext_authz", "envoy.filters.network.ext_authz")
_ROUTER = "envoy.filters.http.router"
PATH = "filter_chains.filters"  # reported paths below it


@dataclass
class Security:
    """What one inbound chain's filters require: the plugin's `filters`, or a reason to deny all."""

    filters: list[dict] = field(default_factory=list)
    deny: str | None = None

    def refuse(self, why: str) -> None:
        self.deny = self.deny or why

    def plugin(self) -> dict | None:
        """The `amesh-rbac` configuration, or None when nothing is enforced."""
        if self.deny:
            return {"deny": self.deny}
        if self.filters:
            return {"filters": [dict(f) for f in self.filters]}
        return None


def mtls_only(chain) -> bool:
    """A chain that terminates TLS (Istio's mTLS chains; `require_client_certificate` with STRICT): the
    sidecar serves no TLS on inbound yet, so such a chain cannot be served as Envoy would."""
    return chain.HasField("transport_socket") and chain.transport_socket.name != "envoy.transport_sockets.raw_buffer"


def network_security(chain, cov: Coverage, http: bool) -> Security:
    """The chain's network filters before its connection manager / tcp_proxy. `http`: the chain is an
    HTTP chain (its network RBAC still applies to the connection)."""
    out = Security()
    for network_filter in chain.filters:
        typed = network_filter.typed_config
        url = types.message_name(typed.type_url)
        name = network_filter.name or url
        if name in (types.HTTP_CONNECTION_MANAGER, types.TCP_PROXY) or url.endswith(
                (".HttpConnectionManager", ".TcpProxy")):
            break
        if name == NETWORK_RBAC or url == _NETWORK_RBAC_TYPE:
            config = network_rbac_pb2.RBAC()
            if not typed.Unpack(config):  # e.g. a TypedStruct: unreadable rules must not mean "no rules"
                cov.deny(f"{PATH}[{name}: config {url} unreadable: denied]")
                out.refuse(f"{name}: config {url} unreadable")
                continue
            _add_filter(out, config, cov, f"{PATH}.network_rbac", http=False, name=config.stat_prefix)
        elif name in HARMLESS_NETWORK:
            cov.add(f"{PATH}[{name}]")
        else:
            why = "CUSTOM action (ext_authz) not supported" if name in _EXT_AUTHZ else "unknown filter before the proxy"
            cov.deny(f"{PATH}[{name}: {why}: denied]")
            out.refuse(f"{name}: {why}")
    return out


def http_security(hcm, cov: Coverage, path: str) -> Security:
    """The connection manager's HTTP filters before the router."""
    out = Security()
    for http_filter in hcm.http_filters:
        name = http_filter.name
        if name == _ROUTER:
            break
        url = types.message_name(http_filter.typed_config.type_url)
        if name == HTTP_RBAC or url == _HTTP_RBAC_TYPE:
            config = http_rbac_pb2.RBAC()
            if not http_filter.typed_config.Unpack(config):
                cov.deny(f"{path}.http_filters[{name}: config {url} unreadable: denied]")
                out.refuse(f"{name}: config {url} unreadable")
                continue
            _add_filter(out, config, cov, f"{path}.http_filters.rbac", http=True, name=config.rules_stat_prefix)
        elif name in HARMLESS_HTTP:
            if name not in ("envoy.filters.http.fault", "envoy.filters.http.cors"):
                cov.add(f"{path}.http_filters[{name}]")
        else:
            why = "CUSTOM action (ext_authz) not supported" if name in _EXT_AUTHZ else "unknown filter before the router"
            cov.deny(f"{path}.http_filters[{name}: {why}: denied]")
            out.refuse(f"{name}: {why}")
    return out


def _add_filter(out: Security, config, cov: Coverage, path: str, http: bool, name: str) -> None:
    if config.HasField("shadow_rules") or config.HasField("shadow_matcher"):
        cov.add(f"{path}.shadow_rules[dry run: not evaluated]")
    if config.HasField("matcher"):
        cov.deny(f"{path}.matcher[not supported: denied]")
        out.refuse(f"RBAC matcher not supported ({name or 'rbac'})")
        return
    if not config.HasField("rules"):
        return  # Envoy: no rules, nothing enforced
    rules = config.rules
    action = _ACTIONS.get(rules.action)
    if action is None:
        cov.deny(f"{path}.rules.action[{rules.action}: denied]")
        out.refuse(f"RBAC action {rules.action} not supported")
        return
    enforcing = action != "LOG"
    where = _Where(cov if enforcing else None, f"{path}.rules.policies", http)
    policies = []
    for policy_name in sorted(rules.policies):
        policy = rules.policies[policy_name]
        entry = {"name": policy_name,
                 "permissions": [_permission(p, where) for p in policy.permissions],
                 "principals": [_principal(p, where) for p in policy.principals]}
        if policy.HasField("condition") or policy.HasField("checked_condition"):
            where.unknown("condition[CEL not supported")
            entry["permissions"] = [{"and": [{"or": entry["permissions"]}, {"unknown": "CEL condition"}]}]
        policies.append(entry)
    out.filters.append({"action": action, "name": name or action.lower(), "policies": policies})


@dataclass
class _Where:
    cov: Coverage | None  # None: a LOG filter (nothing it contains can deny)
    path: str
    http: bool

    def unknown(self, what: str) -> dict:
        """`what`: "<field>[<reason>" (the bracket closed here)."""
        if self.cov is not None:
            self.cov.deny(f"{self.path}.{what}: fail closed]")
        return {"unknown": what.replace("[", ": ", 1)}


def _string(matcher, where: _Where, what: str) -> dict | None:
    kind = matcher.WhichOneof("match_pattern")
    if kind in ("exact", "prefix", "suffix", "contains"):
        out = {kind: getattr(matcher, kind)}
    elif kind == "safe_regex":
        out = {"regex": matcher.safe_regex.regex}
    else:
        return None
    if matcher.ignore_case:
        out["ignore_case"] = True
    return out


def _header(header, where: _Where, what: str) -> dict:
    name = header.name.lower()
    if not where.http:
        return where.unknown(f"{what}.header[{name}: no headers on TCP")
    out: dict = {"header": name}
    kind = header.WhichOneof("header_match_specifier")
    if kind == "present_match":
        out["present"] = header.present_match
    elif kind == "string_match":
        string = _string(header.string_match, where, what)
        if string is None:
            return where.unknown(f"{what}.header.string_match[{header.string_match.WhichOneof('match_pattern')}")
        out["string"] = string
    elif kind in ("exact_match", "prefix_match", "suffix_match", "contains_match"):
        out["string"] = {kind.removesuffix("_match"): getattr(header, kind)}
    elif kind == "safe_regex_match":
        out["string"] = {"regex": header.safe_regex_match.regex}
    elif kind is None:
        out["present"] = True  # Envoy: no specifier matches a present header
    else:
        return where.unknown(f"{what}.header[{kind}")
    if header.invert_match:
        out["invert"] = True
    if header.treat_missing_header_as_empty:
        out["missing_empty"] = True
    return out


def _path(path_matcher, where: _Where, what: str) -> dict:
    if not where.http:
        return where.unknown(f"{what}.url_path[no path on TCP")
    if path_matcher.WhichOneof("rule") != "path":
        return where.unknown(f"{what}.url_path[{path_matcher.WhichOneof('rule')}")
    string = _string(path_matcher.path, where, what)
    if string is None:
        return where.unknown(f"{what}.url_path.path[{path_matcher.path.WhichOneof('match_pattern')}")
    return {"path": string}


def _cidr(cidr) -> str:
    return f"{cidr.address_prefix}/{cidr.prefix_len.value if cidr.HasField('prefix_len') else _full(cidr.address_prefix)}"


def _full(address: str) -> int:
    return 128 if ":" in address else 32


def _permission(permission, where: _Where) -> dict:
    kind = permission.WhichOneof("rule")
    what = "permissions"
    if kind == "any":
        return {"any": True}
    if kind == "and_rules":
        return {"and": [_permission(p, where) for p in permission.and_rules.rules]}
    if kind == "or_rules":
        return {"or": [_permission(p, where) for p in permission.or_rules.rules]}
    if kind == "not_rule":
        return {"not": _permission(permission.not_rule, where)}
    if kind == "header":
        return _header(permission.header, where, what)
    if kind == "url_path":
        return _path(permission.url_path, where, what)
    if kind == "destination_port":
        return {"port": permission.destination_port}
    if kind == "destination_port_range":
        return {"port_range": [permission.destination_port_range.start, permission.destination_port_range.end]}
    if kind == "destination_ip":
        if where.http:  # the internal HTTP listener knows the original port, not the address
            return where.unknown(f"{what}.destination_ip[not known on HTTP chains")
        return {"destination_ip": _cidr(permission.destination_ip)}
    return where.unknown(f"{what}.{kind}[not supported")


PEER_PRINCIPAL = "io.istio.peer_principal"


def _principal(principal, where: _Where) -> dict:
    kind = principal.WhichOneof("identifier")
    what = "principals"
    if kind == "any":
        return {"any": True}
    if kind == "and_ids":
        return {"and": [_principal(p, where) for p in principal.and_ids.ids]}
    if kind == "or_ids":
        return {"or": [_principal(p, where) for p in principal.or_ids.ids]}
    if kind == "not_id":
        return {"not": _principal(principal.not_id, where)}
    if kind in ("source_ip", "direct_remote_ip"):  # the client's connection (the hook hands it over the hop)
        return {"source_ip": _cidr(getattr(principal, kind))}
    if kind == "remote_ip":  # HTTP: the last X-Forwarded-For address, else the connection's (as Envoy's sidecar)
        return {"remote_ip" if where.http else "source_ip": _cidr(principal.remote_ip)}
    if kind == "header":
        return _header(principal.header, where, what)
    if kind == "url_path":
        return _path(principal.url_path, where, what)
    if kind == "authenticated":  # the verified client certificate's URI SAN (or any, without a name)
        if not principal.authenticated.HasField("principal_name"):
            return {"authenticated": {}}
        sm = _string(principal.authenticated.principal_name, where, what)
        return {"authenticated": sm} if sm is not None else where.unknown(
            f"{what}.authenticated.principal_name[matcher not supported")
    if kind == "filter_state":  # Istio ≥ 1.22 names the peer by the filter state its mTLS sets
        state = principal.filter_state
        if state.key != PEER_PRINCIPAL or state.WhichOneof("matcher") != "string_match":
            return where.unknown(f"{what}.filter_state[{state.key}: only {PEER_PRINCIPAL} strings")
        sm = _string(state.string_match, where, what)
        return {"authenticated": sm} if sm is not None else where.unknown(
            f"{what}.filter_state.string_match[matcher not supported")
    if kind == "metadata":
        return where.unknown(f"{what}.metadata[request principal / JWT not supported")
    return where.unknown(f"{what}.{kind}[not supported")


def per_route(route_config, security: Security, cov: Coverage) -> Security:
    """An RBACPerRoute (`typed_per_filter_config` of the RBAC filter on a virtual host or route) replaces
    or disables the listener's rules for those routes; not translated, so the port's HTTP routes are
    denied (Istio sends none on inbound)."""
    found = sum(HTTP_RBAC in vh.typed_per_filter_config for vh in route_config.virtual_hosts) + sum(
        HTTP_RBAC in r.typed_per_filter_config for vh in route_config.virtual_hosts for r in vh.routes)
    if not found:
        return security
    cov.deny(f"route_config.virtual_hosts.typed_per_filter_config[{HTTP_RBAC}: RBACPerRoute not supported: denied]",
             found)
    out = Security()
    out.refuse("RBACPerRoute not supported")
    return out


def merged(parts: Iterable[Security]) -> Security:
    """Network filters, then HTTP ones (the order Envoy runs them in); the first refusal wins."""
    out = Security()
    for part in parts:
        out.filters += part.filters
        if part.deny:
            out.refuse(part.deny)
    return out
