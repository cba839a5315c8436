"""Envoy RouteConfiguration -> APISIX routes (pure).

How Envoy's routing is kept on APISIX, which merges every route into one router and falls through:

- **Host with its port.** APISIX `hosts` compares nginx `$host`, which has no port. Each route matches
  the `Host` header itself: `["http_host", "~*", "^(?:reviews|reviews:9080|…)$"]` (escaped, anchored,
  case-insensitive like Envoy, exactly the listed forms; any `:port` is allowed only with
  `ignore_port_in_host_matching`). Port-less `hosts` are added as well when they are valid, as a
  pre-filter for `radixtree_host_uri`; the `vars` condition is the exact one. Istio's outbound virtual
  hosts (each name bare and with the port) share one regex per port instead (`port_host_regex`): with
  `hosts` it means the same, and APISIX then caches one regex, not one per service.
- **Virtual host choice.** Envoy picks one virtual host: exact domain, then the longest `*.suffix`, then
  the longest `prefix.*`, then `*`. Each virtual host's domains are grouped by that rank (a *band*);
  each group's routes live in a priority band above every less specific band.
- **First match inside a virtual host** is descending priority within the band.
- **No fall-through.** Each group ends with a lowest-in-band catch-all answering 404, so a request
  that misses all routes of its virtual host never reaches another virtual host's routes.

priority = band * STRIDE + (number of routes - index); the 404 catch-all gets band * STRIDE.

- **Listener port.** Envoy picks the route configuration by the listener the connection arrived on
  (Istio names outbound route configurations by port: `9080`, or `host:port`). APISIX sees every
  route configuration at once, so routes of a port-named configuration also require
  `["original_dst_port", "==", 9080]` — the variable the agent registers from SO_ORIGINAL_DST
  (apisix-facts.md). Without it, `*` virtual hosts of different ports would be ambiguous.
  They also require `["amesh_direction", "==", "outbound"]`: APISIX's default router
  (radixtree_host_uri) tries routes with `hosts` before all others whatever their priority, so without
  it an outbound route for the pod's own service would take inbound requests on the inbound listener
  (measured in the local mesh: inbound requests to reviews-v1 sent back out to reviews v3).
  `PORT_VAR = None` turns both off.

istiod sends one RouteConfiguration per port holding every service's virtual host, so one
VirtualService change re-sends all of them. `translate_route_config(rc, previous)` reuses the
translation of each virtual host whose bytes (and the route configuration's own fields) are unchanged
from `previous`: the same route objects, not recomputed.

Mirrors: a route's proxy-mirror sends its copy to the data path's loopback mirror listener under
`/__amesh_mirror/<upstream id>` (action.py); `mirror_route(ref)` is the internal route there, one per
mirrored upstream (the document holds one for every ref in some RouteSet's `mirrors`): it matches only
`amesh_direction == mirror` and that prefix, strips the prefix and proxies to the upstream.
"""

from __future__ import annotations

import array
import copy
import functools
import re
from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass, field, replace
from itertools import chain
from operator import attrgetter, itemgetter
from typing import Mapping

from sidecar_agent.apisix.datapath import DEFAULT_MIRROR_PORT, MIRROR_DIRECTION
from sidecar_agent.translate import ids
from sidecar_agent.translate.action import Scope, mirror_path, route_cors, translate_action
from sidecar_agent.translate.errors import TranslationError
from sidecar_agent.translate.manager import PER_ROUTE_FILTERS
from sidecar_agent.translate.match import escape, route_match
from sidecar_agent.translate.report import Coverage, Unsupported
from sidecar_agent.translate.upstream import UpstreamRef
from sidecar_agent.translate.vhost_bytes import Layout, layout, patched

STRIDE = 100_000
BAND_EXACT, BAND_SUFFIX, BAND_PREFIX, BAND_ANY = 4000, 3000, 2000, 1000
_HOST_DEF = re.compile(r"^\*$|^\*?[0-9a-zA-Z-._\[\]:]+$")
_RC_HANDLED = frozenset({"name", "virtual_hosts", "ignore_port_in_host_matching", "request_headers_to_add",
                         "request_headers_to_remove", "response_headers_to_add", "response_headers_to_remove",
                         "typed_per_filter_config", "validate_clusters", "max_direct_response_body_size_bytes"})
