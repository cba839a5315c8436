"""Envoy Route actions -> APISIX plugins and upstream references (pure).

What goes where:
- `route.cluster` / `weighted_clusters` -> `upstream_id` / `traffic-split` (every weight kept, 0 too);
- timeouts, retries and the hash policy -> an `UpstreamPolicy` of the referenced upstream;
- fault -> `fault-injection`; mirror -> `proxy-mirror` to the mirror listener (below); rewrites and
  request headers -> `proxy-rewrite`;
  response headers -> `response-rewrite`; CORS -> `cors`; `redirect` -> `redirect`;
  `direct_response` -> `fault-injection` abort with the body.
Anything else that is set is reported through `Coverage`.

Mirrors: proxy-mirror's copy leaves APISIX from the UID the capture rules exempt, so a copy sent to a
service name would be neither resolved nor captured (and the subset lost). It is sent to the data
path's loopback mirror listener (`datapath.DataPathSettings.mirror_port`) under
`/__amesh_mirror/<upstream id>` + the request's path and query; the mirrored cluster becomes a
reference of the route (`Action.mirrors`), and route.py's `mirror_route` proxies that prefix to the
cluster's upstream with the prefix stripped.
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass, field
from functools import lru_cache

from sidecar_agent.apisix.datapath import DEFAULT_MIRROR_PORT, PASSTHROUGH_PLUGIN
from sidecar_agent.translate.errors import TranslationError
from sidecar_agent.translate.match import escape, header_match, string_match
from sidecar_agent.translate.report import Coverage
from sidecar_agent.translate.upstream import UpstreamPolicy, UpstreamRef
from sidecar_agent.xds import types

ENVOY_DEFAULT_ROUTE_TIMEOUT = 15.0
_DENOMINATORS = {0: 100, 1: 10_000, 2: 1_000_000}
_RETRY_ON_SUPPORTED = {"connect-failure", "reset", "reset-before-request", "refused-stream"}
_REDIRECT_CODES = {0: 301, 1: 302, 2: 303, 3: 307, 4: 308}
MIRROR_PREFIX = "/__amesh_mirror"  # path prefix of mirrored copies on the mirror listener
_FORMATTERS = {"DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT": "$remote_addr",
               "DOWNSTREAM_REMOTE_ADDRESS": "$remote_addr:$remote_port",
               "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT": "$server_addr", "HOSTNAME": "$hostname",
               "PROTOCOL": "$server_protocol"}
_FORMATTER = re.compile(r"%([A-Z_]+)(?:\(([^)]*)\))?%")

ROUTE_ACTION_HANDLED = frozenset({
    "cluster", "weighted_clusters", "timeout", "idle_timeout", "max_stream_duration", "retry_policy",
    "hash_policy", "request_mirror_policies", "prefix_rewrite", "regex_rewrite", "host_rewrite_literal",
    "upgrade_configs", "cors"})
# Module constants: the coverage plan cache is keyed by these sets (see report.Coverage.plan).
_WEIGHT_HANDLED = frozenset({"name", "weight"})
_MSD_HANDLED = frozenset({"max_stream_duration", "grpc_timeout_header_max"})
_RETRY_HANDLED = frozenset({"retry_on", "num_retries", "per_try_timeout", "retry_host_predicate",
                            "host_selection_retry_max_attempts"})
_MIRROR_HANDLED = frozenset({"cluster", "runtime_fraction", "trace_sampled", "disable_shadow_host_suffix_append"})
_FAULT_HANDLED = frozenset({"abort", "delay", "headers"})
_CORS_HANDLED = frozenset({"allow_origin_string_match", "allow_methods", "allow_headers", "expose_headers",
                           "max_age", "allow_credentials", "filter_enabled"})


@dataclass
class Action:
    refs: list[UpstreamRef] = field(default_factory=list)  # refs[0] is the route's own upstream
    plugins: dict = field(default_factory=dict)
    websocket: bool | None = None  # the route's own upgrade_configs say (None: the connection manager's)
    mirrors: list[UpstreamRef] = field(default_factory=list)  # clusters proxy-mirror copies to (also in refs)


@dataclass(frozen=True)
class Scope:
    """The enclosing virtual host and route configuration (for inherited settings), and the data
    path's mirror listener port."""

    vhost: object
    route_config: object
    mirror_port: int = DEFAULT_MIRROR_PORT


