"""istiod as the mesh's CA without Kubernetes (../shared/peers/istiod/FACTS.md "(c) CA mode"): the ROOT_CA_DIR it
signs with (a root and an intermediate, as Istio's plug-in CA layout) and the token issuer whose JWKS istiod's
JWT_RULE points at, which stands in for Kubernetes' service-account tokens (audience `istio-ca`)."""

from __future__ import annotations

import base64
import datetime as dt
import json
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

AUDIENCE = "istio-ca"
KID = "amesh-mesh-key"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "amesh-test"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca_cert(subject: str, key, issuer_name: x509.Name, issuer_key, days: int, pathlen: int | None):
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer_name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now).not_valid_after(now + dt.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=True, path_length=pathlen), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                            crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
               .add_extension(ski, critical=False))
    if issuer_key is not key:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(cert) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def write_ca_dir(directory: Path) -> Path:
    """ROOT_CA_DIR: root (self-signed, RSA 2048), intermediate (pathlen 0) signing; returns root-cert.pem."""
    directory.mkdir(parents=True, exist_ok=True)
    root_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    root = _ca_cert("amesh test root", root_key, _name("amesh test root"), root_key, 3650, None)
    inter_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    inter = _ca_cert("amesh test intermediate", inter_key, root.subject, root_key, 1825, 0)
    (directory / "root-cert.pem").write_bytes(_pem(root))
    (directory / "ca-cert.pem").write_bytes(_pem(inter))
    (directory / "cert-chain.pem").write_bytes(_pem(inter) + _pem(root))
    (directory / "ca-key.pem").write_bytes(inter_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()))
    return directory / "root-cert.pem"


class Issuer:
    """The JWT issuer: an RSA key, its JWKS document, RS256 tokens (FACTS.md: kid, iss, exp, aud as a JSON
    array, sub system:serviceaccount:<ns>:<sa>)."""

    def __init__(self, issuer: str) -> None:
        self.issuer = issuer
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwks(self) -> dict:
        numbers = self.key.public_key().public_numbers()
        size = (numbers.n.bit_length() + 7) // 8
        return {"keys": [{"kty": "RSA", "alg": "RS256", "use": "sig", "kid": KID,
                          "n": _b64(numbers.n.to_bytes(size, "big")), "e": _b64(numbers.e.to_bytes(3, "big"))}]}

    def token(self, namespace: str, account: str, audience: list[str] | None = None, ttl: float = 3600) -> str:
        now = int(time.time())
        header = {"alg": "RS256", "typ": "JWT", "kid": KID}
        claims = {"iss": self.issuer, "sub": f"system:serviceaccount:{namespace}:{account}",
                  "aud": audience if audience is not None else [AUDIENCE], "iat": now, "nbf": now - 5,
                  "exp": now + int(ttl)}
        signing = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
        signature = self.key.sign(signing.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing}.{_b64(signature)}"


def issue_workload(ca_dir: Path, spiffe: str, hours: float = 24) -> tuple[bytes, bytes]:
    """A workload certificate signed by ROOT_CA_DIR's intermediate, shaped as istiod's CA issues them (FACTS.md:
    no subject, one critical URI SAN, server and client auth; EC P-256 here): (chain PEM leaf first, key PEM).
    For a client that stands for a mesh workload without running a sidecar (the benchmark's handshakes)."""
    inter = x509.load_pem_x509_certificate((ca_dir / "ca-cert.pem").read_bytes())
    inter_key = serialization.load_pem_private_key((ca_dir / "ca-key.pem").read_bytes(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=1)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(inter.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + dt.timedelta(hours=hours))
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe)]), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(inter_key, hashes.SHA256()))
    chain = cert.public_bytes(serialization.Encoding.PEM) + (ca_dir / "ca-cert.pem").read_bytes()
    return chain, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
