"""Outbound listeners -> APISIX stream routes on the capture port 15001 (pure).

The stream front (docs/data-path.md, design (a)) sees every captured outbound connection with the
original destination as server_addr/server_port (the Lua hook). What Envoy does per listener:

| Envoy outbound listener                          | stream route                                           |
|--------------------------------------------------|--------------------------------------------------------|
| `<VIP>_<port>` with tcp_proxy -> cluster          | server_addr VIP, server_port port -> that cluster       |
| `0.0.0.0_<port>` with tcp_proxy                   | server_port port -> that cluster                        |
| `0.0.0.0_<port>` / `<VIP>_<port>` with an HCM     | (server_addr,) server_port -> the internal HTTP listener of that port |
| `virtualOutbound` tcp_proxy PassthroughCluster    | ALLOW_ANY: catch-alls 0.0.0.0/0 and ::/0 -> original destination |
| `virtualOutbound` tcp_proxy BlackHoleCluster      | REGISTRY_ONLY: no catch-all; APISIX resets the connection |

Passthrough upstreams carry `labels: {amesh.passthrough: original-dst}` and no nodes: APISIX has no
ORIGINAL_DST upstream, so every route to one carries the `amesh-passthrough` plugin
(sidecar_agent/lua/apisix/plugins/), which sets the node from the original destination in preread.
TCP clusters reference the upstreams the Translator already builds for every CDS cluster
(`ids.upstream_id(cluster)`). Network filters other than HCM/tcp_proxy are reported by listener.py.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass
from typing import Mapping

from sidecar_agent.apisix.datapath import PASSTHROUGH_PLUGIN
from sidecar_agent.translate import ids
from sidecar_agent.translate.errors import TranslationError
from sidecar_agent.translate.report import Coverage, Unsupported
from sidecar_agent.xds.chains import HTTP, TCP, filter_chains, network_filters, tcp_clusters

PASSTHROUGH, BLACKHOLE = "PassthroughCluster", "BlackHoleCluster"
PASSTHROUGH_LABEL = {"amesh.passthrough": "original-dst"}
INBOUND = 1


class OutboundPolicy(enum.Enum):
    """Istio's meshConfig.outboundTrafficPolicy.mode."""

    ALLOW_ANY = "ALLOW_ANY"
    REGISTRY_ONLY = "REGISTRY_ONLY"


@dataclass(frozen=True)
class StreamPart:
    stream_routes: tuple[dict, ...]
    upstreams: tuple[dict, ...]  # only the upstreams this module owns (internal listeners, passthrough)
    http_ports: tuple[int, ...]  # outbound ports served as HTTP: DataPathSettings.outbound_http_ports
    policy: OutboundPolicy
    report: tuple[Unsupported, ...]
    clusters: tuple[str, ...] = ()  # CDS clusters the stream routes send to (their upstreams: the Translator's)


def http_ports(listeners: Mapping[str, object]) -> tuple[int, ...]:
    """Outbound ports istiod serves with an HTTP connection manager (feed DataPathSettings first)."""
    ports = {http_port(listener) for listener in listeners.values()}
    return tuple(sorted(p for p in ports if p is not None))


def precedence(route: Mapping) -> tuple:
    """Sort key of stream routes in the document. APISIX's stream router takes the *first* route that
    matches, in document order (stream/router/ip_port.lua; measured on APISIX 3.18), so the order is the
    precedence: inbound routes (the pod's own addresses, `inbound|…`) before outbound ones, since a
    connection accepted on 15006 to the pod's address and port P must not take an outbound `0.0.0.0_P`
    route; then, as Envoy picks listeners, address and port before port only, longer address prefixes
    before shorter ones, and the catch-alls last."""
    addr = route.get("server_addr")
    prefixlen = ipaddress.ip_network(addr, strict=False).prefixlen if addr else -1
    return (0 if str(route.get("name", "")).startswith("inbound|") else 1,
            0 if route.get("server_port") else 1, -prefixlen, route["id"])


def translate_outbound_stream(listeners: Mapping[str, object], internal: Mapping[int, int],
                              policy: OutboundPolicy | None = None) -> StreamPart:
    """`listeners`: LDS by name; `internal`: outbound HTTP port -> internal listener port (from
    apisix.datapath.internal_ports); `policy`: the mesh config's, else read from virtualOutbound."""
    routes: list[dict] = []
    upstreams: dict[str, dict] = {}
    entries: list[Unsupported] = []
    ports = http_ports(listeners)
    for name in sorted(listeners):
        part = translate_listener_stream(listeners[name], internal, ports)
        routes += part.stream_routes
        upstreams.update((u["id"], u) for u in part.upstreams)
        entries += part.report
    resolved = policy or policy_of(listeners.get("virtualOutbound"))
    catch_all = translate_catch_all(resolved)
    routes += catch_all.stream_routes
    upstreams.update((u["id"], u) for u in catch_all.upstreams)
    routes.sort(key=precedence)
    return StreamPart(tuple(routes), tuple(upstreams[k] for k in sorted(upstreams)), ports, resolved,
                      tuple(sorted(entries)))


def http_port(listener) -> int | None:
    """The port of an outbound listener istiod serves with an HTTP connection manager, else None."""
    if _outbound(listener) and listener.name != "virtualOutbound" and any(kind == "http" for kind, _ in
                                                                          _chains(listener)):
        return listener.address.socket_address.port_value
    return None


