"""Sans-IO state of an ADS v3 state-of-the-world client: responses in, requests out.

No sockets, no clock. The edge (client.py) feeds each DiscoveryResponse to `receive`, decides
whether the candidate snapshot is acceptable (translation), then calls `accept` (ACK) or `reject`
(NACK) and writes the requests those return, in order, on the one stream.

Rules kept here, as go-control-plane's server expects them:
- LDS and CDS are wildcard; RDS and EDS name exactly what the held listeners and clusters reference.
- Per type URL: the last accepted version and the latest nonce seen on this stream. Every request
  carries the latest nonce of its type; an ACK echoes the new version, a NACK the previous accepted
  version plus `error_detail`, so the last good configuration stays in force on both sides.
- The node is sent on the first request of each stream only.
- A resource whose bytes equal one already held (same digest) is not decoded again: the held
  `Resource` is reused, so the pipeline sees exactly which names changed (identity).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf.message import Message
from google.rpc import status_pb2

from sidecar_agent.store import EMPTY, Codec, Resource, Snapshot, digest_of, resource_of
from sidecar_agent.xds import kinds

_INVALID_ARGUMENT = 3  # google.rpc.Code
# Decoded messages handed on with a response, in wire bytes. A decoded message takes several times its
# wire size, so a 10,000-service initial CDS would otherwise sit in memory twice over; beyond this the
# pipeline decodes again from the bytes (a route change at 1,000 services is ~1.3 MB: well within). Each
# is handed on with its bytes (`Decoded`), which add their own size once more.
DECODED_BUDGET = 8 * 1024 * 1024


class Decoded(NamedTuple):
    """A resource of a response, decoded, with the bytes it was decoded from (the translator can use
    them instead of serializing the message again)."""

    message: Message
    wire: bytes


@dataclass(frozen=True)
class Pending:
    """A decoded response waiting for the caller's verdict; `snapshot` is what accepting it yields."""

    kind: kinds.Kind
    version: str
    nonce: str
    snapshot: Snapshot
    subscriptions: Mapping[kinds.Kind, frozenset[str]] = field(default_factory=dict)
    # The resources of this response that are new or changed, decoded (unchanged ones were recognised
    # by their bytes and never decoded); dropped with the Pending, so messages are never held long.
    decoded: Mapping[str, Decoded] = field(default_factory=dict)


@dataclass(frozen=True)
class Rejected:
    """A response the protocol refused on its own (unknown type, undecodable resource)."""

    type_url: str
    error: str
    requests: tuple[discovery_pb2.DiscoveryRequest, ...]


@dataclass(frozen=True)
class Nack:
    type_url: str
    version: str  # the version that was refused
    nonce: str
    error: str


class ProtocolMisuse(RuntimeError):
    """The caller broke the receive → accept/reject sequence."""


