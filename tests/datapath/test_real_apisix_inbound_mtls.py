"""Inbound mTLS termination on a real APISIX 3.18 in a captured pod (amesh-mtls on the stream front 15006,
amesh.mtls_server on the TLS listeners): PeerAuthentication PERMISSIVE (HTTP port 8080), STRICT (TCP port
7100) and DISABLE (7101), dialled from another namespace the way an Envoy sidecar dials them: a client
certificate from the mesh root, Istio's SNI and ALPN; the client checks the pod's SPIFFE identity.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from netns_tests.pods import OTHER_V4, POD_V4
from sidecar_agent.apisix import config as apisix_config
from sidecar_agent.apisix import datapath
from sidecar_agent.schema import Schemas
from sidecar_agent.schemas import APISIX_SCHEMA_DIR
from sidecar_agent.translate.stream import precedence
from tests import realapisix
from tests.datapath.meshpki import Pki, install

TRUST = "spiffe://cluster.local/ns/default/sa/"
POD_ID, CLIENT_ID = TRUST + "app", TRUST + "sleep"
PERMISSIVE, STRICT, DISABLE = 8080, 7100, 7101
HTTP_ALPN = ["istio-http/1.1", "istio", "http/1.1"]  # what Envoy offers for an HTTP/1.1 upstream with mTLS
TCP_ALPN = ["istio-peer-exchange", "istio"]


# ipBlocks: only from `other`'s address, which the TLS listeners know only as the front hands it over
FROM_OTHER = {"action": "ALLOW", "name": "from-other", "policies": [
    {"name": "other", "permissions": [{"any": True}], "principals": [{"source_ip": f"{OTHER_V4}/32"}]}]}


def _document(tls: dict[int, int]) -> dict:
    upstreams = [{"id": "u-app", "type": "roundrobin", "nodes": [{"host": "127.0.0.1", "port": 17777, "weight": 1}]},
                 {"id": "us-app", "type": "roundrobin", "scheme": "tcp",
                  "nodes": [{"host": "127.0.0.1", "port": 17777, "weight": 1}]},
                 {"id": "us-inbound-http", "type": "roundrobin", "scheme": "tcp",
                  "nodes": [{"host": "127.0.0.1", "port": 15600, "weight": 1}]}]
    # the port's HTTP routes serve its plaintext (internal listener) and its TLS listener alike
    # and an AuthorizationPolicy as translate/rbac.py writes it: /secure* only from the sleep workload's identity
    routes = [{"id": "r-app", "uri": "/*", "priority": 100, "upstream_id": "u-app",
               "vars": [["amesh_direction", "==", "inbound"], ["original_dst_port", "==", PERMISSIVE]],
               "plugins": {"amesh-rbac": {"filters": [{"action": "ALLOW", "name": "allow", "policies": [
                   {"name": "open", "permissions": [{"not": {"path": {"prefix": "/secure"}}}],
                    "principals": [{"any": True}]},
                   {"name": "sleep-only", "permissions": [{"path": {"prefix": "/secure"}}],
                    "principals": [{"authenticated": {"exact": CLIENT_ID}}]}]}, FROM_OTHER]}}}]
    stream_routes = [
        {"id": "s-8080", "server_addr": POD_V4, "server_port": PERMISSIVE, "upstream_id": "us-inbound-http",
         "plugins": {datapath.TLS_PLUGIN: {"tls_port": tls[PERMISSIVE], "plaintext": True}}},
        {"id": "s-7100", "server_addr": POD_V4, "server_port": STRICT, "upstream_id": "us-app",
         "plugins": {datapath.TLS_PLUGIN: {"tls_port": tls[STRICT], "plaintext": False}}},
        {"id": "s-7100-tls", "server_addr": "127.0.0.1", "server_port": tls[STRICT], "upstream_id": "us-app",
         "plugins": {"amesh-rbac": {"filters": [{"action": "DENY", "name": "deny", "policies": [
             {"name": "no-ratings", "permissions": [{"any": True}],
              "principals": [{"authenticated": {"exact": TRUST + "ratings"}}]}]}, FROM_OTHER]}}},
        {"id": "s-7101", "server_addr": POD_V4, "server_port": DISABLE, "upstream_id": "us-app"},
    ]
    return {"routes": routes, "upstreams": upstreams, "stream_routes": sorted(stream_routes, key=precedence)}


CLIENT = r"""
import http.client, json, socket, ssl, sys
args = json.loads(sys.argv[1])
out = {}
try:
    raw = socket.create_connection((args["host"], args["port"]), timeout=5)
    if args.get("tls"):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.load_verify_locations(args["root"])
        if args.get("cert"):
            ctx.load_cert_chain(args["cert"], args["key"])
        ctx.set_alpn_protocols(args["alpn"])
        raw = ctx.wrap_socket(raw, server_hostname=args["sni"])
        out["server"] = [v for k, v in raw.getpeercert().get("subjectAltName", ()) if k == "URI"]
        if args["alpn"][-1] == "h2":  # what the server selected; an HTTP/2 exchange is not this client's
            out["alpn"] = raw.selected_alpn_protocol()
            print(json.dumps(out))
            sys.exit(0)
    statuses = []
    for _ in range(args.get("requests", 1)):  # keep-alive: every request on the one connection
        conn = http.client.HTTPConnection("app")
        conn.sock = raw
        conn.request("GET", args.get("path", "/"), headers={"Host": "app"})
        response = conn.getresponse()
        response.read()
        statuses.append(response.status)
    out["status"] = statuses[0] if len(set(statuses)) == 1 else statuses
