"""Envoy ClusterLoadAssignment -> APISIX upstream nodes (pure).

- weight: the endpoint's `load_balancing_weight`, else its locality's, else 1 (0 is kept: APISIX
  accepts it and sends nothing there);
- `health_status` UNHEALTHY, DRAINING and TIMEOUT endpoints are removed;
- locality `priority` (0 = most preferred in Envoy) -> node `priority` = -priority (APISIX tries
  higher values first);
- IPv6 addresses are bracketed; duplicates are merged (weights summed); nodes are sorted.
No endpoints gives no nodes: APISIX answers 503, as Envoy does, and never keeps stale nodes.
"""

from __future__ import annotations

import re

from sidecar_agent.translate.report import Coverage, Unsupported
from sidecar_agent.translate.upstream import EndpointPart

_REMOVED_HEALTH = {2, 3, 4}  # UNHEALTHY, DRAINING, TIMEOUT
_HOST_DEF = re.compile(r"^\*?[0-9a-zA-Z-._\[\]:]+$")
_TLS_MATCH = "envoy.transport_socket_match"


def translate_endpoints(cla, kind: str = "endpoints", resource: str | None = None,
                        path: str = "") -> tuple[EndpointPart, tuple[Unsupported, ...]]:
    cov = Coverage(kind, resource or cla.cluster_name)
    nodes, tls_marks = endpoint_nodes(cla, cov, path)
    istio = sum(tls_marks)
    part = EndpointPart(nodes=nodes, istio_tls=bool(nodes) and istio == len(nodes),
                        mixed_tls=0 < istio < len(nodes))
    return part, cov.entries()


def endpoint_nodes(cla, cov: Coverage, path: str = "") -> tuple[tuple[dict, ...], list[bool]]:
    prefix = f"{path}." if path else ""
    cov.unhandled(cla, {"cluster_name", "endpoints"}, path)
    merged: dict[tuple[int, str, int], list] = {}
    for locality in cla.endpoints:
        cov.unhandled(locality, {"locality", "lb_endpoints", "load_balancing_weight", "priority"},
                      f"{prefix}endpoints")
        locality_weight = locality.load_balancing_weight.value if locality.HasField("load_balancing_weight") else None
        for lbe in locality.lb_endpoints:
            where = f"{prefix}endpoints.lb_endpoints"
            cov.unhandled(lbe, {"endpoint", "health_status", "load_balancing_weight", "metadata"}, where)
            if lbe.health_status in _REMOVED_HEALTH:
                continue
            endpoint = lbe.endpoint
            cov.unhandled(endpoint, {"address", "hostname"}, f"{where}.endpoint")
            host, port = _socket(endpoint.address, cov, f"{where}.endpoint.address")
            if host is None:
                continue
            if lbe.HasField("load_balancing_weight"):
                weight = lbe.load_balancing_weight.value
            else:
                weight = locality_weight if locality_weight is not None else 1
            key = (locality.priority, host, port)
            tls = _tls_mode(lbe) == "istio"
            if key in merged:
                merged[key][0] += weight
                merged[key][1] = merged[key][1] and tls
            else:
                merged[key] = [weight, tls]
    nodes, marks = [], []
    for (priority, host, port), (weight, tls) in sorted(merged.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2])):
        node = {"host": host, "port": port, "weight": weight}
        if priority:
            node["priority"] = -priority
        nodes.append(node)
        marks.append(tls)
    return tuple(nodes), marks


def _socket(address, cov: Coverage, path: str) -> tuple[str | None, int]:
    kind = address.WhichOneof("address")
    if kind != "socket_address":
        cov.add(f"{path}.{kind}")
        return None, 0
    sa = address.socket_address
    if sa.protocol != 0:
        cov.add(f"{path}.socket_address.protocol[UDP]")
        return None, 0
    if sa.WhichOneof("port_specifier") != "port_value" or not 0 < sa.port_value < 65536:
        cov.add(f"{path}.socket_address.named_port")
        return None, 0
    host = sa.address
    if ":" in host:  # only IPv6 literals hold a colon; DNS names (STRICT_DNS) are resolved by APISIX
        host = f"[{host}]"
    if not _HOST_DEF.match(host):
        cov.add(f"{path}.socket_address.address[not a valid APISIX node host]")
        return None, 0
    return host, sa.port_value


def _tls_mode(lbe) -> str | None:
    meta = lbe.metadata.filter_metadata
    if _TLS_MATCH in meta and "tlsMode" in meta[_TLS_MATCH].fields:
        return meta[_TLS_MATCH].fields["tlsMode"].string_value
    return None
