"""The gRPC edge of the ADS client: one grpc.aio bidirectional stream, driven by one task.

Thread model: everything runs on the asyncio loop; a single task reads a response, lets the
protocol and the caller decide, and writes the resulting requests, so writes on the stream never
overlap and responses are handled strictly in arrival order.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc

from sidecar_agent.store import Snapshot
from sidecar_agent.xds import memory
from amesh_common.backoff import Backoff
from sidecar_agent.xds.protocol import AdsSession, Pending, Rejected

log = logging.getLogger(__name__)

MAX_RECEIVE_BYTES = 256 * 1024 * 1024  # istiod's full CDS/EDS for a big mesh exceeds gRPC's 4 MiB default


@dataclass(frozen=True)
class TlsSettings:
    """TLS to istiod :15012 as pilot-agent does it: verify with the mesh CA, authenticate with the token."""

    root_cert: Path | None  # None: the system's roots (XDS_ROOT_CA=SYSTEM)
    token: Path | None
    server_name: str | None = None  # overrides the name checked against istiod's certificate


@dataclass(frozen=True)
class Transport:
    address: str  # host:port
    tls: TlsSettings | None = None
    max_receive_bytes: int = MAX_RECEIVE_BYTES
    keepalive_seconds: float = 30.0
    keepalive_timeout_seconds: float = 10.0

    def options(self) -> list[tuple[str, object]]:
        opts: list[tuple[str, object]] = [
            ("grpc.max_receive_message_length", self.max_receive_bytes),
            ("grpc.keepalive_time_ms", int(self.keepalive_seconds * 1000)),
            ("grpc.keepalive_timeout_ms", int(self.keepalive_timeout_seconds * 1000)),
            # Our own reconnect loop owns backoff; keep gRPC's internal one short.
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
        ]
        if self.tls and self.tls.server_name:
            opts.append(("grpc.ssl_target_name_override", self.tls.server_name))
        return opts


class _TokenFromFile(grpc.AuthMetadataPlugin):
    """Re-read the projected token on every call: the kubelet rotates it."""

    def __init__(self, path: Path) -> None:
        self._path = path

    def __call__(self, context, callback) -> None:
        try:
            token = self._path.read_text().strip()
        except OSError as exc:
            callback((), exc)
            return
        callback((("authorization", f"Bearer {token}"),), None)


def open_channel(transport: Transport) -> grpc.aio.Channel:
    if transport.tls is None:
        return grpc.aio.insecure_channel(transport.address, options=transport.options())
    root = transport.tls.root_cert
    creds = grpc.ssl_channel_credentials(root_certificates=root.read_bytes() if root is not None else None)
    if transport.tls.token is not None:
        creds = grpc.composite_channel_credentials(
            creds, grpc.metadata_call_credentials(_TokenFromFile(transport.tls.token))
        )
    return grpc.aio.secure_channel(transport.address, creds, options=transport.options())


class Observer(Protocol):
    def connected(self) -> None: ...
    def disconnected(self, reason: str) -> None: ...
    def responded(self, type_url: str, accepted: bool) -> None: ...


class _Quiet:
    def connected(self) -> None:
        pass

    def disconnected(self, reason: str) -> None:
        pass

    def responded(self, type_url: str, accepted: bool) -> None:
        pass


class _StreamEnded(Exception):
    pass


def refusal(exc: BaseException) -> str | None:
    """An identity refusal by istiod, named for the operator (None for other errors; every error is retried)."""
    if not isinstance(exc, grpc.aio.AioRpcError):
        return None
    if exc.code() is grpc.StatusCode.PERMISSION_DENIED:
        return ("PERMISSION_DENIED: the token's identity does not match the node (POD_NAMESPACE, SERVICE_ACCOUNT "
                "metadata); istiod checks it when PILOT_ENABLE_XDS_IDENTITY_CHECK is on")
    if exc.code() is grpc.StatusCode.UNAUTHENTICATED:
        return "UNAUTHENTICATED: istiod did not accept the token (--xds-token) nor a client certificate"
    return None


async def _send(call, request) -> None:
    """Write one request. A stream istiod has already ended (a refused token closes it at once) makes
    grpc raise InvalidStateError on the write; its status is the error to report, as a read gives it."""
    try:
        await call.write(request)
    except asyncio.InvalidStateError:
        if await call.read() is grpc.aio.EOF:  # raises the AioRpcError of a stream ended in error
            raise _StreamEnded("server closed the stream") from None
        raise


Decide = Callable[[Pending], Awaitable[str | None]]
Accepted = Callable[[Snapshot], Awaitable[None]]


@dataclass
class AdsClient:
    transport: Transport
    session: AdsSession
    decide: Decide  # returns an error message to NACK the response, None to ACK it
    on_accepted: Accepted
    backoff: Backoff = field(default_factory=Backoff)
    observer: Observer = field(default_factory=_Quiet)
    rng: random.Random = field(default_factory=random.Random)

    async def run(self) -> None:
        """Keep one ADS stream open forever; returns only by cancellation."""
        attempt = 0
        while True:
            responded = False
            try:
                async with open_channel(self.transport) as channel:
                    stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
                    call = stub.StreamAggregatedResources()
                    for request in self.session.start():
                        await _send(call, request)
                    self.observer.connected()
                    while True:
                        response = await call.read()
                        if response is grpc.aio.EOF:
                            raise _StreamEnded("server closed the stream")
                        if not responded:
                            responded, attempt = True, 0
                        big = memory.is_big(response)
                        requests = await self._handle(response)
                        response = None  # not kept alive while waiting for the next one
                        if big:
                            memory.release_free_memory()
                        for request in requests:
                            await _send(call, request)
            except (grpc.aio.AioRpcError, grpc.aio.UsageError, _StreamEnded, OSError) as exc:
                reason = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
                refused = refusal(exc)
                if refused:
                    reason = f"{refused}: {reason}"
                    log.error("istiod %s refused this sidecar's ADS stream: %s", self.transport.address, reason)
                else:
                    log.warning("ADS stream to %s lost: %s", self.transport.address, reason)
                self.observer.disconnected(reason or type(exc).__name__)
            delay = self.backoff.delay(attempt, self.rng.random())
            attempt += 1
            await asyncio.sleep(delay)

    async def _handle(self, response) -> list:
        outcome = self.session.receive(response)
        if isinstance(outcome, Rejected):
            log.warning("NACK %s: %s", outcome.type_url, outcome.error)
            self.observer.responded(outcome.type_url, False)
            return list(outcome.requests)
        try:
            error = await self.decide(outcome)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a translation bug must not kill the stream; refuse the config
            log.exception("deciding on %s version %s failed", outcome.kind.short, outcome.version)
            error = f"internal error: {exc!r}"
        if error is not None:
            log.warning("NACK %s version %s: %s", outcome.kind.short, outcome.version, error)
            self.observer.responded(outcome.kind.type_url, False)
            return self.session.reject(outcome, error)
        requests = self.session.accept(outcome)
        self.observer.responded(outcome.kind.type_url, True)
        await self.on_accepted(self.session.snapshot)
        return requests
