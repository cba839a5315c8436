"""`amesh-controller`: AmeshPluginConfig → per-pod APISIX plugins, streamed to the sidecar agents."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import click

from sidecar_agent.schemas import APISIX_SCHEMA_DIR

DEFAULT_SCHEMA_DIR = str(APISIX_SCHEMA_DIR)  # shipped with the package


@click.command()
@click.option("--kubeconfig", envvar="KUBECONFIG", metavar="FILE[:FILE...]",
              help="kubeconfig file(s) as kubectl reads them (default: the service account in a pod, else ~/.kube/config).")
@click.option("--context", "kube_context", help="kubeconfig context to use (default: its current-context).")
@click.option("--kube-url", envvar="AMESH_CONTROLLER_KUBE_URL",
              help="API server URL, overriding any kubeconfig and the in-cluster service account.")
@click.option("--kube-token-file", envvar="AMESH_CONTROLLER_KUBE_TOKEN_FILE", type=click.Path(dir_okay=False, path_type=Path),
              help="Bearer token file for --kube-url (re-read on every request).")
@click.option("--kube-ca-file", envvar="AMESH_CONTROLLER_KUBE_CA_FILE", type=click.Path(dir_okay=False, path_type=Path),
              help="CA bundle for an https --kube-url.")
@click.option("--schema-dir", envvar="AMESH_CONTROLLER_SCHEMA_DIR", default=DEFAULT_SCHEMA_DIR, show_default=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="APISIX JSON Schemas (core/ and plugins/) every plugin config is validated against.")
@click.option("--grpc-host", envvar="AMESH_CONTROLLER_GRPC_HOST", default="0.0.0.0", show_default=True,
              help="Listen address of the plugin stream.")
@click.option("--grpc-port", envvar="AMESH_CONTROLLER_GRPC_PORT", default=15810, show_default=True,
              type=click.IntRange(0, 65535), help="Port of the plugin stream.")
@click.option("--metrics-port", envvar="AMESH_CONTROLLER_METRICS_PORT", default=18080, show_default=True,
              type=click.IntRange(0, 65535), help="Port of /metrics (Prometheus).")
@click.option("--health-port", envvar="AMESH_CONTROLLER_HEALTH_PORT", default=18081, show_default=True,
              type=click.IntRange(0, 65535), help="Port of /healthz and /readyz (may equal --metrics-port).")
@click.option("--token-audience", "audiences", multiple=True, envvar="AMESH_CONTROLLER_TOKEN_AUDIENCES",
              help="Audience the agents' tokens must carry (TokenReview spec.audiences); repeatable.")
@click.option("--log-level", envvar="AMESH_CONTROLLER_LOG_LEVEL", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False))
def main(kubeconfig, kube_context, kube_url, kube_token_file, kube_ca_file, schema_dir, grpc_host, grpc_port, metrics_port, health_port,
         audiences, log_level) -> None:
    """Run the controller until interrupted."""
    from controller.app import Controller, Settings
    from controller.kube import KubeConfigError
    from controller.kubeconfig import resolve

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        kube = resolve(kube_url, kube_token_file, kube_ca_file, kubeconfig, kube_context)
        host = f"[{grpc_host}]" if ":" in grpc_host else grpc_host
        controller = Controller(Settings(kube=kube, schema_dir=str(schema_dir), grpc_address=f"{host}:{grpc_port}",
                                         metrics_port=metrics_port, health_port=health_port,
                                         token_audiences=tuple(audiences)))
    except (KubeConfigError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None
    try:
        asyncio.run(controller.run())
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        raise click.ClickException(str(exc)) from None


if __name__ == "__main__":
    main()
