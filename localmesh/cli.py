"""`amesh-mesh`: a local Istio mesh on one Linux host, with APISIX sidecars (see docs/local-mesh.md)."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import click

from localmesh import mesh as mesh_mod
from localmesh.errors import MeshError
from localmesh.mesh import DEFAULT_WORKDIR

_workdir = click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_WORKDIR,
                        envvar="AMESH_MESH_WORKDIR", show_default=True, show_envvar=True,
                        help="Where the mesh keeps its state, istiod's config, logs and APISIX prefixes.")


def _fail(exc: Exception) -> None:
    raise click.ClickException(str(exc))


@click.group()
def main() -> None:
    """A local mesh: istiod + Bookinfo pods (network namespaces) with amesh-iptables capture and
    amesh-agent + APISIX sidecars. Needs root."""


@main.command()
@_workdir
@click.option("--apisix-mode", type=click.Choice(["file", "api"]), default="file", show_default=True,
              help="How the agents configure APISIX: conf/apisix.json, or the Admin API (standalone).")
@click.option("--istiod", "istiod_path", type=click.Path(dir_okay=False, path_type=Path),
              help="pilot-discovery (or its release tarball); default: ../shared/peers/istiod.")
@click.option("--apisix-home", type=click.Path(file_okay=False, path_type=Path),
              default=mesh_mod.DEFAULT_APISIX_HOME, show_default=True, help="The installed APISIX.")
@click.option("--timeout", type=float, default=120.0, show_default=True, help="Seconds to wait for readiness.")
@click.option("--mtls", is_flag=True,
              help="istiod is also the CA: workload certificates for every sidecar, auto-mTLS on (Istio mTLS "
                   "between the pods; PeerAuthentication decides what they accept).")
@click.option("--secret-ttl", default=None, metavar="DURATION",
              help="With --mtls: the workload certificates' lifetime (SECRET_TTL, e.g. 60s; renewed at about half).")
def up(workdir: Path, apisix_mode: str, istiod_path: Path | None, apisix_home: Path, timeout: float,
       mtls: bool, secret_ttl: str | None) -> None:
    """Start istiod, the Bookinfo pods, a TCP service and a host outside the mesh."""
    try:
        mesh_mod.up(workdir, apisix_mode=apisix_mode, istiod_path=istiod_path, apisix_home=apisix_home,
                    ready_timeout=timeout, mtls=mtls, secret_ttl=secret_ttl, log=lambda m: click.echo(m, err=True))
    except MeshError as exc:
        _fail(exc)


@main.command()
@_workdir
def down(workdir: Path) -> None:
    """Remove everything `up` made (also after a crash or a kill -9)."""
    try:
        removed = mesh_mod.down(workdir)
    except MeshError as exc:
        _fail(exc)
    click.echo(f"removed {len(removed)} namespaces" if removed else "nothing to remove")


@main.command()
@_workdir
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
def apply(workdir: Path, files: tuple[Path, ...]) -> None:
    """Apply Istio YAML (VirtualService, DestinationRule, Sidecar, …) to the mesh, as kubectl apply: an object
    applied again (same kind, namespace, name) is replaced; a file istiod refuses changes nothing. Waits until
    every sidecar serves the change."""
    try:
        for target, verb in mesh_mod.apply(workdir, list(files)):
            click.echo(f"{target} {verb}")
    except MeshError as exc:
        _fail(exc)


@main.command()
@_workdir
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
def delete(workdir: Path, files: tuple[Path, ...]) -> None:
    """Remove the Istio objects these files name (as kubectl delete -f)."""
    try:
        for target in mesh_mod.delete(workdir, list(files)):
            click.echo(f"deleted {target}")
    except MeshError as exc:
        _fail(exc)


@main.command()
@_workdir
@click.option("--json", "as_json", is_flag=True, help="One JSON document.")
def status(workdir: Path, as_json: bool) -> None:
    """Every pod: sidecar readiness (15021), the xDS versions ACKed, APISIX's process."""
    try:
        report = mesh_mod.status(workdir)
    except MeshError as exc:
        _fail(exc)
    if as_json:
        click.echo(json.dumps(report, indent=1))
        return
    istio = report["istiod"]
    click.echo(f"mesh {report['workdir']} (namespaces {report['prefix']}-*, APISIX {report['apisix_mode']} mode); "
               f"istiod pid {istio['pid']} {'running' if istio['running'] else 'NOT RUNNING'}")
    click.echo(f"{'POD':16} {'READY':6} {'APISIX':14} XDS VERSIONS ACKED")
    for pod in report["pods"]:
        versions = pod["xds_versions"] or {}
        short = " ".join(f"{k}={v}" for k, v in sorted(versions.items())) or "-"
        apisix = pod["apisix"].get("master")
        click.echo(f"{pod['pod']:16} {'yes' if pod['ready'] else 'no':6} "
                   f"{('pid ' + str(apisix)) if apisix else 'not running':14} {short}")
        if not pod["ready"]:
            click.echo(f"{'':16} {pod['readiness']}")


