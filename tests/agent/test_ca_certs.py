"""Workload identity, the pure part (sidecar_agent/security/certs.py) and the renewal loop with a fake CA,
injected clock, randomness and sleep (workload.py). The real istiod is in test_ca_istiod.py."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from amesh_common.backoff import Backoff
from sidecar_agent import run_cli
from sidecar_agent.security import certs, workload
from sidecar_agent.security.ca_client import CaEndpoint, CaError
from tests.agent import istiod_ca

NOW = 1_800_000_000.0  # injected "now" (2027-01-15)
DAY = 86400.0


# -- identity, key, CSR ---------------------------------------------------------------------------------
def test_spiffe_id_and_the_tokens_service_account():
    assert certs.spiffe_id("cluster.local", "default", "productpage") == \
        "spiffe://cluster.local/ns/default/sa/productpage"
    token = istiod_ca.Issuer(istiod_ca.ISSUER).token("bookinfo", "reviews")
    assert certs.token_service_account(token) == ("bookinfo", "reviews")
    assert certs.token_service_account("not-a-jwt") is None
    assert certs.token_service_account("a.eyJzdWIiOiJib2IifQ.c") is None  # sub "bob": not a service account


def test_the_csr_asks_for_the_spiffe_identity_with_a_p256_key():
    key = certs.new_key()
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    csr = x509.load_pem_x509_csr(certs.make_csr(key, "spiffe://cluster.local/ns/default/sa/productpage").encode())
    assert csr.is_signature_valid and csr.subject == x509.Name([])
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical  # the subject is empty (RFC 5280 4.2.1.6), as Istio's CSRs
    assert san.value.get_values_for_type(x509.UniformResourceIdentifier) == \
        ["spiffe://cluster.local/ns/default/sa/productpage"]
    assert b"BEGIN PRIVATE KEY" in certs.key_pem(key)


# -- the CA's answer ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    """A root + intermediate as istiod's ROOT_CA_DIR holds them, and a signer that acts as istiod."""
    directory = tmp_path_factory.mktemp("cacerts")
    istiod_ca.write_ca_dir(directory)
    inter_key = serialization.load_pem_private_key((directory / "ca-key.pem").read_bytes(), None)
    inter = x509.load_pem_x509_certificate((directory / "ca-cert.pem").read_bytes())
    root_pem = (directory / "root-cert.pem").read_text()

    def sign(public_key, identity: str, not_after: float, not_before: float | None = None) -> str:
        start = dt.datetime.fromtimestamp(not_before if not_before is not None else NOW - 120, dt.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(inter.subject)
                .public_key(public_key).serial_number(x509.random_serial_number())
                .not_valid_before(start).not_valid_after(dt.datetime.fromtimestamp(not_after, dt.timezone.utc))
                .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity)]), critical=True)
                .sign(inter_key, hashes.SHA256()))
        return cert.public_bytes(serialization.Encoding.PEM).decode()

    return {"sign": sign, "inter": (directory / "ca-cert.pem").read_text(), "root": root_pem}


IDENTITY = "spiffe://cluster.local/ns/default/sa/productpage"


def test_istiods_four_entry_answer_is_the_chain_plus_its_trust_anchor(ca):
    key = certs.new_key()
    leaf = ca["sign"](key.public_key(), IDENTITY, NOW + DAY)
    issued = certs.accept([leaf, ca["inter"], ca["root"], ca["root"]], [], key, ca["root"], NOW)
    assert issued.chain_pem == (leaf, ca["inter"], ca["root"]) and issued.roots_pem == (ca["root"],)
    assert issued.sans == (IDENTITY,) and issued.created == NOW and issued.not_after == NOW + DAY
    status = issued.status()
    assert status["san"] == [IDENTITY] and status["not_after"] == "2027-01-16T08:00:00Z"
    assert status["serial"] == format(issued.serial, "x") and status["received"] == "2027-01-15T08:00:00Z"
    # Newer CAs: anchors in root_cert, cert_chain without them; without a mesh root file the anchor is trusted.
    again = certs.accept([leaf, ca["inter"]], [ca["root"]], key, None, NOW)
    assert again.chain_pem == (leaf, ca["inter"]) and again.roots_pem == (ca["root"],)


def test_answers_that_cannot_be_used_are_refused_with_the_reason(ca, tmp_path):
    key = certs.new_key()
    leaf = ca["sign"](key.public_key(), IDENTITY, NOW + DAY)
    with pytest.raises(certs.CertificateError, match="does not hold this agent's key"):
        certs.accept([leaf, ca["inter"], ca["root"]], [], certs.new_key(), ca["root"], NOW)
    with pytest.raises(certs.CertificateError, match="leaf only"):
        certs.accept([leaf], [], key, ca["root"], NOW)
    with pytest.raises(certs.CertificateError, match="empty"):
        certs.accept([], [], key, ca["root"], NOW)
    with pytest.raises(certs.CertificateError, match="not valid now"):
        certs.accept([leaf, ca["inter"], ca["root"]], [], key, ca["root"], NOW + 2 * DAY)
    with pytest.raises(certs.CertificateError, match="chain is broken"):
        certs.accept([leaf, ca["root"], ca["root"]], [], key, ca["root"], NOW)  # intermediate missing
    other = istiod_ca.write_ca_dir(tmp_path / "other").read_text()  # a second, unrelated mesh root
    with pytest.raises(certs.CertificateError, match="does not verify to the mesh root"):
        certs.accept([leaf, ca["inter"], ca["root"]], [], key, other, NOW)


