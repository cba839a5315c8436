"""A real istiod (pilot-discovery 1.29) in CA mode for the workload-identity tests (shared FACTS.md "(c) CA mode").

In a network namespace of its own (unique name, removed after), on its loopback: istiod with a generated
root + intermediate in ROOT_CA_DIR, JWT_RULE pointing at a JWKS served by `python -m http.server` in the same
namespace, secure gRPC on 15012 (CreateCertificate and ADS). The test process reaches 15012 through a
`Forwarder` (host 127.0.0.1:<port> → the namespace), so the agent's code runs in the test process.
Tokens are RS256 JWTs signed here: kid, iss, exp, aud as a JSON array, sub system:serviceaccount:<ns>:<sa>.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from localmesh import istiod as istiod_mod
from localmesh.ca import AUDIENCE, KID, Issuer, write_ca_dir  # noqa: F401  (the tests' names for them)
from netns_tests import pods
from tests import realapisix

JWKS_PORT = 15080
ISSUER = f"http://127.0.0.1:{JWKS_PORT}"
SECURE_PORT = 15012
ISTIOD_NAME = "istiod.istio-system.svc"


def unavailable() -> str | None:
    """Why a real istiod in CA mode cannot run here (CI has all of it: these are failures there, not skips)."""
    if os.geteuid() != 0:
        return "the istiod CA tests need root (network namespaces)"
    if shutil.which("ip") is None or subprocess.run(["ip", "netns", "list"], capture_output=True).returncode:
        return "`ip netns` unavailable"
    if not sorted(istiod_mod.SHARED_PEERS.glob("istiod/istiod-*.tar.xz")):
        return f"no istiod tarball in {istiod_mod.SHARED_PEERS / 'istiod'}"
    return None


class IstiodCA:
    """istiod in CA mode in namespace `ns` (created and removed here). `start()` may be called late (a test of
    an agent that starts before its CA); `forward` is open from construction on."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.ns = pods.unique_prefix() + "-istiod"
        self.issuer = Issuer(ISSUER)
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
