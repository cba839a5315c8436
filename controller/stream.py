"""Serving plugin sets to agents: `Hub` (which streams want which pod; no I/O) and the gRPC edge.

A subscription holds only the *latest* set for its pod: a slow agent skips intermediate sets instead of
queueing them (every message is a full set, so nothing is lost), and a set equal to the one it was
last sent is not sent again. The first message of a stream is the pod's current set.

A stream is refused with UNAVAILABLE until the controller has listed configs and pods, so an agent
never receives a falsely empty set from a controller that is still starting.

An open stream re-checks its token every `recheck_seconds` (60 s) and when the token's `exp` passes,
with a fresh TokenReview; when the review fails the stream ends with PERMISSION_DENIED, so no stream
outlives the token (or the pod) it was opened with. The agent reconnects with its rotated token.

The server speaks TLS with the serving certificate the chart mounts (`ServerTls`: re-read when its files
change, so a cert-manager renewal needs no restart); plaintext only with `--insecure-plaintext`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc

from controller.auth import Refused, token_expiry
from controller.metrics import ControllerMetrics
from amesh_common.proto import pb2, pb2_grpc
from controller.selection import PodKey
from amesh_common.wire import to_message
from amesh_common.plugin_model import PluginSet

log = logging.getLogger(__name__)
DEFAULT_PORT = 15810
RECHECK_SECONDS = 60.0


class Subscription:
    def __init__(self, pod: PodKey, initial: PluginSet) -> None:
        self.pod = pod
        self._latest: PluginSet | None = initial
        self._sent: PluginSet | None = None
        self._wake = asyncio.Event()
        self._wake.set()

    def offer(self, plugin_set: PluginSet) -> None:
        self._latest = plugin_set
        self._wake.set()

    async def next(self, timeout: float | None = None) -> PluginSet | None:
        """The next set to send; None when `timeout` seconds pass first."""
        deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
        while True:
            if deadline is None:
                await self._wake.wait()
            else:
                try:
                    await asyncio.wait_for(self._wake.wait(), max(0.0, deadline - asyncio.get_running_loop().time()))
                except asyncio.TimeoutError:
                    return None
            self._wake.clear()
            latest = self._latest
            if latest is not None and (self._sent is None or latest.plugins != self._sent.plugins):
                self._sent = latest
                return latest


class Hub:
    def __init__(self, current: Callable[[PodKey], PluginSet]) -> None:
        self.current = current
        self._subs: dict[PodKey, set[Subscription]] = {}

    def subscribe(self, pod: PodKey) -> Subscription:
        sub = Subscription(pod, self.current(pod))
        self._subs.setdefault(pod, set()).add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.pod)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.pod]

    def publish(self, pushes: Mapping[PodKey, PluginSet]) -> int:
        """Offer each pod's new set to its streams; the number of streams notified."""
        notified = 0
        for pod, plugin_set in pushes.items():
            for sub in self._subs.get(pod, ()):
                sub.offer(plugin_set)
                notified += 1
        return notified

    def connected(self) -> int:
        return sum(len(s) for s in self._subs.values())


Authenticate = Callable[..., Awaitable[None]]  # (token, pod, fresh=False); raises Refused


def recheck_delay(token: str, every: float, now: float) -> float:
    """Seconds until an open stream's token is reviewed again: `every`, or sooner when it expires first."""
    exp = token_expiry(token)
    if exp is None:
        return every
    return max(0.0, min(every, exp - now + 1.0))  # just past exp, so the review sees it expired


def bearer_token(metadata) -> str | None:
    for key, value in metadata or ():
        if key.lower() == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value[len("Bearer "):].strip()
    return None


