"""Echo upstreams that identify themselves (stdlib only; run inside a test namespace).

  echo_server.py NAME@HOST:PORT ...   (HOST may be an IPv6 literal in brackets)

Each listener answers every HTTP request with one JSON object: its NAME, the address and port the
connection was accepted on, the peer address, and the request's method, path, Host and headers.
Prints "ready" once all listen.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def handler(name: str):
    class Echo(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK waits

        def log_message(self, *args):
            pass

        def _answer(self):
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            local = self.connection.getsockname()
            body = json.dumps({"name": name, "origin": local[0], "port": local[1],
                               "peer": self.client_address[0], "method": self.command, "path": self.path,
                               "host": self.headers.get("Host"),
                               "headers": {k.lower(): v for k, v in self.headers.items()}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _answer

    return Echo


class V6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6

    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # beside a v4 listener
        super().server_bind()


def main(argv: list[str]) -> int:
    servers = []
    for spec in argv:
        name, _, where = spec.partition("@")
        host, _, port = where.rpartition(":")
        cls = ThreadingHTTPServer
        if host.startswith("["):
            host, cls = host[1:-1], V6Server
        cls.daemon_threads = True
        server = cls((host, int(port)), handler(name))
        servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()
    print("ready", flush=True)
    sys.stdin.read()  # until the test closes our stdin (or kills us)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
