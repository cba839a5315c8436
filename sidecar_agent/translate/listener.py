"""Envoy Listener -> which route configurations serve outbound HTTP, plus inline ones (pure).

Outbound HTTP listeners (Istio's `0.0.0.0_9080`) carry an HttpConnectionManager naming an RDS route
configuration; those route configurations are translated by route.py. An inline `route_config` is
translated here. Inbound listeners (`virtualInbound`, `traffic_direction: INBOUND`) are translated by
inbound.py and `tcp_proxy` chains (TCP services, `PassthroughCluster` in `virtualOutbound`) by
stream.py, both wired in by document.py; `ListenerPart.tcp` keeps the clusters tcp_proxy names (the
HTTP fallback route reads virtualOutbound's). Network filters other than those two are reported here.
"""

from __future__ import annotations

from dataclasses import dataclass

from sidecar_agent.translate.report import Coverage, Unsupported
from sidecar_agent.translate.route import RouteSet, translate_route_config
from sidecar_agent.xds import types

_HCM_URL = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_TCP_URL = "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
# HTTP filters whose per-route configuration the translation reads, or that need nothing in APISIX.
_HTTP_FILTERS_CARRIED = {"envoy.filters.http.router", types.FAULT_FILTER, types.CORS_FILTER}


@dataclass(frozen=True)
class ListenerPart:
    name: str
    rds_names: tuple[str, ...]  # RDS route configurations used for outbound HTTP
    inline: tuple[RouteSet, ...]  # inline route configurations, translated
    tcp: tuple[str, ...]  # clusters of tcp_proxy chains (for the stream-route issue)
    report: tuple[Unsupported, ...]


def translate_listener(listener) -> ListenerPart:
    name = listener.name
    cov = Coverage("listener", name)
    if name == "virtualInbound" or listener.traffic_direction == 1:  # INBOUND
        if name != "virtualInbound":  # inbound.py translates (and reports) virtualInbound only
            cov.add("listener[inbound listener other than virtualInbound: not translated]")
        return ListenerPart(name, (), (), (), cov.entries())
    rds: set[str] = set()
    inline: list[RouteSet] = []
    tcp: set[str] = set()
    chains = list(listener.filter_chains)
    if listener.HasField("default_filter_chain"):
        chains.append(listener.default_filter_chain)
    for chain in chains:
        for network_filter in chain.filters:
            url = types.message_name(network_filter.typed_config.type_url)
            if url == _HCM_URL or network_filter.name == types.HTTP_CONNECTION_MANAGER:
                _hcm(network_filter, name, rds, inline, cov)
            elif url == _TCP_URL or network_filter.name == types.TCP_PROXY:
                tcp.add(_tcp_cluster(network_filter))  # stream.py makes its stream route
            else:
                cov.add(f"filter_chains.filters[{network_filter.name or url}]")
    return ListenerPart(name, tuple(sorted(rds)), tuple(inline), tuple(sorted(tcp)), cov.entries())


def _hcm(network_filter, listener: str, rds: set[str], inline: list[RouteSet], cov: Coverage) -> None:
    from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

    hcm = hcm_pb2.HttpConnectionManager()
    network_filter.typed_config.Unpack(hcm)
    kind = hcm.WhichOneof("route_specifier")
    if kind == "rds":
        rds.add(hcm.rds.route_config_name)
    elif kind == "route_config":
        rc = type(hcm.route_config)()
        rc.CopyFrom(hcm.route_config)
        if not rc.name:
            rc.name = f"{listener}/inline"
        inline.append(translate_route_config(rc))
    else:
        cov.add(f"filter_chains.filters.http_connection_manager.{kind}")
    for http_filter in hcm.http_filters:
        if http_filter.name not in _HTTP_FILTERS_CARRIED:
            cov.add(f"filter_chains.filters.http_connection_manager.http_filters[{http_filter.name}]")


def _tcp_cluster(network_filter) -> str:
    from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

    proxy = tcp_proxy_pb2.TcpProxy()
    network_filter.typed_config.Unpack(proxy)
    if proxy.WhichOneof("cluster_specifier") == "weighted_clusters":
        return ",".join(c.name for c in proxy.weighted_clusters.clusters)
    return proxy.cluster
