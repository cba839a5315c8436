"""SO_ORIGINAL_DST: the address a REDIRECTed connection was really sent to (one tiny platform edge)."""

from __future__ import annotations

import socket
import struct

SO_ORIGINAL_DST = 80  # same number for IPv4 (SOL_IP) and IPv6 (SOL_IPV6, IP6T_SO_ORIGINAL_DST)
SOL_IPV6 = 41


def original_dst(conn: socket.socket) -> tuple[str, int]:
    if conn.family == socket.AF_INET6:
        raw = conn.getsockopt(SOL_IPV6, SO_ORIGINAL_DST, 28)
        port = struct.unpack_from("!H", raw, 2)[0]
        return socket.inet_ntop(socket.AF_INET6, raw[8:24]), port
    raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port = struct.unpack_from("!H", raw, 2)[0]
    return socket.inet_ntop(socket.AF_INET, raw[4:8]), port
