"""Envoy ClusterLoadAssignment -> APISIX upstream nodes (pure).

- weight: the endpoint's `load_balancing_weight`, else its locality's, else 1 (0 is kept: APISIX
  accepts it and sends nothing there);
- `health_status` UNHEALTHY, DRAINING and TIMEOUT endpoints are removed;
- locality `priority` (0 = most preferred in Envoy) -> node `priority` = -priority (APISIX tries
  higher values first);
- IPv6 addresses are bracketed; duplicates are merged (weights summed); nodes are sorted;
- Istio auto-mTLS: when only some endpoints carry `tlsMode: istio` (sidecars being rolled out), those
  nodes get `metadata: {tlsMode: istio}`, so the sidecar dials them with mTLS and the others in plaintext.
No endpoints gives no nodes: APISIX answers 503, as Envoy does, and never keeps stale nodes.
"""

from __future__ import annotations

import re
import sys
from typing import Iterable

from sidecar_agent.translate.report import Coverage, Unsupported
from sidecar_agent.translate.upstream import EndpointPart

_REMOVED_HEALTH = {2, 3, 4}  # UNHEALTHY, DRAINING, TIMEOUT
_HOST_DEF = re.compile(r"^\*?[0-9a-zA-Z-._\[\]:]+$")
_TLS_MATCH = "envoy.transport_socket_match"
ISTIO_NODE = {"tlsMode": "istio"}  # node metadata of a sidecar endpoint in a mixed set (shared, read-only)


def translate_endpoints(cla, kind: str = "endpoints", resource: str | None = None, path: str = "",
                        pool: "NodePool | None" = None) -> tuple[EndpointPart, Iterable[Unsupported]]:
    """The endpoint set and its unsupported fields (compact: iterate for the entries); `pool`: node
    dicts to share with other endpoint sets."""
    cov = Coverage(kind, resource or sys.intern(cla.cluster_name))
    nodes, tls_marks = endpoint_nodes(cla, cov, path, pool)
    istio = sum(tls_marks)
    mixed = 0 < istio < len(nodes)
    if mixed:  # Istio auto-mTLS per endpoint: the sidecar's endpoints are marked (lua/amesh/hook.lua reads it)
        nodes = [dict(node, metadata=ISTIO_NODE) if mark else node for node, mark in zip(nodes, tls_marks)]
    part = EndpointPart(nodes=nodes, istio_tls=bool(nodes) and istio == len(nodes), mixed_tls=mixed)
    return part, cov.compact()


_CLA_HANDLED = frozenset({"cluster_name", "endpoints"})
_LOCALITY_HANDLED = frozenset({"locality", "lb_endpoints", "load_balancing_weight", "priority"})
_LBE_HANDLED = frozenset({"endpoint", "health_status", "load_balancing_weight", "metadata"})
_ENDPOINT_HANDLED = frozenset({"address", "hostname"})


def endpoint_nodes(cla, cov: Coverage, path: str = "", pool: "NodePool | None" = None) -> tuple[list[dict], list[bool]]:
    """The nodes (a list the upstreams share, read-only) and whether each has tlsMode=istio."""
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
    shared = pool.node if pool is not None else _node
    for (priority, host, port), (weight, tls) in sorted(merged.items()):  # keys are unique: values never compared
        nodes.append(shared(host, port, weight, priority))
        marks.append(tls)
    return nodes, marks


def _node(host: str, port: int, weight: int, priority: int) -> dict:
    node = {"host": host, "port": port, "weight": weight}
    if priority:
        node["priority"] = -priority
    return node


class NodePool:
    """Node dicts shared among endpoint sets (read-only): a service's ClusterLoadAssignment and its
    subsets' list the same pods, and a node dict costs 184 bytes (at 10,000 services half of the
    200,000 nodes are repeats). One entry per host, the first node seen for it: a host listed with
    another port, weight or priority gets a dict of its own. The owner calls `sweep` with the node
    lists still held when `needs_sweep` says the pool has doubled since the last sweep, so hosts that
    went away (pods replaced) do not pile up."""

    def __init__(self) -> None:
        self._by_host: dict[str, dict] = {}
        self._kept = 0  # entries after the last sweep

    def node(self, host: str, port: int, weight: int, priority: int) -> dict:
        found = self._by_host.get(host)
        if found is not None:
            if found["port"] == port and found["weight"] == weight and found.get("priority", 0) == -priority:
                return found
            return _node(host, port, weight, priority)
        node = self._by_host[host] = _node(host, port, weight, priority)
        return node

    def __len__(self) -> int:
        return len(self._by_host)

    def needs_sweep(self) -> bool:
        return len(self._by_host) > 2 * self._kept + 4096

    def sweep(self, held: Iterable[Iterable[dict]]) -> None:
        """Forget the nodes no list of `held` (every endpoint set's nodes) contains."""
        live = {id(node) for nodes in held for node in nodes}
        self._by_host = {host: node for host, node in self._by_host.items() if id(node) in live}
        self._kept = len(self._by_host)


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
    # Interned: one str per address however many endpoint sets (a service's and its subsets') list it.
    host = sys.intern(sa.address)
    if ":" in host:  # only IPv6 literals hold a colon; DNS names (STRICT_DNS) are resolved by APISIX
        host = sys.intern(f"[{host}]")
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
