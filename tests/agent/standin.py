"""A deliberately small stand-in translation, used only while the real one (sidecar_agent.translate)
is not importable: enough to exercise the runtime (one upstream per EDS cluster, one route per
virtual host route), raising ValueError for an invalid regex or domain so NACKs can be tested."""

from __future__ import annotations

import hashlib
import re

from sidecar_agent.configdump import XdsResources


def _id(name: str) -> str:
    return hashlib.sha1(name.encode()).hexdigest()[:16]


def translate(resources: XdsResources):
    upstreams = []
    for name, cla in sorted(resources.endpoints.items()):
        nodes = [
            {"host": lb.endpoint.address.socket_address.address,
             "port": lb.endpoint.address.socket_address.port_value, "weight": 1}
            for locality in cla.endpoints for lb in locality.lb_endpoints
        ]
        upstreams.append({"id": _id(name), "name": name[:100], "type": "roundrobin", "nodes": nodes})
    known = {u["name"] for u in upstreams}
    routes = []
    for rc_name, rc in sorted(resources.route_configs.items()):
        for vhost in rc.virtual_hosts:
            for domain in vhost.domains:
                if "*" in domain.strip("*"):
                    raise ValueError(f"virtual host {vhost.name!r}: invalid domain {domain!r}")
            for index, route in enumerate(vhost.routes):
                if route.match.HasField("safe_regex"):
                    try:
                        re.compile(route.match.safe_regex.regex)
                    except re.error as exc:
                        raise ValueError(f"route {route.name!r}: invalid regex: {exc}") from None
                action = route.route
                cluster = action.cluster or (action.weighted_clusters.clusters[0].name
                                             if action.weighted_clusters.clusters else "")
                if cluster not in known:
                    continue
                routes.append({
                    "id": _id(f"{rc_name}/{vhost.name}/{index}"),
                    "uri": "/*",
                    "priority": -index,
                    "vars": [["http_host", "==", vhost.domains[0]]],
                    "upstream_id": _id(cluster),
                })
    return {"routes": routes, "upstreams": upstreams}, 0
