"""amesh_common.http_server: a wildcard host is one dual-stack socket (IPv6 and IPv4), falling back to
0.0.0.0 where the kernel has no IPv6; a specific address binds just that. (The IPv6-only pod itself:
netns_tests/test_ipv6_only_ports.py.)"""

from __future__ import annotations

import errno
import socket
import socketserver
import urllib.request

import pytest

from amesh_common import http_server
from amesh_common.http_server import serve

ROUTES = {"/ok": lambda q: (200, "text/plain", b"ok\n")}


def reachable(host: str, port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/ok", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "[::]"])
def test_wildcards_listen_on_ipv6_and_ipv4(host):
    if not has_ipv6_loopback():
        pytest.skip("no IPv6 loopback here")
    running = serve(host, 0, ROUTES)
    try:
        assert running.server.socket.family == socket.AF_INET6
        assert running.server.socket.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
        assert reachable("127.0.0.1", running.port) and reachable("[::1]", running.port)
    finally:
        running.close()


def test_specific_addresses_bind_only_themselves():
    running = serve("127.0.0.1", 0, ROUTES)
    try:
        assert running.server.socket.family == socket.AF_INET and reachable("127.0.0.1", running.port)
        assert not reachable("[::1]", running.port)
    finally:
        running.close()
    if has_ipv6_loopback():
        running = serve("::1", 0, ROUTES)
        try:
            assert reachable("[::1]", running.port) and not reachable("127.0.0.1", running.port)
        finally:
            running.close()


@pytest.mark.parametrize("how", ["no ipv6 in python", "EAFNOSUPPORT"])
def test_falls_back_to_ipv4_without_ipv6(monkeypatch, how):
    if how == "no ipv6 in python":
        monkeypatch.setattr(http_server.socket, "has_ipv6", False)
    else:
        real = socket.socket

        class NoIpv6(real):
            def __init__(self, family=socket.AF_INET, *args, **kwargs):
                if family == socket.AF_INET6:
                    raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")
                super().__init__(family, *args, **kwargs)

        monkeypatch.setattr(socketserver.socket, "socket", NoIpv6)
    running = serve("::", 0, ROUTES)
    try:
        assert running.server.socket.family == socket.AF_INET and reachable("127.0.0.1", running.port)
    finally:
        running.close()


def test_other_bind_errors_are_not_hidden():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError):
            serve("127.0.0.1", taken.getsockname()[1], ROUTES)