# Istio's ORIGINAL_DST clusters; APISIX has none: the amesh-passthrough plugin (sidecar_agent/lua/)
# sends to the original destination instead (its upstream stays, without nodes, for the reference).
PASSTHROUGH_CLUSTERS = frozenset({"PassthroughCluster", "InboundPassthroughCluster"})


def duration(d) -> float:
    return d.seconds + d.nanos / 1e9


def fraction(percent) -> float:
    """envoy.type.v3.FractionalPercent -> 0..1."""
    return min(1.0, percent.numerator / _DENOMINATORS.get(percent.denominator, 100))


def whole_percentage(percent, cov: Coverage, path: str) -> int:
    """APISIX fault percentages are whole numbers: round, keep > 0 as at least 1, report the change."""
    exact = fraction(percent) * 100
    value = int(math.floor(exact + 0.5))
    if exact > 0 and value == 0:
        value = 1
    if value != exact:
        cov.add(f"{path}[{exact:g}% rounded to {value}%]")
    return value


def translate_action(route, scope: Scope, cov: Coverage, path: str, uri_prefix: str | None,
                     prefix_ignores_case: bool = False) -> Action:
    """`uri_prefix`: the literal path the route matched (prefix rewrites replace it), compared
    case-insensitively when the match is (`case_sensitive: false`), as Envoy's rewrite does."""
    kind = route.WhichOneof("action")
    action = Action()
    prefix_re = None if uri_prefix is None else ("(?i)" if prefix_ignores_case else "") + f"^{escape(uri_prefix)}"
    if kind == "route":
        _forward(route.route, scope, action, cov, f"{path}.route", prefix_re)
    elif kind == "redirect":
        action.plugins["redirect"] = _redirect(route.redirect, cov, f"{path}.redirect", prefix_re)
    elif kind == "direct_response":
        dr = route.direct_response
        abort = {"http_status": dr.status, "body": _data_source(dr.body, cov, f"{path}.direct_response.body")}
        action.plugins["fault-injection"] = {"abort": abort}
    else:
        cov.add(f"{path}.{kind or 'action'}")
        action.plugins["fault-injection"] = {"abort": {"http_status": 503, "body": "unsupported route action\n"}}
    _fault(route, scope, action, cov, path)
    _headers(route, scope, action, cov, path)
    return action


# --- forwarding ------------------------------------------------------------------------------------


def _forward(ra, scope: Scope, action: Action, cov: Coverage, path: str, prefix_re: str | None) -> None:
    cov.unhandled(ra, ROUTE_ACTION_HANDLED, path)
    policy = _policy(ra, scope, cov, path)
    spec = ra.WhichOneof("cluster_specifier")
    if spec == "cluster":
        action.refs.append(UpstreamRef(sys.intern(ra.cluster), policy))  # interned: the cluster's own name str
        if ra.cluster in PASSTHROUGH_CLUSTERS:  # ORIGINAL_DST: the plugin sets the node per request
            action.plugins[PASSTHROUGH_PLUGIN] = {}
    elif spec == "weighted_clusters":
        wc = ra.weighted_clusters
        entries = []
        for cw in wc.clusters:
            cov.unhandled(cw, _WEIGHT_HANDLED, f"{path}.weighted_clusters.clusters")
            if not cw.name:
                continue  # cluster_header inside a weight: reported above
            weight = cw.weight.value if cw.HasField("weight") else 0
            entries.append((UpstreamRef(sys.intern(cw.name), policy), weight))
        if not entries or sum(w for _, w in entries) == 0:
            raise TranslationError(f"{path}.weighted_clusters: no cluster with a weight above 0")
        if len(entries) > 20:
            cov.add(f"{path}.weighted_clusters.clusters[more than 20: rest dropped]", len(entries) - 20)
            entries = entries[:20]
        action.refs.extend(ref for ref, _ in entries)
        action.plugins["traffic-split"] = {"rules": [{"weighted_upstreams": [
            {"upstream_id": ref.id, "weight": weight} for ref, weight in entries]}]}
    else:
        cov.add(f"{path}.{spec or 'cluster_specifier'}")
        action.plugins["fault-injection"] = {"abort": {"http_status": 503, "body": "unsupported cluster specifier\n"}}
    for upgrade in ra.upgrade_configs:  # the route's own setting wins over its connection manager's
        if upgrade.upgrade_type.lower() == "websocket" and not upgrade.HasField("connect_config"):
            action.websocket = not upgrade.HasField("enabled") or upgrade.enabled.value
        else:
            cov.add(f"{path}.upgrade_configs[{upgrade.upgrade_type}]")
    rewrite = _rewrite(ra, cov, path, prefix_re)
    if rewrite:
        action.plugins.setdefault("proxy-rewrite", {}).update(rewrite)
    mirror = _mirror(ra.request_mirror_policies, scope.mirror_port, cov, f"{path}.request_mirror_policies")
    if mirror:
        action.plugins["proxy-mirror"], ref = mirror
        action.mirrors.append(ref)
        if ref not in action.refs:
            action.refs.append(ref)
        if "regex_uri" in (rewrite or {}):
            # proxy-mirror (priority 1010) takes the URI before proxy-rewrite (1008) changes it
            cov.add(f"{path}.request_mirror_policies[copy keeps the path before the route's rewrite]")
    policy = _cors_of(ra, scope, cov, path)
    if policy:
        action.plugins["cors"] = policy


