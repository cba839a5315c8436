"""Clients that speak from inside a namespace: HTTP/1.1 (http.client over a socket made in the namespace),
h2c with prior knowledge (Debian's `nghttp`), WebSocket and a TCP line exchange."""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import socket
import subprocess
import time
from dataclasses import dataclass, field

from localmesh import echo
from localmesh.netns import socket_in


_NGHTTP_STAMP = re.compile(r"\[\s*\d+\.\d+\] ")


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    elapsed: float
    error: str | None = None
    meta: dict = field(default_factory=dict)

    def json(self) -> dict | None:
        try:
            value = json.loads(self.body)
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    def as_dict(self) -> dict:
        body: object = self.json()
        if body is None:
            body = self.body.decode(errors="replace")
        out = {"status": self.status, "headers": self.headers, "body": body, "elapsed": round(self.elapsed, 4)}
        if self.error:
            out["error"] = self.error
        return out


class NamespaceConnection(http.client.HTTPConnection):
    """HTTPConnection whose socket lives in network namespace `namespace` and dials `address`
    (the name in the URL stays the Host header)."""

    def __init__(self, namespace: str, address: str, port: int, timeout: float) -> None:
        super().__init__(address, port, timeout=timeout)
        self.namespace = namespace

    def connect(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket_in(self.namespace, family)
        sock.settimeout(self.timeout)
        sock.connect((self.host, self.port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock


def http_request(namespace: str, address: str, port: int, host_header: str, method: str = "GET", path: str = "/",
                 headers: dict[str, str] | None = None, body: bytes | None = None, timeout: float = 30.0,
                 connection: NamespaceConnection | None = None) -> Response:
    """One request; on a connection failure status is 0 and `error` says why (as curl's 000)."""
    conn = connection or NamespaceConnection(namespace, address, port, timeout)
    started = time.monotonic()
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", host_header)
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        response = conn.getresponse()
        data = response.read()
        return Response(response.status, {k.lower(): v for k, v in response.getheaders()}, data,
                        time.monotonic() - started)
    except (OSError, http.client.HTTPException) as exc:
        conn.close()
        return Response(0, {}, b"", time.monotonic() - started, error=f"{type(exc).__name__}: {exc}")
    finally:
        if connection is None:
            conn.close()


def h2c_request(namespace: str, url: str, headers: dict[str, str] | None = None, timeout: float = 30.0) -> Response:
    """HTTP/2 without TLS, prior knowledge (nghttp's default for http:// URLs)."""
    argv = ["ip", "netns", "exec", namespace, "nghttp", "-v", f"--timeout={max(1, int(timeout))}", url]
    for name, value in (headers or {}).items():
        argv += ["-H", f"{name}: {value}"]
    started = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 5)
    elapsed = time.monotonic() - started
    # -v prints "[ t] recv (stream_id=N) name: value" per response header and the body unprefixed
    status, out_headers, body_lines, frames = 0, {}, [], 0
    for line in done.stdout.splitlines():
        if line.startswith("[") and "] recv (stream_id=" in line:
            name, _, value = line.split(") ", 1)[1].partition(": ")
            if name == ":status":
                status = int(value)
            else:
                out_headers[name] = value
        elif line.startswith("[") and "recv DATA frame" in line:
            frames += 1
        elif line and not line.startswith(("[", " ")):
            # a body without a final newline runs into nghttp's next "[ t] …" line
            body_lines.append(_NGHTTP_STAMP.split(line, 1)[0])
            if _NGHTTP_STAMP.search(line) and "recv DATA frame" in line:
                frames += 1
    error = None if done.returncode == 0 else (done.stderr.strip() or done.stdout.strip())[-300:]
    meta = {"protocol": "h2c", "h2_data_frames": frames}
    return Response(status, out_headers, "\n".join(body_lines).encode(), elapsed, error, meta)


def websocket_exchange(namespace: str, address: str, port: int, host_header: str, path: str, messages: list[str],
                       timeout: float = 10.0) -> Response:
    """Upgrade to WebSocket, send each message as a text frame, collect the echoes, close."""
    started = time.monotonic()
    sock = socket_in(namespace)
    sock.settimeout(timeout)
    try:
        sock.connect((address, port))
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {host_header}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        rfile = sock.makefile("rb")
        status_line = rfile.readline().decode(errors="replace")
        status = int(status_line.split()[1]) if len(status_line.split()) > 1 else 0
        headers = {}
        while (line := rfile.readline().decode(errors="replace").strip()):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        replies = []
        if status == 101 and headers.get("sec-websocket-accept") == echo.accept_key(key):
            for message in messages:
                sock.sendall(echo.frame(0x1, message.encode(), mask=True))
                got = echo.read_frame(rfile)
                replies.append(got[1].decode(errors="replace") if got else None)
            sock.sendall(echo.frame(0x8, b"", mask=True))
        elif status == 101:
            return Response(status, headers, b"", time.monotonic() - started, "bad Sec-WebSocket-Accept")
        return Response(status, headers, json.dumps({"replies": replies}).encode(), time.monotonic() - started)
    except OSError as exc:
        return Response(0, {}, b"", time.monotonic() - started, error=f"{type(exc).__name__}: {exc}")
    finally:
        sock.close()


def tcp_exchange(namespace: str, address: str, port: int, lines: list[str], timeout: float = 10.0) -> Response:
    """Send lines over a plain TCP connection and read one reply line each (the TCP echo service)."""
    started = time.monotonic()
    sock = socket_in(namespace, socket.AF_INET6 if ":" in address else socket.AF_INET)
    sock.settimeout(timeout)
    try:
        sock.connect((address, port))
        rfile = sock.makefile("rb")
        replies = []
        for line in lines:
            sock.sendall(line.encode() + b"\n")
            reply = rfile.readline()
            if not reply:
                raise ConnectionError("connection closed by the peer")
            replies.append(reply.decode(errors="replace").rstrip("\n"))
        return Response(200, {}, json.dumps({"replies": replies}).encode(), time.monotonic() - started)
    except (OSError, ConnectionError) as exc:
        return Response(0, {}, b"", time.monotonic() - started, error=f"{type(exc).__name__}: {exc}")
    finally:
        sock.close()
