"""A minimal model of how APISIX picks a route among ours, for assertions in these tests.

Every route we generate uses `uris: ["/*"]`, so the radixtree path step is a no-op and APISIX's
choice is: among routes whose `hosts` (port-less, lower-case `$host`) and `vars` (lua-resty-expr,
ANDed) match, the highest `priority`. T2's tests/translate/apisix_router.py is the fuller evaluator.
"""

from __future__ import annotations

import re


def var_value(name: str, request: dict) -> str | None:
    host = request.get("host")
    if name == "http_host":
        return host
    if name == "uri":
        return request.get("path", "/")
    if name == "original_dst_port":
        return str(request["port"])
    if name == "amesh_direction":  # the hook's variable: which side of the pod the request came in on
        return request.get("direction", "outbound")
    if name == "request_method":
        return request.get("method", "GET")
    if name.startswith("http_"):
        wanted = name[5:]
        for key, value in request.get("headers", {}).items():
            if key.lower().replace("-", "_") == wanted:
                return value
        return None
    if name.startswith("arg_"):
        return request.get("args", {}).get(name[4:])
    raise KeyError(name)


def expr_matches(expr: list, request: dict) -> bool:
    name, *rest = expr
    negate = rest[0] == "!"
    if negate:
        rest = rest[1:]
    op, operand = rest
    value = var_value(name, request)
    if op == "==":  # lua-resty-expr compares numbers numerically: "9080" == 9080
        result = value == (str(operand) if isinstance(operand, int) else operand)
    elif op in ("~~", "~*"):
        result = value is not None and re.search(operand, value, re.I if op == "~*" else 0) is not None
    else:
        raise ValueError(op)
    return not result if negate else result


def route_matches(route: dict, request: dict) -> bool:
    assert route["uris"] == ["/*"]
    host = (request.get("host") or "").lower()
    if "hosts" in route:
        bare = host[: host.index("]") + 1] if host.startswith("[") else host.split(":")[0]
        if not any(bare == h or (h.startswith("*.") and bare.endswith(h[1:])) for h in route["hosts"]):
            return False
    return all(expr_matches(e, request) for e in route.get("vars", []))


def pick(routes: list[dict], **request) -> dict | None:
    matching = [r for r in routes if route_matches(r, request)]
    if not matching:
        return None
    best = max(r["priority"] for r in matching)
    winners = [r for r in matching if r["priority"] == best]
    assert len(winners) == 1, f"ambiguous priority {best}: {[w['name'] for w in winners]}"
    return winners[0]