_VHOST_HANDLED = frozenset({"name", "domains", "routes", "retry_policy", "request_headers_to_add",
                            "request_headers_to_remove", "response_headers_to_add", "response_headers_to_remove",
                            "cors", "typed_per_filter_config"})
_ROUTE_HANDLED = frozenset({"name", "match", "route", "redirect", "direct_response", "typed_per_filter_config",
                            "request_headers_to_add", "request_headers_to_remove", "response_headers_to_add",
                            "response_headers_to_remove"})
PORT_VAR: str | None = "original_dst_port"
DIRECTION_VAR = "amesh_direction"  # registered by the hook: "inbound" on 15006 and its internal listeners
_PORT_NAME = re.compile(r"^(?:.*:)?(\d{1,5})$")
# a name or IPv4 address (letters, digits, `-`, inner dots; no trailing dot) or a bracketed IPv6 literal
_PLAIN_HOST = re.compile(r"^(?:[0-9a-z-]+(?:\.[0-9a-z-]+)*|\[[0-9a-f:.]+\])$")
NOT_FOUND = {"fault-injection": {"abort": {"http_status": 404, "body": ""}}}
# Documents are read-only, so every route holds these very objects (one fewer list or dict per route).
_URIS = ["/*"]
_NOT_FOUND_PLUGINS = {k: {"abort": dict(v["abort"])} for k, v in NOT_FOUND.items()}


@dataclass(frozen=True)
class RouteSet:
    """The APISIX routes of one RouteConfiguration and the upstreams they reference."""

    name: str
    routes: tuple[dict, ...]
    refs: frozenset[UpstreamRef]
    report: tuple[Unsupported, ...]
    # For the next translation of this route configuration: what the virtual hosts depend on outside
    # themselves, and each virtual host's translation by the digest of its bytes.
    context: bytes = b""
    parts: Mapping[bytes, "VhostPart"] = field(default_factory=dict)
    websocket: bool = False  # the connection manager's websocket upgrade, on routes that do not say
    own_websocket: frozenset[str] = frozenset()  # ids of the routes whose upgrade_configs say
    mirrors: frozenset[UpstreamRef] = frozenset()  # upstreams proxy-mirror copies to (in `refs` too)
    layout: Layout | None = None  # the virtual hosts in the bytes last translated, when those were given


@dataclass(frozen=True)
class VhostPart:
    """The translation of one virtual host (valid only with the same route configuration context)."""

    routes: tuple[dict, ...]
    refs: frozenset[UpstreamRef]
    counts: tuple[tuple[str, int], ...]  # its coverage entries (field, count)
    own_websocket: tuple[str, ...] = ()
    mirrors: frozenset[UpstreamRef] = frozenset()
    # What a later translation reusing this part checks for duplicate domains without reading the
    # protobuf again: hash() of each lowered domain, packed 8 bytes each (~130 bytes a virtual host; the
    # strings themselves would be ~1 KB: 10 MB at 10,000 services). A match, or a hash collision, is
    # settled by the exact check (`_name_duplicate_domain`).
    domain_hashes: bytes = b""


def band_of(domain: str) -> int:
    if domain == "*":
        return BAND_ANY
    if domain.startswith("*"):
        return BAND_SUFFIX + min(len(domain), 999)
    if domain.endswith("*"):
        return BAND_PREFIX + min(len(domain), 999)
    return BAND_EXACT


def _check_domain(domain: str, route_config: str, vhost: str) -> None:
    if not domain or ("*" in domain[1:-1]) or (domain != "*" and domain.startswith("*") and domain.endswith("*")):
        raise TranslationError(f"route_config {route_config!r} virtual host {vhost!r}: invalid domain {domain!r} "
                               "(a wildcard goes only at the start or end)")