class PluginStreamServicer(pb2_grpc.PluginServiceServicer):
    def __init__(self, hub: Hub, authenticate: Authenticate, metrics: ControllerMetrics,
                 ready: Callable[[], str | None], recheck_seconds: float = RECHECK_SECONDS) -> None:
        self.hub, self.authenticate, self.metrics, self.ready = hub, authenticate, metrics, ready
        self.recheck_seconds = recheck_seconds

    async def StreamPlugins(self, request: pb2.StreamPluginsRequest, context: grpc.aio.ServicerContext):
        pod = (request.pod.namespace, request.pod.name)
        if not all(pod):
            self.metrics.refused.labels("invalid").inc()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "pod.namespace and pod.name are required")
        token = bearer_token(context.invocation_metadata())
        try:
            await self.authenticate(token, pod)
        except Refused as exc:
            self.metrics.refused.labels("unauthenticated" if token is None else "denied").inc()
            log.warning("refused plugin stream for %s/%s: %s", *pod, exc)
            code = grpc.StatusCode.UNAUTHENTICATED if token is None else grpc.StatusCode.PERMISSION_DENIED
            await context.abort(code, str(exc))
        not_ready = self.ready()
        if not_ready:
            self.metrics.refused.labels("not_ready").inc()
            await context.abort(grpc.StatusCode.UNAVAILABLE, not_ready)
        sub = self.hub.subscribe(pod)
        self.metrics.connected.inc()
        loop = asyncio.get_running_loop()
        recheck_at = loop.time() + recheck_delay(token, self.recheck_seconds, time.time())
        try:
            while True:
                plugin_set = await sub.next(timeout=max(0.0, recheck_at - loop.time()))
                if plugin_set is None:  # time to review the token again
                    try:
                        await self.authenticate(token, pod, fresh=True)
                    except Refused as exc:
                        self.metrics.refused.labels("expired").inc()
                        log.info("ending plugin stream of %s/%s: %s", *pod, exc)
                        await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"token no longer accepted: {exc}")
                    recheck_at = loop.time() + recheck_delay(token, self.recheck_seconds, time.time())
                    continue
                yield to_message(plugin_set)
                self.metrics.pushes.inc()
        finally:
            self.hub.unsubscribe(sub)
            self.metrics.connected.dec()


def _pair_problem(cert_pem: bytes, key_pem: bytes) -> str | None:
    """None if `cert_pem` starts with a certificate whose public key is `key_pem`'s, else what is wrong."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        return f"no PEM certificate ({exc})"
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        return f"no unencrypted PEM private key ({exc})"
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(serialization.Encoding.DER, spki) != \
            key.public_key().public_bytes(serialization.Encoding.DER, spki):
        return "the key does not belong to the certificate"
    return None


@dataclass(frozen=True)
class ServerTls:
    """The plugin stream's serving certificate and key (PEM files, as a kubernetes.io/tls Secret mounts them).

    `credentials()` reads them now (a missing or unreadable file fails the start) and again whenever either
    file's modification time changes: new handshakes use a renewed certificate without a restart."""

    cert_file: Path
    key_file: Path

    def _read(self) -> tuple[bytes, bytes]:
        try:
            cert = Path(self.cert_file).read_bytes()
            key = Path(self.key_file).read_bytes()
        except OSError as exc:
            raise OSError(f"plugin stream TLS: cannot read {exc.filename}: {exc.strerror}") from None
        problem = _pair_problem(cert, key)  # gRPC would only fail at the first handshake: check the pair now
        if problem:
            raise OSError(f"plugin stream TLS: {self.cert_file} and {self.key_file} are not a certificate and "
                          f"its key: {problem}")
        return key, cert

    def _stamp(self) -> tuple:
        try:
            return tuple(os.stat(p).st_mtime_ns for p in (self.cert_file, self.key_file))
        except OSError:
            return ()

    def credentials(self) -> grpc.ServerCredentials:
        key, cert = self._read()
        state = {"stamp": self._stamp()}

        def fetch():
            stamp = self._stamp()
            if not stamp or stamp == state["stamp"]:
                return None  # unchanged (or mid-update): keep the current certificate
            try:
                new_key, new_cert = self._read()
                config = grpc.ssl_server_certificate_configuration([(new_key, new_cert)])
            except (OSError, ValueError) as exc:
                log.warning("keeping the current serving certificate: %s", exc)
                return None
            state["stamp"] = stamp
            log.info("serving certificate reloaded from %s", self.cert_file)
            return config

        initial = grpc.ssl_server_certificate_configuration([(key, cert)])
        return grpc.dynamic_ssl_server_credentials(initial, fetch, require_client_authentication=False)


async def start_server(servicer: PluginStreamServicer, address: str,
                       tls: ServerTls | None = None) -> tuple[grpc.aio.Server, int]:
    """A started grpc.aio server on `address` ("host:port", port 0 = any); returns it and its port.

    With `tls` the port speaks TLS only; `tls=None` is plaintext (`--insecure-plaintext`, development).
    `[::]:PORT` listens on IPv6 and IPv4 (gRPC falls back to IPv4 alone where the host has no IPv6)."""
    server = grpc.aio.server(options=[
        ("grpc.keepalive_time_ms", 30_000),  # find dead agents (and let proxies see traffic)
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ])
    pb2_grpc.add_PluginServiceServicer_to_server(servicer, server)
    port = server.add_secure_port(address, tls.credentials()) if tls is not None else server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen for the plugin stream on {address}")
    await server.start()
    return server, port
