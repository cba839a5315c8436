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
        # Computed once per policy: ids and names of every upstream using it read it.
        cached = self.__dict__.get("_variant")
        if cached is None:
            cached = _variant(self)
            object.__setattr__(self, "_variant", cached)
        return cached

    def __hash__(self) -> int:
        cached = self.__dict__.get("_hash")
        if cached is None:
            cached = hash(tuple(getattr(self, name) for name in _POLICY_FIELDS))
            object.__setattr__(self, "_hash", cached)
        return cached

    def __getstate__(self) -> dict:
        return _fields_only(self)


_POLICY_FIELDS = tuple(f.name for f in fields(UpstreamPolicy))


def _variant(policy: UpstreamPolicy) -> str:
    if policy.retries == 0 and policy.retry_timeout is None and policy.read_timeout is None \
            and policy.hash_on is None:
        return ""
    return ",".join(f"{name}={getattr(policy, name)}" for name in _POLICY_FIELDS
                    if getattr(policy, name) is not None)


DEFAULT_POLICY = UpstreamPolicy()


@dataclass(frozen=True, order=True)
class UpstreamRef:
    cluster: str
    policy: UpstreamPolicy = DEFAULT_POLICY

    @property
    def id(self) -> str:
        cached = self.__dict__.get("_id")
        if cached is None:
            cached = ids.upstream_id(self.cluster, self.policy.variant())
            object.__setattr__(self, "_id", cached)
        return cached

    def __hash__(self) -> int:
        # Refs are set members and Counter keys by the hundred thousand: hash once.
        cached = self.__dict__.get("_hash")
        if cached is None:
            cached = hash((self.cluster, self.policy))
            object.__setattr__(self, "_hash", cached)
        return cached

    def __getstate__(self) -> dict:
        return _fields_only(self)


def _fields_only(obj) -> dict:
    """Pickle/copy state without the cached values (a str hash differs between processes)."""
    return {k: v for k, v in obj.__dict__.items() if not k.startswith("_")}


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
    variant = policy.variant()
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
    # The node dicts are shared with the endpoint set (and every upstream of the cluster): documents
    # are read-only, and copies would be most of the document's memory (10 nodes x 60,000 upstreams).
    body["nodes"] = list(nodes)
    timeout = body.get("timeout")
    connect = timeout.get("connect", 5.0) if timeout else 5.0  # Envoy's default connect timeout
    read = policy.read_timeout or APISIX_DEFAULT_TIMEOUT
    body["timeout"] = {"connect": connect, "send": read, "read": read}
    retries = policy.retries
    body["retries"] = retries
    if retries and policy.retry_timeout is not None:
        body["retry_timeout"] = policy.retry_timeout
    if policy.hash_on and cluster is not None and cluster.hashing:
        body["type"] = "chash"
        body["hash_on"] = policy.hash_on
        body["key"] = policy.hash_key
    body["id"] = ref.id
    body["name"] = f"{ref.cluster} [{variant}]"[:256] if variant else ref.cluster[:256]
    return body