def host_condition(domains: list[str], ignore_port: bool,
                   port: int | None = None) -> tuple[list[str] | None, list[tuple]]:
    """(`hosts` pre-filter or None, `vars` expressions) matching exactly `domains` the Envoy way.
    `port`: the route configuration's port, when its name gives one (Istio's outbound `9080`)."""
    if "*" in domains:
        return None, []
    hosts = sorted({_as_nginx_host(d) for d in domains})
    if port is not None and not ignore_port and _names_with_and_without(domains, hosts, port):
        return hosts, [port_host_regex(port)]
    alternatives = []
    for domain, escaped in zip(*_escaped_each(sorted(domains))):
        if domain.startswith("*"):
            alternatives.append(".+" + escaped[2:])  # escape("*") is "\\*"
        elif domain.endswith("*"):
            alternatives.append(escaped[:-2] + ".+")
        else:
            alternatives.append(escaped)
    # Envoy ignores a port from the Host's last colon with no `]` after it, digits or not (getPortStart)
    any_port = r"(?::[^:\]]*)?" if ignore_port else ""
    expr = ("http_host", "~*", f"^(?:{'|'.join(alternatives)}){any_port}$")
    if any(d.endswith("*") for d in domains) or any(h.startswith("*") and not h.startswith("*.") for h in hosts) \
            or not all(_HOST_DEF.match(h) for h in hosts):
        return None, [expr]
    return hosts, [expr]


@functools.lru_cache(maxsize=None)
def port_host_regex(port: int) -> tuple:
    """The one Host check of every Istio-shaped virtual host of `port` (its domains are exactly each name,
    bare and with `:port`). `hosts` already compares nginx's `$host` — the Host lower-cased, without its
    port and a trailing dot — exactly against the names; this adds what `$host` drops: no port or exactly
    this one, and no trailing dot (an IPv6 literal in brackets, or a name of anything but `:[]`).
    Why one per port instead of one per virtual host: APISIX compiles and caches every distinct regex
    (lua_regex_cache_max_entries 8192); with one per service, loading 2,000 services took 2.18 s instead
    of 1.15 s and 10,000 overflow the cache (docs/agent.md, "APISIX at scale")."""
    return ("http_host", "~*", rf"^(?:\[[0-9a-f:.]+\]|[^:\[\]]*[^:\[\].])(?::{port})?$")


def _names_with_and_without(domains: list[str], hosts: list[str], port: int) -> bool:
    """`domains` are exactly each of `hosts` (plain names or IP literals), bare and with `:port`."""
    if len(domains) != 2 * len(hosts) or not all(_PLAIN_HOST.match(h) for h in hosts):
        return False
    suffix = f":{port}"
    return {d.lower() for d in domains} == {*hosts, *(h + suffix for h in hosts)}


def _escaped_each(domains: list[str]) -> tuple[list[str], list[str]]:
    """(domains, each escaped): one escape() call for all when the separator occurs in none."""
    joined = "\n".join(domains)
    if joined.count("\n") == len(domains) - 1:
        escaped = escape(joined).split("\\\n")
        if len(escaped) == len(domains):
            return domains, escaped
    return domains, [escape(d) for d in domains]


def _as_nginx_host(domain: str) -> str:
    """The domain as nginx's `$host` (what `hosts` compares) spells that Host: lower-cased, no port, one
    trailing dot of the name dropped (`reviews.` arrives as `reviews`; the Host regex tells them apart)."""
    host = _strip_port(domain).lower()
    return host[:-1] if host.endswith(".") and len(host) > 1 else host


def _strip_port(domain: str) -> str:
    if domain.startswith("["):
        return domain[: domain.index("]") + 1] if "]" in domain else domain
    host, sep, port = domain.rpartition(":")
    return host if sep and port.isdigit() and ":" not in host else domain


def _report_per_filter(holder, cov: Coverage, path: str) -> None:
    for key in holder.typed_per_filter_config:
        if key not in PER_ROUTE_FILTERS:
            cov.add(f"{path}.typed_per_filter_config[{key}]" if path else f"typed_per_filter_config[{key}]")


@functools.lru_cache(maxsize=1024)  # read for every virtual host made; a mesh has a few route configurations
def route_config_port(route_config_name: str) -> int | None:
    """The port of Istio's port-named route configurations (`9080`, `host:9080`), else None."""
    parsed = _PORT_NAME.match(route_config_name)
    return int(parsed.group(1)) if parsed and 0 < int(parsed.group(1)) < 65536 else None