def _policy(ra, scope: Scope, cov: Coverage, path: str) -> UpstreamPolicy:
    timeout = duration(ra.timeout) if ra.HasField("timeout") else ENVOY_DEFAULT_ROUTE_TIMEOUT
    candidates = [timeout]
    if ra.HasField("idle_timeout"):
        candidates.append(duration(ra.idle_timeout))
    if ra.HasField("max_stream_duration"):
        msd = ra.max_stream_duration
        cov.unhandled(msd, _MSD_HANDLED, f"{path}.max_stream_duration")
        if msd.HasField("max_stream_duration"):
            candidates.append(duration(msd.max_stream_duration))
        if duration(msd.grpc_timeout_header_max) > 0:
            cov.add(f"{path}.max_stream_duration.grpc_timeout_header_max")
    retries, retry_timeout = 0, None
    retry = ra.retry_policy if ra.HasField("retry_policy") else (
        scope.vhost.retry_policy if scope.vhost.HasField("retry_policy") else None)
    if retry is not None:
        rpath = f"{path}.retry_policy" if ra.HasField("retry_policy") else "virtual_hosts.retry_policy"
        retries = _retries(retry, cov, rpath)
        if retries and retry.HasField("per_try_timeout") and duration(retry.per_try_timeout) > 0:
            candidates.append(duration(retry.per_try_timeout))
        if retries and timeout > 0:
            retry_timeout = timeout
    read = min((c for c in candidates if c > 0), default=None)
    hash_on, hash_key = _hash(ra.hash_policy, cov, f"{path}.hash_policy")
    return _shared_policy(retries, retry_timeout, read, hash_on, hash_key)


@lru_cache(maxsize=4096, typed=True)
def _shared_policy(retries: int, retry_timeout: float | None, read_timeout: float | None, hash_on: str | None,
                   hash_key: str | None) -> UpstreamPolicy:
    """One policy object per value: a mesh's routes use a handful (typed: 5 and 5.0 print differently)."""
    return UpstreamPolicy(retries=retries, retry_timeout=retry_timeout, read_timeout=read_timeout,
                          hash_on=hash_on, hash_key=hash_key)


def _retries(retry, cov: Coverage, path: str) -> int:
    cov.unhandled(retry, _RETRY_HANDLED, path)
    supported, unsupported = _retry_on(retry.retry_on)
    for token in unsupported:
        cov.add(f"{path}.retry_on[{token}]")
    for predicate in retry.retry_host_predicate:
        # APISIX never retries a node it already tried: the same as previous_hosts.
        if predicate.name != "envoy.retry_host_predicates.previous_hosts":
            cov.add(f"{path}.retry_host_predicate[{predicate.name}]")
    if not supported:
        return 0
    return retry.num_retries.value if retry.HasField("num_retries") else 1


