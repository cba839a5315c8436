"""Envoy RouteMatch -> lua-resty-expr `vars` conditions (pure).

Every generated route uses `uris: ["/*"]` and states its path condition in `vars` on `uri`. APISIX's
radixtree tries a full-path match, then deeper prefixes, and only then `priority`; a route on `/foo*`
would beat an earlier Envoy route on `/` whatever its priority. With every route on the same tree node,
`priority` alone orders them, which is what Envoy's first-match order needs.

Literal values are compared with `==` or regex-escaped; Envoy's `safe_regex` is a full match, so it is
anchored `^(?:re)$`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sidecar_agent.translate.report import Coverage

_HEADER_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
_PSEUDO_HEADERS = {":method": "request_method", ":authority": "http_host", "host": "http_host",
                   ":path": "request_uri", ":scheme": "scheme"}
_MATCH_HANDLED = frozenset({"prefix", "path", "safe_regex", "path_separated_prefix", "case_sensitive",
                            "headers", "query_parameters", "grpc", "runtime_fraction"})
_ROUTE_MATCH_HANDLED = _MATCH_HANDLED | {"connect_matcher", "path_match_policy"}
PRESENT = ".*"


@dataclass(frozen=True)
class Match:
    vars: tuple[tuple, ...]  # ANDed lua-resty-expr expressions, JSON-ready tuples


def escape(literal: str) -> str:
    """Escape a literal for PCRE (Python's escaping only uses backslash forms PCRE reads literally).

    Exactly `re.escape`, which maps every character through a dict; replacing only the special
    characters present is 2-3x faster on host names (every domain of every virtual host is escaped).
    """
    if "\\" in literal:
        literal = literal.replace("\\", "\\\\")  # first: the escapes below add backslashes
    for char in _SPECIAL:
        if char in literal:
            literal = literal.replace(char, "\\" + char)
    return literal


_SPECIAL = "()[]{}?*+-|^$.&~# \t\n\r\v\f"  # re.escape's set, less the backslash


def full_regex(regex: str) -> str:
    return f"^(?:{regex})$"


def string_match(var: str, matcher, cov: Coverage, path: str) -> list[tuple] | None:
    """envoy.type.matcher.v3.StringMatcher on variable `var`; None when APISIX cannot express it."""
    kind = matcher.WhichOneof("match_pattern")
    ignore_case = matcher.ignore_case
    if kind == "exact":
        if ignore_case:
            return [(var, "~*", f"^{escape(matcher.exact)}$")]
        return [(var, "==", matcher.exact)]
    op = "~*" if ignore_case else "~~"
    if kind == "prefix":
        return [(var, op, f"^{escape(matcher.prefix)}")]
    if kind == "suffix":
        return [(var, op, f"{escape(matcher.suffix)}$")]
    if kind == "contains":
        return [(var, op, escape(matcher.contains))]
    if kind == "safe_regex":
        return [(var, "~~", full_regex(matcher.safe_regex.regex))]
    cov.add(f"{path}.{kind or 'match_pattern'}")
    return None


def header_var(name: str) -> str | None:
    lowered = name.lower()
    if lowered in _PSEUDO_HEADERS:
        return _PSEUDO_HEADERS[lowered]
    if not _HEADER_NAME.match(name):
        return None
    return "http_" + lowered.replace("-", "_")


def negate(expr: tuple) -> tuple:
    return (expr[0], "!", *expr[1:])


def header_match(header, cov: Coverage, path: str) -> list[tuple] | None:
    """envoy.config.route.v3.HeaderMatcher -> expressions; None when unsupported."""
    var = header_var(header.name)
    if var is None:
        cov.add(f"{path}.name[{header.name}]")
        return None
    if header.treat_missing_header_as_empty:
        cov.add(f"{path}.treat_missing_header_as_empty")
        return None
    kind = header.WhichOneof("header_match_specifier")
    present = (var, "~~", PRESENT)
    if kind is None or kind == "present_match":
        wants_present = header.present_match if kind else True
        if header.invert_match:
            wants_present = not wants_present
        return [present] if wants_present else [negate(present)]
    if kind == "string_match":
        exprs = string_match(var, header.string_match, cov, f"{path}.string_match")
    elif kind == "exact_match":
        exprs = [(var, "==", header.exact_match)]
    elif kind == "prefix_match":
        exprs = [(var, "~~", f"^{escape(header.prefix_match)}")]
    elif kind == "suffix_match":
        exprs = [(var, "~~", f"{escape(header.suffix_match)}$")]
    elif kind == "contains_match":
        exprs = [(var, "~~", escape(header.contains_match))]
    elif kind == "safe_regex_match":
        exprs = [(var, "~~", full_regex(header.safe_regex_match.regex))]
    else:
        cov.add(f"{path}.{kind}")
        return None
    if exprs is None:
        return None
    if header.invert_match:
        # Envoy: an absent header never matches an inverted value matcher; `!` alone would.
        return [present, negate(exprs[0])]
    return exprs


def query_match(param, cov: Coverage, path: str) -> list[tuple] | None:
    if not _HEADER_NAME.match(param.name):
        cov.add(f"{path}.name[{param.name}]")
        return None
    var = "arg_" + param.name
    kind = param.WhichOneof("query_parameter_match_specifier")
    if kind == "string_match":
        return string_match(var, param.string_match, cov, f"{path}.string_match")
    if kind == "present_match" and not param.present_match:
        return [negate((var, "~~", PRESENT))]
    return [(var, "~~", PRESENT)]


def path_match(match, cov: Coverage, path: str) -> list[tuple] | None:
    kind = match.WhichOneof("path_specifier")
    insensitive = match.HasField("case_sensitive") and not match.case_sensitive.value
    op = "~*" if insensitive else "~~"
    if kind == "prefix":
        if match.prefix in ("", "/"):
            return []
        return [("uri", op, f"^{escape(match.prefix)}")]
    if kind == "path":
        if insensitive:
            return [("uri", "~*", f"^{escape(match.path)}$")]
        return [("uri", "==", match.path)]
    if kind == "path_separated_prefix":
        return [("uri", op, f"^{escape(match.path_separated_prefix)}(?:/|$)")]
    if kind == "safe_regex":
        if insensitive:
            cov.add(f"{path}.case_sensitive[with safe_regex]")
        return [("uri", "~~", full_regex(match.safe_regex.regex))]
    cov.add(f"{path}.{kind or 'path_specifier'}")
    return None


def route_match(match, cov: Coverage, path: str) -> Match | None:
    """The whole RouteMatch; None (route dropped, reported) when any part cannot be expressed."""
    cov.unhandled(match, _ROUTE_MATCH_HANDLED, path)
    exprs = path_match(match, cov, path)
    if exprs is None:
        return None
    for header in match.headers:
        more = header_match(header, cov, f"{path}.headers")
        if more is None:
            return None
        exprs += more
    for param in match.query_parameters:
        more = query_match(param, cov, f"{path}.query_parameters")
        if more is None:
            return None
        exprs += more
    if match.HasField("grpc"):
        exprs.append(("http_content_type", "~~", "^application/grpc"))
    if match.HasField("runtime_fraction"):
        # A fraction of matching requests: APISIX has no random match; the route matches all of them.
        cov.add(f"{path}.runtime_fraction")
    if _has_any(match, ("tls_context", "dynamic_metadata", "filter_state", "cel_expr")):
        return None  # already reported by unhandled()
    return Match(tuple(exprs))


def _has_any(message, names: tuple[str, ...]) -> bool:
    """Is any of the fields `names` set (as ListFields() would list it)? Names this proto lacks are not."""
    key = (message.DESCRIPTOR, names)
    fields = _present_fields.get(key)
    if fields is None:
        by_name = message.DESCRIPTOR.fields_by_name
        fields = _present_fields[key] = tuple((n, by_name[n].is_repeated) for n in names if n in by_name)
    return any(len(getattr(message, name)) if repeated else message.HasField(name) for name, repeated in fields)


_present_fields: dict[tuple, tuple[tuple[str, bool], ...]] = {}
