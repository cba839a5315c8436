"""Runs inside the test containers (stdlib only): TCP servers that say who answered and where the client
really dialled (SO_ORIGINAL_DST), and a client that retries until a deadline.

    python3 podnet.py serve NAME PORT...     answer "NAME port=<local port> orig=<ip:port|none>"
    python3 podnet.py get HOST PORT          print the first line the server sends
    python3 podnet.py http NAME PORT         HTTP server: answer 200 with JSON {name, method, path, headers,
                                             peer}, and print one such line per request (its log)
    python3 podnet.py http-get URL [HOST]    GET URL (Host header HOST) until a 200 or the deadline; print
                                             {status, server, body} as JSON
"""

import http.client
import http.server
import json
import select
import socket
import struct
import sys
import time
import urllib.parse


def original_dst(conn):
    try:
        raw = conn.getsockopt(socket.SOL_IP, 80, 16)  # SO_ORIGINAL_DST: set only on REDIRECTed connections
    except OSError:
        return "none"
    return "%s:%d" % (socket.inet_ntoa(raw[4:8]), struct.unpack_from("!H", raw, 2)[0])


def serve(name, ports):
    listeners = []
    for port in ports:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("0.0.0.0", port))
        sock.listen(16)
        listeners.append(sock)
    while True:
        ready, _, _ = select.select(listeners, [], [])
        for sock in ready:
            conn, _ = sock.accept()
            local = conn.getsockname()[1]
            orig = original_dst(conn)
            conn.sendall(("%s port=%d orig=%s\n" % (name, local, orig)).encode())
            conn.close()


def get(host, port, deadline=20.0):
    end = time.monotonic() + deadline
    while True:
        try:
            with socket.create_connection((host, port), timeout=2) as conn:
                print(conn.makefile().readline().strip())
                return 0
        except OSError as err:  # the server container may still be starting
            if time.monotonic() > end:
                print("error: %s" % err)
                return 1
            time.sleep(0.1)


def http_serve(name, port):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            seen = {"name": name, "method": self.command, "path": self.path,
                    "headers": {k.lower(): v for k, v in self.headers.items()}, "peer": self.client_address[0]}
            body = json.dumps(seen).encode()
            print(json.dumps(seen), flush=True)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    http.server.ThreadingHTTPServer(("0.0.0.0", port), Handler).serve_forever()


def http_get(url, host=None, deadline=90.0):
    parts = urllib.parse.urlsplit(url)
    end = time.monotonic() + deadline
    result = {"status": None, "error": "no attempt"}
    while time.monotonic() < end:
        conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=5)
        try:
            conn.request("GET", parts.path + ("?" + parts.query if parts.query else ""),
                         headers={"Host": host} if host else {})
            resp = conn.getresponse()
            result = {"status": resp.status, "server": resp.getheader("Server"),
                      "body": resp.read().decode(errors="replace")}
            if resp.status == 200:
                break
        except OSError as err:  # the sidecar may not listen or have its routes yet
            result = {"status": None, "error": str(err)}
        finally:
            conn.close()
        time.sleep(0.3)
    print(json.dumps(result))
    return 0 if result["status"] == 200 else 1


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2], [int(p) for p in sys.argv[3:]])
    elif sys.argv[1] == "http":
        http_serve(sys.argv[2], int(sys.argv[3]))
    elif sys.argv[1] == "http-get":
        sys.exit(http_get(sys.argv[2], *sys.argv[3:4]))
    else:
        sys.exit(get(sys.argv[2], int(sys.argv[3])))
