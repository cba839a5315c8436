"""Workload identity and secure xDS against the REAL istiod 1.29 in CA mode (tests/agent/istiod_ca.py):
the chain for the token's identity, a refused token, a CA that appears late, a real rotation, ADS on 15012.

CI has root, `ip netns` and ../shared/peers/istiod: nothing here may skip there (tests/allowed_skips.txt).
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import stat
import tempfile
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import verification

from amesh_common.backoff import Backoff
from sidecar_agent.apisix.config import Mode
from sidecar_agent.app import Agent, AgentConfig
from sidecar_agent.security import workload
from tests.agent import istiod_ca
from tests.agent.waiting import eventually

POD = {"POD_NAME": "productpage-v1-abc", "POD_NAMESPACE": "default", "INSTANCE_IP": "127.0.0.10",
       "SERVICE_ACCOUNT": "productpage", "ISTIO_META_CLUSTER_ID": "Kubernetes", "ISTIO_VERSION": "1.29.6"}


def _skip_unless_available() -> None:
    reason = istiod_ca.unavailable()
    if reason:
        pytest.skip(reason)


@pytest.fixture
def workdir():
    path = Path(tempfile.mkdtemp(prefix="amesh-ca-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def istiod():
    """One istiod in CA mode for the module (each test uses its own tokens and files)."""
    _skip_unless_available()
    path = Path(tempfile.mkdtemp(prefix="amesh-istiod-ca-"))
    ca = istiod_ca.IstiodCA(path)
    try:
        ca.start()
        yield ca
    finally:
        ca.stop()
        shutil.rmtree(path, ignore_errors=True)


def settings(ca: istiod_ca.IstiodCA, token: Path, out_dir: Path | None, env: dict | None = None, **over):
    got = workload.settings_from(env or POD, ca_address=ca.address, root_cert=ca.root_cert, token=token,
                                 server_name=istiod_ca.ISTIOD_NAME, trust_domain="cluster.local", out_dir=out_dir)
    return replace(got, **over)


def agent_config(ca: istiod_ca.IstiodCA, workdir: Path, token: Path, **over) -> AgentConfig:
    base = dict(discovery_address=ca.address, plaintext=False, root_cert=ca.root_cert, token=token,
                xds_server_name=istiod_ca.ISTIOD_NAME, ca_address=ca.address, ca_root_cert=ca.root_cert,
                no_apisix=True, apisix_mode=Mode.FILE, apisix_prefix=workdir / "apisix",
                apisix_config_file=workdir / "apisix.yaml", apisix_metrics_url="http://127.0.0.1:9/none",
                listen_host="127.0.0.1", status_port=0, metrics_port=0, admin_port=0,
                labels_file=workdir / "labels", partial_timeout=2.0)
    base.update(over)
    return AgentConfig(**base)


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def aget(port: int, path: str) -> tuple[int, str]:
    return await asyncio.to_thread(get, port, path)


def test_the_chain_is_for_the_tokens_identity_and_verifies_to_the_mesh_root(istiod, workdir):
    # The node claims productpage; the token is reviews': istiod issues for the authenticated caller.
    token = istiod.write_token(workdir / "token", "default", "reviews")
    out = workdir / "conf" / "istio"
    certs = workload.WorkloadCertificates(settings(istiod, token, out))
    issued = asyncio.run(certs.issue())
    assert issued.sans == ("spiffe://cluster.local/ns/default/sa/reviews",)
    assert len(issued.chain_pem) == 2 + 1 and len(issued.roots_pem) == 1  # leaf, intermediate, root | anchor
    root = x509.load_pem_x509_certificate(istiod.root_cert.read_bytes())
    assert x509.load_pem_x509_certificate(issued.roots_pem[0].encode()) == root
    # Verified independently of the agent's own check: RFC 5280 path building, as a client certificate.
    chain = [x509.load_pem_x509_certificate(p.encode()) for p in issued.chain_pem]
    verifier = verification.PolicyBuilder().store(verification.Store([root])).build_client_verifier()
    verified = verifier.verify(chain[0], chain[1:])
    assert verified.subjects and str(verified.subjects[0].value) == issued.sans[0]
    # The files for APISIX: 0600, in a 0700 directory, the key the leaf holds.
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    for name in ("cert-chain.pem", "key.pem", "root-cert.pem"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o600, name
    key = serialization.load_pem_private_key((out / "key.pem").read_bytes(), None)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    assert key.public_key().public_bytes(serialization.Encoding.DER, spki) == \
        chain[0].public_key().public_bytes(serialization.Encoding.DER, spki)
    assert (out / "cert-chain.pem").read_text() == "".join(issued.chain_pem)
    assert len(list(out.iterdir())) == 3  # no temporary file left behind


def test_a_refused_token_is_named_and_keeps_the_pod_unready(istiod, workdir, caplog):
    token = istiod.write_token(workdir / "token", audience=["not-istio-ca"])

    async def main():
        agent = Agent(agent_config(istiod, workdir, token), POD)
        agent.certs.backoff = Backoff(initial=0.2, maximum=1.0)
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        try:
            await eventually(lambda: agent.certs.failures >= 2, timeout=20, what="two refused CSRs")
            status, body = await aget(agent.ports["status"], "/healthz/ready")
            assert status == 503
            assert "no workload certificate" in body and "UNAUTHENTICATED" in body and "istio-ca" in body, body
            _, page = await aget(agent.ports["admin"], "/status")
            state = json.loads(page)["workload_certificate"]
            assert state["certificate"] is None and "refused the token" in state["last_error"]
        finally:
            stop.set()
            await task

    with caplog.at_level(logging.WARNING):
        asyncio.run(main())
    assert any("workload certificate" in r.getMessage() and "UNAUTHENTICATED" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]
    assert "invalid audiences [not-istio-ca]" in istiod.log_text()


def test_a_ca_that_is_not_there_yet_is_retried_until_it_answers(workdir):
    _skip_unless_available()
    ca = istiod_ca.IstiodCA(workdir / "late")  # namespace and forwarder now, istiod only later
    try:
        token = ca.write_token(workdir / "token")

        async def main():
            agent = Agent(agent_config(ca, workdir, token), POD)
            agent.certs.backoff = Backoff(initial=0.2, maximum=1.0)
            stop = asyncio.Event()
            task = asyncio.create_task(agent.run(stop))
            try:
                await eventually(lambda: agent.certs.failures >= 2, timeout=20, what="failed attempts")
                status, body = await aget(agent.ports["status"], "/healthz/ready")
                assert status == 503 and "unreachable" in body, body
                await asyncio.to_thread(ca.start)
                await eventually(lambda: agent.certs.current is not None, timeout=30, what="a certificate")
                await eventually(lambda: agent.not_ready() is None, timeout=30, what="ready")
                status, _ = await aget(agent.ports["status"], "/healthz/ready")
                assert status == 200
            finally:
                stop.set()
                await task

        asyncio.run(main())
    finally:
        ca.stop()


def test_a_short_lived_certificate_is_really_reissued_at_half_its_life(istiod, workdir):
    token = istiod.write_token(workdir / "token")
    out = workdir / "istio"
    certs = workload.WorkloadCertificates(settings(istiod, token, out, ttl_seconds=6))
    serials = []
    certs.on_issued = lambda issued: serials.append((issued.serial, (out / "cert-chain.pem").read_text()))

    async def main():
        task = asyncio.create_task(certs.run())
        try:
            await eventually(lambda: len(serials) >= 2, timeout=20, what="a second certificate")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())
    first, second = serials[:2]
    assert first[0] != second[0] and first[1] != second[1]  # a new certificate, and the file follows it
    issued = certs.current
    # istiod: notAfter = now + the requested 6 s (notBefore is backdated 2 min, which rotation ignores)
    assert 5 <= issued.not_after - issued.created <= 7
    assert issued.not_after - issued.not_before >= 120


def test_ads_over_tls_with_the_token_serves_the_agent_and_status_shows_the_certificate(istiod, workdir):
    token = istiod.write_token(workdir / "token")

    async def main():
        agent = Agent(agent_config(istiod, workdir, token), POD)
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        try:
            await eventually(lambda: agent.not_ready() is None, timeout=30, what="ready")
            versions = agent.pipeline.snapshot.versions()
            assert "cds" in versions and "lds" in versions, versions  # CDS and LDS received and accepted
            _, clusters = await aget(agent.ports["admin"], "/clusters?format=json")
            assert "PassthroughCluster" in clusters and "BlackHoleCluster" in clusters
            _, page = await aget(agent.ports["admin"], "/status")
            state = json.loads(page)["workload_certificate"]
            assert state["certificate"]["san"] == ["spiffe://cluster.local/ns/default/sa/productpage"]
            assert state["certificate"]["serial"] and state["certificate"]["not_after"].endswith("Z")
            assert (workdir / "apisix" / "conf" / "istio" / "key.pem").is_file()
        finally:
            stop.set()
            await task

    asyncio.run(main())


def test_istiods_identity_check_refusal_is_a_clear_log_line(istiod, workdir, caplog):
    token = istiod.write_token(workdir / "token")  # default/productpage
    pod = dict(POD, POD_NAMESPACE="other")

    async def main():
        agent = Agent(agent_config(istiod, workdir, token, ca_address=None), pod)
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        try:
            await eventually(lambda: any("PERMISSION_DENIED" in r.getMessage() for r in caplog.records),
                             timeout=20, what="the refusal logged")
        finally:
            stop.set()
            await task

    with caplog.at_level(logging.WARNING):
        asyncio.run(main())
    line = next(r for r in caplog.records if "PERMISSION_DENIED" in r.getMessage())
    assert line.levelno == logging.ERROR
    assert "refused this sidecar's ADS stream" in line.getMessage()
    assert "no identities" in line.getMessage() and "other" in line.getMessage()
