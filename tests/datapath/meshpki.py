"""A mesh CA for the data-path mTLS tests: root + intermediate (tests/agent/istiod_ca.write_ca_dir, as istiod's
ROOT_CA_DIR) and workload certificates shaped as istiod's CA issues them (no subject, one URI SAN: the SPIFFE
id, server and client auth), installed where APISIX reads them the way the agent writes them."""

from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from sidecar_agent.security import certs, workload
from tests import realapisix
from tests.agent import istiod_ca


def install(directory: Path, issued: certs.Issued) -> None:
    """Write `issued` with the agent's own writer (key, chain, root; 0600) and give it to UID 1337 (APISIX)."""
    workload.write_files(directory, issued)
    for path in (directory, *directory.iterdir()):
        os.chown(path, realapisix.PROXY_UID, realapisix.PROXY_UID)


class Pki:
    def __init__(self, directory: Path) -> None:
        istiod_ca.write_ca_dir(directory)
        self.dir = directory
        self.inter = x509.load_pem_x509_certificate((directory / "ca-cert.pem").read_bytes())
        self.inter_key = serialization.load_pem_private_key((directory / "ca-key.pem").read_bytes(), None)

    def leaf(self, spiffe: str) -> tuple[bytes, bytes]:
        """(chain PEM leaf first, key PEM), as istiod's CA issues them: no subject, one URI SAN."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=1)
        cert = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(self.inter.subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now).not_valid_after(now + dt.timedelta(hours=24))
                .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe)]), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                      ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .sign(self.inter_key, hashes.SHA256()))
        chain = cert.public_bytes(serialization.Encoding.PEM) + (self.dir / "ca-cert.pem").read_bytes()
        return chain, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())

    def files(self, spiffe: str, directory: Path) -> tuple[Path, Path]:
        """A workload certificate as files (chain, key) for a test client outside APISIX."""
        chain, key = self.leaf(spiffe)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "chain.pem").write_bytes(chain)
        (directory / "key.pem").write_bytes(key)
        return directory / "chain.pem", directory / "key.pem"

    def issued(self, spiffe: str) -> certs.Issued:
        chain, key = self.leaf(spiffe)
        leaf, _, rest = chain.decode().partition("-----END CERTIFICATE-----\n")
        now = time.time()
        return certs.Issued((leaf + "-----END CERTIFICATE-----\n", rest), ((self.dir / "root-cert.pem").read_text(),),
                            key, 1, (spiffe,), now - 60, now + 86400, now)
