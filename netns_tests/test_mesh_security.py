"""End to end, AuthorizationPolicy and PeerAuthentication on the real pair (istiod 1.29 + APISIX 3.18 sidecars,
file mode): the RBAC filters istiod sends become the `amesh-rbac` plugin on the inbound side (HTTP: 403
"RBAC: access denied"; TCP: the connection closed), and an mTLS-only inbound (PeerAuthentication STRICT) is
refused and reported rather than served as plaintext (docs/translation.md, "Fail closed"). Each test deletes
what it applied, and traffic flows again."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from localmesh import client, mesh as mesh_mod, requests as req, tasks, topology
from netns_tests.meshfixture import clean, mesh  # noqa: F401 (fixtures)

HEAD = "apiVersion: security.istio.io/v1\nkind: {kind}\nmetadata: {{name: {name}, namespace: default}}\nspec:\n"
DENY_ADMIN = HEAD.format(kind="AuthorizationPolicy", name="reviews-deny-admin") + (
    "  selector: {matchLabels: {app: reviews}}\n  action: DENY\n"
    "  rules:\n  - to:\n    - operation: {paths: [\"/admin*\"]}\n")
ALLOW_GET = HEAD.format(kind="AuthorizationPolicy", name="reviews-allow-get") + (
    "  selector: {matchLabels: {app: reviews}}\n  action: ALLOW\n"
    "  rules:\n  - to:\n    - operation: {methods: [\"GET\"]}\n")
DENY_MONGODB = HEAD.format(kind="AuthorizationPolicy", name="mongodb-deny") + (
    "  selector: {matchLabels: {app: mongodb}}\n  action: DENY\n"
    "  rules:\n  - to:\n    - operation: {ports: [\"27017\"]}\n")
STRICT = HEAD.format(kind="PeerAuthentication", name="reviews-strict") + (
    "  selector: {matchLabels: {app: reviews}}\n  mtls: {mode: STRICT}\n")
REVIEWS = "http://reviews:9080"
PRODUCTPAGE_IP = topology.bookinfo().workload("productpage-v1").ip
DENY_PRODUCTPAGE_IP = HEAD.format(kind="AuthorizationPolicy", name="details-deny-ip") + (
    "  selector: {matchLabels: {app: details}}\n  action: DENY\n"
    f"  rules:\n  - from:\n    - source: {{ipBlocks: [\"{PRODUCTPAGE_IP}/32\"]}}\n")




def _file(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


def _status(workdir: Path, pod: str) -> dict:
    state = mesh_mod.load_state(workdir)
    return mesh_mod.admin_json(mesh_mod.namespace(state["prefix"], pod), "/status") or {}


def _wait_denied(workdir: Path, pod: str, timeout: float = 20.0) -> list[dict]:
    """The pod's /status `denied` entries once there are some (the report follows a change by ~5 s)."""
    deadline = time.monotonic() + timeout
    while True:
        denied = _status(workdir, pod).get("denied") or []
        if denied or time.monotonic() > deadline:
            return denied
        time.sleep(0.5)


def test_deny_path_then_delete(clean, tmp_path):
    policy = _file(tmp_path, "deny-admin", DENY_ADMIN)
    mesh_mod.apply(clean, [policy])
    try:
        denied = req.send(clean, "productpage-v1", f"{REVIEWS}/admin")
        assert (denied.status, denied.body.decode()) == (403, "RBAC: access denied"), denied.as_dict()
        denied = req.send(clean, "productpage-v1", f"{REVIEWS}/admin/users")
        assert denied.status == 403, denied.as_dict()
        ok = req.send(clean, "productpage-v1", f"{REVIEWS}/ok")
        assert ok.status == 200 and req.answered_by(ok) == "reviews v1", ok.as_dict()
        # other services are not affected
        assert req.send(clean, "productpage-v1", "http://details:9080/admin").status == 200
        assert _status(clean, "reviews-v1").get("denied") == [], "a DENY on paths is enforced, not refused"
    finally:
        mesh_mod.delete(clean, [policy])
    assert req.send(clean, "productpage-v1", f"{REVIEWS}/admin").status == 200


