"""Istio mutual TLS towards upstreams (sidecar_agent/lua/amesh/mtls.lua) on a real APISIX 3.18.

APISIX runs with the agent's config.yaml (`mtls_dir` set: the workload certificate's files, written by
the agent's own `workload.write_files`, owned by UID 1337 like the APISIX workers). The servers are what
an Envoy sidecar's inbound mTLS chain is to a client: TLS that requires a client certificate signed by
the mesh root and presents the server workload's certificate (URI SAN = its SPIFFE id). They record the
client's identity and the SNI they were sent. A second, unrelated CA issues the forged certificates.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from sidecar_agent.apisix import config as apisix_config
from sidecar_agent.schema import Schemas
from sidecar_agent.schemas import APISIX_SCHEMA_DIR
from sidecar_agent.security import workload
from tests import realapisix
from tests.datapath.meshpki import Pki, install, offered_alpn

TRUST = "spiffe://cluster.local/ns/default/sa/"
SERVER_ID, CLIENT_ID = TRUST + "reviews", TRUST + "productpage"
SNI = "outbound_.9080_._.reviews.default.svc.cluster.local"
MUTUAL = {"amesh.tls": "istio-mutual", "amesh.sni": SNI, "amesh.san": f"{TRUST}other,{SERVER_ID}"}
# Host -> (server port, upstream labels)
CASES = {
    "mesh": (19443, MUTUAL),
    "forged": (19444, MUTUAL),  # right identity, issued by another CA
    "impostor": (19445, MUTUAL),  # the mesh's CA, another workload's identity
    "any-identity": (19445, {"amesh.tls": "istio-mutual"}),  # no SAN list: any workload of the mesh
    "plain-tls": (19446, {"amesh.tls": "simple"}),  # not Istio mTLS: unverified, as before
}
PLAIN_PORT = 19450  # a plaintext server: an endpoint without a sidecar
PER_ENDPOINT = {**MUTUAL, "amesh.tls": "istio-per-endpoint"}
# auto-mTLS with some endpoints only (translate/endpoint.py marks the sidecar's): weight 0 makes APISIX pick the other
MIXED = {
    "mixed-to-sidecar": [{"host": "127.0.0.1", "port": 19443, "weight": 1, "metadata": {"tlsMode": "istio"}},
                         {"host": "127.0.0.1", "port": PLAIN_PORT, "weight": 0}],
    "mixed-to-plain": [{"host": "127.0.0.1", "port": 19443, "weight": 0, "metadata": {"tlsMode": "istio"}},
                       {"host": "127.0.0.1", "port": PLAIN_PORT, "weight": 1}],
}
# TCP services (lua/amesh/mtls_origin.lua): a stream route each, told apart by the client's source address
TCP_PORT = 19560
TCP_CASES = {"mesh": "127.0.0.11", "forged": "127.0.0.12", "impostor": "127.0.0.13", "any-identity": "127.0.0.14",
             "mixed-to-sidecar": "127.0.0.15", "mixed-to-plain": "127.0.0.16"}


class MtlsServer:
    """A TLS server in the namespace: requires a client certificate from `client_root`, answers every
    request with what it saw (client URI SANs, SNI) as JSON and closes."""

    def __init__(self, ns: str, port: int, chain: bytes, key: bytes, client_root: Path | None) -> None:
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        with tempfile.TemporaryDirectory(prefix="amesh-mtls-server-") as tmp:  # read once, then removed
            files = Path(tmp)
            (files / "chain.pem").write_bytes(chain)
            (files / "key.pem").write_bytes(key)
            self.ctx.load_cert_chain(files / "chain.pem", files / "key.pem")
        if client_root is not None:
            self.ctx.load_verify_locations(client_root)
            self.ctx.verify_mode = ssl.CERT_REQUIRED
        self.sni: list[str | None] = []
        self.ctx.sni_callback = lambda sock, name, ctx: self.sni.append(name)
        self.seen: list[dict] = []
        self.listener = realapisix.serve_in_namespace(ns, port, self._serve)

    def _serve(self, conn: socket.socket) -> None:
        try:
            alpn = offered_alpn(conn)
            tls = self.ctx.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            self.seen.append({"handshake": repr(exc)})
            conn.close()
            return
        with tls:
            peer = tls.getpeercert() or {}
            seen = {"client": [v for k, v in peer.get("subjectAltName", ()) if k == "URI"], "sni": self.sni[-1:],
                    "alpn": alpn}
            self.seen.append(seen)
            tls.recv(65536)
            body = json.dumps(seen).encode()
            tls.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    def close(self) -> None:
        self.listener.close()


def _plaintext(conn: socket.socket) -> None:
    """An endpoint without a sidecar: plaintext HTTP (or a TCP line), answering that it was plaintext."""
    with conn:
        conn.recv(65536)
        body = b'{"plaintext": true}'
        conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))


@pytest.fixture(scope="module")
def world():
    realapisix.skip_unless_available()
    with realapisix.files_for_apisix("amesh-mtls-") as base:
        yield from _world(base)


def _world(base: Path):
    mesh, forger = Pki(base / "mesh"), Pki(base / "forger")
    cert_dir = base / "istio"  # what the agent writes under <prefix>/conf/istio
    install(cert_dir, mesh.issued(CLIENT_ID))
    settings, dp = realapisix.settings(apisix_config.Mode.FILE, mtls_dir=str(cert_dir))
    upstreams, routes = [], []
    for host, (port, labels) in CASES.items():
        upstreams.append({"id": f"u-{host}", "type": "roundrobin", "scheme": "https", "labels": labels,
                          "nodes": [{"host": "127.0.0.1", "port": port, "weight": 1}]})
        routes.append({"id": f"r-{host}", "uri": "/*", "hosts": [host], "upstream_id": f"u-{host}"})
    for host, nodes in MIXED.items():
        upstreams.append({"id": f"u-{host}", "type": "roundrobin", "scheme": "http", "labels": PER_ENDPOINT,
                          "nodes": nodes})
        routes.append({"id": f"r-{host}", "uri": "/*", "hosts": [host], "upstream_id": f"u-{host}"})
    stream_routes = []
    for host, source in TCP_CASES.items():
        if host in MIXED:
            labels, nodes = PER_ENDPOINT, MIXED[host]
        else:
            port, labels = CASES[host]
            nodes = [{"host": "127.0.0.1", "port": port, "weight": 1}]
        upstreams.append({"id": f"us-{host}", "type": "roundrobin", "scheme": "tcp", "labels": labels,
                          "nodes": nodes})
        stream_routes.append({"id": f"s-{host}", "remote_addr": source, "upstream_id": f"us-{host}"})
    document = {"routes": routes, "upstreams": upstreams, "stream_routes": stream_routes}
    schemas = Schemas(APISIX_SCHEMA_DIR)
    assert [e for kind, key in (("route", "routes"), ("upstream", "upstreams"), ("stream_route", "stream_routes"))
            for obj in document[key] for e in schemas.check(kind, obj)] == []
    servers = []
    conf = apisix_config.render(settings, dp)
    conf["apisix"]["stream_proxy"]["tcp"].append({"addr": f"127.0.0.1:{TCP_PORT}"})
    with realapisix.running(yaml.safe_dump(conf), document=document) as apisix:
        try:
            root = mesh.dir / "root-cert.pem"
            servers = [MtlsServer(apisix.ns, 19443, *mesh.leaf(SERVER_ID), root),
                       MtlsServer(apisix.ns, 19444, *forger.leaf(SERVER_ID), root),
                       MtlsServer(apisix.ns, 19445, *mesh.leaf(TRUST + "ratings"), root),
                       MtlsServer(apisix.ns, 19446, *forger.leaf("spiffe://elsewhere/x"), None)]
            plain = realapisix.serve_in_namespace(apisix.ns, PLAIN_PORT, _plaintext)
            yield {"apisix": apisix, "port": apisix.forward(dp.mirror_port), "servers": servers, "dp": dp,
                   "mesh": mesh, "cert_dir": cert_dir}
        finally:
            for server in servers:
                server.close()
            if plain is not None:
                plain.close()


def get(world, host: str) -> tuple[int, dict | str]:
    request = urllib.request.Request(f"http://127.0.0.1:{world['port']}/", headers={"Host": host})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def test_istio_mutual_upstream_presents_the_workload_certificate_and_istio_sni(world):
    status, seen = get(world, "mesh")
    assert status == 200, seen
    # Istio's ALPN from the very first request (amesh.alpn sets it in every worker's init)
    assert seen == {"client": [CLIENT_ID], "sni": [SNI], "alpn": ["istio-http/1.1", "istio", "http/1.1"]}
    assert not any("Istio ALPN not set" in line for line in world["apisix"].errors())


def test_server_certificate_from_another_ca_is_refused(world):
    status, _ = get(world, "forged")
    assert status == 502
    assert any("not issued by the mesh root" in line for line in world["apisix"].errors())


def test_server_with_another_identity_is_refused(world):
    status, _ = get(world, "impostor")
    assert status == 502
    assert any(f"upstream identity {TRUST}ratings is not one of" in line for line in world["apisix"].errors())


def test_without_subject_alt_names_any_mesh_workload_is_accepted(world):
    status, seen = get(world, "any-identity")
    assert status == 200, seen
    assert seen["client"] == [CLIENT_ID]


def test_tls_that_is_not_istio_mutual_stays_unverified_and_anonymous(world):
    status, seen = get(world, "plain-tls")
    assert status == 200, seen
    assert seen["client"] == []


def test_rotation_takes_effect_without_reload_and_without_a_failed_request(world):
    rotated = TRUST + "productpage-rotated"
    statuses, clients = [], set()
    deadline = time.monotonic() + 10
    written = False
    while time.monotonic() < deadline:
        if not written and len(statuses) >= 5:
            install(world["cert_dir"], world["mesh"].issued(rotated))
            written = True
        status, seen = get(world, "mesh")
        statuses.append(status)
        if status == 200:
            clients.update(seen["client"])
        if rotated in clients:
            break
        time.sleep(0.05)
    assert set(statuses) == {200}
    assert clients == {CLIENT_ID, rotated}


def test_a_rotation_caught_halfway_keeps_the_certificate_in_force(world):
    """A key that does not belong to the chain (the agent writes key, then chain): the pair in force stays."""
    before = get(world, "mesh")[1]["client"]
    _, key = world["mesh"].leaf(TRUST + "half")
    workload.write_private(world["cert_dir"] / workload.KEY_FILE, key)
    os.chown(world["cert_dir"] / workload.KEY_FILE, realapisix.PROXY_UID, realapisix.PROXY_UID)
    time.sleep(1.2)  # the files are re-read at most once a second
    status, seen = get(world, "mesh")
    assert (status, seen["client"]) == (200, before)
    assert "key.pem does not belong to cert-chain.pem" in world["apisix"].log()
    install(world["cert_dir"], world["mesh"].issued(CLIENT_ID))  # whole again, for the tests after this one
    time.sleep(1.2)



def tcp(world, host: str) -> dict | None:
    """One TCP exchange through the stream front to case `host`'s server: what the server saw, or None
    when the connection was closed without an answer."""
    answer = realapisix.tcp_from(world["apisix"].ns, TCP_PORT, b"hello\n", source=TCP_CASES[host])
    if not answer:
        return None
    return json.loads(answer.partition(b"\r\n\r\n")[2])


def in_force(world) -> list[str]:
    """The identity the sidecar presents now (the rotation tests change it), as the HTTP side shows it."""
    return get(world, "mesh")[1]["client"]


def test_tcp_istio_mutual_upstream_presents_the_workload_certificate_and_istio_sni(world):
    assert tcp(world, "mesh") == {"client": in_force(world), "sni": [SNI], "alpn": ["istio-peer-exchange", "istio"]}


def test_tcp_server_certificate_from_another_ca_is_refused(world):
    server = world["servers"][1]
    before = len(server.seen)
    assert tcp(world, "forged") is None
    assert all("client" not in seen for seen in server.seen[before:])  # no request reached it
    assert any("not issued by the mesh root" in line for line in world["apisix"].errors())


def test_tcp_server_with_another_identity_is_refused(world):
    assert tcp(world, "impostor") is None
    assert any(f"upstream identity {TRUST}ratings is not one of" in line for line in world["apisix"].errors())


def test_tcp_without_subject_alt_names_any_mesh_workload_is_accepted(world):
    assert tcp(world, "any-identity")["client"] == in_force(world)


def test_tcp_mtls_origin_refuses_a_connection_the_front_did_not_divert(world):
    """Our origin server listens on loopback, where the app could reach it: without a record of the front
    for its source address a connection is closed, whatever it sends."""
    assert realapisix.tcp_from(world["apisix"].ns, world["dp"].tcp_mtls_port, b"hello\n", source="127.0.0.21") == b""
    assert any("no diverted connection from 127.0.0.21" in line for line in world["apisix"].errors())


def test_auto_mtls_per_endpoint_http(world):
    """Some endpoints have a sidecar (marked nodes of a plaintext upstream): those are dialled with Istio mTLS,
    the others in plaintext, as Envoy's transport_socket_matches do."""
    status, seen = get(world, "mixed-to-sidecar")
    assert status == 200 and seen["client"] == in_force(world) and seen["sni"] == [SNI], seen
    assert get(world, "mixed-to-plain") == (200, {"plaintext": True})


