"""Immutable snapshots of the raw xDS the agent holds: per type, the accepted version and resources by name.

A snapshot is replaced whole (`replace` returns a new one), so readers — the translator, /config_dump —
never see a half-applied response.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.route.v3 import route_pb2
from google.protobuf.message import Message

from sidecar_agent.xds import kinds, references

_EMPTY: Mapping[str, Message] = MappingProxyType({})


@dataclass(frozen=True)
class TypeState:
    version: str = ""
    items: Mapping[str, Message] = field(default_factory=lambda: _EMPTY)


@dataclass(frozen=True)
class Missing:
    """Names referenced but not (yet) held: routes named by listeners, endpoints named by clusters."""

    routes: frozenset[str]
    endpoints: frozenset[str]

    def __bool__(self) -> bool:
        return bool(self.routes or self.endpoints)


@dataclass(frozen=True)
class Snapshot:
    types: Mapping[str, TypeState] = field(default_factory=lambda: MappingProxyType({}))

    def state(self, kind: kinds.Kind) -> TypeState:
        return self.types.get(kind.type_url, TypeState())

    def version(self, kind: kinds.Kind) -> str:
        return self.state(kind).version

    def items(self, kind: kinds.Kind) -> Mapping[str, Message]:
        return self.state(kind).items

    def has_received(self, kind: kinds.Kind) -> bool:
        return kind.type_url in self.types

    def replace(self, kind: kinds.Kind, version: str, items: Mapping[str, Message]) -> Snapshot:
        types = dict(self.types)
        types[kind.type_url] = TypeState(version, MappingProxyType(dict(items)))
        return Snapshot(MappingProxyType(types))

    def route_names(self) -> frozenset[str]:
        return references.route_names(self.items(kinds.LDS).values())

    def endpoint_names(self) -> frozenset[str]:
        return references.endpoint_names(self.items(kinds.CDS).values())

    def missing(self) -> Missing:
        return Missing(
            routes=self.route_names() - self.items(kinds.RDS).keys(),
            endpoints=self.endpoint_names() - self.items(kinds.EDS).keys(),
        )

    def complete(self) -> bool:
        """Both wildcard types received and every RDS/EDS name they reference present."""
        return (
            self.has_received(kinds.LDS)
            and self.has_received(kinds.CDS)
            and not self.missing()
        )

    def filled_in(self) -> Snapshot:
        """The partial policy, after waiting too long for referenced resources.

        Mirrors what Envoy does when `initial_fetch_timeout` expires: a cluster still waiting for
        EDS becomes active with no endpoints (503), a listener still waiting for RDS becomes active
        with an empty route table (404). Nothing ever names an upstream that is not there.
        """
        missing = self.missing()
        snapshot = self
        if missing.endpoints:
            eds = dict(self.items(kinds.EDS))
            for name in missing.endpoints:
                eds[name] = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
            snapshot = snapshot.replace(kinds.EDS, self.version(kinds.EDS), eds)
        if missing.routes:
            rds = dict(self.items(kinds.RDS))
            for name in missing.routes:
                rds[name] = route_pb2.RouteConfiguration(name=name)
            snapshot = snapshot.replace(kinds.RDS, self.version(kinds.RDS), rds)
        return snapshot

    def versions(self) -> dict[str, str]:
        return {k.short: self.version(k) for k in kinds.ORDER if self.has_received(k)}


EMPTY = Snapshot()