def port_scope(route_config_name: str) -> list[tuple]:
    """`original_dst_port` condition for Istio's port-named route configurations (`9080`, `host:9080`)."""
    port = route_config_port(route_config_name)
    if PORT_VAR is None or port is None:
        return []
    # a number: APISIX's `==` compares a number operand numerically (the hook's variable is a number);
    # a string operand would be compared as is, and 9080 ~= "9080" in Lua
    return [(DIRECTION_VAR, "==", "outbound"), (PORT_VAR, "==", port)]


def translate_route_config(rc, previous: RouteSet | None = None, websocket: bool = False,
                           mirror_port: int = DEFAULT_MIRROR_PORT, wire: bytes | None = None) -> RouteSet:
    """`rc`'s routes; virtual hosts unchanged since `previous` (the same configuration's last
    translation) are taken from it. `websocket`: the serving connection manager upgrades websockets
    (manager.Manager), so forwarding routes that do not say otherwise get `enable_websocket`.
    `mirror_port`: the data path's mirror listener (DataPathSettings.mirror_port). `wire`: the bytes
    `rc` was parsed from, when the caller has them (they spare serializing it to find the changed
    virtual hosts)."""
    name = rc.name
    cov = Coverage("route_config", name)
    scope_vars = [list(c) for c in port_scope(name)]  # one list each, for every route of `rc`
    cov.unhandled(rc, _RC_HANDLED, "")
    _report_per_filter(rc, cov, "")
    context = _context(rc) + (b"\x1fwebsocket" if websocket else b"") + (
        b"\x1fmirror%d" % mirror_port if mirror_port != DEFAULT_MIRROR_PORT else b"")
    reusable = previous.parts if previous is not None and previous.context == context else {}
    same_counts: dict[tuple, tuple] = {}  # most virtual hosts report the same fields: one tuple for all
    found_layout = _vhost_layout(rc, wire, previous.layout if previous is not None else None)
    digests = found_layout.digests
    # One route change at 1,000 virtual hosts reuses 999 parts: they are only gathered, by C-level passes
    # (map, chain, set union) rather than a Python loop over them (benchmarks/agent.py "one route change").
    found: list[VhostPart | None] = list(map(reusable.get, digests))
    vhosts = rc.virtual_hosts
    made = [i for i, part in enumerate(found) if part is None]
    for index in made:
        vhost = vhosts[index]
        vhost_name = vhost.name  # each protobuf read makes a new str: read once
        domains = tuple(vhost.domains)
        if not domains:
            raise TranslationError(f"route_config {name!r}: virtual host {vhost_name!r} has no domains")
        for at, domain in enumerate(domains):
            try:
                _check_domain(domain, name, vhost_name)
            except TranslationError:  # a duplicate before this domain is named first, as ever
                _name_duplicate_domain(rc, (index, at))
                raise
        try:
            found[index] = _vhost_part(rc, vhost, vhost_name, domains, scope_vars, same_counts, websocket,
                                       mirror_port, _domain_hashes(domains))
        except TranslationError:  # a duplicate domain up to this virtual host is named first, as ever
            _name_duplicate_domain(rc, (index + 1, 0))
            raise
    plist: list[VhostPart] = found  # type: ignore[assignment]  # every part found or made
    parts = dict(zip(digests, plist))
    new_parts = [plist[i] for i in made]
    # A few virtual hosts changed since `previous` (which passed the checks): only theirs are looked at.
    gone = [reusable[d] for d in reusable.keys() - parts.keys()] if reusable else []
    few = bool(reusable) and len(made) <= _FEW_CHANGED and len(gone) <= _FEW_CHANGED
    if _duplicate_domains(plist, new_parts if few else None):
        _name_duplicate_domain(rc)  # raises, unless it was a hash collision
    # Coverage: most virtual hosts share one counts tuple; each distinct tuple is added once, multiplied.
    shared = {id(counts): counts for counts in map(_COUNTS, plist)}
    for ident, times in Counter(map(id, map(_COUNTS, plist))).items():
        cov.add_counts((f, n * times) for f, n in shared[ident])
    routes = _patched_routes(previous.routes, gone, new_parts) if few else None
    if routes is None:
        routes = list(chain.from_iterable(map(_ROUTES, plist)))
        routes.sort(key=_ROUTE_ID)
    refs = frozenset().union(*map(_REFS, plist))
    own = frozenset(chain.from_iterable(map(_OWN_WEBSOCKET, plist)))
    mirrors = frozenset().union(*map(_MIRRORS, plist))
    return RouteSet(name, tuple(routes), refs, cov.entries(), context, parts, websocket, own, mirrors,
                    found_layout if found_layout.data else None)


