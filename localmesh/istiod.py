"""istiod for the local mesh: Istio's own `pilot-discovery`, without Kubernetes, reading Istio YAML from a
directory (the shared build's FACTS.md: `--registries=` + `--configDir`, plaintext ADS on 15010).

Where the binary comes from: `--istiod PATH` (the binary, or the release tarball), else the tarball in
`../shared/peers/istiod/` beside the project, unpacked once into a cache directory.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path

import yaml

from localmesh.errors import MeshError

REPO = Path(__file__).resolve().parents[1]
SHARED_PEERS = REPO.parent / "shared" / "peers"
HTTP_PORT, GRPC_PORT, MONITORING_PORT = 8080, 15010, 15014
SECURE_PORT, JWKS_PORT = 15012, 15080  # CA mode: CreateCertificate (and TLS xDS); the token issuer's JWKS
READY_LINE = "All caches have been synced up"
RELOAD_OK = "Triggering reload of file configuration"
RELOAD_FAILED = "unable to reload file configuration"


class IstiodError(MeshError):
    pass


def find_binary(given: Path | None, cache: Path) -> Path:
    """The pilot-discovery binary: `given` (binary or .tar.xz), else the shared tarball, unpacked into `cache`."""
    source = given
    if source is None:
        tarballs = sorted(SHARED_PEERS.glob("istiod/istiod-*-linux-amd64.tar.xz"))
        if not tarballs:
            raise IstiodError(f"no istiod given and none in {SHARED_PEERS / 'istiod'}: pass --istiod PATH "
                              "(pilot-discovery, or its release tarball)")
        source = tarballs[-1]
    if not source.exists():
        raise IstiodError(f"--istiod {source}: no such file")
    if not source.name.endswith((".tar.xz", ".tar.gz", ".tgz")):
        return source
    target = cache / source.name.split(".tar")[0]
    binary = next(target.glob("*/bin/pilot-discovery"), None) or next(target.glob("bin/pilot-discovery"), None)
    if binary is None:
        target.mkdir(parents=True, exist_ok=True)
        subprocess.run(["tar", "-xf", str(source), "-C", str(target)], check=True)
        binary = next(target.glob("**/bin/pilot-discovery"), None)
        if binary is None:
            raise IstiodError(f"{source} holds no bin/pilot-discovery")
    return binary


def command(binary: Path, config_dir: Path, mesh_file: Path, networks_file: Path, ca: bool = False) -> list[str]:
    return [str(binary), "discovery", "--registries=", f"--configDir={config_dir}", f"--meshConfig={mesh_file}",
            f"--networksConfig={networks_file}", "--clusterID=Kubernetes", "--domain=cluster.local",
            f"--httpAddr=0.0.0.0:{HTTP_PORT}", f"--grpcAddr=0.0.0.0:{GRPC_PORT}",
            f"--secureGRPCAddr={f'0.0.0.0:{SECURE_PORT}' if ca else ''}",
            "--httpsAddr=", f"--monitoringAddr=0.0.0.0:{MONITORING_PORT}", "--ctrlz_address=127.0.0.1",
            "--ctrlz_port=9876", "--log_output_level=default:info"]


def environment(path_env: str) -> dict[str, str]:
    """No Kubernetes, no CA (FACTS.md (b)); KUBECONFIG and KUBERNETES_SERVICE_HOST deliberately absent."""
    return {"PATH": path_env, "POD_NAMESPACE": "istio-system", "POD_NAME": "istiod-local", "REVISION": "default",
            "ENABLE_CA_SERVER": "false", "PILOT_CERT_PROVIDER": "none", "PILOT_ENABLE_ANALYSIS": "false",
            "ISTIOD_CUSTOM_HOST": "istiod.istio-system.svc", "GOMAXPROCS": "2"}


def ca_environment(base: dict[str, str], ca_dir: Path, address: str) -> dict[str, str]:
    """CA mode (FACTS.md (c)): istiod signs with ROOT_CA_DIR and accepts tokens whose JWKS is served at
    `address`:JWKS_PORT; its serving certificate also names `address` (the sidecars dial it by IP)."""
    issuer = f"http://{address}:{JWKS_PORT}"
    return dict(base, ENABLE_CA_SERVER="true", PILOT_CERT_PROVIDER="istiod", ROOT_CA_DIR=str(ca_dir),
                ISTIOD_CUSTOM_HOST=f"{ISTIOD_NAME},localhost,127.0.0.1,{address}",
                JWT_RULE=json.dumps({"issuer": issuer, "jwks_uri": f"{issuer}/jwks.json", "audiences": ["istio-ca"]}))


ISTIOD_NAME = "istiod.istio-system.svc"


def write_mesh_files(directory: Path, mesh_config: dict) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    mesh_file, networks_file = directory / "mesh.yaml", directory / "meshNetworks.yaml"
    mesh_file.write_text(yaml.safe_dump(mesh_config, sort_keys=False))
    networks_file.write_text("networks: {}\n")
    return mesh_file, networks_file


def wait_ready(log: Path, timeout: float = 30.0, is_alive=lambda: True, offset: int = 0) -> None:
    """Until istiod logs that its caches are synced (its /ready stays 503 without Kubernetes: FACTS.md)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_bytes()[offset:].decode(errors="replace") if log.exists() else ""
        if READY_LINE in text:
            return
        if not is_alive():
            raise IstiodError(f"istiod exited during start-up; last lines of {log}:\n" + _tail(text))
        time.sleep(0.1)
    raise IstiodError(f"istiod not ready after {timeout:.0f}s; see {log}")


def reload_outcome(log: Path, offset: int, timeout: float = 10.0) -> str | None:
    """After a write to the config directory: None when istiod reloaded it, else the reason it refused
    (istiod rejects the whole reload on one invalid object and keeps the previous state)."""
    deadline = time.monotonic() + timeout
    seen_trigger = False
    while time.monotonic() < deadline:
        with open(log, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
        for line in text.splitlines():
            if RELOAD_FAILED in line or "Failed to parse" in line:
                return _reason(line)
            if RELOAD_OK in line:
                seen_trigger = True
        if seen_trigger and "Push debounce stable" in text:
            return None
        time.sleep(0.05)
    return None if seen_trigger else f"istiod did not pick the change up in {timeout:.0f}s"


def _reason(line: str) -> str:
    return line.split("\t")[-1].strip() if "\t" in line else line.strip()


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.splitlines()[-lines:])


def debug(address: str, path: str, timeout: float = 5.0, opener=urllib.request.urlopen):
    """GET istiod's debug endpoint (`/debug/syncz`, …) as JSON."""
    with opener(f"http://{address}:{HTTP_PORT}{path}", timeout=timeout) as response:
        return json.loads(response.read())
