"""APISIX's HTTP routing, applied to a sample request, so tests can assert *which route wins*.

What it models (APISIX 3.x, ../shared/docs/apisix-facts.md, lua-resty-radixtree and lua-resty-expr):

- Router ``radixtree_host_uri`` (APISIX's default): routes with ``hosts`` are tried first, grouped by
  host — the exact host, then ``*.`` wildcards from the longest suffix to the shortest — and only if
  none of them matches, the routes without hosts. ``radixtree_uri`` (one tree, hosts checked per
  route) is available too.
- Host comparison uses nginx ``$host``: the Host header lower-cased and **without its port**.
- Inside one tree, the URI decides first: an exact ``uri`` beats any prefix (``/p*``), a longer prefix
  beats a shorter one; only among routes under the *same* uri does ``priority`` (higher first) decide.
  Two matching routes with the same uri and priority have no defined order: when they would act
  differently (upstream, plugins…) that raises :class:`AmbiguousMatch` instead of guessing.
- Per route: ``methods``, ``remote_addrs``, ``vars`` (lua-resty-expr: ``==``, ``~=``, ``>``, ``<``,
  ``>=``, ``<=``, ``~~``, ``~*``, ``in``, ``has``, ``ipmatch``, ``!`` negation, nested
  ``AND``/``OR``/``!AND``/``!OR``), ``status: 0`` disables a route.
- Variables as APISIX's ctx resolves them: ``uri`` (decoded, normalised path), ``request_uri``, ``args``,
  ``host``, ``http_<header>``, ``arg_<name>`` (decoded, first value), ``cookie_<name>``,
  ``request_method``, ``remote_addr``, ``server_port``, ``scheme``, plus any registered extra variable
  (e.g. ``original_dst_port`` from the sidecar's Lua hook).

Then helpers to read what the winning route does: its upstream, the ``traffic-split`` arm for the
request, the ``fault-injection`` that applies, other plugins.

Regexes run on Python's ``re``, which agrees with PCRE on the patterns the translator emits (escaped
literals, anchors, classes); it is not a PCRE implementation.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, unquote_plus

__all__ = [
    "AmbiguousMatch", "ExprError", "Request", "Router", "eval_vars", "fault_for", "route_upstream",
    "traffic_split_arm", "upstream_by_id", "upstream_path",
]


class ExprError(ValueError):
    """A ``vars`` expression APISIX would refuse to load (so the route would be rejected)."""


class AmbiguousMatch(AssertionError):
    """Two routes match with the same uri and priority: APISIX may pick either."""


# --------------------------------------------------------------------------------------------------
# The request and its nginx/APISIX variables.


def _normalise_uri(path: str) -> str:
    """nginx $uri: percent-decoded, ``//`` merged, ``.``/``..`` segments resolved."""
    decoded = unquote(path)
    decoded = re.sub("/{2,}", "/", decoded)
    out: list[str] = []
    for seg in decoded.split("/")[1:]:
        if seg == ".":
            continue
        if seg == "..":
            if out:
                out.pop()
            continue
        out.append(seg)
    trailing = decoded.endswith(("/.", "/..")) and out
    return "/" + "/".join(out) + ("/" if trailing else "")


def _parse_args(query: str) -> dict[str, Any]:
    """ngx.req.get_uri_args: decoded; a repeated name keeps every value; ``?flag`` is ``True``."""
    args: dict[str, Any] = {}
    for part in query.split("&"):
        if not part:
            continue
        if "=" in part:
            k, v = part.split("=", 1)
            value: Any = unquote_plus(v)
        else:
            k, value = part, True
        k = unquote_plus(k)
        if k in args:
            prev = args[k]
            args[k] = (prev if isinstance(prev, list) else [prev]) + [value]
        else:
            args[k] = value
    return args


