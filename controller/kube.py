"""The only module that talks to the Kubernetes API: list, watch, status patch, TokenReview (stdlib HTTP).

Why not the official client: we need four calls on raw JSON. kubernetes 37 pulls in aiohttp, pydantic,
requests, oauthlib and websocket-client, deserialises every pod into model objects, and its `Watch`
retries a 410 on its own; kopf brings a whole operator runtime we would wrap again. Plain `http.client`
keeps this layer thin and lets us test it against API responses served on loopback.

resourceVersion is opaque: it is only ever copied from a list/event/bookmark into the next watch
request, never compared. A `410 Gone` (HTTP status or an ERROR event) raises `Gone`: the caller relists.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode, urlsplit

from controller.crd import GROUP, PLURAL, VERSION

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
PODS = "/api/v1/pods"
CONFIGS = f"/apis/{GROUP}/{VERSION}/{PLURAL}"


class KubeConfigError(Exception):
    """No usable API server setting (not in a cluster, no kubeconfig, a broken kubeconfig): the message says which."""


class KubeError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"Kubernetes API {status}: {message}")
        self.status = status


class Gone(KubeError):
    """The resourceVersion is too old (410): list again."""


@dataclass(frozen=True)
class KubeConfig:
    base_url: str
    token: str | None = None
    token_file: Path | None = None  # re-read on every request: projected tokens rotate
    ca_file: Path | None = None
    cert_file: Path | None = None  # client certificate and key (kubeconfig users)
    key_file: Path | None = None
    verify: bool = True  # False only for a kubeconfig cluster with insecure-skip-tls-verify
    token_source: Callable[[], str | None] | None = None  # asked on every request (kubeconfig exec/token users)

    @classmethod
    def in_cluster(cls, env: Mapping[str, str] = os.environ) -> "KubeConfig":
        host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT", "443")
        if not host:
            raise KubeConfigError("not running in a Kubernetes pod (KUBERNETES_SERVICE_HOST is unset)")
        host = f"[{host}]" if ":" in host else host
        return cls(f"https://{host}:{port}", token_file=SA_DIR / "token", ca_file=SA_DIR / "ca.crt")

    def bearer(self) -> str | None:
        if self.token_source is not None:
            return self.token_source()
        if self.token_file is not None:
            return self.token_file.read_text().strip()
        return self.token


def _tls_context(config: KubeConfig) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(config.ca_file) if config.ca_file else None)
    if not config.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if config.cert_file is not None:
        context.load_cert_chain(str(config.cert_file), str(config.key_file) if config.key_file else None)
    return context


@dataclass(frozen=True)
class WatchEvent:
    type: str  # ADDED, MODIFIED, DELETED, BOOKMARK
    object: dict

    @property
    def resource_version(self) -> str | None:
        return (self.object.get("metadata") or {}).get("resourceVersion")


class Watch:
    """An open watch stream; iterate for events, `close()` from any thread to stop it."""

    def __init__(self, conn: http.client.HTTPConnection, response: http.client.HTTPResponse) -> None:
        self._conn, self._response = conn, response
        self._closed = threading.Event()

    def __iter__(self) -> Iterator[WatchEvent]:
        try:
            while not self._closed.is_set():
                line = self._response.readline()
                if not line:
                    return  # the server ended the watch (timeoutSeconds): re-watch from the last version
                if not line.strip():
                    continue
                event = json.loads(line)
                if event.get("type") == "ERROR":
                    status = event.get("object") or {}
                    code = int(status.get("code") or 500)
                    raise (Gone if code == 410 else KubeError)(code, status.get("message", "watch error"))
                yield WatchEvent(event["type"], event.get("object") or {})
        except (OSError, http.client.HTTPException, ValueError):
            if not self._closed.is_set():
                raise
        finally:
            self.close()

    def close(self) -> None:
        self._closed.set()
        sock = self._conn.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes a reader blocked in recv
            except OSError:
                pass
        self._conn.close()


class Kube:
    def __init__(self, config: KubeConfig, timeout: float = 30.0) -> None:
        self.config = config
        self.timeout = timeout
        url = urlsplit(config.base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise KubeConfigError(f"bad API server URL {config.base_url!r} (expected http:// or https://host)")
        self._url = url
        self._ssl = _tls_context(config) if url.scheme == "https" else None

    def _connect(self, timeout: float) -> http.client.HTTPConnection:
        port = self._url.port
        if self._ssl is not None:
            return http.client.HTTPSConnection(self._url.hostname, port, timeout=timeout, context=self._ssl)
        return http.client.HTTPConnection(self._url.hostname, port, timeout=timeout)

    def _open(self, method: str, path: str, query: Mapping | None = None, body: object = None,
              content_type: str = "application/json", timeout: float | None = None):
        target = self._url.path.rstrip("/") + path + ("?" + urlencode(query) if query else "")
        headers = {"Accept": "application/json"}
        token = self.config.bearer()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = content_type
        conn = self._connect(self.timeout if timeout is None else timeout)
        try:
            conn.request(method, target, body=payload, headers=headers)
            response = conn.getresponse()
        except BaseException:
            conn.close()
            raise
        if response.status >= 400:
            text = response.read().decode(errors="replace")
            conn.close()
            try:
                message = json.loads(text).get("message", text)
            except ValueError:
                message = text
            raise (Gone if response.status == 410 else KubeError)(response.status, message)
        return conn, response

    def _json(self, method: str, path: str, **kwargs) -> dict:
        conn, response = self._open(method, path, **kwargs)
        try:
            return json.loads(response.read())
        finally:
            conn.close()

    def list(self, path: str, page: int = 500) -> tuple[list[dict], str]:
        """Every item (following `continue`) and the list's resourceVersion to watch from."""
        items: list[dict] = []
        query: dict = {"limit": page}
        while True:
            body = self._json("GET", path, query=query)
            items += body.get("items") or []
            meta = body.get("metadata") or {}
            if not meta.get("continue"):
                return items, meta.get("resourceVersion", "")
            query = {"limit": page, "continue": meta["continue"]}

    def watch(self, path: str, resource_version: str, timeout_seconds: int = 300) -> Watch:
        query = {"watch": "true", "allowWatchBookmarks": "true", "timeoutSeconds": timeout_seconds}
        if resource_version:
            query["resourceVersion"] = resource_version
        # Read timeout beyond the server's own: a silent dead connection still ends.
        conn, response = self._open("GET", path, query=query, timeout=timeout_seconds + 30)
        return Watch(conn, response)

    def patch_status(self, namespace: str, name: str, status: Mapping) -> dict:
        return self._json("PATCH", f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{name}/status",
                          body={"status": status}, content_type="application/merge-patch+json")

    def token_review(self, token: str, audiences: tuple[str, ...] = ()) -> dict:
        spec: dict = {"token": token}
        if audiences:
            spec["audiences"] = list(audiences)
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec}
        return self._json("POST", "/apis/authentication.k8s.io/v1/tokenreviews", body=body).get("status") or {}