# Up to this many virtual hosts made anew (and as many gone), the previous translation is patched (sorted routes, domain
# check) instead of redone over all of them: 1,000 virtual hosts, one changed: ~1 ms less.
_FEW_CHANGED = 8


def _duplicate_domains(plist: list[VhostPart], new_parts: list[VhostPart] | None) -> bool:
    """Might two of the parts' domains be the same (by their stored hashes; the exact check decides)?
    `new_parts`: only these can hold a duplicate (the others passed before): each of their hashes is
    counted in all the parts' hashes (C-level byte searches) instead of a set of every domain."""
    joined = b"".join(map(_DOMAIN_HASHES, plist))
    if new_parts is None:
        keys = memoryview(joined).cast("q")
        return len(set(keys)) != len(keys)
    # A hash found more than once (a misaligned match too: rare, and settled by the exact check).
    return any(joined.count(part.domain_hashes[at:at + 8]) > 1
               for part in new_parts for at in range(0, len(part.domain_hashes), 8))


def _patched_routes(previous: tuple[dict, ...], removed: list[VhostPart],
                    added: list[VhostPart]) -> list[dict] | None:
    """`previous` (sorted by id) without the routes of `removed` and with those of `added`, each put in its
    place by bisection; None when an id is not unique (the caller sorts everything, as stable as ever)."""
    routes = list(previous)
    for part in removed:
        for route in part.routes:
            at = bisect_left(routes, route["id"], key=_ROUTE_ID)
            if at >= len(routes) or routes[at] is not route:
                return None
            del routes[at]
    for part in added:
        for route in part.routes:
            at = bisect_left(routes, route["id"], key=_ROUTE_ID)
            if at < len(routes) and routes[at]["id"] == route["id"]:
                return None
            routes.insert(at, route)
    return routes


def with_websocket(rs: RouteSet, websocket: bool) -> RouteSet:
    """`rs` as if translated under a connection manager with (or without) websocket upgrades: a
    listener changed, the RouteConfiguration did not (the next translation of it starts afresh)."""
    if rs.websocket == websocket:
        return rs
    routes = []
    for route in rs.routes:
        if "upstream_id" in route and route["id"] not in rs.own_websocket:
            route = {k: v for k, v in route.items() if k != "enable_websocket"}
            if websocket:
                route["enable_websocket"] = True
        routes.append(route)
    return replace(rs, routes=tuple(routes), context=b"", parts={}, websocket=websocket)


_ROUTES, _REFS, _COUNTS = attrgetter("routes"), attrgetter("refs"), attrgetter("counts")
_MIRRORS, _OWN_WEBSOCKET = attrgetter("mirrors"), attrgetter("own_websocket")
_DOMAIN_HASHES = attrgetter("domain_hashes")
_ROUTE_ID = itemgetter("id")


# Bytes of a route configuration kept for the next comparison, at most (about 3,000 of Istio's outbound
# virtual hosts). Beyond, a change walks every virtual host's bytes (~25 ms at 10,000) rather than every
# sidecar holding the bytes (13 MB at 10,000 services, against the agent's 300 MB goal there).
KEEP_BYTES = 4 * 1024 * 1024


