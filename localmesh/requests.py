"""`amesh-mesh request`: what an app in pod SOURCE sends (its namespace, its resolver, so its sidecar)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from localmesh import client, mesh as mesh_mod, netns, topology
from localmesh.errors import MeshError


def parse_headers(lines) -> dict[str, str]:
    out = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise MeshError(f"header {line!r} is not 'Name: value'")
        out[name.strip()] = value.strip()
    return out


def source_namespace(workdir: Path, source: str) -> str:
    state = mesh_mod.load_state(workdir.resolve())
    if source not in state["pods"] and source != "external":
        raise MeshError(f"no pod {source!r} in the mesh (pods: {', '.join(state['pods'])}, external)")
    ns = mesh_mod.namespace(state["prefix"], source)
    if not netns.exists(ns):
        raise MeshError(f"pod {source}'s namespace {ns} is gone (amesh-mesh down, then up)")
    return ns


def send(workdir: Path, source: str, url: str, *, headers: dict[str, str] | None = None, method: str = "GET",
         data: str | None = None, h2c: bool = False, websocket: bool = False,
         timeout: float = 30.0) -> client.Response:
    ns = source_namespace(workdir, source)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "tcp") or not parts.hostname:
        raise MeshError(f"URL {url!r}: give http://HOST[:PORT]/PATH or tcp://HOST:PORT")
    try:
        address = topology.resolve(topology.bookinfo(), parts.hostname)
    except KeyError:
        raise MeshError(f"{parts.hostname!r} does not resolve in the mesh (services: "
                        f"{', '.join(s.name for s in topology.bookinfo().services)}, external.example)") from None
    if parts.scheme == "tcp":
        if not parts.port:
            raise MeshError(f"URL {url!r}: tcp:// needs a port")
        return client.tcp_exchange(ns, address, parts.port, [data if data is not None else "ping"], timeout)
    port = parts.port or 80
    host_header = parts.netloc
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if websocket:
        return client.websocket_exchange(ns, address, port, host_header, path, [data or "hello"], timeout)
    if h2c:
        return client.h2c_request(ns, url, headers, timeout)
    body = data.encode() if data is not None else None
    return client.http_request(ns, address, port, host_header, method, path, headers, body, timeout)


def answered_by(response: client.Response) -> str:
    """'reviews v2' for an echo app's answer, else the status (e.g. 'HTTP 503', 'no answer')."""
    body = response.json()
    if response.status == 200 and body and "version" in body:
        return f"{body.get('service')} {body['version']}"
    return f"HTTP {response.status}" if response.status else "no answer"
