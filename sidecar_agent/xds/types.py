"""Envoy v3 xDS type URLs and the order in which ADS delivers them, in one place."""

from __future__ import annotations

PREFIX = "type.googleapis.com/"

LISTENER = PREFIX + "envoy.config.listener.v3.Listener"
ROUTE_CONFIGURATION = PREFIX + "envoy.config.route.v3.RouteConfiguration"
CLUSTER = PREFIX + "envoy.config.cluster.v3.Cluster"
CLUSTER_LOAD_ASSIGNMENT = PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
SECRET = PREFIX + "envoy.extensions.transport_sockets.tls.v3.Secret"

# Envoy's recommended ADS order: clusters before their endpoints, listeners before
# their routes, so that nothing is referenced before it exists.
SEND_ORDER: tuple[str, ...] = (CLUSTER, CLUSTER_LOAD_ASSIGNMENT, LISTENER, ROUTE_CONFIGURATION)

# Well-known filter and extension names that the translation looks for.
HTTP_CONNECTION_MANAGER = "envoy.filters.network.http_connection_manager"
TCP_PROXY = "envoy.filters.network.tcp_proxy"
FAULT_FILTER = "envoy.filters.http.fault"
CORS_FILTER = "envoy.filters.http.cors"
TLS_TRANSPORT_SOCKET = "envoy.transport_sockets.tls"
HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def message_name(type_url: str) -> str:
    """`type.googleapis.com/a.b.C` -> `a.b.C` (any host part before the last `/` is dropped)."""
    return type_url.rsplit("/", 1)[-1]
