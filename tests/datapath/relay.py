"""A stand-in for the sidecar's stream front, for the kernel side of the data path (stdlib only).

  relay.py --uid 1337 --gid 1337 [--inbound-source 127.0.0.6 --inbound-source6 ::6]
           [--route ADDR:PORT=UPSTREAM_ADDR:PORT ...] [--registry-only] --pod-ip IP ...

Listens on 15001 (outbound) and 15006 (inbound), v4 and v6, then drops to the proxy's UID/GID
(capture exempts it). Per accepted connection it reads SO_ORIGINAL_DST and decides as the
translated stream routes do: inbound -> the pod address and original port, from Istio's inbound
source address; outbound -> a --route for (address, port), else the original destination (ALLOW_ANY)
or a reset (--registry-only). Prints one JSON line per decision; bytes are piped both ways.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import sys
import threading

import encodings.idna  # noqa: F401  (before dropping privileges)

SO_ORIGINAL_DST, SOL_IPV6 = 80, 41
OUTBOUND, INBOUND = 15001, 15006


def original_dst(sock: socket.socket):
    try:
        if sock.family == socket.AF_INET6:
            raw = sock.getsockopt(SOL_IPV6, SO_ORIGINAL_DST, 28)
            return socket.inet_ntop(socket.AF_INET6, raw[8:24]), struct.unpack_from("!H", raw, 2)[0]
        raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
        return socket.inet_ntop(socket.AF_INET, raw[4:8]), struct.unpack_from("!H", raw, 2)[0]
    except OSError:
        return None


def emit(record: dict) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (dst, src):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def endpoint(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def handle(conn: socket.socket, port: int, args) -> None:
    orig = original_dst(conn)
    local = conn.getsockname()[:2]
    if orig is None or tuple(orig) == tuple(local):
        emit({"listener": port, "decision": "no-original-destination"})
        conn.close()
        return
    addr, oport = orig
    v6 = ":" in addr
    source = None
    if port == INBOUND:
        target = (args.pod_ip6 if v6 else args.pod_ip, oport)
        source = args.inbound_source6 if v6 else args.inbound_source
        decision = "inbound"
    elif f"{addr}:{oport}" in args.routes:
        target, decision = args.routes[f"{addr}:{oport}"], "route"
    elif args.registry_only:
        emit({"listener": port, "decision": "refused", "orig": [addr, oport]})
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # reset
        conn.close()
        return
    else:
        target, decision = (addr, oport), "passthrough"
    upstream = socket.socket(socket.AF_INET6 if ":" in target[0] else socket.AF_INET, socket.SOCK_STREAM)
    try:
        if source:
            upstream.bind((source, 0))
        upstream.settimeout(3)
        upstream.connect(target)
        upstream.settimeout(None)
    except OSError as exc:
        emit({"listener": port, "decision": decision, "orig": [addr, oport], "error": str(exc)})
        conn.close()
        upstream.close()
        return
    emit({"listener": port, "decision": decision, "orig": [addr, oport], "upstream": list(target),
          "upstream_local": list(upstream.getsockname()[:2])})
    threading.Thread(target=pipe, args=(conn, upstream), daemon=True).start()
    threading.Thread(target=pipe, args=(upstream, conn), daemon=True).start()


def serve(sock: socket.socket, port: int, args) -> None:
    while True:
        conn, _ = sock.accept()
        threading.Thread(target=handle, args=(conn, port, args), daemon=True).start()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--uid", type=int, default=1337)
    parser.add_argument("--gid", type=int, default=1337)
    parser.add_argument("--pod-ip", required=True)
    parser.add_argument("--pod-ip6")
    parser.add_argument("--inbound-source", default="127.0.0.6")
    parser.add_argument("--inbound-source6", default="::6")
    parser.add_argument("--route", action="append", default=[])
    parser.add_argument("--registry-only", action="store_true")
    args = parser.parse_args(argv)
    args.routes = {}
    for item in args.route:
        key, _, value = item.partition("=")
        args.routes[key.replace("[", "").replace("]", "")] = endpoint(value)
    listeners = []
    for port in (OUTBOUND, INBOUND):
        for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
            if family == socket.AF_INET6 and not args.pod_ip6:
                continue
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((host, port))
            sock.listen(64)
            listeners.append((sock, port))
    os.setgroups([])
    os.setgid(args.gid)
    os.setuid(args.uid)
    for sock, port in listeners:
        threading.Thread(target=serve, args=(sock, port, args), daemon=True).start()
    emit({"ready": "relay", "pid": os.getpid()})
    threading.Event().wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