@lru_cache(maxsize=1024)
def _retry_on(retry_on: str) -> tuple[bool, tuple[str, ...]]:
    """(any token APISIX retries on, the tokens it cannot) — istiod repeats one string on every route."""
    tokens = [t.strip() for t in retry_on.split(",") if t.strip()]
    return any(t in _RETRY_ON_SUPPORTED for t in tokens), tuple(t for t in tokens if t not in _RETRY_ON_SUPPORTED)


def _hash(policies, cov: Coverage, path: str) -> tuple[str | None, str | None]:
    chosen: tuple[str | None, str | None] = (None, None)
    for index, hp in enumerate(policies):
        kind = hp.WhichOneof("policy_specifier")
        found: tuple[str | None, str | None] = (None, None)
        if kind == "header" and re.match(r"^[a-zA-Z0-9_-]+$", hp.header.header_name):
            found = ("header", hp.header.header_name.lower())
            if hp.header.HasField("regex_rewrite"):
                cov.add(f"{path}.header.regex_rewrite")
        elif kind == "cookie" and re.match(r"^[a-zA-Z0-9_-]+$", hp.cookie.name):
            found = ("cookie", hp.cookie.name)
            if hp.cookie.HasField("ttl"):
                cov.add(f"{path}.cookie.ttl[cookie generation]")
        elif kind == "connection_properties" and hp.connection_properties.source_ip:
            found = ("vars", "remote_addr")
        elif kind == "query_parameter" and re.match(r"^[0-9a-zA-Z_-]+$", hp.query_parameter.name):
            found = ("vars", "arg_" + hp.query_parameter.name)
        if found[0] is None:
            cov.add(f"{path}.{kind}")
        elif chosen[0] is None:
            chosen = found
        else:
            cov.add(f"{path}[{index}: only the first hash policy is used]")
    return chosen


def _rewrite(ra, cov: Coverage, path: str, prefix_re: str | None) -> dict:
    out: dict = {}
    if ra.prefix_rewrite:
        if prefix_re is None:
            cov.add(f"{path}.prefix_rewrite[without a prefix or path match]")
        else:
            out["regex_uri"] = [f"{prefix_re}(.*)", _template(ra.prefix_rewrite) + "$1"]
    elif ra.HasField("regex_rewrite"):
        pattern = ra.regex_rewrite.pattern.regex
        substitution = re.sub(r"\\(\d)", r"$\1", ra.regex_rewrite.substitution)
        out["regex_uri"] = [pattern, substitution]
    if ra.host_rewrite_literal:
        if re.match(r"^[0-9a-zA-Z-.]+(:\d{1,5})?$", ra.host_rewrite_literal):
            out["host"] = ra.host_rewrite_literal
        else:
            cov.add(f"{path}.host_rewrite_literal[{ra.host_rewrite_literal}]")
    return out


def _template(text: str) -> str:
    # `$` starts a variable in APISIX templates; a literal one is not expressible, keep it readable.
    return text


def mirror_path(ref: UpstreamRef) -> str:
    """Where a copy for `ref`'s upstream is sent on the mirror listener (before the request's path)."""
    return f"{MIRROR_PREFIX}/{ref.id}"


def _mirror(policies, mirror_port: int, cov: Coverage, path: str) -> tuple[dict, UpstreamRef] | None:
    """proxy-mirror to the mirror listener and the mirrored cluster's ref (its plain upstream: Envoy
    does not retry a copy; the route's timeouts and retries stay on the route's own upstream)."""
    if not policies:
        return None
    first = policies[0]
    if len(policies) > 1:
        cov.add(f"{path}[only one mirror in APISIX]", len(policies) - 1)
    cov.unhandled(first, _MIRROR_HANDLED, path)
    ratio = fraction(first.runtime_fraction.default_value) if first.HasField("runtime_fraction") else 1.0
    if ratio <= 0:
        return None  # Envoy mirrors nothing either
    if not first.cluster:
        return None  # cluster_header (a cluster named per request): reported above
    if not first.disable_shadow_host_suffix_append and not first.host_rewrite_literal:
        # the copy's Host is the request's: nginx's mirror location sends $upstream_host, which
        # proxy-rewrite cannot suffix with a variable (its `host` is a literal, `headers` do not reach it)
        cov.add(f"{path}[Host not suffixed with -shadow]")
    if ratio < 1e-5:
        cov.add(f"{path}.runtime_fraction[below 0.001%]")
        ratio = 1e-5
    ref = UpstreamRef(sys.intern(first.cluster))
    conf: dict = {"host": f"http://127.0.0.1:{mirror_port}", "path": mirror_path(ref), "path_concat_mode": "prefix"}
    if ratio < 1:
        conf["sample_ratio"] = round(ratio, 6)
    return conf, ref


