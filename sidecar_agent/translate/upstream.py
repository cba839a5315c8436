"""Per-route upstream behaviour and the final APISIX upstream object (pure).

Envoy keeps retries, timeouts and the hash key on the *route* while APISIX keeps them on the
*upstream*. A route therefore references `(cluster, UpstreamPolicy)`; each distinct pair becomes one
APISIX upstream (the cluster's nodes and settings plus the policy), with an id derived from both names.
The default policy (no retries, APISIX's default read/send timeout, no hash) is the cluster's plain
upstream, emitted for every cluster.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from sidecar_agent.translate import ids

APISIX_DEFAULT_TIMEOUT = 60.0  # seconds; what APISIX uses for send/read when nothing is set


@dataclass(frozen=True, order=True)
class UpstreamPolicy:
    retries: int = 0
    retry_timeout: float | None = None
    read_timeout: float | None = None  # send and read; None = APISIX_DEFAULT_TIMEOUT
    hash_on: str | None = None  # APISIX chash `hash_on`, used only if the cluster hashes
    hash_key: str | None = None

    def variant(self) -> str:
        if self.retries == 0 and self.retry_timeout is None and self.read_timeout is None and self.hash_on is None:
            return ""
        return ",".join(f"{f.name}={getattr(self, f.name)}" for f in fields(self)
                        if getattr(self, f.name) is not None)


DEFAULT_POLICY = UpstreamPolicy()


@dataclass(frozen=True, order=True)
class UpstreamRef:
    cluster: str
    policy: UpstreamPolicy = DEFAULT_POLICY

    @property
    def id(self) -> str:
        return ids.upstream_id(self.cluster, self.policy.variant())


@dataclass(frozen=True)
class ClusterPart:
    """What the Cluster resource decides (see cluster.py)."""

    name: str
    body: dict  # upstream fields from the cluster: type, scheme, timeout.connect, checks, labels, …
    hashing: bool  # RING_HASH / MAGLEV: the route's hash policy applies
    eds_name: str | None  # ClusterLoadAssignment to read nodes from; None = nodes in `static_nodes`
    static_nodes: tuple[dict, ...] | None
    tls_auto: bool  # Istio auto-mTLS: TLS only for endpoints labelled tlsMode=istio


@dataclass(frozen=True)
class EndpointPart:
    """What the ClusterLoadAssignment decides (see endpoint.py)."""

    nodes: tuple[dict, ...]
    istio_tls: bool  # every node carries tlsMode=istio
    mixed_tls: bool  # some do, some don't


def build(ref: UpstreamRef, cluster: ClusterPart | None, endpoints: EndpointPart | None) -> dict[str, Any]:
    """The APISIX upstream for `ref`. A missing cluster or endpoint set gives no nodes (503), never stale ones."""
    policy = ref.policy
    body: dict[str, Any] = dict(cluster.body) if cluster else {"type": "roundrobin", "scheme": "http"}
    if cluster is None:
        body["labels"] = {"amesh.missing": "cluster"}
    nodes: tuple[dict, ...] = ()
    if cluster is not None:
        if cluster.eds_name is None:
            nodes = cluster.static_nodes or ()
        elif endpoints is not None:
            nodes = endpoints.nodes
            if cluster.tls_auto and endpoints.istio_tls and not endpoints.mixed_tls:
                body["scheme"] = "https"
                body["labels"] = {**body.get("labels", {}), "amesh.tls": "istio-mutual"}
    body["nodes"] = [dict(n) for n in nodes]
    connect = body.get("timeout", {}).get("connect", 5.0)  # Envoy's default connect timeout
    read = policy.read_timeout or APISIX_DEFAULT_TIMEOUT
    body["timeout"] = {"connect": connect, "send": read, "read": read}
    body["retries"] = policy.retries
    if policy.retry_timeout is not None and policy.retries:
        body["retry_timeout"] = policy.retry_timeout
    if cluster is not None and cluster.hashing and policy.hash_on:
        body["type"] = "chash"
        body["hash_on"] = policy.hash_on
        body["key"] = policy.hash_key
    body["id"] = ref.id
    body["name"] = ref.cluster[:256] if not policy.variant() else f"{ref.cluster} [{policy.variant()}]"[:256]
    return body
