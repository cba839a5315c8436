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


_CLA_HANDLED = frozenset({"cluster_name", "endpoints"})
_LOCALITY_HANDLED = frozenset({"locality", "lb_endpoints", "load_balancing_weight", "priority"})
_LBE_HANDLED = frozenset({"endpoint", "health_status", "load_balancing_weight", "metadata"})
_ENDPOINT_HANDLED = frozenset({"address", "hostname"})


def endpoint_nodes(cla, cov: Coverage, path: str = "") -> tuple[tuple[dict, ...], list[bool]]:
    prefix = f"{path}." if path else ""
    cov.unhandled(cla, _CLA_HANDLED, path)
    # Runs for every endpoint of the mesh: paths and coverage plans looked up once per assignment, the
    # per-endpoint checks of Coverage.unhandled inlined (a function call per endpoint costs ~10%).
    localities_path = f"{prefix}endpoints"
    where = f"{prefix}endpoints.lb_endpoints"
    address_path = f"{where}.endpoint.address"
    lbe_type = cla.DESCRIPTOR.fields_by_name["endpoints"].message_type.fields_by_name["lb_endpoints"].message_type
    lbe_plan = cov.plan(lbe_type, _LBE_HANDLED, where)
    ep_plan = cov.plan(lbe_type.fields_by_name["endpoint"].message_type, _ENDPOINT_HANDLED, f"{where}.endpoint")
    generic = lbe_plan.listed is not None or lbe_plan.floats or ep_plan.listed is not None or ep_plan.floats
    lbe_presence, lbe_nonempty = lbe_plan.presence, lbe_plan.nonempty
    ep_presence, ep_nonempty = ep_plan.presence, ep_plan.nonempty
    unhandled, add = cov.unhandled, cov.add
    merged: dict[tuple[int, str, int], list] = {}
    for locality in cla.endpoints:
        unhandled(locality, _LOCALITY_HANDLED, localities_path)
        locality_weight = locality.load_balancing_weight.value if locality.HasField("load_balancing_weight") else None
        default_weight = locality_weight if locality_weight is not None else 1
        priority = locality.priority
        for lbe in locality.lb_endpoints:
            if generic:
                unhandled(lbe, _LBE_HANDLED, where)
            else:
                for name, field in lbe_presence:
                    if lbe.HasField(name):
                        add(field)
                for name, field in lbe_nonempty:
                    if getattr(lbe, name):
                        add(field)
            if lbe.health_status in _REMOVED_HEALTH:
                continue
            endpoint = lbe.endpoint
            if generic:
                unhandled(endpoint, _ENDPOINT_HANDLED, f"{where}.endpoint")
            else:
                for name, field in ep_presence:
                    if endpoint.HasField(name):
                        add(field)
                for name, field in ep_nonempty:
                    if getattr(endpoint, name):
                        add(field)
            socket = _socket(endpoint.address, cov, address_path)
            if socket is None:
                continue
            weight = lbe.load_balancing_weight.value if lbe.HasField("load_balancing_weight") else default_weight
            tls = lbe.HasField("metadata") and _tls_mode(lbe) == "istio"
            key = (priority, *socket)
            found = merged.get(key)
            if found is not None:
                found[0] += weight
                found[1] = found[1] and tls
            else:
                merged[key] = [weight, tls]
    nodes, marks = [], []
    for (priority, host, port), (weight, tls) in sorted(merged.items()):  # keys are unique: values never compared
        node = {"host": host, "port": port, "weight": weight}
        if priority:
            node["priority"] = -priority
        nodes.append(node)
        marks.append(tls)
    return tuple(nodes), marks


_PORTS: dict[int, int] = {}  # one int object per port number for the 100,000s of nodes


def _socket(address, cov: Coverage, path: str) -> tuple[str, int] | None:
    """(host, port) of a node; None (reported) when APISIX cannot use the address."""
    kind = address.WhichOneof("address")
    if kind != "socket_address":
        cov.add(f"{path}.{kind}")
        return None
    sa = address.socket_address
    if sa.protocol != 0:
        cov.add(f"{path}.socket_address.protocol[UDP]")
        return None
    port = sa.port_value
    if not 0 < port < 65536 or sa.WhichOneof("port_specifier") != "port_value":
        cov.add(f"{path}.socket_address.named_port")
        return None
    host = sa.address
    if ":" in host:  # only IPv6 literals hold a colon; DNS names (STRICT_DNS) are resolved by APISIX
        host = f"[{host}]"
    if not _HOST_DEF.match(host):
        cov.add(f"{path}.socket_address.address[not a valid APISIX node host]")
        return None
    return host, _PORTS.setdefault(port, port)


def _tls_mode(lbe) -> str | None:
    meta = lbe.metadata.filter_metadata
    if _TLS_MATCH in meta:
        fields = meta[_TLS_MATCH].fields
        if "tlsMode" in fields:
            return fields["tlsMode"].string_value
    return None
