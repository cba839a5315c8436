"""Serving plugin sets to agents: `Hub` (which streams want which pod; no I/O) and the gRPC edge.

A subscription holds only the *latest* set for its pod: a slow agent skips intermediate sets instead of
queueing them (every message is a full set, so nothing is lost), and a set equal to the one it was
last sent is not sent again. The first message of a stream is the pod's current set.

A stream is refused with UNAVAILABLE until the controller has listed configs and pods, so an agent
never receives a falsely empty set from a controller that is still starting.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping

import grpc

from controller.auth import Refused
from controller.metrics import ControllerMetrics
from amesh_common.proto import pb2, pb2_grpc
from controller.selection import PodKey
from amesh_common.wire import to_message
from amesh_common.plugin_model import PluginSet

log = logging.getLogger(__name__)
DEFAULT_PORT = 15810


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

    async def next(self) -> PluginSet:
        while True:
            await self._wake.wait()
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


Authenticate = Callable[[str | None, PodKey], Awaitable[None]]


def bearer_token(metadata) -> str | None:
    for key, value in metadata or ():
        if key.lower() == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value[len("Bearer "):].strip()
    return None


class PluginStreamServicer(pb2_grpc.PluginServiceServicer):
    def __init__(self, hub: Hub, authenticate: Authenticate, metrics: ControllerMetrics,
                 ready: Callable[[], str | None]) -> None:
        self.hub, self.authenticate, self.metrics, self.ready = hub, authenticate, metrics, ready

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
        try:
            while True:
                plugin_set = await sub.next()
                yield to_message(plugin_set)
                self.metrics.pushes.inc()
        finally:
            self.hub.unsubscribe(sub)
            self.metrics.connected.dec()


async def start_server(servicer: PluginStreamServicer, address: str) -> tuple[grpc.aio.Server, int]:
    """A started grpc.aio server on `address` ("host:port", port 0 = any); returns it and its port."""
    server = grpc.aio.server(options=[
        ("grpc.keepalive_time_ms", 30_000),  # find dead agents (and let proxies see traffic)
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ])
    pb2_grpc.add_PluginServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen for the plugin stream on {address}")
    await server.start()
    return server, port
