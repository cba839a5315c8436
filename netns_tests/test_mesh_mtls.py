"""End to end, Istio mTLS between APISIX sidecars (`amesh-mesh up --mtls`): istiod 1.29 is also the mesh's CA
(each agent gets its workload certificate with its pod's service-account token), auto-mTLS is on and the pods
are labelled `security.istio.io/tlsMode: istio` as the injection template labels them. PeerAuthentication
decides what the pods accept: the mesh's own traffic keeps flowing under STRICT — so it is mTLS — while a
plaintext client outside the mesh is refused; DISABLE and PERMISSIVE let it in. A TCP service under
auto-mTLS is dialled with mTLS too (the TLS origin server), which its inbound verifies: STRICT keeps it
flowing and an AuthorizationPolicy on the caller's identity decides who gets through. Each test deletes
what it applied."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from localmesh import mesh as mesh_mod, requests as req, topology
from netns_tests.meshfixture import mesh_up

HEAD = "apiVersion: {api}/v1\nkind: {kind}\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n"
MESH_STRICT = HEAD.format(api="security.istio.io", kind="PeerAuthentication", name="default", ns="istio-system") + (
    "  mtls: {mode: STRICT}\n")
REVIEWS_DISABLE = HEAD.format(api="security.istio.io", kind="PeerAuthentication", name="reviews-plain",
                              ns="default") + "  selector: {matchLabels: {app: reviews}}\n  mtls: {mode: DISABLE}\n"
MONGODB_PLAINTEXT = HEAD.format(api="networking.istio.io", kind="DestinationRule", name="mongodb", ns="default") + (
    "  host: mongodb.default.svc.cluster.local\n  trafficPolicy: {tls: {mode: DISABLE}}\n")
MONGODB_FROM_RATINGS = HEAD.format(api="security.istio.io", kind="AuthorizationPolicy", name="mongodb-from-ratings",
                                   ns="default") + (
    "  selector: {matchLabels: {app: mongodb}}\n  action: ALLOW\n"
    "  rules:\n  - from:\n    - source: {principals: [cluster.local/ns/default/sa/bookinfo-ratings]}\n")
RATINGS_FROM_REVIEWS = HEAD.format(api="security.istio.io", kind="AuthorizationPolicy", name="ratings-from-reviews",
                                   ns="default") + (
    "  selector: {matchLabels: {app: ratings}}\n  action: ALLOW\n"
    "  rules:\n  - from:\n    - source: {principals: [cluster.local/ns/default/sa/bookinfo-reviews]}\n")
DENY_OTHER_NAMESPACES = HEAD.format(api="security.istio.io", kind="AuthorizationPolicy", name="details-ns",
                                    ns="default") + (
    "  selector: {matchLabels: {app: details}}\n  action: DENY\n"
    "  rules:\n  - from:\n    - source: {notNamespaces: [default]}\n")
BOOKINFO = topology.bookinfo()


SECRET_TTL = 40  # seconds: every workload certificate is renewed at about half of it, while the tests run


@pytest.fixture(scope="module")
def mesh():
    yield from mesh_up("file", mtls=True, secret_ttl=f"{SECRET_TTL}s")


def _file(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


def _from_outside(workdir: Path, pod: str) -> int:
    """A plaintext request from the host outside the mesh straight to the pod's address (0: refused)."""
    ip = BOOKINFO.workload(pod).ip
    return req.send(workdir, "external", f"http://{ip}:9080/", timeout=5).status


def _mesh_answers(workdir: Path) -> set[str]:
    responses = [req.send(workdir, "productpage-v1", "http://reviews:9080/") for _ in range(6)]
    assert all(r.status == 200 for r in responses), [r.as_dict() for r in responses if r.status != 200]
    return {req.answered_by(r) for r in responses}


def _certificate(workdir: Path, pod: str) -> dict:
    state = mesh_mod.load_state(workdir)
    status = mesh_mod.admin_json(mesh_mod.namespace(state["prefix"], pod), "/status") or {}
    return (status.get("workload_certificate") or {}).get("certificate") or {}


