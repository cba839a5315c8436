"""Which RDS and EDS names a set of listeners and clusters depends on (pure)."""

from __future__ import annotations

from collections.abc import Iterable

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from sidecar_agent.xds.kinds import type_url_of

_HCM = type_url_of(hcm_pb2.HttpConnectionManager)


def route_names(listeners: Iterable[listener_pb2.Listener]) -> frozenset[str]:
    """RouteConfiguration names referenced through `rds` by HTTP connection managers."""
    names: set[str] = set()
    for listener in listeners:
        chains = list(listener.filter_chains)
        if listener.HasField("default_filter_chain"):
            chains.append(listener.default_filter_chain)
        for chain in chains:
            for network_filter in chain.filters:
                typed = network_filter.typed_config
                if typed.type_url != _HCM:
                    continue
                manager = hcm_pb2.HttpConnectionManager()
                typed.Unpack(manager)
                if manager.WhichOneof("route_specifier") == "rds":
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