@dataclass(frozen=True)
class Request:
    """One HTTP request as the outbound listener receives it.

    ``host`` is the Host header exactly as sent (``reviews:9080``); ``path`` may carry ``?query``.
    """

    host: str = ""
    path: str = "/"
    method: str = "GET"
    headers: Mapping[str, str] = field(default_factory=dict)
    cookies: Mapping[str, str] = field(default_factory=dict)
    remote_addr: str = "10.244.0.10"
    server_port: int = 15001
    scheme: str = "http"
    extra_vars: Mapping[str, Any] = field(default_factory=dict)

    @property
    def raw_path(self) -> str:
        return self.path.split("?", 1)[0]

    @property
    def query(self) -> str | None:
        return self.path.split("?", 1)[1] if "?" in self.path else None

    def header(self, name: str) -> str | None:
        """nginx $http_<name>: case-insensitive, ``-`` and ``_`` alike (so ``end_user: x`` is
        $http_end_user too: APISIX's nginx.conf turns underscores_in_headers on, measured on 3.18 by
        test_real_router.py); repeated lines joined."""
        want = name.lower().replace("-", "_")
        values = []
        for k, v in self.headers.items():
            if k.lower().replace("-", "_") == want:
                values.append(v)
        if want == "host" and not values and self.host:
            values.append(self.host)
        if want == "cookie" and self.cookies:
            values.append("; ".join(f"{k}={v}" for k, v in self.cookies.items()))
        if not values:
            return None
        return ("; " if want == "cookie" else ", ").join(values)

    def var(self, name: str) -> Any:
        if name in self.extra_vars:
            return self.extra_vars[name]
        if name.startswith("cookie_"):
            return self.cookies.get(name[len("cookie_"):])
        if name.startswith("arg_"):
            value = _parse_args(self.query or "").get(name[len("arg_"):])
            return value[0] if isinstance(value, list) else value
        if name.startswith("http_"):
            return self.header(name[len("http_"):])
        host = self.host.lower()
        if host.startswith("["):
            host_no_port = host.split("]", 1)[0] + "]"
        else:  # nginx (ngx_http_validate_host): the name ends at the first colon; one trailing dot dropped
            host_no_port = host.split(":", 1)[0]
            if host_no_port.endswith("."):
                host_no_port = host_no_port[:-1]
        simple = {
            "uri": _normalise_uri(self.raw_path),
            "request_uri": self.path,
            "args": self.query,
            "query_string": self.query,
            "is_args": "?" if self.query is not None else "",
            "host": host_no_port,
            "request_method": self.method.upper(),
            "remote_addr": self.remote_addr,
            "server_port": str(self.server_port),
            "scheme": self.scheme,
        }
        return simple.get(name)


# --------------------------------------------------------------------------------------------------
# lua-resty-expr.

_HEX = re.compile(r"^\s*[+-]?0[xX][0-9a-fA-F]+\s*$")
_DEC = re.compile(r"^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$")


def _tonumber(v: Any) -> float | None:
    """Lua's tonumber on a string or number (decimal or hex, surrounding blanks allowed)."""
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float)):
        return v
    if not isinstance(v, str):
        return None
    if _HEX.match(v):
        return int(v.strip(), 16)
    if _DEC.match(v):
        return float(v)
    return None


def _lua_eq(a: Any, b: Any) -> bool:
    # Lua never equates a string with a number, nor a boolean with anything but a boolean.
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, str) != isinstance(b, str):
        return False
    return a == b


def _regex(l_v: Any, pattern: Any, flags: int) -> bool:
    if l_v is None or l_v is False:
        return False
    if not isinstance(l_v, str) or not isinstance(pattern, str):
        raise ExprError(f"regex operands must be strings, got {l_v!r} and {pattern!r}")
    return re.search(pattern, l_v, flags) is not None


def _ipmatch(l_v: Any, nets: Sequence[ipaddress._BaseNetwork]) -> bool:
    if not isinstance(l_v, str):
        return False
    try:
        ip = ipaddress.ip_address(l_v)
    except ValueError:
        return False
    return any(ip.version == n.version and ip in n for n in nets)


def _cmp(op: str):
    def fn(l_v: Any, r_v: Any) -> bool:
        a, b = _tonumber(l_v), _tonumber(r_v)
        if a is None or b is None:
            return False
        return {">": a > b, "<": a < b, ">=": a >= b, "<=": a <= b}[op]
    return fn


def _eq(l_v: Any, r_v: Any) -> bool:
    if isinstance(r_v, (int, float)) and not isinstance(r_v, bool):
        n = _tonumber(l_v)
        return n is not None and n == r_v
    return _lua_eq(l_v, r_v)


def _ne(l_v: Any, r_v: Any) -> bool:
    if isinstance(r_v, (int, float)) and not isinstance(r_v, bool):
        n = _tonumber(l_v)
        return n is None or n != r_v
    return not _lua_eq(l_v, r_v)


