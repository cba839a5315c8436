"""Istio's redirect validation (--run-validation): prove the rules capture a connection.

Listen on loopback at the outbound and inbound capture ports, dial 127.0.0.6:<probe port> (::6 for IPv6)
as the proxy's user, and succeed when a listener accepts it with SO_ORIGINAL_DST = the probe port. The
proxy's own loopback traffic to a non-local address is what Istio's rules send to the inbound port, so
when this runs as root (the init container) the probe socket is created with the proxy's UID/GID.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import select
import socket
import time

from init.origdst import original_dst

VALIDATION_EXIT_CODE = 126


def _numeric(owner: str, lookup) -> int:
    return int(owner) if owner.isdigit() else lookup(owner)


@contextlib.contextmanager
def _as_proxy(uid: str, gid: str):
    """Create sockets with the proxy's credentials (the owner match reads the socket's creator)."""
    if os.geteuid() != 0:
        yield
        return
    os.setegid(_numeric(gid, lambda n: grp.getgrnam(n).gr_gid))
    os.seteuid(_numeric(uid, lambda n: pwd.getpwnam(n).pw_uid))
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


def _probe_family(family: int, ports: tuple[int, int], probe_port: int, deadline: float, uid: str, gid: str) -> bool:
    local, target = ("127.0.0.1", "127.0.0.6") if family == socket.AF_INET else ("::1", "::6")
    listeners = []
    try:
        for port in dict.fromkeys(ports):
            server = socket.socket(family, socket.SOCK_STREAM)
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            server.bind((local, port))
            server.listen(8)
            listeners.append(server)
        while time.monotonic() < deadline:
            with _as_proxy(uid, gid):
                client = socket.socket(family, socket.SOCK_STREAM)
            with client:
                client.settimeout(max(0.1, min(1.0, deadline - time.monotonic())))
                try:
                    client.bind((local, 0))
                    client.connect((target, probe_port))
                except OSError:
                    time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
                    continue
                ready, _, _ = select.select(listeners, [], [], max(0.0, deadline - time.monotonic()))
                for server in ready:
                    conn, _ = server.accept()
                    with conn:
                        if original_dst(conn)[1] == probe_port:
                            return True
        return False
    finally:
        for server in listeners:
            server.close()


def validate(proxy_port: int, inbound_port: int, probe_port: int, timeout: float, ipv6: bool,
             uid: str, gid: str) -> list[str]:
    """Returns the failures (empty = captured in every family checked)."""
    deadline = time.monotonic() + timeout
    failures = []
    families = [socket.AF_INET] + ([socket.AF_INET6] if ipv6 else [])
    for family in families:
        name = "IPv4" if family == socket.AF_INET else "IPv6"
        try:
            ok = _probe_family(family, (proxy_port, inbound_port), probe_port, deadline, uid, gid)
        except (OSError, KeyError) as err:  # KeyError: a proxy user/group name that does not resolve
            failures.append(f"{name}: {err}")
            continue
        if not ok:
            failures.append(f"{name}: validation timeout: no redirected connection to port {probe_port} "
                            f"reached ports {proxy_port}/{inbound_port} within {timeout:g}s")
    return failures
