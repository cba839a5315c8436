"""Composition root of `amesh-agent run`: the one place that wires the xDS edge, the translation,
the APISIX sink and supervisor, the plugin stream from amesh-controller, and the HTTP endpoints together."""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import signal
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sidecar_agent import identity as identity_mod
from sidecar_agent.apisix import config as apisix_config
from sidecar_agent.apisix import datapath
from sidecar_agent.apisix.supervisor import Supervisor, apisix_command
from sidecar_agent.http import clusters as clusters_mod, diag, health, metrics as metrics_mod
from amesh_common.http_server import Running, serve
from sidecar_agent.pipeline import Pipeline
from sidecar_agent.sink.admin_api import AdminApiSink
from sidecar_agent.sink.file import FileSink
from sidecar_agent.sink.pusher import Pusher
from sidecar_agent.store import EMPTY
from sidecar_agent.xds.client import AdsClient, TlsSettings, Transport
from sidecar_agent.xds.protocol import AdsSession

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AgentConfig:
    discovery_address: str = "istiod.istio-system.svc:15012"
    plaintext: bool = False
    root_cert: Path | None = Path("/var/run/secrets/istio/root-cert.pem")  # None: the system's roots
    token: Path = Path("/var/run/secrets/tokens/istio-token")
    xds_server_name: str | None = None  # defaults to the discovery host (istiod's certificate SAN)
    # File mode by default: the sidecar's outbound and inbound capture ports are stream listeners
    # (docs/data-path.md), and API-driven standalone did not apply stream routes in the APISIX build measured.
    apisix_mode: apisix_config.Mode = apisix_config.Mode.FILE
    apisix_admin_url: str | None = None
    apisix_admin_key: str | None = None
    apisix_prefix: Path = Path("/usr/local/apisix")
    apisix_config_file: Path | None = None  # file mode: defaults to <prefix>/conf/apisix.json
    apisix_metrics_url: str | None = None
    no_apisix: bool = False
    listen_host: str = "0.0.0.0"  # status and metrics ports (kubelet and Prometheus reach them)
    status_port: int = 15021
    metrics_port: int = 15020
    admin_port: int = 15000  # always on 127.0.0.1
    labels_file: Path = Path("/etc/istio/pod/labels")
    partial_timeout: float = 10.0
    drain_seconds: float = 5.0
    schema_dir: Path | None = None  # APISIX's JSON Schemas: validate every document before pushing
    # amesh-controller's plugin stream ("host:port"; None = no controller, no client). The token must pass
    # the controller's TokenReview: the pod's bound service-account token (API server audience) by default.
    controller_address: str | None = None
    controller_token: Path = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
    # Workload identity (sidecar_agent/security): istiod's CA, "host:port"; None = no workload certificate.
    # The CLI sets it (CA_ADDR, else the discovery host:15012 over TLS); the token is `token`, TLS trusts ca_root_cert.
    ca_address: str | None = None
    ca_root_cert: Path | None = None  # None: the system's roots
    trust_domain: str = "cluster.local"

    def problems(self) -> list[str]:
        out = []
        host, sep, port = self.discovery_address.rpartition(":")
        if not sep or not host or not port.isdigit():
            out.append(f"--discovery-address must be HOST:PORT, got {self.discovery_address!r}")
        if not self.plaintext and self.root_cert is not None and not self.root_cert.is_file():
            out.append(f"TLS to istiod needs the mesh CA at {self.root_cert} (XDS_ROOT_CA, or --plaintext)")
        if self.no_apisix and self.apisix_mode is apisix_config.Mode.API and not self.apisix_admin_key:
            out.append("--no-apisix in api mode needs --apisix-admin-key of the APISIX you run")
        if self.ca_address is not None:
            host, sep, port = self.ca_address.rpartition(":")
            if not sep or not host or not port.isdigit():
                out.append(f"CA_ADDR must be HOST:PORT, got {self.ca_address!r}")
        if self.controller_address is not None:
            host, sep, port = self.controller_address.rpartition(":")
            if not sep or not host or not port.isdigit():
                out.append(f"--controller-address must be HOST:PORT, got {self.controller_address!r}")
        for name in ("status_port", "metrics_port", "admin_port"):
            if not 0 <= getattr(self, name) <= 65535:
                out.append(f"{name} must be 0-65535")
        return out