def test_every_sidecar_has_its_workload_identity_from_istiod(mesh):
    for workload in BOOKINFO.workloads:
        certificate = _certificate(mesh, workload.pod)
        assert certificate.get("san") == [f"spiffe://cluster.local/ns/default/sa/{workload.service_account}"], \
            certificate


def test_permissive_by_default_serves_the_mesh_and_plaintext_from_outside(mesh):
    assert _mesh_answers(mesh) <= {"reviews v1", "reviews v2", "reviews v3"}
    assert _from_outside(mesh, "reviews-v1") == 200


def test_strict_keeps_the_mesh_flowing_and_refuses_plaintext(mesh, tmp_path):
    strict = _file(tmp_path, "strict", MESH_STRICT)
    mesh_mod.apply(mesh, [strict])
    try:
        assert _mesh_answers(mesh) <= {"reviews v1", "reviews v2", "reviews v3"}
        assert req.send(mesh, "reviews-v2", "http://ratings:9080/ratings/0").status == 200
        for pod in ("reviews-v1", "productpage-v1", "ratings-v1"):
            assert _from_outside(mesh, pod) == 0, pod
        # DISABLE on reviews: plaintext from outside again, and the mesh still reaches it
        disable = _file(tmp_path, "reviews-disable", REVIEWS_DISABLE)
        mesh_mod.apply(mesh, [disable])
        try:
            assert _from_outside(mesh, "reviews-v1") == 200
            assert _mesh_answers(mesh)
            assert _from_outside(mesh, "productpage-v1") == 0
        finally:
            mesh_mod.delete(mesh, [disable])
    finally:
        mesh_mod.delete(mesh, [strict])
    assert _from_outside(mesh, "reviews-v1") == 200


def test_tcp_under_auto_mtls_is_mtls_with_the_callers_identity(mesh, tmp_path):
    """ratings -> mongodb (TCP): under STRICT the connection still flows, so it is mTLS; an ALLOW policy on
    the caller's principal lets ratings in and closes productpage's connection, so the inbound saw each
    caller's own verified certificate; a DestinationRule saying DISABLE makes it plaintext again."""
    def ping(pod: str, timeout: float = 10):
        return req.send(mesh, pod, "tcp://mongodb:27017", data="ping", timeout=timeout)

    strict = _file(tmp_path, "strict", MESH_STRICT)
    allow = _file(tmp_path, "mongodb-allow", MONGODB_FROM_RATINGS)
    mesh_mod.apply(mesh, [strict, allow])
    try:
        served = ping("ratings-v1")
        assert served.status == 200 and served.as_dict()["body"]["replies"] == ["mongodb-v1 ping"], served.as_dict()
        refused = ping("productpage-v1", timeout=5)
        assert refused.status != 200, refused.as_dict()
    finally:
        mesh_mod.delete(mesh, [strict, allow])
    plaintext = _file(tmp_path, "mongodb-plaintext", MONGODB_PLAINTEXT)
    mesh_mod.apply(mesh, [plaintext])
    try:
        served = ping("productpage-v1")
        assert served.status == 200 and served.as_dict()["body"]["replies"] == ["mongodb-v1 ping"], served.as_dict()
    finally:
        mesh_mod.delete(mesh, [plaintext])


def test_authorization_by_workload_identity(mesh, tmp_path):
    """AuthorizationPolicy principals / namespaces: the peer is known from its verified client certificate."""
    policies = [_file(tmp_path, "ratings", RATINGS_FROM_REVIEWS), _file(tmp_path, "details", DENY_OTHER_NAMESPACES)]
    mesh_mod.apply(mesh, policies)
    try:
        assert req.send(mesh, "reviews-v2", "http://ratings:9080/ratings/0").status == 200
        denied = req.send(mesh, "productpage-v1", "http://ratings:9080/ratings/0")
        assert (denied.status, denied.body) == (403, b"RBAC: access denied"), denied.as_dict()
        assert _from_outside(mesh, "ratings-v1") == 403  # plaintext: no principal
        assert req.send(mesh, "productpage-v1", "http://details:9080/details/0").status == 200  # same namespace
        assert _from_outside(mesh, "details-v1") == 403  # no identity, so no namespace either
    finally:
        mesh_mod.delete(mesh, policies)
    assert req.send(mesh, "productpage-v1", "http://ratings:9080/ratings/0").status == 200


