"""`amesh-agent run`: what the sidecar container runs in place of pilot-agent + Envoy.

Every flag is also an environment variable. Where pilot-agent reads one for the same setting, that is
the name (`XDS_ROOT_CA`, `ISTIOD_SAN`, `CA_ADDR`, `CA_ROOT_CA`, `TRUST_DOMAIN`, `ENVOY_STATUS_PORT`,
`TERMINATION_DRAIN_DURATION_SECONDS`); where pilot-agent takes it from `PROXY_CONFIG` (discoveryAddress,
controlPlaneAuthPolicy, statusPort, proxyAdminPort) that is the default; otherwise it is `AMESH_<FLAG>`.
Defaults that depend on the injector's environment are worked out by `istio_defaults` (pure), as pilot-agent does: the root CA
from `XDS_ROOT_CA` / `PILOT_CERT_PROVIDER`, the token from `JWT_POLICY` (the injector also exports
`PROXY_CONFIG.proxyMetadata` entries as variables, so they count too). Heavy imports happen inside
the command.

`--controller-address` (`AMESH_CONTROLLER_ADDRESS`, which the injection template sets to
`amesh-controller.<istio ns>.svc:15810`) turns on amesh-controller's plugin stream; empty = none. Its token
(`--controller-token`) must pass the controller's TokenReview, which by default asks for the API server's
own audience and a pod-name claim: the pod's bound service-account token, not the `istio-ca` istio-token
(that one works only when the controller runs with `--token-audience istio-ca`). It falls back to the
istio-token when the service-account token is not mounted (automountServiceAccountToken: false).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

import click

ISTIOD = "istiod.istio-system.svc:15012"
ISTIO_ROOT_CERT = "/var/run/secrets/istio/root-cert.pem"
MOUNTED_ROOT_CERT = "/etc/certs/root-cert.pem"  # pilot-agent's "old style" mounted certificate
K8S_CA = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
THIRD_PARTY_TOKEN = "/var/run/secrets/tokens/istio-token"
FIRST_PARTY_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"
CONTROLLER_TOKEN = "/var/run/secrets/amesh-controller/token"  # audience amesh-controller (injection template)
SYSTEM = "SYSTEM"
CA_PORT = 15012  # istiod's secure gRPC port: CreateCertificate and ADS  # XDS_ROOT_CA=SYSTEM: verify istiod with the system's roots


def _schema_dir(value: Path | None) -> Path | None:
    """Only complete, schema-valid documents are pushed: on by default, with the schemas in the package."""
    if value is None:
        from sidecar_agent.schemas import APISIX_SCHEMA_DIR

        return APISIX_SCHEMA_DIR
    return None if str(value).strip().lower() in ("", "none", "off") else Path(value)


def proxy_config(env: Mapping[str, str]) -> dict:
    """PROXY_CONFIG as the injector sets it (JSON); {} when unset. Invalid JSON is named, not ignored."""
    text = env.get("PROXY_CONFIG", "").strip()
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise click.UsageError(f"PROXY_CONFIG is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise click.UsageError("PROXY_CONFIG must be a JSON object")
    return value


def istio_defaults(env: Mapping[str, str], exists=os.path.exists) -> dict[str, object]:
    """Flag defaults from the injector's environment, as pilot-agent derives them (pure but for `exists`)."""
    config = proxy_config(env)
    root = env.get("XDS_ROOT_CA") or ""
    if not root:
        if exists(MOUNTED_ROOT_CERT):
            root = MOUNTED_ROOT_CERT
        elif env.get("PILOT_CERT_PROVIDER") == "kubernetes":
            root = K8S_CA
        else:
            root = ISTIO_ROOT_CERT
    token = FIRST_PARTY_TOKEN if env.get("JWT_POLICY") == "first-party-jwt" else THIRD_PARTY_TOKEN
    # the audience-bound token the injection template projects for the controller, else the pod's own
    controller_token = next((t for t in (CONTROLLER_TOKEN, FIRST_PARTY_TOKEN) if exists(t)), THIRD_PARTY_TOKEN)
    return {
        "discovery_address": config.get("discoveryAddress") or ISTIOD,
        "plaintext": str(config.get("controlPlaneAuthPolicy", "")).upper() == "NONE",
        "xds_root_cert": root,
        "xds_token": token,
        "controller_token": controller_token,
        "metrics_port": int(config.get("statusPort") or 15020),
        "admin_port": int(config.get("proxyAdminPort") or 15000),
    }


def _default(name: str):
    return lambda: istio_defaults(os.environ)[name]


_option = functools.partial(click.option, show_envvar=True)  # --help names each flag's variable


