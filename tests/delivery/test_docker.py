"""The images built and run on a real Docker engine (scripts/docker-ci.sh sets it up): the pod pattern with
our init image, and the sidecar and controller images' entrypoints.

Needs root, a reachable engine (DOCKER_HOST) and AMESH_DOCKER_BASE, the locally built base image (no image
registry is reachable). Containers run with --network none or container:<pod> only; everything built or
started here carries a unique name and is removed at the end.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
import uuid
from pathlib import Path

import pytest

from tests.delivery.injection import REPO, SamplePod, container, inject

BASE = os.environ.get("AMESH_DOCKER_BASE", "")
HERE = Path(__file__).resolve().parent
RUN_ID = uuid.uuid4().hex[:10]
LABEL = f"amesh.test={RUN_ID}"
POD_IP, PEER_IP = "10.21.1.2", "10.21.1.1"  # addresses inside the two container namespaces only
# the shared APISIX 3.18 build, laid out as the official apache/apisix:3.18.0-debian image
APISIX_TARBALL = REPO.parent / "shared" / "peers" / "apisix" / "apisix-3.18.0-debian12-amd64.tar.xz"


def _engine_ready() -> bool:
    if not BASE or os.geteuid() != 0 or not shutil.which("docker") or not shutil.which("nsenter"):
        return False
    return subprocess.run(["docker", "image", "inspect", BASE], capture_output=True).returncode == 0


pytestmark = pytest.mark.skipif(not _engine_ready(), reason="needs root, a Docker engine and AMESH_DOCKER_BASE "
                                                            "(run scripts/docker-ci.sh)")


def docker(*args: str, check: bool = True, stdin: str | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, input=stdin, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def build(dockerfile: str, tag: str, **build_args: str) -> str:
    args = [arg for key, value in build_args.items() for arg in ("--build-arg", f"{key}={value}")]
    docker("build", "--network", "host", "-q", *args, "--label", LABEL, "-f", dockerfile, "-t", tag, str(REPO))
    return tag


@pytest.fixture(scope="module")
def images():
    tags = {name: f"amesh-test/{name}:{RUN_ID}" for name in ("iptables", "controller")}
    try:
        build("Dockerfile.iptables", tags["iptables"], BASE_IMAGE=BASE)
        build("Dockerfile.controller", tags["controller"], BASE_IMAGE=BASE)
        yield tags
    finally:
        docker("rmi", "-f", *tags.values(), check=False)
        docker("image", "prune", "-f", "--filter", f"label={LABEL}", check=False)


@pytest.fixture(scope="module")
def sidecar_images(tmp_path_factory):
    """The APISIX base (apisix-base.Dockerfile: the official image's layout, from the shared APISIX tarball)
    and Dockerfile.sidecar built on it, as real builds are on apache/apisix."""
    if not APISIX_TARBALL.is_file():
        pytest.skip(f"the shared APISIX tarball is absent ({APISIX_TARBALL}); CI has it")
    tags = {name: f"amesh-test/{name}:{RUN_ID}" for name in ("apisix", "sidecar")}
    context = tmp_path_factory.mktemp("apisix-base")
    shutil.copy(HERE / "apisix-base.Dockerfile", context / "Dockerfile")
    shutil.copy(APISIX_TARBALL, context / APISIX_TARBALL.name)
    try:
        # no network: the base already has APISIX's run-time packages (scripts/mk-base.sh)
        docker("build", "--network", "none", "-q", "--build-arg", f"BASE_IMAGE={BASE}", "--label", LABEL,
               "-t", tags["apisix"], str(context))
        build("Dockerfile.sidecar", tags["sidecar"], PYTHON_IMAGE=BASE, APISIX_IMAGE=tags["apisix"])
        yield tags
    finally:
        docker("rmi", "-f", *tags.values(), check=False)
        docker("image", "prune", "-f", "--filter", f"label={LABEL}", check=False)


def inspect(tag: str) -> dict:
    return json.loads(docker("image", "inspect", tag).stdout)[0]["Config"]


class Pod:
    """Containers sharing one network namespace, like a Kubernetes pod, plus a peer pod over a veth pair."""

    def __init__(self):
        self.names: list[str] = []
        self.pod = self.start("pod", "--network", "none", BASE, "sleep", "infinity")
        self.peer = self.start("peer", "--network", "none", BASE, "sleep", "infinity")
        pod_pid, peer_pid = self.pid(self.pod), self.pid(self.peer)
        subprocess.run(["ip", "link", "add", "name", "eth0", "netns", pod_pid, "type", "veth",
                        "peer", "name", "eth0", "netns", peer_pid], check=True)
        for pid, ip in ((pod_pid, POD_IP), (peer_pid, PEER_IP)):
            for cmd in (["ip", "addr", "add", f"{ip}/24", "dev", "eth0"], ["ip", "link", "set", "eth0", "up"]):
                subprocess.run(["nsenter", "-t", pid, "-n", *cmd], check=True)

    def start(self, role: str, *args: str) -> str:
        name = f"amesh-{role}-{RUN_ID}"
        docker("run", "-d", "--name", name, "--label", LABEL, *args)
        self.names.append(name)
        return name

    @staticmethod
    def pid(name: str) -> str:
        return docker("inspect", "-f", "{{.State.Pid}}", name).stdout.strip()

    def tool(self, netns_of: str, *args: str, user: str = "0:0") -> str:
        """A one-shot container in that namespace running podnet.py; its output line."""
        out = docker("run", "--rm", "--label", LABEL, "--network", f"container:{netns_of}", "--user", user,
                     "-v", f"{HERE}:/t:ro", BASE, "python3", "/t/podnet.py", *args, timeout=60)
        return out.stdout.strip()

    def rules(self) -> str:
        """Both backends' rule sets in the pod's namespace, without counters and comments."""
        text = []
        for save in ("iptables-legacy-save", "iptables-nft-save"):
            out = subprocess.run(["nsenter", "-t", self.pid(self.pod), "-n", save], capture_output=True, text=True)
            text += [re.sub(r"\[\d+:\d+\]", "", line) for line in out.stdout.splitlines() if not line.startswith("#")]
        return "\n".join(text)

    def remove(self):
        docker("rm", "-f", *self.names, check=False)


@pytest.fixture
def pod():
    p = Pod()
    try:
        yield p
    finally:
        p.remove()


def init_args() -> list[str]:
    """The init container's args exactly as the injection template renders them for a default pod."""
    return container(inject(SamplePod()), "istio-init", "initContainers")["args"]


def run_init(pod: Pod, image: str) -> subprocess.CompletedProcess:
    return docker("run", "--rm", "--label", LABEL, "--network", f"container:{pod.pod}", "--cap-drop", "ALL",
                  "--cap-add", "NET_ADMIN", "--cap-add", "NET_RAW", image, *init_args(), check=False)


def test_iptables_image_has_both_backends_and_istio_entrypoint(images):
    tag = images["iptables"]
    assert inspect(tag)["Entrypoint"] == ["amesh-iptables"]
    tools = docker("run", "--rm", "--network", "none", "--entrypoint", "sh", tag, "-c",
                   "iptables-legacy --version && iptables-nft --version && ip -V").stdout
    assert "legacy" in tools and "nf_tables" in tools and "iproute2" in tools
    plan = docker("run", "--rm", "--network", "none", tag, *init_args(), "--dry-run").stdout
    assert "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001" in plan


def test_pod_pattern_redirects_real_connections_and_rerun_changes_nothing(images, pod):
    first = run_init(pod, images["iptables"])
    assert first.returncode == 0, first.stderr
    rules = pod.rules()
    assert "ISTIO_INBOUND" in rules and "ISTIO_OUTPUT" in rules
    pod.start("proxy", "--network", f"container:{pod.pod}", "--user", "1337:1337", "-v", f"{HERE}:/t:ro",
              BASE, "python3", "/t/podnet.py", "serve", "proxy", "15001", "15006")
    pod.start("app", "--network", f"container:{pod.pod}", "-v", f"{HERE}:/t:ro",
              BASE, "python3", "/t/podnet.py", "serve", "app", "9080")
    pod.start("peer-app", "--network", f"container:{pod.peer}", "-v", f"{HERE}:/t:ro",
              BASE, "python3", "/t/podnet.py", "serve", "peer", "80")

    # The app's outbound connection lands on the proxy's 15001, which sees where it was going.
    assert pod.tool(pod.pod, "get", PEER_IP, "80") == f"proxy port=15001 orig={PEER_IP}:80"
    # The proxy itself (UID 1337) is not captured: it reaches the real destination.
    assert pod.tool(pod.pod, "get", PEER_IP, "80", user="1337:1337") == "peer port=80 orig=none"
    # Inbound to the app's port from the other pod lands on the proxy's 15006.
    assert pod.tool(pod.peer, "get", POD_IP, "9080") == f"proxy port=15006 orig={POD_IP}:9080"

    second = run_init(pod, images["iptables"])
    assert second.returncode == 0, second.stderr
    assert pod.rules() == rules
    assert pod.tool(pod.pod, "get", PEER_IP, "80") == f"proxy port=15001 orig={PEER_IP}:80"


def test_sidecar_image_runs_the_agent_as_1337(sidecar_images):
    tag = sidecar_images["sidecar"]
    config = inspect(tag)
    assert config["Entrypoint"] == ["amesh-agent", "run"]
    assert config["User"] == "1337:1337"
    help_text = docker("run", "--rm", "--network", "none", "--entrypoint", "amesh-agent", tag, "--help").stdout
    assert "run" in help_text
    ids = docker("run", "--rm", "--network", "none", "--entrypoint", "id", tag).stdout
    assert "uid=1337" in ids and "gid=1337" in ids
    owner = docker("run", "--rm", "--network", "none", "--entrypoint", "stat", tag, "-c", "%u",
                   "/usr/local/apisix/conf").stdout.strip()
    assert owner == "1337"


def test_controller_image_entrypoint(images):
    tag = images["controller"]
    assert inspect(tag)["Entrypoint"] == ["amesh-controller"]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"].get("scripts", {})
    if "amesh-controller" not in scripts:
        pytest.skip("amesh-controller is not a console script yet (controller/ is being written)")
    docker("run", "--rm", "--network", "none", tag, "--help")


AGENT_PROBE = """
import json, sys, time, urllib.error, urllib.request
def get(url):
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
deadline = time.monotonic() + 60
while True:
    try:
        ready = get("http://127.0.0.1:15021/healthz/ready"); break
    except OSError:
        if time.monotonic() > deadline: raise
        time.sleep(0.2)
metrics = get("http://127.0.0.1:15020/stats/prometheus")
status = get("http://127.0.0.1:15000/status")
print(json.dumps({"ready": ready[0], "metrics": metrics[0], "has_xds_metric": "amesh_" in metrics[1],
                  "status": status[0]}))
"""


def test_sidecar_image_agent_starts_and_serves_istio_ports(sidecar_images):
    """The entrypoint really runs in the image as 1337: with no istiod reachable it serves its ports and says
    not-ready, which is what the kubelet's readiness probe on 15021 sees until the first config is live."""
    tag = sidecar_images["sidecar"]
    name = f"amesh-test-agent-{RUN_ID}"
    identity = ["-e", "POD_NAME=details-v1-0", "-e", "POD_NAMESPACE=default", "-e", "INSTANCE_IP=10.1.0.7"]
    docker("run", "-d", "--name", name, "--label", LABEL, "--network", "none", *identity, tag,
           "--no-apisix", "--plaintext", "--discovery-address", "127.0.0.1:15010",
           "--apisix-mode", "file", "--apisix-config-file", "/tmp/apisix.yaml")
    try:
        probe = docker("exec", name, "/opt/amesh/bin/python", "-c", AGENT_PROBE, check=False, timeout=120)
        logs = docker("logs", name, check=False).stderr[-3000:]
        assert probe.returncode == 0, f"{probe.stderr}\nagent logs:\n{logs}"
        result = json.loads(probe.stdout)
        assert result == {"ready": 503, "metrics": 200, "has_xds_metric": True, "status": 200}, logs
        assert docker("inspect", "-f", "{{.State.Running}}", name).stdout.strip() == "true"
    finally:
        docker("rm", "-f", name, check=False)


def test_apisix_base_has_the_official_layout(sidecar_images):
    """The CI base stands for apache/apisix:3.18.0-debian: APISIX 3.18 on apisix-runtime, the same paths."""
    out = docker("run", "--rm", "--network", "none", sidecar_images["apisix"], "sh", "-c",
                 "readlink /usr/bin/openresty && command -v apisix && command -v openresty && apisix version | tail -1"
                 " && id -un && pwd"
                 " && openresty -V 2>&1 | grep -c apisix-nginx-module").stdout.split()
    assert out == ["/usr/local/openresty/bin/openresty", "/usr/bin/apisix", "/usr/bin/openresty", "3.18.0",
                   "apisix", "/usr/local/apisix", "1"], out


SERVICE_IP, SERVICE_PORT, XDS_PORT = "10.21.1.100", 9080, 15010  # a ClusterIP on the pod's link, no host


def start_xds_server(pod: Pod, log: Path) -> subprocess.Popen:
    """The project's ADS server (tests/delivery/xds_pod.py), as this repo's venv Python entered into the
    pod's network namespace only: it listens on the pod's 127.0.0.1, where the agent looks for istiod."""
    out = log.open("w")
    proc = subprocess.Popen(
        ["nsenter", "-t", pod.pid(pod.pod), "-n", sys.executable, "-m", "tests.delivery.xds_pod", str(XDS_PORT),
         SERVICE_IP, str(SERVICE_PORT), PEER_IP],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=out, stderr=subprocess.STDOUT)
    out.close()
    deadline = time.monotonic() + 30
    while "serving" not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"the xDS server did not start:\n{log.read_text()}")
        time.sleep(0.1)
    return proc