def _redirect(rd, cov: Coverage, path: str, prefix_re: str | None) -> dict:
    scheme = rd.scheme_redirect or ("https" if rd.https_redirect else "$scheme")
    authority = rd.host_redirect or "$host"
    if rd.port_redirect:
        authority += f":{rd.port_redirect}"
    elif not rd.host_redirect and scheme == "$scheme":
        authority = "$http_host"
    conf: dict = {"ret_code": _REDIRECT_CODES.get(rd.response_code, 301)}
    kind = rd.WhichOneof("path_rewrite_specifier")
    if kind == "prefix_rewrite" and prefix_re is not None:
        conf["regex_uri"] = [f"{prefix_re}(.*)", f"{scheme}://{authority}{rd.prefix_rewrite}$1"]
    elif kind == "regex_rewrite":
        sub = re.sub(r"\\(\d)", r"$\1", rd.regex_rewrite.substitution)
        conf["regex_uri"] = [rd.regex_rewrite.pattern.regex, f"{scheme}://{authority}{sub}"]
    else:
        if kind == "prefix_rewrite":
            cov.add(f"{path}.prefix_rewrite[without a prefix or path match]")
        target = rd.path_redirect if kind == "path_redirect" else "$uri"
        conf["uri"] = f"{scheme}://{authority}{target}"
        # Envoy keeps the query unless strip_query or the new path carries its own.
        conf["append_query_string"] = not rd.strip_query and "?" not in target
    return conf


def _data_source(ds, cov: Coverage, path: str) -> str:
    kind = ds.WhichOneof("specifier")
    if kind == "inline_string":
        return ds.inline_string
    if kind == "inline_bytes":
        return ds.inline_bytes.decode("utf-8", "replace")
    if kind:
        cov.add(f"{path}.{kind}")
    return ""


# --- per-filter configs: fault and CORS -----------------------------------------------------------


def _typed_config(holders, name: str, cov: Coverage, path: str):
    """The most specific per-filter config `name` among (message, path) holders, unpacked."""
    for holder, holder_path in holders:
        if name in holder.typed_per_filter_config:
            return _unpack(holder.typed_per_filter_config[name], cov, f"{holder_path}.typed_per_filter_config[{name}]")
    return None


def _unpack(any_msg, cov: Coverage, path: str):
    from google.protobuf import symbol_database

    url = any_msg.type_url
    if types.message_name(url) == "envoy.config.route.v3.FilterConfig":
        from envoy.config.route.v3 import route_components_pb2

        wrapper = route_components_pb2.FilterConfig()
        any_msg.Unpack(wrapper)
        if wrapper.disabled:
            return None
        any_msg = wrapper.config
        url = any_msg.type_url
    try:
        cls = symbol_database.Default().GetSymbol(types.message_name(url))
    except KeyError:
        cov.add(f"{path}[{types.message_name(url)}]")
        return None
    message = cls()
    any_msg.Unpack(message)
    return message