def test_auto_mtls_per_endpoint_tcp(world):
    seen = tcp(world, "mixed-to-sidecar")
    assert seen["client"] == in_force(world) and seen["alpn"] == ["istio-peer-exchange", "istio"], seen
    assert tcp(world, "mixed-to-plain") == {"plaintext": True}


def test_istio_alpn_survives_a_reload(world):
    """The agent reloads APISIX (SIGHUP) when config.yaml changes: the new workers, on nginx's new cycle, set
    Istio's ALPN again in their init (amesh.alpn walks the cycle they run in)."""
    apisix = world["apisix"]
    before = apisix.processes(b"nginx: worker process")
    os.kill(apisix.proc.pid, signal.SIGHUP)
    deadline, now = time.monotonic() + 15, apisix.processes(b"nginx: worker process")
    while time.monotonic() < deadline and (not now or now & before):
        time.sleep(0.1)
        now = apisix.processes(b"nginx: worker process")
    assert now and not now & before, f"no new workers after the reload: {now} (before: {before})"
    status, seen = get(world, "mesh")
    assert status == 200 and seen["alpn"] == ["istio-http/1.1", "istio", "http/1.1"], seen
    assert tcp(world, "mesh")["alpn"] == ["istio-peer-exchange", "istio"]
    assert not any("Istio ALPN not set" in line for line in apisix.errors())
