"""Which RDS and EDS names a set of listeners and clusters depends on (pure)."""

from __future__ import annotations

from collections.abc import Iterable

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2

from sidecar_agent.xds.chains import HTTP, listener_filters


def route_names(listeners: Iterable[listener_pb2.Listener]) -> frozenset[str]:
    """RouteConfiguration names referenced through `rds` by HTTP connection managers."""
    names: set[str] = set()
    for listener in listeners:
        for network_filter in listener_filters(listener):
            manager = network_filter.config
            if network_filter.kind == HTTP and manager.WhichOneof("route_specifier") == "rds":
                names.add(manager.rds.route_config_name)
    return frozenset(names)


def endpoint_names(clusters: Iterable[cluster_pb2.Cluster]) -> frozenset[str]:
    """ClusterLoadAssignment names of the EDS clusters (service_name, else the cluster name)."""
    names: set[str] = set()
    for cluster in clusters:
        if cluster.WhichOneof("cluster_discovery_type") != "type":
            continue  # cluster_type (custom discovery) never uses EDS
        if cluster.type != cluster_pb2.Cluster.EDS:
            continue
        names.add(cluster.eds_cluster_config.service_name or cluster.name)
    return frozenset(names)