def _fault(route, scope: Scope, action: Action, cov: Coverage, path: str) -> None:
    holders = [(route, path), (scope.vhost, "virtual_hosts"), (scope.route_config, "")]
    if not any(types.FAULT_FILTER in holder.typed_per_filter_config for holder, _ in holders):
        return
    from envoy.extensions.filters.http.fault.v3 import fault_pb2  # noqa: F401  (registers the type)

    fault = _typed_config(holders, types.FAULT_FILTER, cov, path)
    if fault is None or fault.DESCRIPTOR.full_name != "envoy.extensions.filters.http.fault.v3.HTTPFault":
        return
    fpath = f"{path}.typed_per_filter_config[fault]"
    cov.unhandled(fault, _FAULT_HANDLED, fpath)
    conditions: list[tuple] = []
    for header in fault.headers:
        more = header_match(header, cov, f"{fpath}.headers")
        if more is None:
            return  # cannot tell which requests the fault applies to: reported, not applied
        conditions += more
    conf: dict = {}
    if fault.HasField("abort"):
        abort = fault.abort
        if abort.WhichOneof("error_type") == "http_status":
            conf["abort"] = {"http_status": abort.http_status, "body": "fault filter abort",
                             "percentage": whole_percentage(abort.percentage, cov, f"{fpath}.abort.percentage")}
        else:
            cov.add(f"{fpath}.abort.{abort.WhichOneof('error_type')}")
    if fault.HasField("delay"):
        delay = fault.delay
        if delay.HasField("fixed_delay"):
            conf["delay"] = {"duration": round(duration(delay.fixed_delay), 3),
                             "percentage": whole_percentage(delay.percentage, cov, f"{fpath}.delay.percentage")}
        else:
            cov.add(f"{fpath}.delay.header_delay")
    if conditions:
        for part in conf.values():
            part["vars"] = [[list(c) for c in conditions]]
    if conf:
        if "fault-injection" in action.plugins:  # a direct response already answers
            cov.add(f"{fpath}[with direct_response]")
            return
        action.plugins["fault-injection"] = conf


def _cors_of(ra, scope: Scope, cov: Coverage, path: str) -> dict | None:
    """The deprecated RouteAction/VirtualHost `cors` fields (typed_per_filter_config: route_cors)."""
    if ra.HasField("cors"):
        return cors(ra.cors, cov, f"{path}.cors")
    if scope.vhost.HasField("cors"):
        return cors(scope.vhost.cors, cov, "virtual_hosts.cors")
    return None


def cors(policy, cov: Coverage, path: str) -> dict | None:
    cov.unhandled(policy, _CORS_HANDLED, path)
    if policy.HasField("filter_enabled") and fraction(policy.filter_enabled.default_value) < 1:
        cov.add(f"{path}.filter_enabled[below 100%]")
    exact, regexes = [], []
    for matcher in policy.allow_origin_string_match:
        if matcher.WhichOneof("match_pattern") == "exact" and not matcher.ignore_case:
            exact.append(matcher.exact)
        else:
            exprs = string_match("origin", matcher, cov, f"{path}.allow_origin_string_match")
            if exprs:
                op, pattern = exprs[0][1], exprs[0][2]
                if op == "==":
                    pattern = f"^{escape(pattern)}$"
                regexes.append(("(?i)" if op == "~*" else "") + pattern)
    if not exact and not regexes:
        return None  # no origin allowed: Envoy adds no CORS headers
    conf: dict = {}
    if "*" in exact:
        conf["allow_origins"] = "*"
    elif exact:
        valid = [o for o in exact if re.match(r"^\w+://[^,]+$", o)]
        for origin in set(exact) - set(valid):
            cov.add(f"{path}.allow_origin_string_match[{origin}]")
        if valid:
            conf["allow_origins"] = ",".join(sorted(set(valid)))
    if regexes:
        conf["allow_origins_by_regex"] = sorted(set(regexes))
    if "allow_origins" not in conf:
        conf["allow_origins"] = "null"  # only the regexes allow origins
    credentials = policy.HasField("allow_credentials") and policy.allow_credentials.value
    # APISIX defaults unset lists to "*", which it refuses with credentials: use what browsers allow anyway.
    conf["allow_methods"] = policy.allow_methods or ("GET,HEAD,POST" if credentials else "*")
    conf["allow_headers"] = policy.allow_headers or (
        "Accept,Accept-Language,Content-Language,Content-Type" if credentials else "*")
    if policy.expose_headers:
        conf["expose_headers"] = policy.expose_headers
    if policy.max_age and policy.max_age.lstrip("-").isdigit():
        conf["max_age"] = int(policy.max_age)
    if credentials:
        conf["allow_credential"] = True
        if conf["allow_origins"] == "*":
            cov.add(f"{path}.allow_credentials[with origin *]")
            del conf["allow_credential"]
    return conf


