"""The agent's stream from amesh-controller: subscribe for our pod, hand every plugin set to the agent.

- Sends the pod identity and the pod's service-account token (`authorization: Bearer …`), re-read from
  its file on every connect because projected tokens rotate.
- Reconnects with jittered exponential backoff after any failure, refusals included (a token that
  fails now may be fine after rotation, and a controller still syncing answers UNAVAILABLE); the attempt
  counter resets once a message arrives.
- While disconnected the last received set stays in force: a controller restart must not strip the
  plugins from every sidecar. Only a set the controller sends (possibly empty) replaces it.
- TLS, verifying the controller (`StreamSecurity`): the certificate must chain to the CA in
  `AMESH_CONTROLLER_CA` (a PEM file the injection template mounts; re-read on every connect, so a rotated
  CA is picked up) — the system's roots when unset — and name the address's host (or
  `AMESH_CONTROLLER_SERVER_NAME`). Plaintext only with `AMESH_CONTROLLER_INSECURE_PLAINTEXT=true`.
- The agent's own allowlist (`AMESH_ALLOWED_PLUGINS`, amesh_common.allowlist): a set naming any plugin
  outside it is refused whole — not handed on, the set in force stays — and the reason is kept
  (`refused`, `last_error`: the agent's /plugins) and reported to `on_refused`.

Without explicit `security` the settings come from the process environment (what the injection template
sets on the sidecar container).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from amesh_common.allowlist import Allowlist

from amesh_common.proto import pb2, pb2_grpc
from amesh_common.wire import WireError, from_message
from amesh_common.plugin_model import PluginSet
from amesh_common.backoff import Backoff

log = logging.getLogger(__name__)

ENV_CA = "AMESH_CONTROLLER_CA"
ENV_INSECURE = "AMESH_CONTROLLER_INSECURE_PLAINTEXT"
ENV_SERVER_NAME = "AMESH_CONTROLLER_SERVER_NAME"
ENV_ALLOWED = "AMESH_ALLOWED_PLUGINS"
_TRUE = ("1", "true", "yes", "on")


@dataclass(frozen=True)
class StreamSecurity:
    ca_file: Path | None = None  # PEM bundle that must sign the controller's certificate; None: system roots
    insecure_plaintext: bool = False  # development only: no TLS at all
    server_name: str | None = None  # the name the certificate must carry (default: the target's host)
    allowed: Allowlist = Allowlist()  # plugins the controller may push to this sidecar

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "StreamSecurity":
        ca = (env.get(ENV_CA) or "").strip()
        return cls(ca_file=Path(ca) if ca else None,
                   insecure_plaintext=(env.get(ENV_INSECURE) or "").strip().lower() in _TRUE,
                   server_name=(env.get(ENV_SERVER_NAME) or "").strip() or None,
                   allowed=Allowlist.parse(env.get(ENV_ALLOWED)))

    def channel(self, target: str) -> grpc.aio.Channel:
        """A channel for one connection attempt; OSError (naming the file) when the CA cannot be read."""
        if self.insecure_plaintext:
            return grpc.aio.insecure_channel(target)
        roots = None
        if self.ca_file is not None:
            try:
                roots = self.ca_file.read_bytes()
            except OSError as exc:
                raise OSError(f"controller CA {self.ca_file} ({ENV_CA}): {exc.strerror}") from None
            if b"-----BEGIN CERTIFICATE-----" not in roots:
                raise OSError(f"controller CA {self.ca_file} ({ENV_CA}) holds no PEM certificate")
        options = [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []
        return grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=roots), options=options)

    def describe(self) -> str:
        if self.insecure_plaintext:
            return "plaintext (insecure)"
        return f"TLS, CA {self.ca_file or 'system roots'}" + (f", name {self.server_name}" if self.server_name else "")


def refusal(plugin_set: PluginSet, allowed: Allowlist) -> str | None:
    """None if every plugin of the set is allowed, else why the set is refused (pure)."""
    reasons = list(dict.fromkeys(r for p in plugin_set.plugins if (r := allowed.refusal(p.name, p.type))))
    if not reasons:
        return None
    more = f" (and {len(reasons) - 3} more)" if len(reasons) > 3 else ""
    return f"plugin set {plugin_set.version!r} refused: " + "; ".join(reasons[:3]) + more


@dataclass(eq=False)
class PluginClient:
    target: str  # "host:port" of amesh-controller's plugin stream (15810)
    namespace: str
    pod: str
    token: Callable[[], str | None]
    on_set: Callable[[PluginSet], Awaitable[None]]
    backoff: Backoff = Backoff(initial=0.5, maximum=30.0)
    security: StreamSecurity | None = None  # None: StreamSecurity.from_env(os.environ)
    on_refused: Callable[[PluginSet, str], None] | None = None  # a set the allowlist refused, and why
    connected: bool = field(default=False, init=False)
    received: int = field(default=0, init=False)
    attempts: int = field(default=0, init=False)  # connection attempts so far
    last_error: str | None = field(default=None, init=False)
    current: PluginSet | None = field(default=None, init=False)
    refused: str | None = field(default=None, init=False)  # why the last set received was refused; None: adopted
    refused_sets: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.security is None:
            self.security = StreamSecurity.from_env(os.environ)
        if self.security.insecure_plaintext:
            log.warning("plugin stream to %s is plaintext (%s): insecure, for development only", self.target, ENV_INSECURE)

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
        channel = self.security.channel(self.target)
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
                why = refusal(plugin_set, self.security.allowed)
                if why:
                    self._refuse(plugin_set, why)
                    continue
                self.last_error = self.refused = None
                self.current = plugin_set
                await self.on_set(plugin_set)

    def _refuse(self, plugin_set: PluginSet, why: str) -> None:
        self.refused = self.last_error = why
        self.refused_sets += 1
        kept = self.current.version if self.current is not None else None
        log.warning("%s (%s=%s); keeping set %r", why, ENV_ALLOWED, self.security.allowed.describe(), kept)
        if self.on_refused is not None:
            try:
                self.on_refused(plugin_set, why)
            except Exception:  # a reporting bug must not end the stream
                log.exception("reporting the refused plugin set failed")


def token_file_reader(path: str) -> Callable[[], str | None]:
    def read() -> str | None:
        try:
            with open(path) as f:
                return f.read().strip() or None
        except OSError:
            return None
    return read
