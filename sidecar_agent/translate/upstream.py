"""Per-route upstream behaviour and the final APISIX upstream object (pure).

Envoy keeps retries, timeouts and the hash key on the *route* while APISIX keeps them on the
*upstream*. A route therefore references `(cluster, UpstreamPolicy)`; each distinct pair becomes one
APISIX upstream (the cluster's nodes and settings plus the policy), with an id derived from both names.
The default policy (no retries, APISIX's default read/send timeout, no hash) is the cluster's plain
upstream, emitted for every cluster.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from functools import lru_cache
from typing import Any

from sidecar_agent.translate import ids

APISIX_DEFAULT_TIMEOUT = 60.0  # seconds; what APISIX uses for send/read when nothing is set


@dataclass(frozen=True, order=True, slots=True)
class UpstreamPolicy:
    retries: int = 0
    retry_timeout: float | None = None
    read_timeout: float | None = None  # send and read; None = APISIX_DEFAULT_TIMEOUT
    hash_on: str | None = None  # APISIX chash `hash_on`, used only if the cluster hashes
    hash_key: str | None = None
    # Computed once per policy (ids and names of every upstream using it read them); not compared.
    _variant: str | None = field(default=None, init=False, repr=False, compare=False)
    _hash: int | None = field(default=None, init=False, repr=False, compare=False)

    def variant(self) -> str:
        cached = self._variant
        if cached is None:
            cached = _variant(self)
            object.__setattr__(self, "_variant", cached)
        return cached

    def __hash__(self) -> int:
        cached = self._hash
        if cached is None:
            cached = hash(tuple(getattr(self, name) for name in _POLICY_FIELDS))
            object.__setattr__(self, "_hash", cached)
        return cached

    def __getstate__(self) -> tuple:
        return _fields_only(self)

    def __setstate__(self, state: tuple) -> None:
        _restore(self, state)


_POLICY_FIELDS = tuple(f.name for f in fields(UpstreamPolicy) if f.init)


def _variant(policy: UpstreamPolicy) -> str:
    if policy.retries == 0 and policy.retry_timeout is None and policy.read_timeout is None \
            and policy.hash_on is None:
        return ""
    return ",".join(f"{name}={getattr(policy, name)}" for name in _POLICY_FIELDS
                    if getattr(policy, name) is not None)


DEFAULT_POLICY = UpstreamPolicy()


@dataclass(frozen=True, order=True, slots=True)
class UpstreamRef:
    cluster: str
    policy: UpstreamPolicy = DEFAULT_POLICY
    # Refs are set members and Counter keys by the hundred thousand: id and hash computed once. Slots,
    # not a __dict__: ~90 bytes less for each of the ~100,000 refs at 10,000 services.
    _id: str | None = field(default=None, init=False, repr=False, compare=False)
    _hash: int | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def id(self) -> str:
        cached = self._id
        if cached is None:
            cached = ids.upstream_id(self.cluster, self.policy.variant())
            object.__setattr__(self, "_id", cached)
        return cached

    def __hash__(self) -> int:
        cached = self._hash
        if cached is None:
            cached = hash((self.cluster, self.policy))
            object.__setattr__(self, "_hash", cached)
        return cached

    def __getstate__(self) -> tuple:
        return _fields_only(self)

    def __setstate__(self, state: tuple) -> None:
        _restore(self, state)


def _fields_only(obj) -> tuple:
    """Pickle/copy state without the cached values (a str hash differs between processes)."""
    return tuple(getattr(obj, f.name) for f in fields(obj) if f.init)


def _restore(obj, state: tuple) -> None:
    for f, value in zip((f for f in fields(obj) if f.init), state):
        object.__setattr__(obj, f.name, value)
    for f in fields(obj):
        if not f.init:
            object.__setattr__(obj, f.name, None)


# Python before 3.11.4 (Debian 12 ships 3.11.2) replaces a slotted frozen dataclass's own __getstate__ /
# __setstate__ with generated ones (gh-104035), which would pickle the cached hash: set them again.
for _cls in (UpstreamPolicy, UpstreamRef):
    _cls.__getstate__ = _fields_only
    _cls.__setstate__ = _restore


@dataclass(frozen=True, slots=True)
class ClusterPart:
    """What the Cluster resource decides (see cluster.py). Slots: one per cluster, kept for its life."""

    name: str
    body: dict  # upstream fields from the cluster: type, scheme, timeout.connect, checks, labels, …
    hashing: bool  # RING_HASH / MAGLEV: the route's hash policy applies
    eds_name: str | None  # ClusterLoadAssignment to read nodes from; None = nodes in `static_nodes`
    static_nodes: list[dict] | None  # read-only: the cluster's upstreams all hold this very list
    tls_auto: bool  # Istio auto-mTLS: TLS only for endpoints labelled tlsMode=istio
    # `labels` of its upstreams when auto-mTLS applies: one dict for all of them (read-only)
    mutual_labels: dict | None = None
    # … and when it applies to some endpoints only (`amesh.tls: istio-per-endpoint`: the marked nodes)
    per_endpoint_labels: dict | None = None


@dataclass(frozen=True, slots=True)
class EndpointPart:
    """What the ClusterLoadAssignment decides (see endpoint.py). Slots: one per endpoint set."""

    nodes: list[dict]  # read-only: every upstream of the clusters reading it holds this very list
    istio_tls: bool  # every node carries tlsMode=istio
    mixed_tls: bool  # some do, some don't


def auto_mutual(cluster: ClusterPart, endpoints: EndpointPart | None) -> bool:
    """Istio auto-mTLS applies: the cluster matches `tlsMode: istio` and every endpoint carries it."""
    return cluster.tls_auto and endpoints is not None and endpoints.istio_tls and not endpoints.mixed_tls


def per_endpoint_mutual(cluster: ClusterPart, endpoints: EndpointPart | None) -> bool:
    """Istio auto-mTLS applies to the endpoints carrying `tlsMode: istio` only (a mixed set)."""
    return cluster.tls_auto and endpoints is not None and endpoints.mixed_tls


def istio_mutual(cluster: ClusterPart, endpoints: EndpointPart | None) -> bool:
    """The upstream `build` makes for this cluster and endpoint set dials Istio mTLS, to all its endpoints
    (`amesh.tls: istio-mutual`) or to some (`istio-per-endpoint`)."""
    return (auto_mutual(cluster, endpoints) or per_endpoint_mutual(cluster, endpoints)
            or (cluster.body.get("labels") or {}).get("amesh.tls") == "istio-mutual")


@lru_cache(maxsize=1024, typed=True)
def timeout_of(connect: float, send: float, read: float) -> dict:
    """One `timeout` dict per distinct value, shared by every upstream with it (read-only; typed: 5
    and 5.0 print differently)."""
    return {"connect": connect, "send": send, "read": read}


def build(ref: UpstreamRef, cluster: ClusterPart | None, endpoints: EndpointPart | None) -> dict[str, Any]:
    """The APISIX upstream for `ref`. A missing cluster or endpoint set gives no nodes (503), never stale ones.

    Documents are read-only: the upstream shares its node list (and the node dicts) with the endpoint
    set and every other upstream of the cluster, its `timeout`, `checks` and `labels` with upstreams
    of equal value — copies would be most of the document's memory (10 nodes x 60,000 upstreams).
    """
    policy = ref.policy
    variant = policy.variant()
    body: dict[str, Any] = dict(cluster.body) if cluster else {"type": "roundrobin", "scheme": "http"}
    if cluster is None:
        body["labels"] = {"amesh.missing": "cluster"}
    nodes: list[dict] | None = None
    if cluster is not None:
        if cluster.eds_name is None:
            nodes = cluster.static_nodes
        elif endpoints is not None:
            nodes = endpoints.nodes
            if auto_mutual(cluster, endpoints):
                body["scheme"] = "https"
                body["labels"] = cluster.mutual_labels
            elif per_endpoint_mutual(cluster, endpoints):  # plaintext, but https to the marked nodes
                body["labels"] = cluster.per_endpoint_labels
    body["nodes"] = nodes if nodes is not None else []
    timeout = body.get("timeout")
    connect = timeout.get("connect", 5.0) if timeout else 5.0  # Envoy's default connect timeout
    read = policy.read_timeout or APISIX_DEFAULT_TIMEOUT
    body["timeout"] = timeout_of(connect, read, read)
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