def _vhost_layout(rc, wire: bytes | None, before: Layout | None) -> Layout:
    """Where `rc`'s virtual hosts lie in its bytes, with a digest of each: what finds those unchanged
    since the last translation (vhost_bytes.py). `wire`, the bytes `rc` was parsed from, are compared
    with the last ones kept (`before`) and kept in turn; without them `rc` is serialized (one C call,
    though several times the parse on a freshly parsed message) and nothing is kept."""
    if wire is not None:
        keep = len(wire) <= KEEP_BYTES
        found = patched(before, wire) if keep and before is not None and before.data else None
        if found is None:
            found = layout(wire, keep)
        if found is not None and len(found.digests) == len(rc.virtual_hosts):
            return found
    found = layout(rc.SerializeToString(deterministic=True), keep=False)
    if found is None:  # groups: no RouteConfiguration field is one, and upb writes none
        raise TranslationError(f"route_config {rc.name!r}: unexpected wire type")
    return found


def _context(rc) -> bytes:
    """Everything of `rc` but its virtual hosts, as bytes: what a virtual host's translation reads
    besides the virtual host itself (name, port matching, headers, per-filter configs)."""
    out = []
    for descriptor, value in rc.ListFields():
        if descriptor.name == "virtual_hosts":
            continue
        if descriptor.message_type is not None and descriptor.message_type.GetOptions().map_entry:
            items = [(k, v.SerializeToString(deterministic=True) if hasattr(v, "SerializeToString") else v)
                     for k, v in sorted(value.items())]
        elif descriptor.is_repeated:
            items = [v.SerializeToString(deterministic=True) if hasattr(v, "SerializeToString") else v for v in value]
        else:
            items = value.SerializeToString(deterministic=True) if hasattr(value, "SerializeToString") else value
        out.append(repr((descriptor.name, items)))
    return "\x1f".join(out).encode()


def _domain_hashes(domains: tuple[str, ...]) -> bytes:
    return array.array("q", [hash(d.lower()) for d in domains]).tobytes()


def _name_duplicate_domain(rc, before: tuple[int, int] | None = None) -> None:
    """Raise the error naming the first domain two virtual hosts (or one, twice) list; return when
    there is none (the hashes only collided). `before`: (virtual host, domain) index to stop at."""
    name = rc.name
    seen: dict[str, str] = {}
    for index, vhost in enumerate(rc.virtual_hosts):
        vhost_name = vhost.name
        for at, domain in enumerate(vhost.domains):
            if before is not None and (index, at) >= before:
                return
            key = domain.lower()
            if key in seen:
                raise TranslationError(f"route_config {name!r}: domain {domain!r} is in virtual hosts "
                                       f"{seen[key]!r} and {vhost_name!r}")
            seen[key] = vhost_name


def _vhost_part(rc, vhost, vhost_name: str, domains: tuple[str, ...], scope_vars: list[list],
                same_counts: dict[tuple, tuple], websocket: bool, mirror_port: int,
                domain_hashes: bytes = b"") -> VhostPart:
    """`scope_vars`: the route configuration's conditions, as the lists its routes share."""
    name = rc.name
    cov = Coverage("route_config", name)
    cov.unhandled(vhost, _VHOST_HANDLED, "virtual_hosts")
    _report_per_filter(vhost, cov, "virtual_hosts")
    groups: dict[int, list[str]] = {}
    for domain in domains:
        groups.setdefault(band_of(domain), []).append(domain)
    translated = _vhost_routes(rc, vhost, cov, mirror_port)
    count = len(translated)
    if count >= STRIDE:
        raise TranslationError(f"route_config {name!r}: virtual host {vhost_name!r} has {count} routes "
                               f"(at most {STRIDE - 1} fit a priority band)")
    routes: list[dict] = []
    refs: set[UpstreamRef] = set()
    mirrors: set[UpstreamRef] = set()
    own: list[str] = []
    for band, band_domains in sorted(groups.items(), reverse=True):
        hosts, host_vars = host_condition(band_domains, rc.ignore_port_in_host_matching, route_config_port(name))
        # The band's `hosts` list and `vars` conditions are shared by all its routes (read-only); a route
        # without conditions of its own shares the whole `vars` list with the catch-all.
        band_vars = scope_vars + [list(c) for c in host_vars]
        group = f"band{band}"
        for index, (route_name, route_vars, action) in translated:
            obj = _route_object(ids.route_id(name, vhost_name, group, index, route_name),
                                f"{name}/{vhost_name}/{route_name}", band * STRIDE + count - index,
                                hosts, band_vars + [list(c) for c in route_vars] if route_vars else band_vars)
            if action.refs:
                obj["upstream_id"] = action.refs[0].id
                refs.update(action.refs)
            mirrors.update(action.mirrors)
            if action.plugins:
                # Several bands share one Action: give each route its own copy.
                obj["plugins"] = copy.deepcopy(action.plugins) if len(groups) > 1 else action.plugins
            if action.websocket is not None:
                own.append(obj["id"])
            if action.websocket or (action.websocket is None and websocket and action.refs):
                obj["enable_websocket"] = True
            routes.append(obj)
        catch_all = _route_object(ids.route_id(name, vhost_name, group, -1, "404"),
                                  f"{name}/{vhost_name}/404", band * STRIDE, hosts, band_vars)
        catch_all["plugins"] = _NOT_FOUND_PLUGINS
        routes.append(catch_all)
    counts = cov.counts()
    return VhostPart(tuple(routes), frozenset(refs), same_counts.setdefault(counts, counts), tuple(own),
                     frozenset(mirrors), domain_hashes)


