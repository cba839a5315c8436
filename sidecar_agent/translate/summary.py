"""A summary of an APISIX document a person reads in ten seconds (pure: document + report -> text).

`amesh-agent translate --summary` prints it: per service and port (one Istio virtual host) the routes,
the upstreams they use and what each rule became, in the order APISIX tries them —
`reviews:9080  end-user=jason → v2; default → v1` — then the stream side and the report's size.
It reads only the document (route names `<route config>/<virtual host>/<route>`, `vars`, upstream
labels), so it describes what APISIX will do, not what the xDS said.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from sidecar_agent.apisix.datapath import PASSTHROUGH_PLUGIN
from sidecar_agent.translate.report import Report
from sidecar_agent.translate.action import MIRROR_PREFIX

# Conditions every route of a virtual host shares (which listener and Host): not part of a rule.
_SCOPE_VARS = {"original_dst_port", "amesh_direction", "http_host"}
_MAX_RULES = 6  # a virtual host with more rules shows the first ones and a count


def summarize(document: dict, report: Report, output: Path | None = None) -> str:
    routes = document.get("routes", [])
    upstreams = {u["id"]: u for u in document.get("upstreams", [])}
    stream_routes = document.get("stream_routes", [])
    where = f"written to {output}" if output is not None else "not written: -o FILE writes it"
    lines = [f"APISIX document: {len(routes)} routes, {len(stream_routes)} stream routes, "
             f"{len(upstreams)} upstreams ({where})"]
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for route in routes:
        groups[_group(route["name"])].append(route)
    for title, direction in (("outbound HTTP", "outbound"), ("inbound HTTP", "inbound"), ("fallback HTTP", "other")):
        rows = [(name, members) for (d, name), members in sorted(groups.items()) if d == direction]
        if rows:
            width = max(len(name) for name, _ in rows + [("service:port", ())])
            lines.append(f"\n{title}\n  {'service:port':<{width}}  routes  upstreams  rules, first match first")
            lines += [_vhost_line(name, members, upstreams, width) for name, members in rows]
    if stream_routes:
        lines.append("\nTCP (stream routes on the capture ports)")
        lines += [f"  {_stream_line(r, upstreams)}" for r in stream_routes]
    resources = len({(e.kind, e.resource) for e in report.entries})
    lines.append("\n" + (f"not translated: {len(report.entries)} fields of {resources} resources "
                         "(--report lists them)" if report.entries else "everything in the input was translated"))
    return "\n".join(lines) + "\n"


def _group(name: str) -> tuple[str, str]:
    """(direction, service:port) of a route name `<route config>/<virtual host>/<route>`."""
    parts = name.split("/")
    if name.startswith("inbound|"):  # inbound|<port>|<route config>/<virtual host>/<route>
        return "inbound", f"pod:{name.split('|')[1].split('/')[0]}"
    if len(parts) < 3:
        return "other", parts[0]
    return "outbound", _short(parts[1], parts[0])


def _short(vhost: str, route_config: str = "") -> str:
    """`reviews.default.svc.cluster.local:9080` -> `reviews:9080`; `allow_any` -> `any host:<port>`."""
    host, _, port = vhost.rpartition(":")
    if not host or not port.isdigit():
        host, port = vhost, route_config.rpartition(":")[2]
    port = port if port.isdigit() else ""
    host = "any host" if host in ("allow_any", "block_all", "*") else host.split(".")[0]
    return f"{host}:{port}" if port else host


def _vhost_line(name: str, members: list[dict], upstreams: dict[str, dict], width: int) -> str:
    rules = [r for r in sorted(members, key=lambda r: -r.get("priority", 0)) if not _is_catch_all(r)]
    used = {u for r in rules for u in _upstream_ids(r)}
    texts = [f"{_condition(r)} → {_target(r, upstreams)}" for r in rules[:_MAX_RULES]]
    if len(rules) > _MAX_RULES:
        texts.append(f"… {len(rules) - _MAX_RULES} more")
    return f"  {name:<{width}}  {len(rules):>6}  {len(used):>9}  " + ("; ".join(texts) or "404 only")


def _is_catch_all(route: dict) -> bool:
    abort = ((route.get("plugins") or {}).get("fault-injection") or {}).get("abort") or {}
    return route["name"].endswith("/404") or (route["name"].endswith("/catch-all") and abort.get("http_status") == 404)


def _condition(route: dict) -> str:
    terms = []
    for var in route.get("vars") or ():
        name, op, value = (list(var) + [None, None])[:3]
        if not isinstance(name, str) or name in _SCOPE_VARS:
            continue
        if name.startswith("http_"):
            name = name[5:].replace("_", "-")
        elif name.startswith("arg_"):
            name = "?" + name[4:]
        if name == "uri" and op == "~~" and value == "^/":
            continue  # prefix "/": every path
        terms.append(f"{name}={value}" if op == "==" else f"{name} {op} {value}")
    return " and ".join(terms) or "default"


def _upstream_ids(route: dict) -> list[str]:
    ids = [route["upstream_id"]] if "upstream_id" in route else []
    for rule in ((route.get("plugins") or {}).get("traffic-split") or {}).get("rules", ()):
        ids += [w["upstream_id"] for w in rule.get("weighted_upstreams", ()) if "upstream_id" in w]
    return ids


def _target(route: dict, upstreams: dict[str, dict]) -> str:
    plugins = route.get("plugins") or {}
    if PASSTHROUGH_PLUGIN in plugins:
        text = "original destination (passthrough)"
    elif "redirect" in plugins:
        text = "redirect"
    elif "traffic-split" in plugins:
        weighted = plugins["traffic-split"]["rules"][0].get("weighted_upstreams", [])
        text = " / ".join(f"{_service(upstreams.get(w.get('upstream_id')), route)} {w.get('weight', 1)}"
                          for w in weighted)
    elif "upstream_id" in route:
        text = _service(upstreams.get(route["upstream_id"]), route)
    else:
        abort = (plugins.get("fault-injection") or {}).get("abort") or {}
        return f"answer {abort.get('http_status', '?')}"
    fault = plugins.get("fault-injection") or {}
    if "delay" in fault:
        text += f" + delay {fault['delay'].get('duration')}s ({fault['delay'].get('percentage', 100)}%)"
    if "abort" in fault:
        text += f" + abort {fault['abort'].get('http_status')} ({fault['abort'].get('percentage', 100)}%)"
    mirror = plugins.get("proxy-mirror") or {}
    if mirror.get("path", "").startswith(MIRROR_PREFIX + "/"):  # /__amesh_mirror/<upstream id>
        ratio = mirror.get("sample_ratio", 1)
        target = _service(upstreams.get(mirror["path"][len(MIRROR_PREFIX) + 1:]), route)
        text += f" + copy to {target}" + (f" ({ratio * 100:g}%)" if ratio < 1 else "")
    return text


def _service(upstream: dict | None, route: dict) -> str:
    """The subset of the route's own service (`v2`), else `<service> <subset>` or the upstream's name."""
    if upstream is None:
        return "?"
    labels = upstream.get("labels") or {}
    host, subset = labels.get("istio.host"), labels.get("istio.subset")
    if "amesh.bind" in labels or labels.get("istio.cluster") == "static":  # inbound: the app itself
        return "app " + ", ".join(f"{n['host']}:{n['port']}" for n in upstream.get("nodes", ()))
    if host is None:
        return upstream.get("name", upstream["id"]).split(" [")[0]
    own = route["name"].split("/")[1].split(":")[0].split(".")[0] if route["name"].count("/") >= 2 else None
    service = host.split(".")[0]
    if service == own:
        return subset or "all endpoints"
    return f"{service} {subset}" if subset else service


def _stream_line(route: dict, upstreams: dict[str, dict]) -> str:
    match = route.get("server_addr", "any address")
    if "server_port" in route:
        match += f":{route['server_port']}"
    upstream = upstreams.get(route.get("upstream_id"), {})
    labels = upstream.get("labels") or {}
    if PASSTHROUGH_PLUGIN in (route.get("plugins") or {}):
        target = "original destination (passthrough)"
    elif labels.get("amesh.internal"):
        node = (upstream.get("nodes") or [{}])[0]
        target = f"HTTP routes (internal listener {node.get('port')})"
    else:
        target = upstream.get("name", route.get("upstream_id", "?")).split(" [")[0]
    return f"{route['name'].split('/')[0]:<24} {match:<22} → {target}"