@main.command()
@_workdir
@click.argument("source")
@click.argument("url")
@click.option("-H", "--header", "headers", multiple=True, metavar="'NAME: VALUE'")
@click.option("-X", "--method", default="GET", show_default=True)
@click.option("-d", "--data", default=None, help="Request body (HTTP), or the line to send (tcp://).")
@click.option("--count", type=int, default=1, show_default=True, help="Repeat and summarise who answered.")
@click.option("--h2c", is_flag=True, help="HTTP/2 with prior knowledge (nghttp).")
@click.option("--websocket", is_flag=True, help="Upgrade to WebSocket and exchange the --data message.")
@click.option("--timeout", type=float, default=30.0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per request.")
def request(workdir: Path, source: str, url: str, headers: tuple[str, ...], method: str, data: str | None,
            count: int, h2c: bool, websocket: bool, timeout: float, as_json: bool) -> None:
    """Send a request from pod SOURCE's namespace, as its app would (through SOURCE's sidecar).
    URL: http://reviews:9080/path, or tcp://mongodb:27017 (sends one line)."""
    from localmesh import requests as req

    try:
        parsed = req.parse_headers(headers)
        results = []
        for _ in range(max(1, count)):
            response = req.send(workdir, source, url, headers=parsed, method=method, data=data, h2c=h2c,
                                websocket=websocket, timeout=timeout)
            results.append(response)
            if as_json:
                click.echo(json.dumps(response.as_dict()))
            elif count == 1:
                click.echo(f"HTTP {response.status}" + (f" ({response.error})" if response.error else "")
                           + f" in {response.elapsed * 1000:.0f} ms")
                body = response.json()
                click.echo(json.dumps(body, indent=1) if body is not None else response.body.decode(errors="replace"))
    except (MeshError, ValueError) as exc:
        _fail(exc)
    if count > 1 and not as_json:
        answered = Counter(req.answered_by(r) for r in results)
        click.echo(f"{count} requests: " + ", ".join(f"{who} {n}" for who, n in answered.most_common()))
    if any(r.status == 0 for r in results):
        sys.exit(1)


@main.command()
@_workdir
@click.option("--keep", is_flag=True, help="Leave the mesh up afterwards (else it is taken down).")
@click.option("--apisix-mode", type=click.Choice(["file", "api"]), default="file", show_default=True)
def demo(workdir: Path, keep: bool, apisix_mode: str) -> None:
    """Bring the mesh up (unless it is), run Istio's Bookinfo traffic-management tasks through the APISIX
    sidecars and print what was sent, which version answered, and what Istio specifies."""
    from localmesh import demo as demo_mod

    try:
        ok = demo_mod.run(workdir, keep=keep, apisix_mode=apisix_mode, out=click.echo)
    except MeshError as exc:
        _fail(exc)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
