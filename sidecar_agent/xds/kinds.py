"""The four xDS resource kinds the sidecar subscribes to, and how each one is named and decoded.

Type URLs come from xds/types.py (the one place they are spelled); `import-time` checks that each
matches its generated message, so they cannot drift from xds-protos.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError, Message

from sidecar_agent.xds import types

def type_url_of(message_class: type[Message]) -> str:
    return types.PREFIX + message_class.DESCRIPTOR.full_name


class Subscription(enum.Enum):
    WILDCARD = "wildcard"  # LDS, CDS: the server sends everything for this node
    BY_NAME = "by_name"  # RDS, EDS: the client names what its listeners/clusters reference


@dataclass(frozen=True)
class Kind:
    short: str
    type_url: str
    message: type[Message]
    subscription: Subscription
    name_field: str

    def __post_init__(self) -> None:
        if type_url_of(self.message) != self.type_url:
            raise AssertionError(f"{self.type_url} does not name {self.message.DESCRIPTOR.full_name}")

    def name_of(self, resource: Message) -> str:
        return getattr(resource, self.name_field)


CDS = Kind("cds", types.CLUSTER, cluster_pb2.Cluster, Subscription.WILDCARD, "name")
EDS = Kind("eds", types.CLUSTER_LOAD_ASSIGNMENT, endpoint_pb2.ClusterLoadAssignment, Subscription.BY_NAME, "cluster_name")
LDS = Kind("lds", types.LISTENER, listener_pb2.Listener, Subscription.WILDCARD, "name")
RDS = Kind("rds", types.ROUTE_CONFIGURATION, route_pb2.RouteConfiguration, Subscription.BY_NAME, "name")

BY_TYPE_URL: dict[str, Kind] = {k.type_url: k for k in (CDS, EDS, LDS, RDS)}
ORDER: tuple[Kind, ...] = tuple(BY_TYPE_URL[url] for url in types.SEND_ORDER)
_RESOURCE_WRAPPER = type_url_of(discovery_pb2.Resource)


class MalformedResource(ValueError):
    """A resource in a response could not be decoded as the type the response claims."""


def payload(kind: Kind, packed: any_pb2.Any) -> bytes:
    """The serialized resource inside one Any of a DiscoveryResponse (optionally wrapped in a discovery
    Resource), after checking it is of the type the response claims."""
    if packed.type_url == _RESOURCE_WRAPPER:
        wrapper = discovery_pb2.Resource()
        try:
            wrapper.ParseFromString(packed.value)
        except DecodeError as exc:
            raise MalformedResource(f"{kind.short}: undecodable Resource wrapper: {exc}") from exc
        packed = wrapper.resource
    if packed.type_url != kind.type_url:
        raise MalformedResource(
            f"{kind.short}: resource of type {packed.type_url!r} in a {kind.type_url} response"
        )
    return packed.value


def parse(kind: Kind, value: bytes) -> Message:
    message = kind.message()
    try:
        message.ParseFromString(value)
    except DecodeError as exc:
        raise MalformedResource(f"{kind.short}: undecodable resource: {exc}") from exc
    if not kind.name_of(message):
        raise MalformedResource(f"{kind.short}: resource without a name")
    return message


def decode(kind: Kind, packed: any_pb2.Any) -> Message:
    """Unpack one Any of a DiscoveryResponse into its message."""
    return parse(kind, payload(kind, packed))
