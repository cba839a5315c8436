"""amesh/origdst.lua in a real nginx inside a captured pod: the fd walk + SO_ORIGINAL_DST, v4 and v6,
HTTP/1.1 keep-alive and h2c, cached per connection, and nothing for a connection that was not NATed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from netns_tests.pods import OTHER_V4, OTHER_V6, POD_V4, POD_V6, SERVICE_V4, SERVICE_V6
from tests.datapath import testnginx

CLIENT = Path(__file__).resolve().parent / "client.py"
APP_PORTS = (8080, 9080)  # two inbound app ports (nothing listens on them: capture takes them to 15006)
SERVICE_PORTS = (80, 9080)  # two outbound service ports


@pytest.fixture(scope="module")
def nginx(captured_pod):
    reason = testnginx.unavailable()
    if reason:
        pytest.skip(reason)
    if shutil.which("nghttp") is None:
        pytest.skip("nghttp not installed (Debian: apt-get install nghttp2-client)")
    server = testnginx.Nginx(captured_pod.pod, ["15006", "[::]:15006 ipv6only=on",
                                               "15001 http2", "[::]:15001 http2 ipv6only=on"],
                             ready_port=15006)
    yield captured_pod, server
    server.stop()


def keepalive(ns: str, host: str, port: int, count: int = 3, uid: int | None = None) -> list[dict]:
    argv = ["ip", "netns", "exec", ns, sys.executable, str(CLIENT), host, str(port), str(count)]
    if uid is not None:
        argv += ["--uid", str(uid)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def h2c(ns: str, url: str, count: int = 3) -> list[dict]:
    """`count` requests as streams of one HTTP/2 prior-knowledge connection (nghttp), run as UID 1000."""
    argv = ["ip", "netns", "exec", ns, "setpriv", "--reuid", "1000", "--regid", "1000", "--clear-groups",
            "nghttp", *[f"{url}/{i}" for i in range(count)]]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def one_connection(answers: list[dict]) -> dict:
    """All answers came over one connection that was looked up once (the cache held)."""
    assert len({a["connection"] for a in answers}) == 1, answers
    assert len({a["lookups"] for a in answers}) == 1, f"looked up more than once per connection: {answers}"
    return answers[0]


@pytest.mark.parametrize("client,pod_addr", [(OTHER_V4, POD_V4), (OTHER_V6, POD_V6)], ids=["v4", "v6"])
@pytest.mark.parametrize("port", APP_PORTS)
def test_inbound_keepalive_reports_the_app_port(nginx, client, pod_addr, port):
    network, _ = nginx
    answers = keepalive(network.other, pod_addr, port)
    first = one_connection(answers)
    assert (first["addr"], first["port"]) == (pod_addr, port)
    assert first["server_port"] == 15006 and first["http2"] is False


@pytest.mark.parametrize("service", [SERVICE_V4, SERVICE_V6], ids=["v4", "v6"])
@pytest.mark.parametrize("port", SERVICE_PORTS)
def test_outbound_h2c_reports_the_service_address(nginx, service, port):
    network, _ = nginx
    answers = h2c(network.pod, url(service, port))
    assert len(answers) == 3
    first = one_connection(answers)
    assert (first["addr"], first["port"]) == (service, port)
    assert first["server_port"] == 15001 and first["http2"] is True


def test_two_connections_are_looked_up_separately(nginx):
    network, _ = nginx
    a = one_connection(keepalive(network.other, POD_V4, 8080, count=2))
    b = one_connection(keepalive(network.other, POD_V4, 9080, count=2))
    assert a["connection"] != b["connection"] and b["lookups"] == a["lookups"] + 1
    assert (a["port"], b["port"]) == (8080, 9080)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_connection_not_redirected_reports_none(nginx, host):
    network, _ = nginx
    first = one_connection(keepalive(network.pod, host, 15006, count=2, uid=1000))
    assert first["addr"] is None and first["port"] is None
    assert one_connection(h2c(network.pod, url(host, 15001), count=2))["addr"] is None
