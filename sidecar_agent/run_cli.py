"""`amesh-agent run`: what the sidecar container runs in place of pilot-agent + Envoy.

Every flag is also an environment variable (AMESH_*), and the discovery address falls back to
PROXY_CONFIG's `discoveryAddress` as pilot-agent reads it. Heavy imports happen inside the command.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import click


def _discovery_default() -> str:
    try:
        return json.loads(os.environ.get("PROXY_CONFIG", "{}")).get("discoveryAddress") or \
            "istiod.istio-system.svc:15012"
    except ValueError:
        return "istiod.istio-system.svc:15012"


@click.command("run")
@click.option("--discovery-address", envvar="AMESH_DISCOVERY_ADDRESS", default=_discovery_default,
              show_default="PROXY_CONFIG discoveryAddress, else istiod.istio-system.svc:15012",
              help="istiod's xDS address, HOST:PORT.")
@click.option("--plaintext", envvar="AMESH_PLAINTEXT", is_flag=True,
              help="Plaintext xDS (istiod :15010) instead of TLS with the mesh CA and token (:15012).")
@click.option("--xds-root-cert", envvar="AMESH_XDS_ROOT_CERT", type=click.Path(path_type=Path),
              default="/var/run/secrets/istio/root-cert.pem", show_default=True)
@click.option("--xds-token", envvar="AMESH_XDS_TOKEN", type=click.Path(path_type=Path),
              default="/var/run/secrets/tokens/istio-token", show_default=True)
@click.option("--apisix-mode", envvar="AMESH_APISIX_MODE", type=click.Choice(["api", "file"]),
              default="api", show_default=True)
@click.option("--apisix-admin-url", envvar="AMESH_APISIX_ADMIN_URL", default=None)
@click.option("--apisix-admin-key", envvar="AMESH_APISIX_ADMIN_KEY", default=None,
              help="Default: a random key per start, written into APISIX's config.yaml.")
@click.option("--apisix-config-file", envvar="AMESH_APISIX_CONFIG_FILE", type=click.Path(path_type=Path),
              default=None, help="File mode: the apisix.yaml to write (default <prefix>/conf/apisix.yaml).")
@click.option("--apisix-prefix", envvar="AMESH_APISIX_PREFIX", type=click.Path(path_type=Path),
              default="/usr/local/apisix", show_default=True)
@click.option("--apisix-metrics-url", envvar="AMESH_APISIX_METRICS_URL", default=None)
@click.option("--no-apisix", envvar="AMESH_NO_APISIX", is_flag=True,
              help="Do not start APISIX: push to one already running, or only write the file.")
@click.option("--status-port", envvar="AMESH_STATUS_PORT", type=int, default=15021, show_default=True)
@click.option("--metrics-port", envvar="AMESH_METRICS_PORT", type=int, default=15020, show_default=True)
@click.option("--admin-port", envvar="AMESH_ADMIN_PORT", type=int, default=15000, show_default=True)
@click.option("--drain-seconds", envvar="TERMINATION_DRAIN_DURATION_SECONDS", type=float, default=5.0,
              show_default=True)
@click.option("--apisix-schema-dir", envvar="AMESH_APISIX_SCHEMA_DIR", type=click.Path(path_type=Path),
              default=None, help="APISIX's JSON Schemas: refuse (NACK) documents they do not accept.")
@click.option("--log-level", envvar="AMESH_LOG_LEVEL", default="info", show_default=True)
def run(**options) -> None:
    """Connect to istiod and keep APISIX configured, healthy and observable."""
    import asyncio
    import logging

    from sidecar_agent.apisix.config import Mode
    from sidecar_agent.app import Agent, AgentConfig, main_env, serve_forever
    from sidecar_agent.identity import IdentityError

    logging.basicConfig(level=options.pop("log_level").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = AgentConfig(
        discovery_address=options["discovery_address"],
        plaintext=options["plaintext"],
        root_cert=options["xds_root_cert"],
        token=options["xds_token"],
        apisix_mode=Mode(options["apisix_mode"]),
        apisix_admin_url=options["apisix_admin_url"],
        apisix_admin_key=options["apisix_admin_key"],
        apisix_prefix=options["apisix_prefix"],
        apisix_config_file=options["apisix_config_file"],
        apisix_metrics_url=options["apisix_metrics_url"],
        no_apisix=options["no_apisix"],
        status_port=options["status_port"],
        metrics_port=options["metrics_port"],
        admin_port=options["admin_port"],
        drain_seconds=options["drain_seconds"],
        schema_dir=options["apisix_schema_dir"],
    )
    try:
        agent = Agent(config, main_env())
    except (ValueError, IdentityError) as exc:
        raise click.UsageError(str(exc)) from None
    asyncio.run(serve_forever(agent))
