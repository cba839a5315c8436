"""Envoy Listener -> which route configurations serve outbound HTTP, plus inline ones (pure).

Outbound HTTP listeners (Istio's `0.0.0.0_9080`) carry an HttpConnectionManager naming an RDS route
configuration; those route configurations are translated by route.py. An inline `route_config` is
translated here. Inbound listeners (`virtualInbound`, `traffic_direction: INBOUND`) are translated by
inbound.py and `tcp_proxy` chains (TCP services, `PassthroughCluster` in `virtualOutbound`) by
stream.py, both wired in by document.py; `ListenerPart.tcp` keeps the clusters tcp_proxy names (the
HTTP fallback route reads virtualOutbound's). Network filters other than those two are reported here, and
the listener's and its connection managers' own fields by manager.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from sidecar_agent.apisix.datapath import DEFAULT_MIRROR_PORT
from sidecar_agent.translate.manager import MANAGER_PATH, Manager, read_manager, report_listener
from sidecar_agent.translate.report import Coverage, Unsupported
from sidecar_agent.translate.route import RouteSet, translate_route_config
from sidecar_agent.xds.chains import HTTP, TCP, listener_filters, tcp_clusters


@dataclass(frozen=True)
class ListenerPart:
    name: str
    rds_names: tuple[str, ...]  # RDS route configurations used for outbound HTTP
    inline: tuple[RouteSet, ...]  # inline route configurations, translated
    tcp: tuple[str, ...]  # clusters of tcp_proxy chains (for the stream-route issue)
    report: tuple[Unsupported, ...]
    # (RDS name, what its routes inherit from this listener's connection manager)
    managers: tuple[tuple[str, Manager], ...] = ()


def translate_listener(listener, mirror_port: int = DEFAULT_MIRROR_PORT) -> ListenerPart:
    """`mirror_port`: the data path's mirror listener, for inline route configurations' mirrors."""
    name = listener.name
    cov = Coverage("listener", name)
    report_listener(listener, cov)
    if name == "virtualInbound" or listener.traffic_direction == 1:  # INBOUND
        if name != "virtualInbound":  # inbound.py translates (and reports) virtualInbound only
            cov.add("listener[inbound listener other than virtualInbound: not translated]")
        return ListenerPart(name, (), (), (), cov.entries())
    rds: dict[str, Manager] = {}
    inline: list[RouteSet] = []
    tcp: set[str] = set()
    for network_filter in listener_filters(listener):
        if network_filter.kind == HTTP:
            _hcm(network_filter.config, name, rds, inline, cov, mirror_port)
        elif network_filter.kind == TCP:
            tcp.add(",".join(tcp_clusters(network_filter.config)))  # stream.py makes its stream route
        else:
            cov.add(f"filter_chains.filters[{network_filter.name}]")
    return ListenerPart(name, tuple(sorted(rds)), tuple(inline), tuple(sorted(tcp)), cov.entries(),
                        tuple(sorted(rds.items(), key=lambda item: item[0])))


def _hcm(hcm, listener: str, rds: dict[str, Manager], inline: list[RouteSet], cov: Coverage,
         mirror_port: int) -> None:
    manager = read_manager(hcm, cov)
    kind = hcm.WhichOneof("route_specifier")
    if kind == "rds":
        name = hcm.rds.route_config_name
        # two managers serving one route configuration: a route takes websocket upgrades if either
        # does (APISIX has one route for both; the flag changes nothing for plain requests)
        rds[name] = Manager(websocket=manager.websocket or rds.get(name, Manager()).websocket)
    elif kind == "route_config":
        rc = type(hcm.route_config)()
        rc.CopyFrom(hcm.route_config)
        if not rc.name:
            rc.name = f"{listener}/inline"
        inline.append(translate_route_config(rc, websocket=manager.websocket, mirror_port=mirror_port))
    else:
        cov.add(f"{MANAGER_PATH}.{kind}")