# -- rotation timing (pilot-agent's rotateTime) -----------------------------------------------------------
@pytest.mark.parametrize("now, draw, sign, expected", [
    (NOW, 0.0, 0.9, 43200.0),               # half of 24 h after it was received
    (NOW, 1.0, 0.1, 44064.0),               # grace 0.49: later, by 1 % of the lifetime
    (NOW, 1.0, 0.9, 42336.0),               # grace 0.51: earlier
    (NOW, 0.5, 0.1, 43632.0),               # grace 0.495
    (NOW + 40000, 0.0, 0.9, 3200.0),        # counted from `now`
    (NOW + 50000, 0.0, 0.9, 0.0),           # overdue: at once
])
def test_rotation_at_half_the_lifetime_with_jitter(now, draw, sign, expected):
    assert certs.rotation_delay(NOW, NOW + DAY, now, draw, sign) == pytest.approx(expected)


def test_rotation_counts_from_receipt_not_from_istiods_backdated_not_before():
    # istiod backdates notBefore by 2 min; pilot-agent counts the lifetime from when it got the certificate.
    assert certs.rotation_delay(NOW, NOW + 60, NOW, 0.0, 0.9) == pytest.approx(30.0)
    assert certs.rotation_delay(NOW, NOW + 60, NOW, 1.0, 0.1) == pytest.approx(30.6)
    assert certs.rotation_delay(NOW, NOW + 60, NOW, 1.0, 0.9, ratio=1.0) == 0.0  # clamped at 1
    assert certs.rotation_delay(NOW, NOW + 60, NOW, 1.0, 0.1, ratio=0.0) == pytest.approx(60.0)  # clamped at 0


@pytest.mark.parametrize("text, seconds", [("24h", 86400), ("2160h0m0s", 7776000), ("1h30m", 5400),
                                           ("90s", 90), ("500ms", 0.5), ("3600", 3600), (" 60 ", 60)])
def test_secret_ttl_reads_go_durations(text, seconds):
    assert certs.parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "1d", "h", "10 m", "1h-5m"])
def test_secret_ttl_refuses_what_is_not_a_duration(text):
    with pytest.raises(ValueError, match="not a duration"):
        certs.parse_duration(text)


# -- files for APISIX -------------------------------------------------------------------------------------
def test_private_files_are_0600_from_creation_and_replaced_atomically(tmp_path):
    target = tmp_path / "key.pem"
    target.write_text("old, world readable")
    target.chmod(0o644)
    old_umask = os.umask(0)  # even with no umask, nothing wider than 0600 is ever created
    try:
        workload.write_private(target, b"new key")
    finally:
        os.umask(old_umask)
    assert target.read_bytes() == b"new key" and stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["key.pem"]  # the temporary name is gone
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere")
    workload.write_private(link, b"x")  # the link itself is replaced, its target never written
    assert not (tmp_path / "elsewhere").exists() and not link.is_symlink()


# -- the renewal loop, with a fake CA and an injected clock ------------------------------------------------
class FakeCA:
    def __init__(self, ca, clock, outcomes):
        self.ca, self.clock, self.outcomes, self.requests = ca, clock, list(outcomes), []

    async def __call__(self, endpoint, csr_pem, validity, metadata):
        self.requests.append((csr_pem, validity, dict(metadata)))
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        csr = x509.load_pem_x509_csr(csr_pem.encode())
        now = self.clock[0]
        leaf = self.ca["sign"](csr.public_key(), IDENTITY, now + validity, now - 120)
        return [leaf, self.ca["inter"], self.ca["root"], self.ca["root"]], []


class Stop(Exception):
    pass