def translate_listener_stream(listener, internal: Mapping[int, int], ports: tuple[int, ...] = ()) -> StreamPart:
    """One outbound listener's stream route (none for virtualOutbound, inbound or chain-less ones).

    Only this listener and, for an HTTP one, its port's internal listener are read: the Translator
    recomputes a listener's part when it or that mapping changes."""
    name = listener.name
    if not _outbound(listener) or name == "virtualOutbound":
        return StreamPart((), (), (), OutboundPolicy.ALLOW_ANY, ())
    cov = Coverage("listener", name)
    address = listener.address.socket_address
    addr, port = address.address, address.port_value
    if not 0 < port < 65536:
        raise TranslationError(f"listener {name!r}: port {port} is not a port number")
    match: dict = {"server_port": port}
    try:
        unspecified = not addr or ipaddress.ip_address(addr).is_unspecified
    except ValueError:
        raise TranslationError(f"listener {name!r}: address {addr!r} is not an IP address") from None
    if not unspecified:
        match = {"server_addr": addr, "server_port": port}
    chains = _chains(listener, cov)
    if len(chains) > 1:
        cov.add(f"filter_chains[{len(chains)} chains: only the first is routed]")
    if not chains:
        return StreamPart((), (), (), OutboundPolicy.ALLOW_ANY, cov.entries())
    kind, target = chains[0]
    route = {"id": ids.stable_id("sr", name, kind, target), "name": f"{name}/{kind}", **match}
    upstreams: dict[str, dict] = {}
    if kind == "http":
        if port not in internal:
            raise TranslationError(f"listener {name!r}: HTTP port {port} has no internal listener "
                                   f"(regenerate conf/config.yaml with outbound_http_ports {list(ports)})")
        upstream = _internal_upstream(port, internal[port])
        upstreams[upstream["id"]] = upstream
        route["upstream_id"] = upstream["id"]
    elif target == PASSTHROUGH:
        route["upstream_id"] = _passthrough(upstreams)["id"]
        route["plugins"] = {PASSTHROUGH_PLUGIN: {}}
    else:
        route["upstream_id"] = ids.upstream_id(target)
        return StreamPart((route,), (), (), OutboundPolicy.ALLOW_ANY, cov.entries(), (target,))
    return StreamPart((route,), tuple(upstreams.values()), (), OutboundPolicy.ALLOW_ANY, cov.entries())


def translate_catch_all(policy: OutboundPolicy) -> StreamPart:
    """What no outbound listener takes: ALLOW_ANY passes it to the original destination (the
    amesh-passthrough plugin sets the node); REGISTRY_ONLY adds nothing, so APISIX closes it."""
    upstreams: dict[str, dict] = {}
    routes = []
    if policy is OutboundPolicy.ALLOW_ANY:
        upstream_id = _passthrough(upstreams)["id"]
        for cidr in ("0.0.0.0/0", "::/0"):
            routes.append({"id": ids.stable_id("sr", "virtualOutbound", cidr), "name": f"virtualOutbound/{cidr}",
                           "server_addr": cidr, "upstream_id": upstream_id, "plugins": {PASSTHROUGH_PLUGIN: {}}})
    return StreamPart(tuple(routes), tuple(upstreams.values()), (), policy, ())


def _outbound(listener) -> bool:
    return listener.traffic_direction != INBOUND and listener.name != "virtualInbound" \
        and listener.HasField("address") and listener.address.HasField("socket_address")


def _chains(listener, cov: Coverage | None = None) -> list[tuple[str, str]]:
    """("http", "") or ("tcp", cluster) per filter chain, in order (a chain's last such filter)."""
    out = []
    for chain in filter_chains(listener):
        if cov is not None and chain.HasField("filter_chain_match"):
            for descriptor, _ in chain.filter_chain_match.ListFields():
                cov.add(f"filter_chains.filter_chain_match.{descriptor.name}")
        found = None
        for network_filter in network_filters(chain):
            if network_filter.kind == HTTP:
                found = ("http", "")
            elif network_filter.kind == TCP:
                found = ("tcp", _tcp_cluster(network_filter.config, cov))
        if found:
            out.append(found)
    return out


def _tcp_cluster(proxy, cov: Coverage | None) -> str:
    clusters = tcp_clusters(proxy)
    if proxy.WhichOneof("cluster_specifier") == "weighted_clusters":
        if cov is not None:
            cov.add("filter_chains.filters.tcp_proxy.weighted_clusters[first cluster only]")
        return clusters[0] if clusters else BLACKHOLE
    return clusters[0]


def policy_of(virtual_outbound) -> OutboundPolicy:
    """Istio writes the mesh's outbound policy into virtualOutbound's tcp_proxy cluster."""
    if virtual_outbound is None:
        return OutboundPolicy.ALLOW_ANY  # Istio's default
    clusters = {target for kind, target in _chains(virtual_outbound) if kind == "tcp"}
    return OutboundPolicy.ALLOW_ANY if PASSTHROUGH in clusters else OutboundPolicy.REGISTRY_ONLY


def _internal_upstream(port: int, internal_port: int) -> dict:
    return {"id": ids.stable_id("u", "amesh-http-outbound", str(port)), "name": f"amesh-http-outbound|{port}",
            "type": "roundrobin", "scheme": "tcp", "nodes": [{"host": "127.0.0.1", "port": internal_port, "weight": 1}],
            "labels": {"amesh.internal": "http-outbound"}}


def _passthrough(upstreams: dict[str, dict]) -> dict:
    upstream = {"id": ids.stable_id("u", "amesh-passthrough-outbound"), "name": "amesh-passthrough|outbound",
                "type": "roundrobin", "scheme": "tcp", "nodes": [], "labels": dict(PASSTHROUGH_LABEL)}
    return upstreams.setdefault(upstream["id"], upstream)
