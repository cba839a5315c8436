"""A tiny threaded HTTP server for the agent's fixed GET endpoints (stdlib; runs beside the loop).

Handlers only read immutable values the loop publishes (snapshots, documents), so no locking is needed.

A wildcard host (`""`, `0.0.0.0` or `::`) means "every address of the pod, IPv4 and IPv6": one dual-stack
socket on `::` with IPV6_V6ONLY off, so an IPv6-only pod's kubelet probes and Prometheus reach it as well
as an IPv4 one's. Where the kernel has no IPv6 (ipv6.disable=1, or no IPv6 in the namespace), it falls
back to `0.0.0.0`. A specific address (127.0.0.1, ::1, 10.0.0.5) binds exactly that, in its own family.
"""

from __future__ import annotations

import errno
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

# A handler gets the query string and returns (status, content type, body).
Handler = Callable[[str], tuple[int, str, bytes]]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    dual_stack = False

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6:
            # Off explicitly: the sysctl net.ipv6.bindv6only may default it on.
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if self.dual_stack else 1)
        super().server_bind()


def _server(host: str, port: int, handler) -> ThreadingHTTPServer:
    host = host.strip("[]") if host.startswith("[") else host
    if host in ("", "0.0.0.0", "::"):
        if socket.has_ipv6:
            try:
                server = type("_DualStack", (_Server,), {"address_family": socket.AF_INET6, "dual_stack": True})
                return server(("::", port), handler)
            except OSError as exc:
                # No IPv6 in this kernel/namespace: EAFNOSUPPORT from socket(), EADDRNOTAVAIL from bind().
                if exc.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL, errno.EPROTONOSUPPORT):
                    raise
        return _Server(("0.0.0.0", port), handler)
    if ":" in host:
        return type("_V6", (_Server,), {"address_family": socket.AF_INET6})((host, port), handler)
    return _Server((host, port), handler)


@dataclass
class Running:
    server: ThreadingHTTPServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def serve(host: str, port: int, routes: Mapping[str, Handler]) -> Running:
    class _Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # probes every few seconds: keep the log clean
            pass

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            handler = routes.get(url.path)
            if handler is None:
                status, ctype, body = 404, "text/plain", b"not found\n"
            else:
                try:
                    status, ctype, body = handler(url.query)
                except Exception as exc:  # a diagnostics bug must not take the port down
                    status, ctype, body = 500, "text/plain", f"{exc!r}\n".encode()
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = _server(host, port, _Handler)
    thread = threading.Thread(target=server.serve_forever, name=f"http-{port}", daemon=True)
    thread.start()
    return Running(server, thread)
