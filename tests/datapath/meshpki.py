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


def offered_alpn(conn) -> list[str]:
    """The ALPN protocols a TLS client offers in its ClientHello, read from `conn` without consuming it
    (MSG_PEEK, before the TLS handshake). [] when it offers none."""
    import socket
    import struct

    data = b""
    for _ in range(50):  # until the whole first record is there
        data = conn.recv(16384, socket.MSG_PEEK)
        if len(data) >= 5 and len(data) >= 5 + struct.unpack("!H", data[3:5])[0]:
            break
        time.sleep(0.02)
    body = data[5 + 4:]  # record header, handshake header
    at = 2 + 32  # client_version, random
    at += 1 + body[at]  # session id
    at += 2 + struct.unpack("!H", body[at:at + 2])[0]  # cipher suites
    at += 1 + body[at]  # compression methods
    end = at + 2 + struct.unpack("!H", body[at:at + 2])[0]
    at += 2
    while at + 4 <= end:
        kind, size = struct.unpack("!HH", body[at:at + 4])
        if kind == 16:  # application_layer_protocol_negotiation
            names, pos, stop = [], at + 6, at + 4 + size
            while pos < stop:
                names.append(body[pos + 1:pos + 1 + body[pos]].decode())
                pos += 1 + body[pos]
            return names
        at += 4 + size
    return []
