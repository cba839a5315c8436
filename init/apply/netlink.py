"""The few netlink requests the capture needs, spoken directly over a NETLINK_ROUTE socket, and setns.

Why not pyroute2: importing any part of it loads the whole package (~130 ms, more than the rest of a
pod's capture together), and the capture needs four message types: an address on lo (`::6/128`), a
policy rule and a local route for TPROXY, and their removal. Each request asks for an ACK, so a refusal
comes back as an OSError with the kernel's errno, like `ip` reports it.
"""

from __future__ import annotations

import _socket as socket  # not `socket`: that module imports enum, selectors and collections (~3 ms)
import os
import struct

NETLINK_ROUTE = 0
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x4, 0x300
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x100, 0x200, 0x400
NLMSG_ERROR, NLMSG_DONE = 2, 3
RTM_NEWADDR, RTM_DELADDR = 20, 21
RTM_NEWROUTE, RTM_DELROUTE = 24, 25
RTM_NEWRULE, RTM_DELRULE, RTM_GETRULE = 32, 33, 34
IFA_ADDRESS, IFA_LOCAL = 1, 2
RTA_OIF, RTA_TABLE = 4, 15
FRA_FWMARK, FRA_TABLE = 10, 15
FR_ACT_TO_TBL = 1
RTN_LOCAL, RTN_UNICAST = 2, 1
RT_SCOPE_UNIVERSE, RT_SCOPE_HOST = 0, 254
RTPROT_BOOT = 3  # what `ip route add` sets
CLONE_NEWNET = 0x40000000
AF_INET, AF_INET6 = socket.AF_INET, socket.AF_INET6

_HEADER = struct.Struct("=LHHLL")  # nlmsghdr: len, type, flags, seq, pid


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def _u32(kind: int, value: int) -> bytes:
    return _attr(kind, struct.pack("=L", value))


def _attrs(data: bytes) -> dict[int, bytes]:
    found, offset = {}, 0
    while offset + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, offset)
        if length < 4:
            break
        found[kind & 0x3FFF] = data[offset + 4:offset + length]
        offset += (length + 3) & ~3
    return found


def lo_index() -> int:
    return socket.if_nametoindex("lo")


class Route:
    """One NETLINK_ROUTE socket in the current network namespace (use as a context manager)."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        self._sock.bind((0, 0))
        self._seq = 0

    def __enter__(self) -> "Route":
        return self

    def __exit__(self, *exc) -> None:
        self._sock.close()

    def _send(self, kind: int, flags: int, body: bytes) -> int:
        self._seq += 1
        self._sock.send(_HEADER.pack(_HEADER.size + len(body), kind, NLM_F_REQUEST | flags, self._seq, 0) + body)
        return self._seq

    def _messages(self, seq: int):
        """(type, payload) of the replies to request `seq`, until its ACK, error or end of dump."""
        while True:
            data = self._sock.recv(65536)
            offset = 0
            while offset + _HEADER.size <= len(data):
                length, kind, _, reply_seq, _ = _HEADER.unpack_from(data, offset)
                payload = data[offset + _HEADER.size:offset + length]
                offset += (length + 3) & ~3
                if reply_seq != seq:
                    continue
                if kind == NLMSG_DONE:
                    return
                if kind == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", payload)[0]
                    if code:
                        raise OSError(code, os.strerror(code))
                    return
                yield kind, payload

    def request(self, kind: int, flags: int, body: bytes) -> None:
        for _ in self._messages(self._send(kind, NLM_F_ACK | flags, body)):
            pass

    # -- addresses ----------------------------------------------------------------------------------------
    def address(self, add: bool, family: int, address: str, prefixlen: int, ifindex: int) -> None:
        """`ip addr add|del ADDRESS/PREFIXLEN dev IFINDEX` (scope global, as `ip` gives a non-loopback one)."""
        raw = socket.inet_pton(family, address)
        body = struct.pack("=BBBBL", family, prefixlen, 0, RT_SCOPE_UNIVERSE, ifindex)
        body += _attr(IFA_LOCAL, raw) + _attr(IFA_ADDRESS, raw)
        self.request(RTM_NEWADDR if add else RTM_DELADDR, NLM_F_CREATE | NLM_F_EXCL if add else 0, body)

    # -- policy rules ---------------------------------------------------------------------------------------
    @staticmethod
    def _rule_body(family: int, fwmark: int, table: int) -> bytes:
        # fib_rule_hdr: family, dst_len, src_len, tos, table (8 bits; the full one is FRA_TABLE), res1, res2,
        # action, flags.
        header = struct.pack("=BBBBBBBBL", family, 0, 0, 0, table if table < 256 else 0, 0, 0, FR_ACT_TO_TBL, 0)
        return header + _u32(FRA_FWMARK, fwmark) + _u32(FRA_TABLE, table)

    def has_rule(self, family: int, fwmark: int, table: int) -> bool:
        """Whether `fwmark MARK lookup TABLE` is among the family's policy rules."""
        seq = self._send(RTM_GETRULE, NLM_F_DUMP, struct.pack("=BBBBBBBBL", family, 0, 0, 0, 0, 0, 0, 0, 0))
        found = False
        for _, payload in self._messages(seq):
            attrs = _attrs(payload[12:])
            mark = attrs.get(FRA_FWMARK)
            rule_table = struct.unpack("=L", attrs[FRA_TABLE])[0] if FRA_TABLE in attrs else payload[4]
            if mark is not None and struct.unpack("=L", mark)[0] == fwmark and rule_table == table:
                found = True  # keep reading: the dump must be drained before the next request
        return found

    def rule(self, add: bool, family: int, fwmark: int, table: int) -> None:
        """`ip rule add|del fwmark MARK lookup TABLE`."""
        self.request(RTM_NEWRULE if add else RTM_DELRULE, NLM_F_CREATE if add else 0,
                     self._rule_body(family, fwmark, table))

    # -- routes ---------------------------------------------------------------------------------------------
    def local_default_route(self, add: bool, family: int, table: int, ifindex: int) -> None:
        """`ip route replace|del local default dev IFINDEX table TABLE` (0.0.0.0/0 or ::/0)."""
        # rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags
        body = struct.pack("=BBBBBBBBL", family, 0, 0, 0, table if table < 256 else 0, RTPROT_BOOT,
                           RT_SCOPE_HOST, RTN_LOCAL, 0)
        body += _u32(RTA_TABLE, table) + _u32(RTA_OIF, ifindex)
        self.request(RTM_NEWROUTE if add else RTM_DELROUTE, NLM_F_CREATE | NLM_F_REPLACE if add else 0, body)


def setns(path: str) -> None:
    """Move this process into the network namespace at `path` (os.setns arrived only in Python 3.12)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if hasattr(os, "setns"):
            os.setns(fd, CLONE_NEWNET)
            return
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(fd, CLONE_NEWNET) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), path)
    finally:
        os.close(fd)