_OPS = {
    "==": _eq,
    "~=": _ne,
    ">": _cmp(">"), "<": _cmp("<"), ">=": _cmp(">="), "<=": _cmp("<="),
    "~~": lambda l_v, r_v: _regex(l_v, r_v, 0),
    "~*": lambda l_v, r_v: _regex(l_v, r_v, re.IGNORECASE),
    "in": lambda l_v, r_v: isinstance(r_v, list) and any(_lua_eq(x, l_v) for x in r_v),
    "has": lambda l_v, r_v: isinstance(l_v, list) and any(_lua_eq(x, r_v) for x in l_v),
    "ipmatch": _ipmatch,
}
_LOGIC = ("AND", "OR", "!AND", "!OR")


@dataclass(frozen=True)
class _Expr:
    var: str
    op: str
    value: Any
    negate: bool


@dataclass(frozen=True)
class _Logic:
    op: str
    items: tuple


def _compile_expr(expr: list) -> _Expr:
    if len(expr) == 4:
        if expr[1] != "!":
            raise ExprError(f"bad 'not' expression {expr!r}")
        var, op, value, negate = expr[0], expr[2], expr[3], True
    elif len(expr) in (2, 3):
        var, op, value, negate = expr[0], expr[1], (expr[2] if len(expr) == 3 else None), False
    else:
        raise ExprError(f"invalid expression {expr!r}")
    if isinstance(op, str):
        op = op.lower()
    if value is None and op not in _OPS:
        op, value = "==", op  # lua-resty-expr's two-element compatibility form
    if not isinstance(var, str) or op not in _OPS:
        raise ExprError(f"invalid operator {op!r} in {expr!r}")
    if op == "ipmatch":
        raw = value if isinstance(value, list) else [value]
        if not raw or not all(isinstance(x, str) and x for x in raw):
            raise ExprError(f"invalid ip address in {expr!r}")
        try:
            value = tuple(ipaddress.ip_network(x, strict=False) for x in raw)
        except ValueError as e:
            raise ExprError(f"invalid ip address in {expr!r}: {e}") from None
    if op in ("~~", "~*"):
        try:
            re.compile(value)
        except (re.error, TypeError) as e:
            raise ExprError(f"bad regex in {expr!r}: {e}") from None
    return _Expr(var, op, value, negate)


def _compile(rules: list) -> _Expr | _Logic:
    if not isinstance(rules, list) or not rules:
        raise ExprError(f"rule too short: {rules!r}")
    if isinstance(rules[0], list):
        return _Logic("AND", tuple(_compile(r) for r in rules))
    if isinstance(rules[0], str) and rules[0].upper() in _LOGIC:
        if len(rules) <= 2:
            raise ExprError(f"rule too short: {rules!r}")
        return _Logic(rules[0].upper(), tuple(_compile(r) for r in rules[1:]))
    return _compile_expr(rules)


def _eval(node: _Expr | _Logic, req: Request) -> bool:
    if isinstance(node, _Expr):
        return _OPS[node.op](req.var(node.var), node.value) != node.negate
    if node.op in ("AND", "!AND"):
        result = all(_eval(n, req) for n in node.items)
    else:
        result = any(_eval(n, req) for n in node.items)
    return result != node.op.startswith("!")


def compile_vars(rules: list) -> _Expr | _Logic | None:
    """Check a route's ``vars`` the way APISIX does when loading it; ``[]`` means "always"."""
    if rules is None or rules == []:
        return None
    if not isinstance(rules, list):
        raise ExprError(f"vars must be a list, got {rules!r}")
    if not isinstance(rules[0], list) and not (isinstance(rules[0], str) and rules[0].upper() in _LOGIC):
        raise ExprError("rule should be wrapped inside brackets")
    return _compile(rules)


def eval_vars(rules: list | None, req: Request) -> bool:
    node = compile_vars(rules)
    return True if node is None else _eval(node, req)


# --------------------------------------------------------------------------------------------------
# The router.


def _uris(route: Mapping) -> list[str]:
    uris = list(route.get("uris") or ([route["uri"]] if route.get("uri") else []))
    if not uris:
        raise ExprError(f"route {route.get('id')!r} has neither uri nor uris")
    return uris


