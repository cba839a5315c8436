"""A mesh CA for the data-path mTLS tests: root + intermediate (localmesh/ca.py, as istiod's ROOT_CA_DIR) and
workload certificates shaped as istiod's CA issues them (no subject, one URI SAN: the SPIFFE id, server and
client auth), installed where APISIX reads them the way the agent writes them."""

from __future__ import annotations

import os
import time
from pathlib import Path

from localmesh import ca
from sidecar_agent.security import certs, workload
from tests import realapisix


def install(directory: Path, issued: certs.Issued) -> None:
    """Write `issued` with the agent's own writer (key, chain, root; 0600) and give it to UID 1337 (APISIX)."""
    workload.write_files(directory, issued)
    for path in (directory, *directory.iterdir()):
        os.chown(path, realapisix.PROXY_UID, realapisix.PROXY_UID)


class Pki:
    def __init__(self, directory: Path) -> None:
        ca.write_ca_dir(directory)
        self.dir = directory

    def leaf(self, spiffe: str) -> tuple[bytes, bytes]:
        """(chain PEM leaf first, key PEM), as istiod's CA issues them: no subject, one URI SAN."""
        return ca.issue_workload(self.dir, spiffe)

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