def test_the_loop_backs_off_while_refused_then_rotates_at_half_life(ca, tmp_path):
    clock = [NOW]
    sleeps: list[float] = []
    refused = CaError("the CA at istiod:15012 is unreachable (UNAVAILABLE: connection refused)", "UNAVAILABLE")
    fake = FakeCA(ca, clock, [refused, refused, "ok", "ok"])
    root = tmp_path / "root-cert.pem"
    root.write_text(ca["root"])
    s = workload.Settings(CaEndpoint("istiod:15012", root, tmp_path / "token"), IDENTITY, ttl_seconds=3600,
                          out_dir=tmp_path / "istio", metadata={"ClusterID": "Kubernetes"})

    class Rng:  # draw 0.5 for backoff jitter, 0.0 for the rotation jitter's size
        def __init__(self):
            self.values = [0.5, 0.5, 0.0, 0.9, 0.0, 0.9]

        def random(self):
            return self.values.pop(0)

    async def sleep(seconds):
        sleeps.append(seconds)
        if len(sleeps) == 4:
            raise Stop
        clock[0] += seconds

    loop = workload.WorkloadCertificates(s, request=fake, clock=lambda: clock[0], rng=Rng(),
                                         backoff=Backoff(initial=1.0, maximum=60.0), sleep=sleep)
    assert loop.not_ready() == "no workload certificate from the CA at istiod:15012 yet: no answer yet"
    with pytest.raises(Stop):
        asyncio.run(loop.run())
    assert sleeps[:2] == [0.75, 1.5]  # backoff 1 s, 2 s with jitter draw 0.5
    # then half of the 3600 s lifetime, twice (notAfter is whole seconds, "now" is not)
    assert sleeps[2:] == pytest.approx([1800.0, 1800.0], abs=0.2)
    assert loop.issued_count == 2 and loop.failures == 0 and loop.last_error is None and loop.not_ready() is None
    assert [r[1:] for r in fake.requests] == [(3600, {"ClusterID": "Kubernetes"})] * 4
    assert loop.status()["certificate"]["san"] == [IDENTITY]
    assert loop.status()["next_rotation"] == certs.iso(clock[0] + sleeps[3])


def test_readiness_names_the_refusal_and_an_expired_certificate(ca, tmp_path):
    clock = [NOW]
    s = workload.Settings(CaEndpoint("istiod:15012", None, tmp_path / "token"), IDENTITY, ttl_seconds=60)
    loop = workload.WorkloadCertificates(s, request=FakeCA(ca, clock, ["ok"]), clock=lambda: clock[0])
    loop.last_error = "the CA at istiod:15012 refused the token /t (UNAUTHENTICATED: request authenticate failure)"
    assert "UNAUTHENTICATED" in loop.not_ready() and loop.not_ready().startswith("no workload certificate")
    asyncio.run(loop.issue())
    assert loop.not_ready() is None
    clock[0] += 61
    assert "expired" in loop.not_ready()


def test_settings_follow_pilot_agents_environment(tmp_path):
    token = tmp_path / "token"
    token.write_text(istiod_ca.Issuer(istiod_ca.ISSUER).token("bookinfo", "reviews"))
    env = {"POD_NAMESPACE": "bookinfo", "ISTIO_META_CLUSTER_ID": "c1", "SECRET_TTL": "12h",
           "SECRET_GRACE_PERIOD_RATIO": "0.4"}
    got = workload.settings_from(env, ca_address="istiod:15012", root_cert=None, token=token, server_name=None,
                                 trust_domain="example.org", out_dir=None)
    assert got.identity == "spiffe://example.org/ns/bookinfo/sa/reviews"  # no SERVICE_ACCOUNT: the token's
    assert (got.ttl_seconds, got.grace_ratio, got.grace_jitter) == (43200, 0.4, 0.01)
    assert got.metadata == {"ClusterID": "c1"} and got.endpoint.cluster_id == "c1"
    env["SERVICE_ACCOUNT"] = "productpage"
    assert workload.settings_from(env, ca_address="istiod:15012", root_cert=None, token=token, server_name=None,
                                  trust_domain="cluster.local", out_dir=None).identity.endswith("/sa/productpage")
    with pytest.raises(ValueError):
        workload.settings_from({**env, "SECRET_GRACE_PERIOD_RATIO": "2"}, ca_address="i:1", root_cert=None,
                               token=token, server_name=None, trust_domain="t", out_dir=None)


def test_the_ca_address_defaults_as_pilot_agent_for_tls_and_is_off_in_plaintext():
    assert run_cli.ca_address("", "istiod.istio-system.svc:15012", False) == "istiod.istio-system.svc:15012"
    assert run_cli.ca_address("", "istiod-canary.istio-system.svc:15010", False) == \
        "istiod-canary.istio-system.svc:15012"
    assert run_cli.ca_address("", "istiod.istio-system.svc:15010", True) is None
    assert run_cli.ca_address("ca.example:15012", "istiod:15010", True) == "ca.example:15012"
    assert run_cli.ca_address("none", "istiod:15012", False) is None


def test_a_missing_token_or_root_is_named_before_dialling(tmp_path):
    from sidecar_agent.security.ca_client import create_certificate

    endpoint = CaEndpoint("127.0.0.1:9", None, tmp_path / "no-token")
    with pytest.raises(CaError, match="no token at .*no-token"):
        asyncio.run(create_certificate(endpoint, "csr", 60))
    (tmp_path / "token").write_text("t")
    endpoint = CaEndpoint("127.0.0.1:9", tmp_path / "no-root.pem", tmp_path / "token")
    with pytest.raises(CaError, match="no mesh root at .*no-root.pem"):
        asyncio.run(create_certificate(endpoint, "csr", 60))