except (OSError, ssl.SSLError, ValueError, IndexError, http.client.HTTPException) as exc:
    out["status"], out["error"] = 0, type(exc).__name__ + ": " + str(exc)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def pod(captured_pod):
    realapisix.skip_unless_available()
    network = captured_pod
    with realapisix.files_for_apisix("amesh-inbound-mtls-") as base:
        yield from _pod(network, base)


def _pod(network, base: Path):
    mesh, forger = Pki(base / "mesh"), Pki(base / "forger")
    cert_dir = base / "istio"
    install(cert_dir, mesh.issued(POD_ID))
    settings, dp = realapisix.settings(apisix_config.Mode.FILE, inbound_http_ports=(PERMISSIVE,),
                                       inbound_tls_ports=(PERMISSIVE, STRICT), mtls_dir=str(cert_dir))
    tls = {port: internal for (d, port), internal in datapath.internal_ports(dp).items()
           if d is datapath.Direction.INBOUND_TLS}
    document = _document(tls)
    schemas = Schemas(APISIX_SCHEMA_DIR)
    assert [e for kind, key in (("route", "routes"), ("upstream", "upstreams"), ("stream_route", "stream_routes"))
            for obj in document[key] for e in schemas.check(kind, obj)] == []
    app = realapisix.EchoServers(network.pod, [("app", "127.0.0.1", 17777)])
    client = {"root": str(mesh.dir / "root-cert.pem")}
    client["cert"], client["key"] = map(str, mesh.files(CLIENT_ID, base / "client"))
    forged = dict(zip(("cert", "key"), map(str, forger.files(CLIENT_ID, base / "forged"))))
    other = dict(zip(("cert", "key"), map(str, mesh.files(TRUST + "ratings", base / "other"))))
    with app, realapisix.running(apisix_config.render_yaml(settings, dp), ns=network.pod,
                                 document=document) as apisix:
        yield {"ns": network.other, "apisix": apisix, "client": client, "forged": forged, "other": other}


def dial(pod, port: int, *, tls: bool, alpn=HTTP_ALPN, client: dict | None = None, requests: int = 1,
         path: str = "/") -> dict:
    args = {"host": POD_V4, "port": port, "tls": tls, "alpn": alpn, "requests": requests, "path": path,
            "sni": f"outbound_.{port}_._.app.default.svc.cluster.local", **pod["client"], **(client or {})}
    out = subprocess.run(["ip", "netns", "exec", pod["ns"], sys.executable, "-c", CLIENT, json.dumps(args)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_permissive_serves_mtls_with_the_workload_identity(pod):
    got = dial(pod, PERMISSIVE, tls=True, requests=3)  # keep-alive on the TLS connection
    assert got == {"server": [POD_ID], "status": 200}


def test_http2_is_negotiated_on_the_http_tls_listener(pod):
    got = dial(pod, PERMISSIVE, tls=True, alpn=["istio-h2", "istio", "h2"])
    assert got.get("alpn") == "h2", got


def test_permissive_serves_plaintext(pod):
    assert dial(pod, PERMISSIVE, tls=False)["status"] == 200


def test_strict_serves_mtls_with_istio_tcp_alpn(pod):
    assert dial(pod, STRICT, tls=True, alpn=TCP_ALPN) == {"server": [POD_ID], "status": 200}


def test_strict_closes_plaintext(pod):
    assert dial(pod, STRICT, tls=False)["status"] == 0
    assert any("the port requires mTLS" in line for line in pod["apisix"].log().splitlines())


def test_disable_is_plaintext_only(pod):
    assert dial(pod, DISABLE, tls=False)["status"] == 200
    assert dial(pod, DISABLE, tls=True)["status"] == 0  # TLS bytes reach a plaintext app


@pytest.mark.parametrize("port", [PERMISSIVE, STRICT])
def test_a_client_without_a_certificate_is_refused(pod, port):
    got = dial(pod, port, tls=True, client={"cert": None})
    assert got["status"] == 0


@pytest.mark.parametrize("port", [PERMISSIVE, STRICT])
def test_a_forged_client_certificate_is_refused(pod, port):
    got = dial(pod, port, tls=True, client=pod["forged"])
    assert got["status"] == 0



def test_authorization_by_the_peer_identity_from_its_certificate(pod):
    assert dial(pod, PERMISSIVE, tls=True, path="/secure/x")["status"] == 200
    assert dial(pod, PERMISSIVE, tls=True, path="/secure/x", client=pod["other"])["status"] == 403
    assert dial(pod, PERMISSIVE, tls=False, path="/secure/x")["status"] == 403  # plaintext: no principal
    assert dial(pod, PERMISSIVE, tls=True, path="/open", client=pod["other"])["status"] == 200


def test_tcp_authorization_by_the_peer_identity(pod):
    assert dial(pod, STRICT, tls=True, alpn=TCP_ALPN)["status"] == 200
    assert dial(pod, STRICT, tls=True, alpn=TCP_ALPN, client=pod["other"])["status"] == 0  # closed
