"""A Listener's filter chains and what their network filters are: the one walker every reader uses
(RDS references, outbound HTTP/TCP translation, the stream side, virtualInbound).

A network filter is an HTTP connection manager or a TCP proxy by its typed config's type or, as
Envoy's well-known names allow, by its filter name; its config comes back decoded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from sidecar_agent.xds import types

HCM_TYPE = hcm_pb2.HttpConnectionManager.DESCRIPTOR.full_name
TCP_PROXY_TYPE = tcp_proxy_pb2.TcpProxy.DESCRIPTOR.full_name
HTTP, TCP, OTHER = "http", "tcp", "other"


@dataclass(frozen=True)
class NetworkFilter:
    name: str  # the filter's name, else its config's type
    kind: str  # HTTP | TCP | OTHER
    config: object | None  # the decoded HttpConnectionManager / TcpProxy; None for OTHER


def filter_chains(listener, *, default: bool = True) -> list:
    """`filter_chains`, then `default_filter_chain` when set (and `default`)."""
    chains = list(listener.filter_chains)
    if default and listener.HasField("default_filter_chain"):
        chains.append(listener.default_filter_chain)
    return chains


def network_filters(chain) -> Iterator[NetworkFilter]:
    for network_filter in chain.filters:
        typed = network_filter.typed_config
        url = types.message_name(typed.type_url)
        name = network_filter.name or url
        if url == HCM_TYPE or network_filter.name == types.HTTP_CONNECTION_MANAGER:
            manager = hcm_pb2.HttpConnectionManager()
            typed.Unpack(manager)
            yield NetworkFilter(name, HTTP, manager)
        elif url == TCP_PROXY_TYPE or network_filter.name == types.TCP_PROXY:
            proxy = tcp_proxy_pb2.TcpProxy()
            typed.Unpack(proxy)
            yield NetworkFilter(name, TCP, proxy)
        else:
            yield NetworkFilter(name, OTHER, None)


def listener_filters(listener) -> Iterator[NetworkFilter]:
    """Every network filter of every chain of `listener` (default chain included)."""
    for chain in filter_chains(listener):
        yield from network_filters(chain)


def tcp_clusters(proxy) -> tuple[str, ...]:
    """The clusters a TcpProxy sends to: its `cluster`, or every weighted cluster in order."""
    if proxy.WhichOneof("cluster_specifier") == "weighted_clusters":
        return tuple(c.name for c in proxy.weighted_clusters.clusters)
    return (proxy.cluster,)
