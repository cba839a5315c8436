"""Keep the workload certificate current: issue at start, retry with backoff while the CA refuses or is
unreachable, rotate at half the lifetime (± jitter), and write chain + key for APISIX.

Key material lives in memory and in `<out_dir>/{key.pem,cert-chain.pem,root-cert.pem}` only: each file is
created 0600 by this process (UID 1337 in a pod) with O_CREAT|O_EXCL under a temporary name, then renamed
over the old one, so no reader ever sees a half-written or wider-mode file.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from amesh_common.backoff import Backoff
from sidecar_agent.security import certs
from sidecar_agent.security.ca_client import CaEndpoint, CaError, create_certificate

log = logging.getLogger(__name__)

CHAIN_FILE, KEY_FILE, ROOT_FILE = "cert-chain.pem", "key.pem", "root-cert.pem"


@dataclass(frozen=True)
class Settings:
    endpoint: CaEndpoint
    identity: str  # the spiffe:// id the CSR asks for
    ttl_seconds: int = certs.DEFAULT_TTL_SECONDS
    grace_ratio: float = certs.GRACE_RATIO
    grace_jitter: float = certs.GRACE_RATIO_JITTER
    out_dir: Path | None = None  # None: keep the key in memory only
    metadata: Mapping[str, object] = field(default_factory=dict)


def settings_from(env: Mapping[str, str], *, ca_address: str, root_cert: Path | None, token: Path,
                  server_name: str | None, trust_domain: str, out_dir: Path | None) -> Settings:
    """pilot-agent's environment: POD_NAMESPACE, SERVICE_ACCOUNT (else the token's subject), ISTIO_META_CLUSTER_ID,
    SECRET_TTL, SECRET_GRACE_PERIOD_RATIO, SECRET_GRACE_PERIOD_RATIO_JITTER. Raises ValueError on bad values."""
    namespace = env.get("POD_NAMESPACE", "")
    account = env.get("SERVICE_ACCOUNT", "")
    if not account and token.is_file():
        claimed = certs.token_service_account(token.read_text())
        account = claimed[1] if claimed else ""
    ttl = certs.parse_duration(env.get("SECRET_TTL") or "24h")
    ratio = float(env.get("SECRET_GRACE_PERIOD_RATIO") or certs.GRACE_RATIO)
    jitter = float(env.get("SECRET_GRACE_PERIOD_RATIO_JITTER") or certs.GRACE_RATIO_JITTER)
    if ttl <= 0 or not 0 <= ratio <= 1 or jitter < 0:
        raise ValueError("SECRET_TTL must be positive, SECRET_GRACE_PERIOD_RATIO within 0-1, its jitter >= 0")
    cluster = env.get("ISTIO_META_CLUSTER_ID", "")
    metadata = {"ClusterID": cluster} if cluster else {}
    endpoint = CaEndpoint(ca_address, root_cert, token, server_name, cluster)
    return Settings(endpoint, certs.spiffe_id(trust_domain, namespace, account or "default"), int(ttl),
                    ratio, jitter, out_dir, metadata)


def write_private(path: Path, data: bytes) -> None:
    """Atomically replace `path` with `data`, mode 0600 from creation (never chmod after)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_files(out_dir: Path, issued: certs.Issued) -> None:
    out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Key first: a reader that sees the new chain finds its key already there.
    write_private(out_dir / KEY_FILE, issued.key_pem)
    write_private(out_dir / CHAIN_FILE, "".join(issued.chain_pem).encode())
    write_private(out_dir / ROOT_FILE, "".join(issued.roots_pem).encode())


Request = Callable[[CaEndpoint, str, int, Mapping[str, object]], Awaitable[tuple[list[str], list[str]]]]


@dataclass(eq=False)
class WorkloadCertificates:
    settings: Settings
    request: Request = create_certificate
    clock: Callable[[], float] = time.time
    rng: random.Random = field(default_factory=random.Random)
    backoff: Backoff = field(default_factory=lambda: Backoff(initial=1.0, maximum=60.0))
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    on_issued: Callable[[certs.Issued], None] | None = None
    current: certs.Issued | None = field(default=None, init=False)
    last_error: str | None = field(default=None, init=False)
    failures: int = field(default=0, init=False)  # consecutive
    issued_count: int = field(default=0, init=False)
    next_rotation: float | None = field(default=None, init=False)  # epoch seconds

    def not_ready(self) -> str | None:
        """Why the pod has no usable workload certificate, or None."""
        if self.current is None:
            why = self.last_error or "no answer yet"
            return f"no workload certificate from the CA at {self.settings.endpoint.address} yet: {why}"
        if self.current.expired(self.clock()):
            return f"the workload certificate expired and renewing it failed: {self.last_error or 'retrying'}"
        return None

    def status(self) -> dict:
        return {"ca_address": self.settings.endpoint.address, "identity": self.settings.identity,
                "certificate": None if self.current is None else self.current.status(),
                "issued": self.issued_count, "last_error": self.last_error, "failures": self.failures,
                "next_rotation": None if self.next_rotation is None else certs.iso(self.next_rotation),
                "files": None if self.settings.out_dir is None else str(self.settings.out_dir)}

    async def issue(self) -> certs.Issued:
        """One new key, CSR and chain; on success it is in force (and written). Raises CaError / CertificateError."""
        s = self.settings
        key = certs.new_key()
        chain, roots = await self.request(s.endpoint, certs.make_csr(key, s.identity), s.ttl_seconds, s.metadata)
        root_path = s.endpoint.root_cert
        trusted = root_path.read_text() if root_path is not None and root_path.is_file() else None
        issued = certs.accept(chain, roots, key, trusted, self.clock())
        if s.out_dir is not None:
            write_files(s.out_dir, issued)
        self.current, self.issued_count = issued, self.issued_count + 1
        if self.on_issued is not None:
            self.on_issued(issued)
        return issued

    def rotation_delay(self, issued: certs.Issued) -> float:
        s = self.settings
        return certs.rotation_delay(issued.created, issued.not_after, self.clock(), self.rng.random(),
                                    self.rng.random(), s.grace_ratio, s.grace_jitter)

    async def run(self) -> None:
        """Forever (until cancelled): keep a valid certificate in force."""
        while True:
            try:
                issued = await self.issue()
            except (CaError, certs.CertificateError, OSError) as exc:
                self.last_error = str(exc)
                delay = self.backoff.delay(self.failures, self.rng.random())
                self.failures += 1
                if self.current is not None and not self.current.expired(self.clock()):
                    # Still valid: keep it, but retry no later than its expiry.
                    delay = min(delay, max(0.0, self.current.not_after - self.clock()))
                log.warning("workload certificate for %s: %s (attempt %d, retrying in %.1fs)",
                            self.settings.identity, exc, self.failures, delay)
                self.next_rotation = self.clock() + delay
                await self.sleep(delay)
                continue
            self.failures, self.last_error = 0, None
            delay = self.rotation_delay(issued)
            self.next_rotation = self.clock() + delay
            log.info("workload certificate issued: %s serial %x, valid until %s; renewing in %.0fs",
                     ", ".join(issued.sans) or "(no URI SAN)", issued.serial, certs.iso(issued.not_after), delay)
            await self.sleep(delay)
