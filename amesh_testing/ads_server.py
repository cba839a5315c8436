"""A small real ADS v3 SotW server over grpc.aio, serving versioned snapshots (go-control-plane's shape).

Used by the agent's tests and benchmark as istiod's stand-in. It follows the rules a client is
judged by: per-stream nonces, stale-nonce requests ignored, ACK/NACK of the current version parks
the watch, a new snapshot answers only types whose version changed, by-name types get only what
was asked for. Every request and every sent response is recorded for assertions.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2
from google.protobuf.message import Message

from sidecar_agent.xds import kinds

SHORT = {k.short: k for k in kinds.ORDER}
_WAKE = object()


@dataclass(frozen=True)
class Sent:
    type_url: str
    version: str
    nonce: str
    names: tuple[str, ...]
    at: float  # time.perf_counter() just before the write


@dataclass
class _Resources:
    version: str
    items: dict[str, any_pb2.Any]


def _pack(kind: kinds.Kind, resource: Message | any_pb2.Any, name: str | None) -> tuple[str, any_pb2.Any]:
    if isinstance(resource, any_pb2.Any):
        if name is None:
            raise ValueError("a raw Any needs an explicit name")
        return name, resource
    packed = any_pb2.Any()
    packed.Pack(resource)
    return kind.name_of(resource), packed


@dataclass(eq=False)
class _Stream:
    names: dict[str, frozenset[str] | None] = field(default_factory=dict)  # None = wildcard
    sent_version: dict[str, str] = field(default_factory=dict)
    nonce: dict[str, str] = field(default_factory=dict)
    inbox: asyncio.Queue | None = None  # requests, and _WAKE when the snapshot changed


class AdsServer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    def __init__(self, *, token: str | None = None) -> None:
        self._token = token
        self._snapshot: dict[str, _Resources] = {}
        self._streams: set[_Stream] = set()
        self._nonces = itertools.count(1)
        self.requests: list[discovery_pb2.DiscoveryRequest] = []
        self.sent: list[Sent] = []
        self.streams_opened = 0
        self._server: grpc.aio.Server | None = None
        self.port = 0

    # -- snapshots ----------------------------------------------------------------------------
    def set_snapshot(
        self, version: str, resources: Mapping[str, Iterable[Message | any_pb2.Any | tuple[str, any_pb2.Any]]]
    ) -> None:
        """Replace the given types (keys 'cds', 'eds', 'lds', 'rds'); other types keep theirs."""
        for short, items in resources.items():
            kind = SHORT[short]
            packed: dict[str, any_pb2.Any] = {}
            for item in items:
                name, any_ = _pack(kind, *item) if isinstance(item, tuple) else _pack(kind, item, None)
                packed[name] = any_
            self._snapshot[kind.type_url] = _Resources(version, packed)
        for stream in self._streams:
            stream.inbox.put_nowait(_WAKE)

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self, port: int = 0, credentials: grpc.ServerCredentials | None = None) -> int:
        self._server = grpc.aio.server(
            options=[("grpc.max_send_message_length", 512 * 1024 * 1024), ("grpc.so_reuseport", 0)]
        )
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(self, self._server)
        address = f"127.0.0.1:{port}"
        bound = (
            self._server.add_secure_port(address, credentials)
            if credentials
            else self._server.add_insecure_port(address)
        )
        await self._server.start()
        self.port = bound
        return bound

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=0)
            self._server = None

    # -- the stream -----------------------------------------------------------------------------
    async def StreamAggregatedResources(self, request_iterator, context):
        if self._token is not None:
            metadata = dict(context.invocation_metadata())
            if metadata.get("authorization") != f"Bearer {self._token}":
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, "bad or missing token")
        self.streams_opened += 1
        stream = _Stream()
        inbox: asyncio.Queue = asyncio.Queue()

        async def pump() -> None:
            try:
                async for request in request_iterator:
                    await inbox.put(request)
            finally:
                await inbox.put(None)

        reader = asyncio.ensure_future(pump())
        stream.inbox = inbox
        self._streams.add(stream)
        try:
            while True:
                item = await inbox.get()
                if item is None:
                    return
                if item is _WAKE:
                    for type_url in [k.type_url for k in kinds.ORDER]:
                        if type_url in stream.names and self._changed(stream, type_url):
                            yield self._respond(stream, type_url)
                    continue
                for response in self._on_request(stream, item):
                    yield response
        finally:
            reader.cancel()
            self._streams.discard(stream)

    def _on_request(self, stream: _Stream, request: discovery_pb2.DiscoveryRequest):
        self.requests.append(request)
        type_url = request.type_url
        if request.response_nonce and request.response_nonce != stream.nonce.get(type_url):
            return  # answers an older response: ignored, as go-control-plane does
        kind = kinds.BY_TYPE_URL.get(type_url)
        if kind is None:
            return
        wildcard = kind.subscription is kinds.Subscription.WILDCARD
        names = None if wildcard else frozenset(request.resource_names)
        subscribed_before = type_url in stream.names
        changed_names = subscribed_before and stream.names[type_url] != names
        stream.names[type_url] = names
        if request.HasField("error_detail"):
            return  # NACK: keep the watch parked until the snapshot changes
        if not request.response_nonce or changed_names or self._changed(stream, type_url):
            if type_url in self._snapshot:
                yield self._respond(stream, type_url)

    def _changed(self, stream: _Stream, type_url: str) -> bool:
        current = self._snapshot.get(type_url)
        return current is not None and stream.sent_version.get(type_url) != current.version

    def _respond(self, stream: _Stream, type_url: str) -> discovery_pb2.DiscoveryResponse:
        current = self._snapshot[type_url]
        wanted = stream.names[type_url]
        names = sorted(current.items) if wanted is None else sorted(n for n in wanted if n in current.items)
        nonce = str(next(self._nonces))
        stream.nonce[type_url] = nonce
        stream.sent_version[type_url] = current.version
        self.sent.append(Sent(type_url, current.version, nonce, tuple(names), time.perf_counter()))
        return discovery_pb2.DiscoveryResponse(
            type_url=type_url,
            version_info=current.version,
            nonce=nonce,
            resources=[current.items[n] for n in names],
        )

    def acked(self, short: str, version: str) -> bool:
        """Whether the client has ACKed `version` of a type (a request echoing it without error)."""
        type_url = SHORT[short].type_url
        return any(
            r.type_url == type_url and r.version_info == version and r.response_nonce
            and not r.HasField("error_detail")
            for r in self.requests
        )

    def nacks(self, short: str) -> list[discovery_pb2.DiscoveryRequest]:
        type_url = SHORT[short].type_url
        return [r for r in self.requests if r.type_url == type_url and r.HasField("error_detail")]
