"""Never plaintext where istiod asks for Istio mTLS (lua/amesh/hook.lua), on a real APISIX 3.18 without a
workload certificate: an HTTP request to an upstream labelled `amesh.tls: istio-mutual` gets 502 and a TCP
connection to one is closed, in both cases before anything reaches the server. (With a certificate, both
are dialled with it: test_real_apisix_mtls.py.)"""

from __future__ import annotations

import socket
import urllib.error
import urllib.request

import pytest
import yaml

from sidecar_agent.apisix import config as apisix_config
from tests import realapisix

MUTUAL = {"amesh.tls": "istio-mutual"}


class Recorder:
    """A TCP server in the namespace that counts the connections it accepts and answers like HTTP."""

    def __init__(self, ns: str, port: int) -> None:
        self.accepted = 0
        self.listener = realapisix.serve_in_namespace(ns, port, self._serve)

    def _serve(self, conn: socket.socket) -> None:
        self.accepted += 1
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")


@pytest.fixture(scope="module")
def guarded():
    realapisix.skip_unless_available()
    settings, dp = realapisix.settings(apisix_config.Mode.FILE)  # no mtls_dir: no CA configured
    conf = apisix_config.render(settings, dp)
    conf["apisix"]["stream_proxy"]["tcp"].append({"addr": "127.0.0.1:15098"})
    node = [{"host": "127.0.0.1", "port": 19550, "weight": 1}]
    document = {
        "routes": [{"id": "r-mutual", "uri": "/*", "hosts": ["mutual"], "upstream_id": "u-mutual"},
                   {"id": "r-plain", "uri": "/*", "hosts": ["plain"], "upstream_id": "u-plain"}],
        "upstreams": [{"id": "u-mutual", "type": "roundrobin", "scheme": "https", "labels": MUTUAL, "nodes": node},
                      {"id": "u-plain", "type": "roundrobin", "scheme": "http", "nodes": node},
                      {"id": "us-mutual", "type": "roundrobin", "scheme": "tcp", "labels": MUTUAL, "nodes": node}],
        # no condition: the loopback test connection has no original destination to match on
        "stream_routes": [{"id": "s-mutual", "upstream_id": "us-mutual"}],
    }
    with realapisix.running(yaml.safe_dump(conf), document=document) as apisix:
        yield apisix, Recorder(apisix.ns, 19550)


def _get(apisix, host: str) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{apisix.forward(15099)}/", headers={"Host": host})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_http_to_an_istio_mutual_upstream_without_a_certificate_is_refused(guarded):
    apisix, server = guarded
    before = server.accepted
    assert _get(apisix, "mutual") == 502
    assert server.accepted == before
    assert any("has no workload certificate" in line for line in apisix.errors())
    assert _get(apisix, "plain") == 200  # the guard is only for Istio mTLS upstreams


def test_tcp_to_an_istio_mutual_upstream_is_closed_unsent(guarded):
    apisix, server = guarded
    before = server.accepted
    with socket.create_connection(("127.0.0.1", apisix.forward(15098)), timeout=10) as conn:
        conn.sendall(b"secret\n")
        assert conn.recv(100) == b""  # closed without an answer
    assert server.accepted == before
    assert any("TCP upstream requires Istio mTLS and this sidecar has no workload certificate" in line
               for line in apisix.errors())
