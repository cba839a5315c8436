"""Composition root of amesh-controller: informers → reconciler → (gRPC hub, status writer), plus HTTP.

Everything runs on one asyncio loop; the reconciler is only touched from it, so it needs no locks.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone

from controller import crd, kube, status
from controller.auth import TokenReviewAuthenticator
from controller.informer import Informer
from controller.kube import Kube, KubeError, WatchEvent
from controller.metrics import ControllerMetrics
from controller.reconcile import Actions, ConfigKey, Reconciler
from controller.selection import pod_from
from controller.stream import RECHECK_SECONDS, Hub, PluginStreamServicer, ServerTls, start_server
from controller.validation import PluginChecker
from amesh_common.allowlist import Allowlist
from amesh_common.http_server import serve
from amesh_common.backoff import Backoff

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    kube: kube.KubeConfig
    schema_dir: str
    grpc_address: str = "[::]:15810"  # IPv6 and IPv4
    http_host: str = "::"  # wildcard: dual-stack (amesh_common.http_server)
    metrics_port: int = 18080  # /metrics
    health_port: int = 18081  # /healthz, /readyz (the same port as metrics is fine too)
    token_audiences: tuple[str, ...] = ("amesh-controller",)  # the audience the injection template projects
    # The plugin stream's serving certificate; None only with insecure_plaintext (development).
    tls: ServerTls | None = None
    insecure_plaintext: bool = False
    allowed_plugins: Allowlist = Allowlist()
    token_recheck_seconds: float = RECHECK_SECONDS
    watch_timeout: int = 300
    backoff: Backoff = Backoff(initial=0.5, maximum=30.0)


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(eq=False)
class Controller:
    settings: Settings
    metrics: ControllerMetrics = field(default_factory=ControllerMetrics)

    def __post_init__(self) -> None:
        if self.settings.tls is None and not self.settings.insecure_plaintext:
            raise ValueError("the plugin stream needs a serving certificate (--tls-cert-file/--tls-key-file); "
                             "plaintext only with --insecure-plaintext")
        self.kube = Kube(self.settings.kube)  # fails early on a bad URL ...
        self.checker = PluginChecker(self.settings.schema_dir, self.settings.allowed_plugins)  # ... or schemas
        self.reconciler = Reconciler()
        self.hub = Hub(self.reconciler.set_of)
        self.raw_status: dict[ConfigKey, Mapping | None] = {}  # each config's status as the API has it
        self._pending: set[ConfigKey] = set()
        self._wake = asyncio.Event()
        self.grpc_port: int | None = None
        self.metrics_port: int | None = None
        self.health_port: int | None = None
        self.informers = {
            "configs": Informer(self.kube, kube.CONFIGS, self._configs_synced, self._config_event,
                                self.settings.backoff, self.settings.watch_timeout,
                                lambda why: self.metrics.watch_restarts.labels("configs", why).inc()),
            "pods": Informer(self.kube, kube.PODS, self._pods_synced, self._pod_event,
                             self.settings.backoff, self.settings.watch_timeout,
                             lambda why: self.metrics.watch_restarts.labels("pods", why).inc()),
        }

    # --- readiness -----------------------------------------------------------------------------
    def not_ready(self) -> str | None:
        waiting = [name for name, informer in self.informers.items() if not informer.synced.is_set()]
        if waiting:
            return f"not yet listed: {', '.join(waiting)}"
        if self.grpc_port is None:
            return "plugin stream not serving yet"
        return None

    # --- informer callbacks ----------------------------------------------------------------------
    def _parse(self, obj: Mapping) -> crd.PluginConfig:
        config = crd.parse(obj, self.checker)
        self.raw_status[config.key] = obj.get("status")
        return config

    async def _configs_synced(self, items: list[dict]) -> None:
        configs = []
        for obj in items:
            try:
                configs.append(self._parse(obj))
            except crd.CrdError as exc:
                log.warning("skipping an AmeshPluginConfig: %s", exc)
        self._apply(self.reconciler.resync(configs=configs))

    async def _config_event(self, event: WatchEvent) -> None:
        meta = event.object.get("metadata") or {}
        key = (meta.get("namespace", ""), meta.get("name", ""))
        if event.type == "DELETED":
            self.raw_status.pop(key, None)
            self._apply(self.reconciler.config(key, None))
            return
        try:
            config = self._parse(event.object)
        except crd.CrdError as exc:
            log.warning("skipping an AmeshPluginConfig event: %s", exc)
            return
        self._apply(self.reconciler.config(key, config))
        if config.key in self.reconciler.statuses:  # our own status patch came back, or a spec change
            self._queue_status(config.key)

    async def _pods_synced(self, items: list[dict]) -> None:
        self._apply(self.reconciler.resync(pods=[p for p in map(pod_from, items) if p is not None]))

    async def _pod_event(self, event: WatchEvent) -> None:
        meta = event.object.get("metadata") or {}
        key = (meta.get("namespace", ""), meta.get("name", ""))
        pod = None if event.type == "DELETED" else pod_from(event.object)
        self._apply(self.reconciler.pod(key, pod))

    def _apply(self, actions: Actions) -> None:
        if actions.pushes:
            self.hub.publish(actions.pushes)
        for key in actions.statuses:
            self._queue_status(key)
        self.metrics.configs.set(len(self.reconciler.configs))
        self.metrics.invalid.set(sum(1 for c in self.reconciler.configs.values() if not c.valid))

    # --- status writer -------------------------------------------------------------------------
    def _queue_status(self, key: ConfigKey) -> None:
        self._pending.add(key)
        self._wake.set()

    async def write_statuses(self) -> None:
        # Until both lists are in, counts are partial (configs listed, pods not yet): don't publish them.
        for informer in self.informers.values():
            await informer.synced.wait()
        attempt = 0
        while True:
            await self._wake.wait()
            self._wake.clear()
            failed = False
            for key in sorted(self._pending):
                self._pending.discard(key)
                computed = self.reconciler.statuses.get(key)
                if computed is None:
                    continue  # deleted meanwhile
                body = status.status_body(computed, self.raw_status.get(key), _now())
                if not status.needs_patch(self.raw_status.get(key), body):
                    continue
                try:
                    result = await asyncio.to_thread(self.kube.patch_status, key[0], key[1], body)
                    self.raw_status[key] = result.get("status", body)
                    self.metrics.status_patches.labels("ok").inc()
                except (KubeError, OSError, ValueError) as exc:
                    self.metrics.status_patches.labels("error").inc()
                    if getattr(exc, "status", None) == 404:
                        continue  # the config is gone; its DELETED event follows
                    log.warning("status of %s/%s: %s", *key, exc)
                    self._pending.add(key)
                    failed = True
            if failed:
                await asyncio.sleep(self.settings.backoff.delay(attempt, random.random()))
                attempt += 1
                self._wake.set()
            else:
                attempt = 0

    # --- run ----------------------------------------------------------------------------------
    async def run(self, started: asyncio.Event | None = None) -> None:
        authenticate = TokenReviewAuthenticator(
            lambda token: self.kube.token_review(token, self.settings.token_audiences),
            audiences=self.settings.token_audiences)
        servicer = PluginStreamServicer(self.hub, authenticate, self.metrics, self.not_ready,
                                        self.settings.token_recheck_seconds)
        health = {"/healthz": lambda q: (200, "text/plain", b"ok\n"), "/readyz": self._readyz}
        metrics = {"/metrics": lambda q: (200, "text/plain; version=0.0.4", self._metrics())}
        s = self.settings
        if s.metrics_port == s.health_port:
            https = [serve(s.http_host, s.health_port, {**health, **metrics})]
            self.metrics_port = self.health_port = https[0].port
        else:
            https = [serve(s.http_host, s.health_port, health)]
            try:
                https.append(serve(s.http_host, s.metrics_port, metrics))
            except OSError:
                https[0].close()
                raise
            self.health_port, self.metrics_port = https[0].port, https[1].port
        server = None
        tasks = []
        try:
            server, self.grpc_port = await start_server(
                servicer, self.settings.grpc_address, None if self.settings.insecure_plaintext else self.settings.tls)
            tasks = [asyncio.create_task(i.run(), name=f"informer-{n}") for n, i in self.informers.items()]
            tasks.append(asyncio.create_task(self.write_statuses(), name="status-writer"))
            if started is not None:
                started.set()
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()  # a crashed loop is a bug: surface it
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if server is not None:
                await server.stop(grace=1.0)
            for http in https:
                http.close()

    def _readyz(self, query: str) -> tuple[int, str, bytes]:
        reason = self.not_ready()
        return (503, "text/plain", (reason + "\n").encode()) if reason else (200, "text/plain", b"ok\n")

    def _metrics(self) -> bytes:
        self.metrics.connected.set(self.hub.connected())
        return self.metrics.exposition()