FILE_POLL_SECONDS = 1.5  # APISIX re-reads apisix.json / the pushed stream routes once a second
CERT_DIR = "istio"  # under <APISIX prefix>/conf: the workload certificate APISIX presents (lua/amesh/mtls.lua)


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def default_check(schema_dir: Path | None):
    """With APISIX's JSON Schemas, a document they refuse is NACKed instead of pushed."""
    if schema_dir is None:
        return None
    from sidecar_agent.apisix.validation import SchemaCheck

    return SchemaCheck(schema_dir)


def nofile_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = hard if hard != resource.RLIM_INFINITY else soft
    return int(min(limit, 1024 * 1024)) if limit != resource.RLIM_INFINITY else 1024 * 1024


@dataclass(eq=False)
class Agent:
    config: AgentConfig
    env: Mapping[str, str]
    ports: dict[str, int] = field(default_factory=dict, init=False)
    draining: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        problems = self.config.problems()
        if problems:
            raise ValueError("; ".join(problems))
        labels = self.config.labels_file.read_text() if self.config.labels_file.is_file() else None
        self.identity = identity_mod.from_env(self.env, labels_text=labels)
        mode = str(self.identity.metadata.get("INTERCEPTION_MODE") or "REDIRECT").upper()
        if mode == "TPROXY" and not self.config.no_apisix:
            # Refused rather than half-served: under TPROXY the accepted socket's own address is the original
            # destination (no NAT, so no SO_ORIGINAL_DST), and Istio's inbound keeps the client's address,
            # which needs IP_TRANSPARENT upstream connections; neither is in the APISIX data path yet.
            raise ValueError("interception mode TPROXY (ISTIO_META_INTERCEPTION_MODE, the pod's "
                             "sidecar.istio.io/interceptionMode) is not supported by the APISIX sidecar yet: "
                             "use REDIRECT (Istio's default) for this pod")
        self.node = self.identity.node()
        self.metrics = metrics_mod.AgentMetrics()
        cfg = self.config
        key = cfg.apisix_admin_key or apisix_config.new_admin_key()
        self.apisix_settings = apisix_config.ApisixSettings(
            admin_key=key, mode=cfg.apisix_mode, nofile_limit=max(256, nofile_limit())
        )
        if cfg.apisix_mode is apisix_config.Mode.API:
            sink = AdminApiSink(cfg.apisix_admin_url or apisix_config.admin_url(self.apisix_settings), key)
        else:
            sink = FileSink(cfg.apisix_config_file or cfg.apisix_prefix / "conf" / "apisix.json")
        self.apisix_metrics_url = cfg.apisix_metrics_url or (
            None if cfg.no_apisix else apisix_config.prometheus_url(self.apisix_settings)
        )
        self.pusher = Pusher(sink, observer=self.metrics, before_submit=self._before_push)
        # The data path: what config.yaml must listen on follows what the held listeners serve.
        self.data_path_base = datapath.DataPathSettings(
            outbound_port=self.apisix_settings.outbound_port, inbound_port=self.apisix_settings.inbound_port,
            proxy_user=self.apisix_settings.worker_user, proxy_group=self.apisix_settings.worker_group,
            mtls_dir=str(cfg.apisix_prefix / "conf" / CERT_DIR) if cfg.ca_address else None)
        self.data_path: datapath.DataPathSettings | None = None  # what the written config.yaml serves
        self.pod_ips = tuple(ip for ip in str(self.identity.metadata.get("INSTANCE_IPS", "")).split(",") if ip)
        self.pipeline = Pipeline(self.pusher, self.metrics, check=default_check(cfg.schema_dir),
                                 partial_timeout=cfg.partial_timeout, new_translator=self._new_translator)
        self.session = AdsSession(self.node)
        tls = None
        if not cfg.plaintext:
            host = cfg.discovery_address.rpartition(":")[0]
            token = cfg.token if cfg.token.is_file() else None
            tls = TlsSettings(cfg.root_cert, token, cfg.xds_server_name or host)
        self.client = AdsClient(Transport(cfg.discovery_address, tls), self.session,
                                self.pipeline.decide, self.pipeline.on_accepted, observer=self.metrics)
        self.plugin_client = None
        if cfg.controller_address:
            # Imported only when used: the client compiles/loads the controller's proto.
            from sidecar_agent.plugins.client import PluginClient, token_file_reader

            self.plugin_client = PluginClient(cfg.controller_address, self.env["POD_NAMESPACE"], self.env["POD_NAME"],
                                              token_file_reader(str(cfg.controller_token)), self._on_plugins,
                                              on_refused=self._plugins_refused)
            client = self.plugin_client
            self.metrics.plugin_stream_connected.set_function(lambda: float(client.connected))
        self.certs = None  # the workload certificate, kept current from istiod's CA; readiness waits for it
        if cfg.ca_address:
            from sidecar_agent.security import workload

            self.certs = workload.WorkloadCertificates(workload.settings_from(
                self.env, ca_address=cfg.ca_address, root_cert=cfg.ca_root_cert, token=cfg.token,
                server_name=cfg.xds_server_name, trust_domain=cfg.trust_domain,
                out_dir=cfg.apisix_prefix / "conf" / CERT_DIR))
        self.supervisor: Supervisor | None = None
        if not cfg.no_apisix:
            prometheus = self.apisix_settings.prometheus_port
            self.supervisor = Supervisor(apisix_command(str(cfg.apisix_prefix)), on_start=self._apisix_started,
                                         serving=lambda: _listening("127.0.0.1", prometheus))

    # -- readiness and HTTP -----------------------------------------------------------------------
    def not_ready(self) -> str | None:
        if self.draining:
            return "draining"
        if self.certs is not None and (reason := self.certs.not_ready()):
            return reason
        if not self.pusher.ever_complete:
            return "no complete configuration live in APISIX yet"
        if self.supervisor is not None:
            return self._apisix_not_serving()
        return None

    def _apisix_not_serving(self) -> str | None:
        """The APISIX this agent runs must be up, listening, and have taken the first complete document: in
        file mode its workers load conf/apisix.json when they start and then poll it once a second; in API mode
        HTTP routes apply at once but the stream subsystem (the capture ports) polls the pushed configuration
        once a second (measured on APISIX 3.18)."""
        supervisor = self.supervisor
        if supervisor is None or supervisor.pid is None:
            return "APISIX is not running"
        if not supervisor.serving():
            return "APISIX is starting (its listeners are not open yet)"
        if not supervisor.current:
            return "APISIX is reloading for the listeners the configuration needs"
        if supervisor.started_at is not None:  # file mode: workers poll apisix.json; API mode: stream polls
            delivered = self.pusher.complete_at or 0.0
            if supervisor.started_at < delivered and time.monotonic() < delivered + FILE_POLL_SECONDS:
                return "APISIX is loading the configuration file"
        return None

    async def _on_plugins(self, plugin_set) -> None:
        try:
            await self.pipeline.on_plugins(plugin_set)
        except Exception:  # a bug here must not end the plugin stream (nor the agent): the last set stays
            log.exception("applying plugin set %r failed", plugin_set.version)

    def _plugins_refused(self, plugin_set, why: str) -> None:
        """A set the allowlist refused (the client keeps the set in force): counted and shown like any refusal."""
        self.pipeline.plugins_refused = f"plugin set {plugin_set.version!r} refused: {why}"
        self.metrics.plugin_sets.labels("refused").inc()

    def _plugins_view(self, with_shadowed: bool = True) -> dict:
        client = self.plugin_client
        source = self.pipeline.source if with_shadowed else None
        return diag.plugins(
            self.config.controller_address,
            None if client is None else {"connected": client.connected, "attempts": client.attempts,
                                         "last_error": client.last_error},
            self.pipeline.plugins, self.pipeline.plugins_refused,
            None if source is None else source.body)

    def _apisix_started(self, pid: int) -> None:
        if self.supervisor is not None and self.supervisor.starts > 1:
            self.metrics.apisix_restarts.inc()
        self.pusher.resend()  # a fresh APISIX in API mode starts empty

    def _routes(self) -> tuple[dict, dict, dict]:
        ready = health.ready_handler(self.not_ready)
        stats = lambda q: (200, "text/plain; version=0.0.4",  # noqa: E731
                           metrics_mod.merged_page(self.metrics, self.apisix_metrics_url))
        snapshot = lambda: self.pipeline.snapshot or EMPTY  # noqa: E731
        admin = {
            "/config_dump": lambda q: diag.as_json(diag.config_dump(snapshot(), self.node, "include_eds" in q)),
            "/clusters": lambda q: (
                (200, "application/json", clusters_mod.clusters_json(snapshot()).encode())
                if "format=json" in q else (200, "text/plain", clusters_mod.clusters_text(snapshot()).encode())),
            "/apisix/document": lambda q: diag.as_json(
                self.pusher.live.body if self.pusher.live else None),
            "/status": lambda q: diag.as_json({**diag.status(
                snapshot().versions(), self.pusher.live.label if self.pusher.live else None,
                self.session.last_nack, self.not_ready(),
                diag.plugins_summary(self._plugins_view(with_shadowed=False)), self._denied()),
                "workload_certificate": self.certs.status() if self.certs is not None else None}),
            "/plugins": lambda q: diag.as_json(self._plugins_view()),
            "/stats/prometheus": stats,
            "/ready": ready,
        }
        return {"/healthz/ready": ready}, {"/stats/prometheus": stats, "/healthz/ready": ready}, admin

    def _denied(self) -> tuple:
        """The current translation's fail-closed entries (docs/translation.md, "Fail closed")."""
        return getattr(self.pipeline, "denied", ())  # refreshed with the unsupported-fields metric

    def _new_translator(self):
        from sidecar_agent.translate import Translator

        return Translator(pod_ips=self.pod_ips, data_path=self.data_path_base)

    def _before_push(self, document) -> None:
        """A document whose data path needs listeners APISIX lacks (a new HTTP port) first gets them: config.yaml
        is regenerated and APISIX reloaded. Internal ports are pinned, so routes already live keep theirs."""
        wanted = self.pipeline.translator.data_path_settings
        if self.supervisor is None or not datapath.needs_reload(self.data_path, wanted):
            return
        self._write_apisix_config(wanted)
        self.supervisor.config_changed()
        self.metrics.apisix_reloads.inc()
        asyncio.get_running_loop().create_task(self.supervisor.reload(), name="apisix-reload")

    def _write_apisix_config(self, data_path: datapath.DataPathSettings | None = None) -> None:
        self.data_path = data_path or self.data_path or self.data_path_base
        path = self.config.apisix_prefix / "conf" / "config.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        # It holds the admin key: 0600 from the moment it exists, renamed into place (sink/file.py).
        from sidecar_agent.sink.file import write_private

        write_private(path, apisix_config.render_yaml(self.apisix_settings, self.data_path))

    # -- lifecycle ----------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        cfg = self.config
        status_routes, metrics_routes, admin_routes = self._routes()
        servers: list[Running] = [
            serve(cfg.listen_host, cfg.status_port, status_routes),
            serve(cfg.listen_host, cfg.metrics_port, metrics_routes),
            serve("127.0.0.1", cfg.admin_port, admin_routes),
        ]
        self.ports = {"status": servers[0].port, "metrics": servers[1].port, "admin": servers[2].port}
        tasks = [asyncio.create_task(self.client.run(), name="ads"),
                 asyncio.create_task(self.pusher.run(), name="pusher")]
        if self.plugin_client is not None:  # readiness never waits for it: a pod starts with the controller down
            tasks.append(asyncio.create_task(self.plugin_client.run(), name="plugins"))
        if self.certs is not None:
            tasks.append(asyncio.create_task(self.certs.run(), name="workload-certificate"))
        if self.supervisor is not None:
            self._write_apisix_config()
            tasks.append(asyncio.create_task(self.supervisor.run(), name="apisix"))
        try:
            waiter = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not waiter and task.exception():
                    raise task.exception()
            # Drain: fail readiness first so endpoints are withdrawn, then let APISIX finish requests.
            self.draining = True
            log.info("draining for up to %.0fs", cfg.drain_seconds)
            if self.supervisor is not None:
                await self.supervisor.stop(cfg.drain_seconds)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for server in servers:
                server.close()

    def forward(self, signum: int) -> None:
        if self.supervisor is not None:
            self.supervisor.forward(signum)


async def serve_forever(agent: Agent) -> None:
    """Run until SIGTERM/SIGINT (drain), forwarding SIGHUP to APISIX (reload)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, agent.forward, signal.SIGHUP)
    await agent.run(stop)


def main_env() -> Mapping[str, str]:
    return dict(os.environ)