def test_sidecar_proxies_a_captured_request_through_apisix(images, sidecar_images, pod, tmp_path):
    """The whole injected pod on a real engine: init rules, then the sidecar image (amesh-agent as 1337 starting
    the real APISIX) configured over ADS by an istiod stand-in; the app's plain outbound HTTP request to a
    Service IP is captured to 15001, routed by APISIX to the Service's endpoint in the other pod, answered."""
    init = run_init(pod, images["iptables"])
    assert init.returncode == 0, init.stderr
    upstream = pod.start("upstream", "--network", f"container:{pod.peer}", "-v", f"{HERE}:/t:ro",
                         BASE, "python3", "/t/podnet.py", "http", "echo-v1", str(SERVICE_PORT))
    xds_log = tmp_path / "xds.log"
    xds = start_xds_server(pod, xds_log)
    try:
        sidecar = pod.start("sidecar", "--network", f"container:{pod.pod}", "-e", "POD_NAME=app-v1-0",
                            "-e", "POD_NAMESPACE=default", "-e", f"INSTANCE_IP={POD_IP}", sidecar_images["sidecar"],
                            "--plaintext", "--discovery-address", f"127.0.0.1:{XDS_PORT}")
        # the app: root, so captured; it retries while APISIX starts and until its routes are in
        app = docker("run", "--rm", "--label", LABEL, "--network", f"container:{pod.pod}", "-v", f"{HERE}:/t:ro",
                     BASE, "python3", "/t/podnet.py", "http-get",
                     f"http://{SERVICE_IP}:{SERVICE_PORT}/hello?via=sidecar", check=False, timeout=150)
        # APISIX's access log (the image links logs/access.log to the container's stdout; nginx flushes its
        # buffer within 3 s) names the upstream node the route chose
        access = re.compile(rf'"GET /hello\?via=sidecar HTTP/1.1" 200 .* {re.escape(PEER_IP)}:{SERVICE_PORT} 200')
        deadline = time.monotonic() + (15 if app.returncode == 0 else 0)
        while True:
            logs = docker("logs", sidecar, check=False)
            if access.search(logs.stdout) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        context = (f"app: {app.stdout}{app.stderr}\nxds:\n{xds_log.read_text()}\n"
                   f"sidecar stdout:\n{logs.stdout[-3000:]}\nsidecar stderr:\n{logs.stderr[-6000:]}")
        assert app.returncode == 0, context
        answer = json.loads(app.stdout)
        assert answer["status"] == 200 and answer["server"].startswith("APISIX"), context
        seen = json.loads(answer["body"])
        # the upstream in the other pod got it from the pod's address (APISIX as 1337 is not captured again)
        assert (seen["name"], seen["method"], seen["path"], seen["peer"]) == \
            ("echo-v1", "GET", "/hello?via=sidecar", POD_IP), seen
        assert seen["headers"]["host"] == f"{SERVICE_IP}:{SERVICE_PORT}", seen
        assert json.loads(docker("logs", upstream).stdout.splitlines()[-1])["path"] == "/hello?via=sidecar"
        assert all(f"acked {kind} 1" in xds_log.read_text() for kind in ("cds", "eds", "lds", "rds")), context
        assert "nack" not in xds_log.read_text(), context
        assert access.search(logs.stdout), context
    finally:
        xds.terminate()
        try:
            xds.wait(10)
        except subprocess.TimeoutExpired:
            xds.kill()
            xds.wait()