def _vhost_routes(rc, vhost, cov: Coverage, mirror_port: int) -> list[tuple[int, tuple[str, list[tuple], object]]]:
    """(Envoy index, (route name, match vars, Action)) for the routes APISIX can express."""
    scope = Scope(vhost, rc, mirror_port)
    out = []
    path = "virtual_hosts.routes"
    for index, route in enumerate(vhost.routes):
        cov.unhandled(route, _ROUTE_HANDLED, path)
        _report_per_filter(route, cov, path)
        match = route_match(route.match, cov, f"{path}.match")
        if match is None:
            cov.add(f"{path}[dropped: match not expressible]")
            continue
        envoy_match = route.match
        action = translate_action(route, scope, cov, path, _uri_prefix(envoy_match),
                                  envoy_match.HasField("case_sensitive") and not envoy_match.case_sensitive.value)
        if "cors" not in action.plugins:
            policy = route_cors(route, scope, cov, path)
            if policy:
                action.plugins["cors"] = policy
        out.append((index, (route.name or f"route{index}", list(match.vars), action)))
    return out


def _uri_prefix(match) -> str | None:
    kind = match.WhichOneof("path_specifier")
    return {"prefix": match.prefix, "path": match.path,
            "path_separated_prefix": match.path_separated_prefix}.get(kind)


def _route_object(route_id: str, name: str, priority: int, hosts: list[str] | None, conditions: list[list]) -> dict:
    """`hosts` and `conditions` are held as given: shared with the other routes of the band."""
    obj: dict = {"id": route_id, "name": name[:256], "priority": priority, "uris": _URIS}
    if hosts:
        obj["hosts"] = hosts
    if conditions:
        obj["vars"] = conditions
    return obj


# --- the mirror listener's routes -----------------------------------------------------------------

MIRROR_VARS = [[DIRECTION_VAR, "==", MIRROR_DIRECTION]]


def mirror_route(ref: UpstreamRef) -> dict:
    """The internal route taking proxy-mirror's copies for `ref`'s upstream on the mirror listener:
    `/__amesh_mirror/<id>/<path>?<query>` -> `<path>?<query>` to the upstream (proxy-rewrite keeps
    the query). No `original_dst_port`: the mirror listener stands for no port."""
    prefix = mirror_path(ref)
    return {"id": ids.mirror_route_id(ref.cluster, ref.id), "name": f"mirror/{ref.cluster}"[:256], "priority": 0,
            "uris": [f"{prefix}/*"], "vars": MIRROR_VARS, "upstream_id": ref.id,
            "plugins": {"proxy-rewrite": {"regex_uri": [f"^{escape(prefix)}(/.*)", "$1"]}}}


def mirror_catch_all() -> dict:
    """With any mirror route: what else reaches the mirror listener answers 404 (instead of falling
    to the virtualOutbound fallback route, which matches on every listener at priority 0)."""
    return {"id": ids.stable_id("r", "mirror", "404"), "name": "mirror/404", "priority": 1, "uris": _URIS,
            "vars": MIRROR_VARS, "plugins": _NOT_FOUND_PLUGINS}
