"""A Kubernetes API stand-in on loopback: list and chunked watch streams the test scripts, status
patches and TokenReviews recorded. It answers the way the API server does (shapes from
k8s.io/apimachinery: List metadata.resourceVersion/continue, watch lines {type, object}, ERROR Status 410).
"""

from __future__ import annotations

import json
import queue
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

CLOSE = object()  # end the current watch stream (as timeoutSeconds does)


class FakeApi:
    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.lists: dict[str, tuple[list[dict], str]] = {}
        self.watches: dict[str, queue.Queue] = {}
        self.requests: list[tuple[str, str, dict]] = []
        self.authorizations: list[str | None] = []  # the Authorization header of every request
        self.patches: list[tuple[str, dict]] = []
        self.reviews: dict[str, dict] = {}  # token -> TokenReview status
        self.review_specs: list[dict] = []  # the spec of every TokenReview asked for
        self.list_errors: dict[str, list[int]] = {}  # path -> HTTP codes to answer before succeeding
        self._lock = threading.Lock()
        self._stop = threading.Event()
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def parse_request(self) -> bool:
                ok = super().parse_request()
                if ok:
                    with api._lock:
                        api.authorizations.append(self.headers.get("Authorization"))
                return ok

            def _body(self, code: int, obj: dict) -> None:
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                q: queue.Queue = queue.Queue()
                with api._lock:
                    if query.get("watch") == "true":
                        api.watches[url.path] = q  # events go to the newest stream; an abandoned one gets none
                    api.requests.append(("GET", url.path, query))
                    errors = api.list_errors.get(url.path) or []
                    code = errors.pop(0) if errors and query.get("watch") != "true" else None
                if code:
                    return self._body(code, {"kind": "Status", "code": code, "message": "scripted failure"})
                if query.get("watch") == "true":
                    return self._watch(q)
                items, rv = api.lists.get(url.path, ([], "0"))
                limit = int(query.get("limit", 0)) or len(items) or 1
                start = int(query.get("continue", 0))
                page = items[start:start + limit]
                meta = {"resourceVersion": rv}
                if start + limit < len(items):
                    meta["continue"] = str(start + limit)
                self._body(200, {"kind": "List", "metadata": meta, "items": page})

            def _watch(self, q: queue.Queue) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                try:
                    while not api._stop.is_set():
                        try:
                            item = q.get(timeout=0.1)
                        except queue.Empty:
                            continue
                        if item is CLOSE:
                            break
                        line = (json.dumps(item) + "\n").encode()
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                        self.wfile.flush()
                    self.wfile.write(b"0\r\n\r\n")
                except OSError:
                    pass
                self.close_connection = True

            def do_PATCH(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length))
                with api._lock:
                    api.requests.append(("PATCH", self.path, {"content-type": self.headers["Content-Type"]}))
                    api.patches.append((self.path, body))
                self._body(200, {"metadata": {}, "status": body["status"]})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length))
                with api._lock:
                    api.requests.append(("POST", self.path, {}))
                    api.review_specs.append(body.get("spec") or {})
                status = api.reviews.get(body["spec"]["token"], {"authenticated": False})
                self._body(201, {**body, "status": status})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.scheme = "https" if tls is not None else "http"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.server.server_address[1]}"

    def emit(self, path: str, event: object) -> None:
        """Send on the newest watch stream of `path` (wait for it with `watch_requests` first)."""
        with self._lock:
            self.watches[path].put(event)

    def watch_requests(self, path: str) -> list[dict]:
        with self._lock:
            return [q for m, p, q in self.requests if m == "GET" and p == path and q.get("watch") == "true"]

    def list_requests(self, path: str) -> list[dict]:
        with self._lock:
            return [q for m, p, q in self.requests if m == "GET" and p == path and q.get("watch") != "true"]

    def close(self) -> None:
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def gone() -> dict:
    return {"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                        "message": "too old resource version", "reason": "Expired", "code": 410}}


def bookmark(rv: str) -> dict:
    return {"type": "BOOKMARK", "object": {"kind": "Pod", "apiVersion": "v1", "metadata": {"resourceVersion": rv}}}


def event(kind: str, obj: dict, rv: str) -> dict:
    return {"type": kind, "object": {**obj, "metadata": {**obj["metadata"], "resourceVersion": rv}}}


def service_account_review(namespace: str, pod: str, sa: str = "default", audience: str = "amesh-controller") -> dict:
    return {"authenticated": True, "audiences": [audience],
            "user": {"username": f"system:serviceaccount:{namespace}:{sa}", "uid": "u",
                     "groups": ["system:serviceaccounts", f"system:serviceaccounts:{namespace}"],
                     "extra": {"authentication.kubernetes.io/pod-name": [pod],
                               "authentication.kubernetes.io/pod-uid": [f"uid-{pod}"]}}}
