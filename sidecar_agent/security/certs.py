"""Workload identity, pure: the SPIFFE id, the key and CSR, what istiod's CA answered, when to rotate.

Nothing here reads a clock, a random source or the network: callers pass `now` and the random draws, so
tests pin them (tests/agent/test_ca_certs.py).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtensionOID

# pilot-agent's defaults (security.SecretManagerClient): rotate at half the lifetime, ± up to 1 % of it.
GRACE_RATIO = 0.5
GRACE_RATIO_JITTER = 0.01
DEFAULT_TTL_SECONDS = 24 * 3600  # SECRET_TTL
CA_PORT = 15012  # istiod's secure gRPC port: CreateCertificate and ADS


class CertificateError(ValueError):
    """What the CA sent is not a usable certificate for our key (the message says why)."""


def spiffe_id(trust_domain: str, namespace: str, service_account: str) -> str:
    return f"spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"


def token_service_account(token: str) -> tuple[str, str] | None:
    """(namespace, service account) of a Kubernetes token's `sub` (system:serviceaccount:<ns>:<sa>), read
    without verifying it (istiod verifies); None when the token is not such a JWT."""
    parts = token.strip().split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:
        return None
    sub = claims.get("sub") if isinstance(claims, dict) else None
    fields = sub.split(":") if isinstance(sub, str) else []
    if len(fields) == 4 and fields[:2] == ["system", "serviceaccount"] and all(fields[2:]):
        return fields[2], fields[3]
    return None


def new_key() -> ec.EllipticCurvePrivateKey:
    """EC P-256, as pilot-agent with ECC_SIGNATURE_ALGORITHM=ECDSA (istiod signs whatever key type the CSR has)."""
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_csr(key: ec.EllipticCurvePrivateKey, identity: str) -> str:
    """PEM CSR for `identity` (a spiffe:// URI SAN, critical because the subject is empty, as Istio makes it).
    istiod ignores both and issues for the caller's authenticated identity."""
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([]))
           .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity)]), critical=True)
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM).decode()


_PEM_CERT = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


def split_pem(texts: Sequence[str]) -> list[str]:
    """Every certificate in the strings, in order (one cert_chain entry may hold several: a root bundle)."""
    return [m.group(0) + "\n" for text in texts for m in _PEM_CERT.finditer(text)]


def uri_sans(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        ext = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(ext.get_values_for_type(x509.UniformResourceIdentifier))


@dataclass(frozen=True)
class Issued:
    """A workload certificate in force: the chain for the data plane (leaf first, no trust anchor), the
    trust anchors, our key, and what /status shows."""

    chain_pem: tuple[str, ...]
    roots_pem: tuple[str, ...]
    key_pem: bytes
    serial: int
    sans: tuple[str, ...]
    not_before: float  # epoch seconds
    not_after: float
    created: float  # when it was received: the start of its lifetime for rotation, as pilot-agent counts

    def expired(self, now: float) -> bool:
        return now >= self.not_after

    def status(self) -> dict:
        return {"serial": format(self.serial, "x"), "san": list(self.sans),
                "not_before": iso(self.not_before), "not_after": iso(self.not_after),
                "received": iso(self.created), "chain_length": len(self.chain_pem)}


def iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).isoformat().replace("+00:00", "Z")


def _load(pems: Sequence[str], what: str) -> list[x509.Certificate]:
    try:
        return [x509.load_pem_x509_certificate(p.encode()) for p in pems]
    except ValueError as exc:
        raise CertificateError(f"{what} holds a certificate that does not parse: {exc}") from None


def _public_der(key) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
        return True
    except (ValueError, TypeError, InvalidSignature):  # another issuer name, key type or signature
        return False


def accept(cert_chain: Sequence[str], root_certs: Sequence[str], key: ec.EllipticCurvePrivateKey,
           trusted_roots_pem: str | None, now: float) -> Issued:
    """The CA's answer, checked: the leaf holds our key, is valid now, and the chain reaches a trusted root
    (the mesh root we verify istiod with; without one, the anchor the answer names).

    istiod 1.29 sends cert_chain = [leaf, intermediates…, root (its cert-chain.pem), root-cert.pem]: the last
    entry is the trust anchor. Newer CAs may send the anchors in root_cert instead; then cert_chain has none.
    """
    entries = [e for e in cert_chain if e.strip()]
    if not entries:
        raise CertificateError("the CA answered with an empty certificate chain")
    if root_certs:
        chain_pems, roots_pems = split_pem(entries), split_pem(root_certs)
    elif len(entries) > 1:
        chain_pems, roots_pems = split_pem(entries[:-1]), split_pem(entries[-1:])
    else:
        raise CertificateError("the CA answered with a leaf only (no issuer, no trust anchor)")
    chain = _load(chain_pems, "the certificate chain")
    anchors = _load(roots_pems, "the trust anchors")
    if not chain or not anchors:
        raise CertificateError("the CA answered without PEM certificates")
    leaf = chain[0]
    if _public_der(leaf.public_key()) != _public_der(key.public_key()):
        raise CertificateError("the leaf certificate does not hold this agent's key (the CA signed another CSR)")
    not_before = leaf.not_valid_before_utc.timestamp()
    not_after = leaf.not_valid_after_utc.timestamp()
    if not not_before <= now < not_after:
        raise CertificateError(f"the leaf certificate is not valid now (valid {iso(not_before)} to {iso(not_after)})")
    trusted = _load(split_pem([trusted_roots_pem]), "the mesh root") if trusted_roots_pem else anchors
    if not trusted:
        raise CertificateError("no trusted root to verify the chain with")
    for cert, issuer in zip(chain, chain[1:]):
        if not _issued_by(cert, issuer):
            raise CertificateError(f"the chain is broken: {cert.subject.rfc4514_string() or 'the leaf'} is not "
                                   f"signed by {issuer.subject.rfc4514_string()}")
    last = chain[-1]
    if not any(last == root or _issued_by(last, root) for root in trusted):
        raise CertificateError(f"the chain does not verify to the mesh root ({last.issuer.rfc4514_string()} "
                               "is not a trusted root)")
    return Issued(chain_pem=tuple(chain_pems), roots_pem=tuple(roots_pems), key_pem=key_pem(key),
                  serial=leaf.serial_number, sans=uri_sans(leaf), not_before=not_before, not_after=not_after,
                  created=now)


def rotation_delay(created: float, expires: float, now: float, draw: float, sign_draw: float,
                   ratio: float = GRACE_RATIO, jitter: float = GRACE_RATIO_JITTER) -> float:
    """Seconds from `now` until the certificate is renewed: pilot-agent's rotateTime. The grace period is
    `ratio` ± `draw`·`jitter` (sign from `sign_draw` < 0.5 → minus) of the lifetime created→expires, so a
    24 h certificate is renewed ~12 h after it was received; never negative. Draws are uniform in [0, 1)."""
    grace_ratio = ratio + draw * jitter * (-1 if sign_draw < 0.5 else 1)
    grace_ratio = min(1.0, max(0.0, grace_ratio))
    grace = grace_ratio * (expires - created)
    return max(0.0, expires - grace - now)


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds of a Go duration (`24h`, `1h30m`, `2160h0m0s`, as SECRET_TTL is given) or a plain number of seconds."""
    value = text.strip()
    try:
        return float(value)
    except ValueError:
        pass
    parts = _DURATION_PART.findall(value)
    if not value or "".join(n + u for n, u in parts) != value:
        raise ValueError(f"not a duration: {text!r} (e.g. 24h, 90m, 3600s)")
    return sum(float(n) * _UNIT[u] for n, u in parts)