def route_cors(route, scope: Scope, cov: Coverage, path: str) -> dict | None:
    """CORS from typed_per_filter_config["envoy.filters.http.cors"] (Istio >= 1.x puts it there)."""
    holders = [(route, path), (scope.vhost, "virtual_hosts"), (scope.route_config, "")]
    if not any(types.CORS_FILTER in holder.typed_per_filter_config for holder, _ in holders):
        return None
    from envoy.extensions.filters.http.cors.v3 import cors_pb2  # noqa: F401  (registers the type)

    policy = _typed_config(holders, types.CORS_FILTER, cov, path)
    if policy is None:
        return None
    return cors(policy, cov, f"{path}.typed_per_filter_config[cors]")


# --- header mutations -----------------------------------------------------------------------------


def _headers(route, scope: Scope, action: Action, cov: Coverage, path: str) -> None:
    levels = [(route, path), (scope.vhost, "virtual_hosts"), (scope.route_config, "")]
    if not any(m.request_headers_to_add or m.request_headers_to_remove or m.response_headers_to_add
               or m.response_headers_to_remove for m, _ in levels):
        return  # most routes: nothing to mutate
    request = _mutations([(m.request_headers_to_add, m.request_headers_to_remove, p) for m, p in levels], cov,
                         "request")
    if request:
        action.plugins.setdefault("proxy-rewrite", {})["headers"] = request
    response = _mutations([(m.response_headers_to_add, m.response_headers_to_remove, p) for m, p in levels], cov,
                          "response")
    if response:
        headers: dict = {}
        if response.get("set"):
            headers["set"] = response["set"]
        adds = []
        for name, value in sorted(response.get("add", {}).items()):
            for v in value if isinstance(value, list) else [value]:
                line = f"{name}: {v}"
                if re.match(r"^[^:]+:[^:]*[^/]$", line):
                    adds.append(line)
                else:
                    cov.add(f"response_headers_to_add[{name}: value not expressible in response-rewrite]")
        if adds:
            headers["add"] = adds
        if response.get("remove"):
            headers["remove"] = response["remove"]
        if headers:
            action.plugins["response-rewrite"] = {"headers": headers}


def _mutations(levels, cov: Coverage, direction: str) -> dict:
    """Envoy applies route, then virtual host, then route configuration: the least specific set wins."""
    add: dict[str, list[str]] = {}
    set_: dict[str, str] = {}
    remove: set[str] = set()
    for to_add, to_remove, path in levels:
        prefix = f"{path}." if path else ""
        for option in to_add:
            name = option.header.key.lower()
            value = _header_value(option.header, cov, f"{prefix}{direction}_headers_to_add[{name}]")
            if value is None or name.startswith(":"):
                if name.startswith(":"):
                    cov.add(f"{prefix}{direction}_headers_to_add[{name}]")
                continue
            append = option.append.value if option.HasField("append") else option.append_action == 0
            if option.append_action == 1:  # ADD_IF_ABSENT
                cov.add(f"{prefix}{direction}_headers_to_add.append_action[ADD_IF_ABSENT]")
            if append:
                add.setdefault(name, []).append(value)
            else:
                set_[name] = value
                add.pop(name, None)
        for name in to_remove:
            remove.add(name.lower())
    out: dict = {}
    if add:
        out["add"] = {k: (v[0] if len(v) == 1 else v) for k, v in sorted(add.items())}
    if set_:
        out["set"] = dict(sorted(set_.items()))
    if remove:
        out["remove"] = sorted(remove)
    return out


def _header_value(header, cov: Coverage, path: str) -> str | None:
    value = header.value or header.raw_value.decode("utf-8", "replace")
    if "$" in value:
        cov.add(f"{path}[literal $]")
        return None
    unknown = []

    def substitute(m: re.Match) -> str:
        name, arg = m.group(1), m.group(2)
        if name == "REQ" and arg and re.match(r"^[A-Za-z0-9_-]+$", arg):
            return "$http_" + arg.lower().replace("-", "_")
        if name in _FORMATTERS and arg is None:
            return _FORMATTERS[name]
        unknown.append(name)
        return m.group(0)

    value = _FORMATTER.sub(substitute, value.replace("%%", "\x00")).replace("\x00", "%")
    if unknown:
        cov.add(f"{path}[%{unknown[0]}%]")
        return None
    return value