@click.command("run")
@_option("--discovery-address", envvar="AMESH_DISCOVERY_ADDRESS", default=_default("discovery_address"),
              show_default=f"PROXY_CONFIG discoveryAddress, else {ISTIOD}",
              help="istiod's xDS address, HOST:PORT.")
@_option("--plaintext/--tls", envvar="AMESH_PLAINTEXT", default=_default("plaintext"),
              show_default="plaintext when PROXY_CONFIG controlPlaneAuthPolicy is NONE",
              help="Plaintext xDS (istiod :15010) instead of TLS with the mesh CA and token (:15012).")
@_option("--xds-root-cert", envvar="XDS_ROOT_CA", default=_default("xds_root_cert"),
              show_default=f"{MOUNTED_ROOT_CERT} if present, {K8S_CA} if PILOT_CERT_PROVIDER=kubernetes, "
                           f"else {ISTIO_ROOT_CERT}",
              help="CA that verifies istiod; SYSTEM for the system's roots.")
@_option("--xds-token", envvar="AMESH_XDS_TOKEN", type=click.Path(path_type=Path),
              default=_default("xds_token"),
              show_default=f"{FIRST_PARTY_TOKEN} if JWT_POLICY=first-party-jwt, else {THIRD_PARTY_TOKEN}",
              help="The pod's token, sent to istiod as a bearer token (re-read on every connection).")
@_option("--xds-server-name", envvar="ISTIOD_SAN", default=None,
              help="Name istiod's certificate must carry (default: the discovery host).")
@_option("--ca-address", envvar="CA_ADDR", default="",
              show_default="the discovery host:15012 with --tls; none with --plaintext",
              help="istiod's CA for the workload certificate, HOST:PORT (CreateCertificate over TLS with the "
                   "token); 'none' turns workload certificates off.")
@_option("--ca-root-cert", envvar="CA_ROOT_CA", default="", show_default="--xds-root-cert",
              help="CA that verifies the CA address; SYSTEM for the system's roots.")
@_option("--trust-domain", envvar="TRUST_DOMAIN", default="cluster.local", show_default=True,
              help="SPIFFE trust domain of the identity the CSR asks for.")
@_option("--apisix-mode", envvar="AMESH_APISIX_MODE", type=click.Choice(["api", "file"]),
              default="file", show_default=True,
              help="file: conf/apisix.json, polled by APISIX once a second; api: PUT /apisix/admin/configs "
                   "(API-driven standalone: HTTP routes apply at once, stream routes within a second).")
@_option("--apisix-admin-url", envvar="AMESH_APISIX_ADMIN_URL", default=None,
              help="Default: the Admin API of the APISIX this agent starts (127.0.0.1:9180).")
@_option("--apisix-admin-key", envvar="AMESH_APISIX_ADMIN_KEY", default=None,
              help="Default: a random key per start, written into APISIX's config.yaml.")
@_option("--apisix-config-file", envvar="AMESH_APISIX_CONFIG_FILE", type=click.Path(path_type=Path),
              default=None, help="File mode: the file to write (default <prefix>/conf/apisix.json; a .yaml path gets YAML).")
@_option("--apisix-prefix", envvar="AMESH_APISIX_PREFIX", type=click.Path(path_type=Path),
              default="/usr/local/apisix", show_default=True)
@_option("--apisix-metrics-url", envvar="AMESH_APISIX_METRICS_URL", default=None,
              help="APISIX's Prometheus page to merge into /stats/prometheus.")
@_option("--apisix-schema-dir", envvar="AMESH_APISIX_SCHEMA_DIR", type=click.Path(path_type=Path), default=None,
              help="APISIX's JSON Schemas: refuse (NACK) documents they do not accept. Default: the APISIX 3.18 "
                   "schemas shipped with the agent; 'none' turns the check off.")
@_option("--no-apisix", envvar="AMESH_NO_APISIX", is_flag=True,
              help="Do not start APISIX: push to one already running, or only write the file.")
@_option("--status-port", envvar="ENVOY_STATUS_PORT", type=int, default=15021, show_default=True,
              help="/healthz/ready (Envoy's status port in Istio).")
@_option("--metrics-port", envvar="AMESH_METRICS_PORT", type=int, default=_default("metrics_port"),
              show_default="PROXY_CONFIG statusPort, else 15020", help="/stats/prometheus (pilot-agent's port).")
@_option("--admin-port", envvar="AMESH_ADMIN_PORT", type=int, default=_default("admin_port"),
              show_default="PROXY_CONFIG proxyAdminPort, else 15000",
              help="Loopback diagnostics: /config_dump, /clusters, /apisix/document, /status.")
