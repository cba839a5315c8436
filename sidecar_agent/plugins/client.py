"""The agent's stream from amesh-controller: subscribe for our pod, hand every plugin set to the agent.

- Sends the pod identity and the pod's service-account token (`authorization: Bearer …`), re-read from
  its file on every connect because projected tokens rotate.
- Reconnects with jittered exponential backoff after any failure, refusals included (a token that
  fails now may be fine after rotation, and a controller still syncing answers UNAVAILABLE); the attempt
  counter resets once a message arrives.
- While disconnected the last received set stays in force: a controller restart must not strip the
  plugins from every sidecar. Only a set the controller sends (possibly empty) replaces it.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc

from amesh_common.proto import pb2, pb2_grpc
from amesh_common.wire import WireError, from_message
from amesh_common.plugin_model import PluginSet
from amesh_common.backoff import Backoff

log = logging.getLogger(__name__)


@dataclass(eq=False)
class PluginClient:
    target: str  # "host:port" of amesh-controller's plugin stream (15810)
    namespace: str
    pod: str
    token: Callable[[], str | None]
    on_set: Callable[[PluginSet], Awaitable[None]]
    backoff: Backoff = Backoff(initial=0.5, maximum=30.0)
    credentials: grpc.ChannelCredentials | None = None  # None = plaintext (inside the mesh)
    connected: bool = field(default=False, init=False)
    received: int = field(default=0, init=False)
    attempts: int = field(default=0, init=False)  # connection attempts so far
    last_error: str | None = field(default=None, init=False)
    current: PluginSet | None = field(default=None, init=False)

    async def run(self) -> None:
        failures = 0
        while True:
            self.attempts += 1
            try:
                await self._stream_once()
                self.last_error = "stream ended by the controller"
            except grpc.aio.AioRpcError as exc:
                self.last_error = f"{exc.code().name}: {exc.details()}"
            except (WireError, OSError) as exc:
                self.last_error = str(exc)
            finally:
                self.connected = False
            if self.received:
                failures, self.received = 0, 0
            delay = self.backoff.delay(failures, random.random())
            failures += 1
            log.warning("plugin stream to %s: %s; reconnecting in %.1fs", self.target, self.last_error, delay)
            await asyncio.sleep(delay)

    async def _stream_once(self) -> None:
        channel = (grpc.aio.secure_channel(self.target, self.credentials) if self.credentials
                   else grpc.aio.insecure_channel(self.target))
        async with channel:
            stub = pb2_grpc.PluginServiceStub(channel)
            token = self.token()
            metadata = (("authorization", f"Bearer {token}"),) if token else ()
            request = pb2.StreamPluginsRequest(pod=pb2.PodIdentity(namespace=self.namespace, name=self.pod))
            call = stub.StreamPlugins(request, metadata=metadata)
            async for message in call:
                plugin_set = from_message(message)
                self.connected = True
                self.received += 1
                self.last_error = None
                self.current = plugin_set
                await self.on_set(plugin_set)


def token_file_reader(path: str) -> Callable[[], str | None]:
    def read() -> str | None:
        try:
            with open(path) as f:
                return f.read().strip() or None
        except OSError:
            return None
    return read