def test_allow_get_only(clean, tmp_path):
    policy = _file(tmp_path, "allow-get", ALLOW_GET)
    mesh_mod.apply(clean, [policy])
    try:
        assert req.send(clean, "productpage-v1", f"{REVIEWS}/x").status == 200
        posted = req.send(clean, "productpage-v1", f"{REVIEWS}/x", method="POST")
        assert (posted.status, posted.body.decode()) == (403, "RBAC: access denied"), posted.as_dict()
    finally:
        mesh_mod.delete(clean, [policy])
    assert req.send(clean, "productpage-v1", f"{REVIEWS}/x", method="POST").status == 200


def test_ip_blocks_on_http_see_the_client_address(clean, tmp_path):
    """ipBlocks on an HTTP port: the client's own address decides (the inbound front hands it over the hop to
    the HTTP listener), so productpage is refused and reviews is not; nothing is reported denied."""
    policy = _file(tmp_path, "details-deny-ip", DENY_PRODUCTPAGE_IP)
    mesh_mod.apply(clean, [policy])
    try:
        denied = req.send(clean, "productpage-v1", "http://details:9080/details/0")
        assert (denied.status, denied.body.decode()) == (403, "RBAC: access denied"), denied.as_dict()
        assert req.send(clean, "reviews-v1", "http://details:9080/details/0").status == 200
        assert _status(clean, "details-v1").get("denied") == [], "ipBlocks are enforced, not refused"
    finally:
        mesh_mod.delete(clean, [policy])
    assert req.send(clean, "productpage-v1", "http://details:9080/details/0").status == 200


def test_tcp_deny_closes_the_connection(clean, tmp_path):
    policy = _file(tmp_path, "mongodb-deny", DENY_MONGODB)
    mesh_mod.apply(clean, [policy])
    try:
        refused = req.send(clean, "productpage-v1", "tcp://mongodb:27017", data="ping 1", timeout=5)
        assert refused.status != 200, refused.as_dict()
        log = mesh_mod.Paths(clean).log("mongodb-v1", "app.jsonl")
        before = log.read_text() if log.exists() else ""
        req.send(clean, "productpage-v1", "tcp://mongodb:27017", data="ping 2", timeout=5)
        assert "ping 2" not in (log.read_text() if log.exists() else "")[len(before):], "reached the app"
    finally:
        mesh_mod.delete(clean, [policy])
    response = req.send(clean, "productpage-v1", "tcp://mongodb:27017", data="ping 3")
    assert response.status == 200 and response.json() == {"replies": ["mongodb-v1 ping 3"]}, response.as_dict()


def test_strict_peer_authentication_fails_closed_and_is_reported(clean, tmp_path):
    policy = _file(tmp_path, "reviews-strict", STRICT)
    mesh_mod.apply(clean, [policy])
    try:
        refused = req.send(clean, "productpage-v1", f"{REVIEWS}/", timeout=5)
        assert refused.status != 200 and req.answered_by(refused) != "reviews v1", refused.as_dict()
        denied = _wait_denied(clean, "reviews-v1")
        assert any("PeerAuthentication STRICT" in e["field"] for e in denied), denied
        state = mesh_mod.load_state(clean)
        metrics = client.http_request(mesh_mod.namespace(state["prefix"], "reviews-v1"), "127.0.0.1",
                                      mesh_mod.ADMIN_PORT, "localhost", path="/stats/prometheus", timeout=3)
        gauge = [line for line in metrics.body.decode().splitlines()
                 if line.startswith("amesh_translation_unsupported_fields{") and 'effect="denied"' in line]
        assert any("PeerAuthentication STRICT" in line for line in gauge), gauge
        assert req.send(clean, "productpage-v1", "http://details:9080/").status == 200
    finally:
        mesh_mod.delete(clean, [policy])
    assert req.answered_by(req.send(clean, "productpage-v1", f"{REVIEWS}/")) == "reviews v1"