def _hosts(route: Mapping) -> list[str]:
    return [h.lower() for h in (route.get("hosts") or ([route["host"]] if route.get("host") else []))]


def _host_matches(pattern: str, host: str) -> bool:
    if pattern.startswith("*"):
        return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
    return pattern == host


def _path_rank(uri: str, path: str) -> tuple[int, int] | None:
    """Where a uri sits in radixtree's order for this path: exact first, then longer prefixes."""
    if uri.endswith("*"):
        p = uri[:-1]
        return (1, -len(p)) if path.startswith(p) else None
    return (0, 0) if uri == path else None


def _effect(route: Mapping) -> str:
    """What a route does with a request it matched (everything but how it matches)."""
    keys = ("upstream_id", "upstream", "service_id", "plugins", "plugin_config_id", "timeout", "enable_websocket")
    return repr({k: route.get(k) for k in keys})


@dataclass(frozen=True)
class _Compiled:
    route: Mapping
    vars: Any
    nets: tuple
    priority: int


class Router:
    """Builds APISIX's router from a standalone document's ``routes`` and matches requests."""

    def __init__(self, routes: Sequence[Mapping], mode: str = "radixtree_host_uri") -> None:
        if mode not in ("radixtree_host_uri", "radixtree_uri"):
            raise ValueError(f"unknown router {mode!r}")
        self.mode = mode
        self.routes: list[_Compiled] = []
        for r in routes:
            if r.get("status", 1) == 0:
                continue
            _uris(r)
            nets = tuple(ipaddress.ip_network(a, strict=False) for a in (r.get("remote_addrs") or
                                                                        ([r["remote_addr"]] if r.get("remote_addr") else [])))
            self.routes.append(_Compiled(r, compile_vars(r.get("vars")), nets, int(r.get("priority", 0))))

    def _route_matches(self, c: _Compiled, req: Request, check_host: bool) -> bool:
        r = c.route
        if r.get("methods") and req.method.upper() not in r["methods"]:
            return False
        if check_host:
            hosts = _hosts(r)
            if hosts and not any(_host_matches(h, req.var("host")) for h in hosts):
                return False
        if c.nets and not _ipmatch(req.remote_addr, c.nets):
            return False
        return c.vars is None or _eval(c.vars, req)

    def _dispatch(self, group: Sequence[_Compiled], req: Request, check_host: bool) -> Mapping | None:
        """One radixtree: buckets by uri (exact, then longest prefix), priority inside a bucket."""
        path = req.var("uri")
        buckets: dict[tuple, list[_Compiled]] = {}
        for c in group:
            for u in _uris(c.route):
                rank = _path_rank(u, path)
                if rank is not None:
                    buckets.setdefault((rank, u), []).append(c)
        for key in sorted(buckets, key=lambda k: k[0]):
            hits = [c for c in buckets[key] if self._route_matches(c, req, check_host)]
            if not hits:
                continue
            top = max(c.priority for c in hits)
            winners = sorted((c for c in hits if c.priority == top), key=lambda c: str(c.route.get("id")))
            # Either may serve the request; that only matters when they would do different things.
            if len({_effect(c.route) for c in winners}) > 1:
                ids = [str(c.route.get("id")) for c in winners]
                raise AmbiguousMatch(f"routes {ids} all match {req} under uri {key[1]!r} at priority {top}")
            return winners[0].route
        return None

    def match(self, req: Request) -> Mapping | None:
        """The route APISIX serves the request with, or ``None`` (APISIX answers 404)."""
        if self.mode == "radixtree_uri":
            return self._dispatch(self.routes, req, check_host=True)
        host = req.var("host")
        by_host: dict[str, list[_Compiled]] = {}
        hostless = []
        for c in self.routes:
            hosts = _hosts(c.route)
            if not hosts:
                hostless.append(c)
            for h in hosts:
                by_host.setdefault(h, []).append(c)
        # Exact host, then wildcard hosts from the longest suffix down, then routes without hosts.
        candidates = [h for h in by_host if _host_matches(h, host)]
        candidates.sort(key=lambda h: (h.startswith("*"), -len(h)))
        for h in candidates:
            found = self._dispatch(by_host[h], req, check_host=False)
            if found is not None:
                return found
        return self._dispatch(hostless, req, check_host=False)


# --------------------------------------------------------------------------------------------------
# What the winning route does.


