"""The app of every local-mesh pod (stdlib only, so it starts fast and runs as any user).

    python -m localmesh.echo --service reviews --version v2 --pod reviews-v2 --http 9080 [--log FILE]
    python -m localmesh.echo --service mongodb --version v1 --pod mongodb-v1 --tcp 27017 [--log FILE]

HTTP (1.1, keep-alive): every request gets 200 and a JSON body {service, version, pod, method, path, query,
headers, source} (source = the peer address the app saw: 127.0.0.6 behind an Istio-style sidecar).
`x-echo-delay: S` waits S seconds (≤ 30) before answering (for timeout tests). A WebSocket upgrade is
accepted and every text frame echoed back prefixed with the pod name. TCP: each line is echoed back as
`<pod> <line>`. Every request, connection and WebSocket message is logged as one JSON line to --log.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import socketserver
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_DELAY = 30.0


class Log:
    def __init__(self, path: str | None) -> None:
        self._file = open(path, "a", buffering=1, encoding="utf-8") if path else None
        self._lock = threading.Lock()

    def write(self, record: dict) -> None:
        if self._file is not None:
            with self._lock:
                self._file.write(json.dumps({"time": time.time(), **record}) + "\n")


def accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()


def read_frame(rfile) -> tuple[int, bytes] | None:
    """One WebSocket frame (opcode, payload), unmasked; None at EOF."""
    head = rfile.read(2)
    if len(head) < 2:
        return None
    opcode, length = head[0] & 0x0F, head[1] & 0x7F
    masked = head[1] & 0x80
    if length == 126:
        length = struct.unpack("!H", rfile.read(2))[0]
    elif length == 127:
        length = struct.unpack("!Q", rfile.read(8))[0]
    mask = rfile.read(4) if masked else b""
    payload = rfile.read(length)
    if masked:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return opcode, payload


def frame(opcode: int, payload: bytes, mask: bool = False) -> bytes:
    """A final WebSocket frame; clients must mask (RFC 6455 5.3), servers must not."""
    length = len(payload)
    head = bytes([0x80 | opcode])
    bit = 0x80 if mask else 0
    if length < 126:
        head += bytes([bit | length])
    elif length < 65536:
        head += bytes([bit | 126]) + struct.pack("!H", length)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", length)
    if not mask:
        return head + payload
    key = b"amsh"
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def make_handler(identity: dict, log: Log):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "amesh-echo"
        # headers and body are two writes: with Nagle on, the body waits for the peer's delayed ACK
        # (~40 ms per keep-alive request after the first)
        disable_nagle_algorithm = True

        def log_message(self, *args) -> None:  # the JSON log replaces the access log
            pass

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            url = urlsplit(self.path)
            record = {**identity, "method": self.command, "path": url.path, "query": url.query,
                      "headers": {k.lower(): v for k, v in self.headers.items()},
                      "source": self.client_address[0], "body_bytes": len(body)}
            log.write({"event": "request", **record})
            if self.headers.get("Upgrade", "").lower() == "websocket":
                return self._websocket(record)
            delay = self.headers.get("x-echo-delay")
            if delay:
                time.sleep(min(MAX_DELAY, max(0.0, float(delay))))
            payload = json.dumps({k: record[k] for k in ("service", "version", "pod", "method", "path", "query",
                                                        "headers", "source")}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        def _websocket(self, record: dict) -> None:
            key = self.headers.get("Sec-WebSocket-Key", "")
            self.send_response(101)
            self.send_header("Upgrade", "websocket")
            self.send_header("Connection", "Upgrade")
            self.send_header("Sec-WebSocket-Accept", accept_key(key))
            self.end_headers()
            self.wfile.flush()
            while True:
                got = read_frame(self.rfile)
                if got is None or got[0] == 0x8:  # EOF or close
                    if got is not None:
                        self.wfile.write(frame(0x8, b""))
                    break
                opcode, payload = got
                if opcode == 0x9:  # ping
                    self.wfile.write(frame(0xA, payload))
                    continue
                log.write({"event": "websocket", "pod": identity["pod"], "message": payload.decode(errors="replace")})
                self.wfile.write(frame(0x1, f"{identity['pod']} ".encode() + payload))
                self.wfile.flush()
            self.close_connection = True

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _serve

    return Handler


class LineEcho(socketserver.StreamRequestHandler):
    identity: dict = {}
    log: Log

    def handle(self) -> None:
        self.log.write({"event": "connection", **self.identity, "source": self.client_address[0]})
        for line in self.rfile:
            self.wfile.write(f"{self.identity['pod']} ".encode() + line)


class DualStackTCP(socketserver.ThreadingTCPServer):
    daemon_threads = True
    request_queue_size = 128  # socketserver's listen(5) drops SYNs (1 s retransmit) under 16 concurrent connects
    allow_reuse_address = True


class DualStackHTTP(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # socketserver's listen(5) drops SYNs (1 s retransmit) under 16 concurrent connects


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localmesh.echo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--service", required=True)
    parser.add_argument("--version", required=True)
    parser.add_argument("--pod", required=True)
    parser.add_argument("--http", type=int, action="append", default=[], metavar="PORT")
    parser.add_argument("--tcp", type=int, action="append", default=[], metavar="PORT")
    parser.add_argument("--address", default="0.0.0.0")
    parser.add_argument("--log")
    args = parser.parse_args(argv)
    if not args.http and not args.tcp:
        parser.error("give at least one --http or --tcp port")
    identity = {"service": args.service, "version": args.version, "pod": args.pod}
    log = Log(args.log)
    servers: list[socketserver.BaseServer] = []
    for port in args.http:
        servers.append(DualStackHTTP((args.address, port), make_handler(identity, log)))
    for port in args.tcp:
        handler = type("Handler", (LineEcho,), {"identity": identity, "log": log})
        servers.append(DualStackTCP((args.address, port), handler))
    for server in servers[1:]:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    print(json.dumps({"ready": True, **identity}), flush=True)
    try:
        servers[0].serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