@_option("--partial-timeout", envvar="AMESH_PARTIAL_TIMEOUT", type=float, default=10.0, show_default=True,
              help="Seconds to wait for referenced RDS/EDS before publishing the partial policy.")
@_option("--drain-seconds", envvar="TERMINATION_DRAIN_DURATION_SECONDS", type=float, default=5.0,
              show_default=True)
@_option("--controller-address", envvar="AMESH_CONTROLLER_ADDRESS", default="",
              help="amesh-controller's plugin stream, HOST:PORT (empty: no controller).")
@_option("--controller-token", envvar="AMESH_CONTROLLER_TOKEN", type=click.Path(path_type=Path),
              default=_default("controller_token"),
              show_default=f"{CONTROLLER_TOKEN} if mounted, else {FIRST_PARTY_TOKEN}, else {THIRD_PARTY_TOKEN}",
              help="Token sent to amesh-controller (re-read on every connection); it must pass the "
                   "controller's TokenReview (API server audience unless the controller sets --token-audience).")
@_option("--log-level", envvar="AMESH_LOG_LEVEL", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False))
def run(**options) -> None:
    """Connect to istiod and keep APISIX configured, healthy and observable."""
    import asyncio
    import logging

    from sidecar_agent.app import Agent, main_env, serve_forever
    from sidecar_agent.identity import IdentityError

    logging.basicConfig(level=options.pop("log_level").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = config_of(options)
        agent = Agent(config, main_env())
    except (ValueError, IdentityError) as exc:
        raise click.UsageError(str(exc)) from None
    if agent.supervisor is not None:  # else its first start ends the agent in a traceback
        missing = missing_programs(agent.supervisor.command)
        if missing:
            raise click.ClickException(
                f"{' and '.join(missing)} not on PATH: run the agent in the amesh-sidecar image (APISIX "
                "installed), add APISIX's bin directories to PATH, or pass --no-apisix to use an APISIX you run")
    asyncio.run(serve_forever(agent))


def missing_programs(command, which=shutil.which) -> list[str]:
    """The programs of a supervisor Command (`apisix init`, `openresty`) that are not on PATH."""
    programs = [step[0] for step in (*command.prepare, command.run)]
    return [f"`{p}`" for p in dict.fromkeys(programs) if which(p) is None]


def config_of(options: Mapping[str, object]):
    """The AgentConfig for parsed options (pure)."""
    from sidecar_agent.apisix.config import Mode
    from sidecar_agent.app import AgentConfig

    root = str(options["xds_root_cert"])
    ca_root = str(options.get("ca_root_cert") or "") or root
    return AgentConfig(
        discovery_address=options["discovery_address"],
        plaintext=bool(options["plaintext"]),
        root_cert=None if root == SYSTEM else Path(root),
        token=Path(options["xds_token"]),
        xds_server_name=options["xds_server_name"],
        apisix_mode=Mode(options["apisix_mode"]),
        apisix_admin_url=options["apisix_admin_url"],
        apisix_admin_key=options["apisix_admin_key"],
        apisix_prefix=options["apisix_prefix"],
        apisix_config_file=options["apisix_config_file"],
        apisix_metrics_url=options["apisix_metrics_url"],
        no_apisix=bool(options["no_apisix"]),
        status_port=options["status_port"],
        metrics_port=options["metrics_port"],
        admin_port=options["admin_port"],
        partial_timeout=options["partial_timeout"],
        drain_seconds=options["drain_seconds"],
        schema_dir=_schema_dir(options["apisix_schema_dir"]),
        controller_address=str(options["controller_address"] or "").strip() or None,
        controller_token=Path(options["controller_token"]),
        ca_address=ca_address(str(options.get("ca_address") or ""), str(options["discovery_address"]),
                              bool(options["plaintext"])),
        ca_root_cert=None if ca_root == SYSTEM else Path(ca_root),
        trust_domain=str(options.get("trust_domain") or "cluster.local"),
    )


def ca_address(given: str, discovery_address: str, plaintext: bool) -> str | None:
    """Where the workload certificate comes from (None: nowhere). CA_ADDR as given; else istiod's secure port
    on the discovery host when xDS uses TLS (pilot-agent's default, the discovery address, is that port).
    With --plaintext, istiod's plaintext port serves no CA (UNIMPLEMENTED), so none unless CA_ADDR is set."""
    value = given.strip()
    if value.lower() in ("none", "off"):
        return None
    if value:
        return value
    if plaintext:
        return None
    return f"{discovery_address.rpartition(':')[0]}:{CA_PORT}"