def test_rotation_while_traffic_flows(mesh, tmp_path):
    """Both ends renew their certificates from istiod (SECRET_TTL 40 s) while requests flow through them under
    STRICT: every certificate is renewed and no request fails (APISIX re-reads the files: no reload)."""
    strict = _file(tmp_path, "strict", MESH_STRICT)
    mesh_mod.apply(mesh, [strict])
    try:
        pods = ("productpage-v1", "reviews-v1", "reviews-v2", "reviews-v3")
        first = {pod: _certificate(mesh, pod)["serial"] for pod in pods}
        failed, sent = [], 0
        deadline = time.monotonic() + 2 * SECRET_TTL
        while time.monotonic() < deadline:
            response = req.send(mesh, "productpage-v1", "http://reviews:9080/", timeout=5)
            sent += 1
            if response.status != 200:
                failed.append(response.as_dict())
            if all(_certificate(mesh, pod)["serial"] != first[pod] for pod in pods):
                break
        renewed = {pod: _certificate(mesh, pod)["serial"] != first[pod] for pod in pods}
        assert all(renewed.values()), renewed
        assert failed == [] and sent > 10, (sent, failed[:3])
        for _ in range(6):  # after the renewal, on the new certificates
            assert req.send(mesh, "productpage-v1", "http://reviews:9080/").status == 200
    finally:
        mesh_mod.delete(mesh, [strict])


TLS_LINE_CLIENT = r"""
import json, socket, ssl, sys
args = json.loads(sys.argv[1])
out = {}
try:
    raw = socket.create_connection((args["host"], args["port"]), timeout=5)
    if args["cert"]:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.load_verify_locations(args["root"])
        ctx.load_cert_chain(args["cert"], args["key"])
        ctx.set_alpn_protocols(["istio-peer-exchange", "istio"])  # Envoy's, for a TCP upstream
        raw = ctx.wrap_socket(raw, server_hostname=args["sni"])
        out["server"] = [v for k, v in raw.getpeercert().get("subjectAltName", ()) if k == "URI"]
    raw.sendall(b"ping\n")
    out["reply"] = raw.recv(100).decode()
except (OSError, ssl.SSLError) as exc:
    out["error"] = type(exc).__name__
print(json.dumps(out))
"""


def test_tcp_port_takes_mtls_from_an_envoy_like_client_under_strict(mesh, tmp_path):
    """The TCP service's inbound under STRICT: a client with a workload certificate from istiod's CA (what an Envoy
    sidecar presents, with its SNI and ALPN) reaches the app through the port's stream TLS listener; plaintext is
    closed."""
    import json
    import subprocess
    import sys

    from localmesh import ca

    ca_dir = mesh / "istio" / "cacerts"
    chain, key = ca.issue_workload(ca_dir, "spiffe://cluster.local/ns/default/sa/sleep")
    (tmp_path / "chain.pem").write_bytes(chain)
    (tmp_path / "key.pem").write_bytes(key)
    strict = _file(tmp_path, "strict", MESH_STRICT)
    mongodb = BOOKINFO.workload("mongodb-v1")
    ns = mesh_mod.namespace(mesh_mod.load_state(mesh)["prefix"], "external")

    def dial(with_cert: bool) -> dict:
        args = {"host": mongodb.ip, "port": 27017, "root": str(ca_dir / "root-cert.pem"),
                "cert": str(tmp_path / "chain.pem") if with_cert else None, "key": str(tmp_path / "key.pem"),
                "sni": "outbound_.27017_._.mongodb.default.svc.cluster.local"}
        out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", TLS_LINE_CLIENT, json.dumps(args)],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    mesh_mod.apply(mesh, [strict])
    try:
        assert dial(True) == {"server": ["spiffe://cluster.local/ns/default/sa/bookinfo-mongodb"],
                              "reply": "mongodb-v1 ping\n"}
        assert dial(False).get("reply", "") == ""  # plaintext: closed
    finally:
        mesh_mod.delete(mesh, [strict])
