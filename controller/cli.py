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
@click.option("--grpc-host", envvar="AMESH_CONTROLLER_GRPC_HOST", default="::", show_default=True,
              help="Listen address of the plugin stream (:: = every IPv6 and IPv4 address).")
@click.option("--grpc-port", envvar="AMESH_CONTROLLER_GRPC_PORT", default=15810, show_default=True,
              type=click.IntRange(0, 65535), help="Port of the plugin stream.")
@click.option("--metrics-port", envvar="AMESH_CONTROLLER_METRICS_PORT", default=18080, show_default=True,
              type=click.IntRange(0, 65535), help="Port of /metrics (Prometheus).")
@click.option("--health-port", envvar="AMESH_CONTROLLER_HEALTH_PORT", default=18081, show_default=True,
              type=click.IntRange(0, 65535), help="Port of /healthz and /readyz (may equal --metrics-port).")
@click.option("--http-host", envvar="AMESH_CONTROLLER_HTTP_HOST", default="::", show_default=True,
              help="Listen address of the metrics and health ports (:: or 0.0.0.0 = every IPv6 and IPv4 address).")
@click.option("--token-audience", "audiences", multiple=True, envvar="AMESH_CONTROLLER_TOKEN_AUDIENCES",
              default=("amesh-controller",), show_default=True,
              help="Audience the agents' tokens must carry (TokenReview spec.audiences); repeatable. The injection "
                   "template projects a token for amesh-controller.")
@click.option("--tls-cert-file", envvar="AMESH_CONTROLLER_TLS_CERT_FILE", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("/etc/amesh-controller/tls/tls.crt"), show_default=True,
              help="Serving certificate (PEM, with its chain) of the plugin stream; re-read when it changes.")
@click.option("--tls-key-file", envvar="AMESH_CONTROLLER_TLS_KEY_FILE", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("/etc/amesh-controller/tls/tls.key"), show_default=True,
              help="Private key (PEM) of --tls-cert-file.")
@click.option("--insecure-plaintext", envvar="AMESH_CONTROLLER_INSECURE_PLAINTEXT", is_flag=True, default=False,
              help="Development only: serve the plugin stream without TLS (agents need AMESH_CONTROLLER_INSECURE_PLAINTEXT too).")
@click.option("--allowed-plugins", envvar="AMESH_CONTROLLER_ALLOWED_PLUGINS", default="*", show_default=True,
              help="Comma list of plugins (fnmatch patterns) configs may use; '*' = every plugin that runs no code. "
                   "serverless-*-function and ext-plugin-* (pre-req/post-req) must be named explicitly.")
@click.option("--log-level", envvar="AMESH_CONTROLLER_LOG_LEVEL", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False))
def main(kubeconfig, kube_context, kube_url, kube_token_file, kube_ca_file, schema_dir, grpc_host, grpc_port, metrics_port, health_port,
         http_host, audiences, tls_cert_file, tls_key_file, insecure_plaintext, allowed_plugins, log_level) -> None:
    """Run the controller until interrupted."""
    from amesh_common.allowlist import Allowlist
    from controller.app import Controller, Settings
    from controller.kube import KubeConfigError
    from controller.kubeconfig import resolve
    from controller.stream import ServerTls

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        kube = resolve(kube_url, kube_token_file, kube_ca_file, kubeconfig, kube_context)
        grpc_host = grpc_host.strip("[]")
        host = f"[{grpc_host}]" if ":" in grpc_host else grpc_host
        tls = None if insecure_plaintext else ServerTls(tls_cert_file, tls_key_file)
        controller = Controller(Settings(kube=kube, schema_dir=str(schema_dir), grpc_address=f"{host}:{grpc_port}",
                                         http_host=http_host, metrics_port=metrics_port, health_port=health_port,
                                         token_audiences=tuple(a for a in audiences if a), tls=tls,
                                         insecure_plaintext=insecure_plaintext,
                                         allowed_plugins=Allowlist.parse(allowed_plugins)))
        if tls is not None:
            tls.credentials()  # an unreadable certificate or key: fail now, naming the file
        else:
            logging.getLogger(__name__).warning("--insecure-plaintext: the plugin stream is not encrypted and the "
                                                "agents cannot verify this controller")
    except (KubeConfigError, FileNotFoundError, OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    try:
        asyncio.run(controller.run())
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        raise click.ClickException(str(exc)) from None


if __name__ == "__main__":
    main()
