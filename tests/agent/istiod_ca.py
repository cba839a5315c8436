"""A real istiod (pilot-discovery 1.29) in CA mode for the workload-identity tests (shared FACTS.md "(c) CA mode").

In a network namespace of its own (unique name, removed after), on its loopback: istiod with a generated
root + intermediate in ROOT_CA_DIR, JWT_RULE pointing at a JWKS served by `python -m http.server` in the same
namespace, secure gRPC on 15012 (CreateCertificate and ADS). The test process reaches 15012 through a
`Forwarder` (host 127.0.0.1:<port> → the namespace), so the agent's code runs in the test process.
Tokens are RS256 JWTs signed here: kid, iss, exp, aud as a JSON array, sub system:serviceaccount:<ns>:<sa>.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from localmesh import istiod as istiod_mod
from netns_tests import pods
from tests import realapisix

ISSUER = "http://127.0.0.1:15080"
JWKS_PORT = 15080
SECURE_PORT = 15012
AUDIENCE = "istio-ca"
ISTIOD_NAME = "istiod.istio-system.svc"
KID = "amesh-test-key"


def unavailable() -> str | None:
    """Why a real istiod in CA mode cannot run here (CI has all of it: these are failures there, not skips)."""
    if os.geteuid() != 0:
        return "the istiod CA tests need root (network namespaces)"
    if shutil.which("ip") is None or subprocess.run(["ip", "netns", "list"], capture_output=True).returncode:
        return "`ip netns` unavailable"
    if not sorted(istiod_mod.SHARED_PEERS.glob("istiod/istiod-*.tar.xz")):
        return f"no istiod tarball in {istiod_mod.SHARED_PEERS / 'istiod'}"
    return None


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
    """The JWT issuer: an RSA key, its JWKS document, RS256 tokens."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwks(self) -> dict:
        numbers = self.key.public_key().public_numbers()
        size = (numbers.n.bit_length() + 7) // 8
        return {"keys": [{"kty": "RSA", "alg": "RS256", "use": "sig", "kid": KID,
                          "n": _b64(numbers.n.to_bytes(size, "big")), "e": _b64(numbers.e.to_bytes(3, "big"))}]}

    def token(self, namespace: str, account: str, audience: list[str] | None = None, ttl: float = 3600) -> str:
        now = int(time.time())
        header = {"alg": "RS256", "typ": "JWT", "kid": KID}
        claims = {"iss": ISSUER, "sub": f"system:serviceaccount:{namespace}:{account}",
                  "aud": audience if audience is not None else [AUDIENCE], "iat": now, "nbf": now - 5,
                  "exp": now + int(ttl)}
        signing = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
        signature = self.key.sign(signing.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing}.{_b64(signature)}"


class IstiodCA:
    """istiod in CA mode in namespace `ns` (created and removed here). `start()` may be called late (a test of
    an agent that starts before its CA); `forward` is open from construction on."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.ns = pods.unique_prefix() + "-istiod"
        self.issuer = Issuer()
        self.root_cert = write_ca_dir(workdir / "cacerts")
        self.procs: list[subprocess.Popen] = []
        self.log = workdir / "istiod.log"
        pods.create_namespace(self.ns)
        self.forward = realapisix.Forwarder(self.ns, "127.0.0.1", SECURE_PORT)
        self.address = f"127.0.0.1:{self.forward.port}"

    def _spawn(self, argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
        with open(log, "ab") as out:
            proc = subprocess.Popen(["ip", "netns", "exec", self.ns, *argv], env=env, stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.procs.append(proc)
        return proc

    def start(self, timeout: float = 60.0) -> None:
        w = self.workdir
        jwks_dir = w / "jwks"
        jwks_dir.mkdir(exist_ok=True)
        (jwks_dir / "jwks.json").write_text(json.dumps(self.issuer.jwks()))
        self._spawn([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(jwks_dir),
                     str(JWKS_PORT)], {"PATH": os.environ["PATH"]}, w / "jwks.log")
        config_dir = w / "config"
        config_dir.mkdir(exist_ok=True)
        mesh = {"trustDomain": "cluster.local", "rootNamespace": "istio-system", "enableAutoMtls": False,
                "defaultConfig": {"discoveryAddress": f"{ISTIOD_NAME}:{SECURE_PORT}"}}
        mesh_file, networks_file = istiod_mod.write_mesh_files(w / "mesh", mesh)
        binary = istiod_mod.find_binary(None, Path(tempfile.gettempdir()) / "amesh-istiod-cache")
        argv = [str(binary), "discovery", "--registries=", f"--configDir={config_dir}", f"--meshConfig={mesh_file}",
                f"--networksConfig={networks_file}", "--clusterID=Kubernetes", "--domain=cluster.local",
                "--httpAddr=127.0.0.1:8080", "--grpcAddr=127.0.0.1:15010",
                f"--secureGRPCAddr=127.0.0.1:{SECURE_PORT}", "--httpsAddr=", "--monitoringAddr=127.0.0.1:15014",
                "--ctrlz_address=127.0.0.1", "--ctrlz_port=9876", "--log_output_level=default:info"]
        env = istiod_mod.environment(os.environ["PATH"])
        env.update({"ENABLE_CA_SERVER": "true", "PILOT_CERT_PROVIDER": "istiod", "ROOT_CA_DIR": str(w / "cacerts"),
                    "ISTIOD_CUSTOM_HOST": f"{ISTIOD_NAME},localhost,127.0.0.1",
                    "JWT_RULE": json.dumps({"issuer": ISSUER, "jwks_uri": f"{ISSUER}/jwks.json",
                                            "audiences": [AUDIENCE]})})
        offset = self.log.stat().st_size if self.log.exists() else 0
        proc = self._spawn(argv, env, self.log)
        istiod_mod.wait_ready(self.log, timeout, is_alive=lambda: proc.poll() is None, offset=offset)
        deadline = time.monotonic() + timeout  # the secure port opens with the CA, after the caches sync
        while not realapisix._connectable(self.ns, "127.0.0.1", SECURE_PORT):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"istiod's {SECURE_PORT} did not open; log:\n{self.log_text()[-3000:]}")
            time.sleep(0.1)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def write_token(self, path: Path, namespace: str = "default", account: str = "productpage",
                    audience: list[str] | None = None) -> Path:
        path.write_text(self.issuer.token(namespace, account, audience))
        return path

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        self.procs.clear()
        self.forward.close()
        pods.remove_namespace(self.ns)
