"""A tiny threaded HTTP server for the agent's fixed GET endpoints (stdlib; runs beside the loop).

Handlers only read immutable values the loop publishes (snapshots, documents), so no locking is needed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

# A handler gets the query string and returns (status, content type, body).
Handler = Callable[[str], tuple[int, str, bytes]]


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

    server = ThreadingHTTPServer((host, port), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name=f"http-{port}", daemon=True)
    thread.start()
    return Running(server, thread)
