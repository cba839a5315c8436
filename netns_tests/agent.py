"""Traffic helper process run inside a test namespace (stdlib only, so it starts in ~30 ms).

  listen --name N (--tcp|--udp|--tproxy-tcp) ADDR:PORT ...
      prints {"ready": ...} once every socket is bound, then one JSON line per accepted
      connection / datagram: the listener's label, peer, local address and SO_ORIGINAL_DST.
      The same JSON goes back to the client, so the dialler learns where it landed.
  dial (--tcp|--udp) HOST PORT [--uid U] [--gid G] [--timeout S]
      connects (or sends one datagram) and prints {"ok": true, "reply": {...}} or {"ok": false, ...}.

Addresses are written `1.2.3.4:80` or `[fd00::1]:80`.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import selectors
import socket
import struct
import sys

# Imported now: after setuid the interpreter's stdlib (under /root) may be unreadable.
import encodings.idna  # noqa: F401

SO_ORIGINAL_DST = 80  # same option number for SOL_IP and SOL_IPV6 (IP6T_SO_ORIGINAL_DST)
SOL_IPV6 = 41
IP_TRANSPARENT = 19
IPV6_TRANSPARENT = 75


def parse_endpoint(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def family_of(host: str) -> int:
    return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET


def original_dst(sock: socket.socket) -> list | None:
    """The pre-NAT destination conntrack recorded, or None when the connection was not NATed."""
    try:
        if sock.family == socket.AF_INET6:
            raw = sock.getsockopt(SOL_IPV6, SO_ORIGINAL_DST, 28)
            port = struct.unpack_from("!H", raw, 2)[0]
            return [socket.inet_ntop(socket.AF_INET6, raw[8:24]), port]
        raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
        port = struct.unpack_from("!H", raw, 2)[0]
        return [socket.inet_ntop(socket.AF_INET, raw[4:8]), port]
    except OSError:
        return None


def bind(kind: str, endpoint: str) -> socket.socket:
    host, port = parse_endpoint(endpoint)
    family = family_of(host)
    sock = socket.socket(family, socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        # one socket per family, so a v4 connection never shows up as ::ffff:a.b.c.d
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    if kind == "tproxy-tcp":
        if family == socket.AF_INET6:
            sock.setsockopt(SOL_IPV6, IPV6_TRANSPARENT, 1)
        else:
            sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
    sock.bind((host, port))
    if kind != "udp":
        sock.listen(64)
    return sock


def emit(record: dict) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def listen(args: argparse.Namespace) -> int:
    selector = selectors.DefaultSelector()
    for kind in ("tcp", "udp", "tproxy_tcp"):
        for endpoint in getattr(args, kind) or []:
            sock = bind(kind.replace("_", "-"), endpoint)
            selector.register(sock, selectors.EVENT_READ, (kind, f"{kind}:{endpoint}"))
    emit({"ready": args.name, "pid": os.getpid()})
    while True:
        for key, _ in selector.select():
            kind, label = key.data
            sock = key.fileobj
            if kind == "udp":
                data, peer = sock.recvfrom(65535)
                record = {"name": args.name, "listener": label, "proto": "udp",
                          "peer": list(peer[:2]), "payload": data.decode(errors="replace")}
                emit(record)
                sock.sendto(json.dumps(record).encode(), peer)
                continue
            conn, peer = sock.accept()
            with conn:
                record = {"name": args.name, "listener": label, "proto": "tcp",
                          "peer": list(peer[:2]), "local": list(conn.getsockname()[:2]),
                          "orig_dst": original_dst(conn)}
                emit(record)
                try:
                    conn.sendall((json.dumps(record) + "\n").encode())
                except OSError:
                    pass


def drop_privileges(uid: int | None, gid: int | None) -> None:
    if gid is not None:
        os.setgroups([])
        os.setgid(gid)
    if uid is not None:
        os.setuid(uid)


def dial(args: argparse.Namespace) -> int:
    proto = "tcp" if args.tcp else "udp"
    host, port = args.tcp or args.udp
    port = int(port)
    drop_privileges(args.uid, args.gid)
    family = family_of(host)
    try:
        if proto == "tcp":
            with socket.create_connection((host, port), timeout=args.timeout) as sock:
                local = sock.getsockname()[:2]
                buf = b""
                while not buf.endswith(b"\n"):
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    buf += chunk
        else:
            with socket.socket(family, socket.SOCK_DGRAM) as sock:
                sock.settimeout(args.timeout)
                sock.sendto(b"query", (host, port))
                buf, _ = sock.recvfrom(65535)
                local = sock.getsockname()[:2]
        emit({"ok": True, "local": list(local), "reply": json.loads(buf) if buf.strip() else None})
    except OSError as exc:
        emit({"ok": False, "error": f"{type(exc).__name__}: {exc}"})
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agent")
    sub = parser.add_subparsers(dest="command", required=True)
    lp = sub.add_parser("listen")
    lp.add_argument("--name", required=True)
    lp.add_argument("--tcp", action="append")
    lp.add_argument("--udp", action="append")
    lp.add_argument("--tproxy-tcp", action="append")
    dp = sub.add_parser("dial")
    target = dp.add_mutually_exclusive_group(required=True)
    target.add_argument("--tcp", nargs=2, metavar=("HOST", "PORT"))
    target.add_argument("--udp", nargs=2, metavar=("HOST", "PORT"))
    dp.add_argument("--uid", type=int)
    dp.add_argument("--gid", type=int)
    dp.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args(argv)
    return listen(args) if args.command == "listen" else dial(args)


if __name__ == "__main__":
    sys.exit(main())
