"""Runs inside the test containers (stdlib only): TCP servers that say who answered and where the client
really dialled (SO_ORIGINAL_DST), and a client that retries until a deadline.

    python3 podnet.py serve NAME PORT...     answer "NAME port=<local port> orig=<ip:port|none>"
    python3 podnet.py get HOST PORT          print the first line the server sends
"""

import select
import socket
import struct
import sys
import time


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


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2], [int(p) for p in sys.argv[3:]])
    else:
        sys.exit(get(sys.argv[2], int(sys.argv[3])))