class AdsSession:
    def __init__(self, node: base_pb2.Node, snapshot: Snapshot = EMPTY) -> None:
        self._node = node
        self.snapshot = snapshot
        self.last_nack: Nack | None = None
        self._names: dict[kinds.Kind, frozenset[str]] = {
            kinds.EDS: snapshot.endpoint_names(),
            kinds.RDS: snapshot.route_names(),
        }
        self._nonces: dict[str, str] = {}
        self._codecs: dict[kinds.Kind, Codec] = {}
        self._node_sent = False
        self._pending: Pending | None = None

    # -- stream lifecycle -------------------------------------------------------------------
    def start(self) -> list[discovery_pb2.DiscoveryRequest]:
        """Requests opening a new stream: wildcard CDS/LDS, plus RDS/EDS for names already held."""
        self._nonces.clear()
        self._node_sent = False
        self._pending = None
        out = []
        for kind in kinds.ORDER:
            if kind.subscription is kinds.Subscription.BY_NAME and not self._names[kind]:
                continue  # an empty first request would mean "wildcard" to the server
            out.append(self._request(kind.type_url, self.snapshot.version(kind)))
        return out

    def subscribed(self, kind: kinds.Kind) -> frozenset[str] | None:
        """Names subscribed for RDS/EDS; None for the wildcard types."""
        return self._names.get(kind)

    # -- responses ----------------------------------------------------------------------------
    def receive(self, response: discovery_pb2.DiscoveryResponse) -> Pending | Rejected:
        if self._pending is not None:
            raise ProtocolMisuse("receive() before the previous response was accepted or rejected")
        type_url = response.type_url
        self._nonces[type_url] = response.nonce
        kind = kinds.BY_TYPE_URL.get(type_url)
        if kind is None:
            return self._rejected(type_url, response, f"unsupported type URL {type_url!r}")
        try:
            received, decoded = self._decode(kind, response)
        except kinds.MalformedResource as exc:
            return self._rejected(type_url, response, str(exc))

        if kind.subscription is kinds.Subscription.WILDCARD:
            items = received  # state of the world: the response is the whole set
        else:
            # RDS/EDS responses may carry only the changed names; unrequested names are ignored.
            wanted = self._names[kind]
            items = {n: r for n, r in self.snapshot.items(kind).items() if n in wanted}
            items.update((n, r) for n, r in received.items() if n in wanted)
            decoded = {n: m for n, m in decoded.items() if n in wanted}
        candidate = self.snapshot.replace(kind, response.version_info, items)

        subscriptions: dict[kinds.Kind, frozenset[str]] = {}
        child = {kinds.LDS: kinds.RDS, kinds.CDS: kinds.EDS}.get(kind)
        if child is not None:
            names = candidate.route_names() if child is kinds.RDS else candidate.endpoint_names()
            if names != self._names[child]:
                subscriptions[child] = names
                kept = {n: m for n, m in candidate.items(child).items() if n in names}
                candidate = candidate.replace(child, candidate.version(child), kept)
        self._pending = Pending(kind, response.version_info, response.nonce, candidate, subscriptions, decoded)
        return self._pending

    def accept(self, pending: Pending) -> list[discovery_pb2.DiscoveryRequest]:
        self._check_pending(pending)
        self.snapshot = pending.snapshot
        out = [self._request(pending.kind.type_url, pending.version)]
        for child, names in pending.subscriptions.items():
            self._names[child] = names
            out.append(self._request(child.type_url, self.snapshot.version(child)))
        return out

    def reject(self, pending: Pending, error: str) -> list[discovery_pb2.DiscoveryRequest]:
        self._check_pending(pending)
        kind = pending.kind
        self.last_nack = Nack(kind.type_url, pending.version, pending.nonce, error)
        return [self._request(kind.type_url, self.snapshot.version(kind), error)]

    # -- helpers ------------------------------------------------------------------------------
    def _check_pending(self, pending: Pending) -> None:
        if pending is not self._pending:
            raise ProtocolMisuse("accept()/reject() of a response that is not the pending one")
        self._pending = None

    def _rejected(self, type_url: str, response, error: str) -> Rejected:
        self.last_nack = Nack(type_url, response.version_info, response.nonce, error)
        kind = kinds.BY_TYPE_URL.get(type_url)
        version = self.snapshot.version(kind) if kind else ""
        return Rejected(type_url, error, (self._request(type_url, version, error),))

    def _decode(self, kind: kinds.Kind, response) -> tuple[dict[str, Resource], dict[str, Decoded]]:
        held = self.snapshot.state(kind).by_digest
        out: dict[str, Resource] = {}
        decoded: dict[str, Decoded] = {}
        budget = DECODED_BUDGET
        for packed in response.resources:
            value = kinds.payload(kind, packed)
            digest = digest_of(value)
            resource = held.get(digest)
            if resource is None:
                message = kinds.parse(kind, value)
                codec = self._codecs.get(kind)
                if codec is None:  # resources of the first response of a type: the dictionary of all
                    codec = self._codecs[kind] = Codec.sampling_many(_spread(kind, response.resources))
                resource = resource_of(kind, value, message, codec, digest)
                if len(value) <= budget:
                    budget -= len(value)
                    decoded[resource.name] = Decoded(message, value)
            if resource.name in out:
                raise kinds.MalformedResource(f"{kind.short}: duplicate resource name {resource.name!r}")
            out[resource.name] = resource
        return out, decoded

    def _request(
        self, type_url: str, version: str, error: str | None = None
    ) -> discovery_pb2.DiscoveryRequest:
        request = discovery_pb2.DiscoveryRequest(
            type_url=type_url,
            version_info=version,
            response_nonce=self._nonces.get(type_url, ""),
        )
        kind = kinds.BY_TYPE_URL.get(type_url)
        if kind is not None and kind.subscription is kinds.Subscription.BY_NAME:
            request.resource_names.extend(sorted(self._names[kind]))
        if error is not None:
            request.error_detail.CopyFrom(status_pb2.Status(code=_INVALID_ARGUMENT, message=error))
        if not self._node_sent:
            request.node.CopyFrom(self._node)
            self._node_sent = True
        return request


def _spread(kind: kinds.Kind, resources) -> list[bytes]:
    """The payloads of up to 64 resources spread over a response (a compression dictionary's sample)."""
    step = max(1, len(resources) // 64)
    return [kinds.payload(kind, resources[i]) for i in range(0, len(resources), step)]