def upstream_by_id(doc: Mapping, upstream_id: str) -> Mapping:
    for u in doc.get("upstreams") or ():
        if str(u.get("id")) == str(upstream_id):
            return u
    raise KeyError(f"no upstream with id {upstream_id!r}")


def route_upstream(doc: Mapping, route: Mapping) -> Mapping | None:
    """The route's own upstream: inline, by ``upstream_id``, or through its service."""
    if route.get("upstream") is not None:
        return route["upstream"]
    if route.get("upstream_id") is not None:
        return upstream_by_id(doc, route["upstream_id"])
    if route.get("service_id") is not None:
        for s in doc.get("services") or ():
            if str(s.get("id")) == str(route["service_id"]):
                if s.get("upstream") is not None:
                    return s["upstream"]
                if s.get("upstream_id") is not None:
                    return upstream_by_id(doc, s["upstream_id"])
    return None


def traffic_split_arm(doc: Mapping, route: Mapping, req: Request) -> list[tuple[Mapping | None, int]] | None:
    """The weighted upstreams ``traffic-split`` uses for this request, ``None`` if no rule applies.

    Each entry is ``(upstream, weight)``; ``upstream`` is ``None`` for an entry without upstream,
    which means the route's own upstream. A rule applies when it has no ``match`` or when any
    ``match`` entry's ``vars`` hold.
    """
    conf = (route.get("plugins") or {}).get("traffic-split")
    if not conf:
        return None
    for rule in conf.get("rules") or ():
        matches = rule.get("match")
        if matches and not any(eval_vars(m.get("vars"), req) for m in matches):
            continue
        arm = []
        for wu in rule.get("weighted_upstreams") or ():
            weight = int(wu.get("weight", 1))
            if wu.get("upstream_id") is not None:
                arm.append((upstream_by_id(doc, wu["upstream_id"]), weight))
            elif wu.get("upstream") is not None:
                arm.append((wu["upstream"], weight))
            else:
                arm.append((None, weight))
        return arm
    return None


@dataclass(frozen=True)
class Fault:
    abort_status: int | None
    abort_percentage: float | None
    delay_seconds: float | None
    delay_percentage: float | None


def fault_for(route: Mapping, req: Request) -> Fault | None:
    """The ``fault-injection`` that applies to the request (abort/delay ``vars`` are OR-ed expr lists)."""
    conf = (route.get("plugins") or {}).get("fault-injection")
    if not conf:
        return None

    def applies(part: Mapping) -> bool:
        rules = part.get("vars")
        return not rules or any(eval_vars(r, req) for r in rules)

    abort = conf.get("abort")
    delay = conf.get("delay")
    abort = abort if abort and applies(abort) else None
    delay = delay if delay and applies(delay) else None
    if abort is None and delay is None:
        return None
    return Fault(abort_status=abort.get("http_status") if abort else None,
                 abort_percentage=abort.get("percentage") if abort else None,
                 delay_seconds=delay.get("duration") if delay else None,
                 delay_percentage=delay.get("percentage") if delay else None)


_TEMPLATE_VAR = re.compile(r"\$\{?([A-Za-z0-9_]+)\}?")
_CAPTURE = re.compile(r"\$(\d+)|\$\{(\d+)\}")


def upstream_path(route: Mapping, req: Request) -> str:
    """The path proxy-rewrite sends upstream: ``uri`` (with ``$var``s) first, else the first matching
    ``regex_uri`` pair applied to ``$uri`` (ngx.re.sub, ``$1`` captures), else ``$uri`` unchanged."""
    conf = (route.get("plugins") or {}).get("proxy-rewrite") or {}
    uri = req.var("uri")
    if conf.get("uri"):
        return _TEMPLATE_VAR.sub(lambda m: str(req.var(m.group(1)) or ""), conf["uri"])
    pairs = conf.get("regex_uri") or []
    if len(pairs) % 2:
        raise ExprError(f"regex_uri needs pattern/replacement pairs: {pairs!r}")
    for pattern, replacement in zip(pairs[::2], pairs[1::2]):
        m = re.search(pattern, uri)
        if m:
            def expand(c: re.Match, m=m) -> str:
                return m.group(int(c.group(1) or c.group(2))) or ""
            return uri[:m.start()] + _CAPTURE.sub(expand, replacement) + uri[m.end():]
    return uri
