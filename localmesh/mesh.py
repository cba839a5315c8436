"""The local mesh's life: `up` builds it, `apply` changes istiod's configuration, `status` reads it,
`down` removes everything it made (also after a crash or a kill -9: every namespace is found by its
name prefix and every process by its network namespace, so no record is needed).

Each pod is run as the injection template runs it (charts/amesh): `amesh-iptables istio-iptables` with
the injector's default arguments in the pod's namespace, then `amesh-agent run` as UID/GID 1337 with
the injector's environment (POD_NAME, POD_NAMESPACE, INSTANCE_IP, SERVICE_ACCOUNT, PROXY_CONFIG, …),
which starts and supervises a real APISIX in the pod's own prefix, and the app (localmesh/echo.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import yaml

from localmesh import ca, istiod, netns, procs, topology
from localmesh.errors import MeshError
from localmesh.topology import Mesh

PROXY_UID = PROXY_GID = 1337
APP_UID = APP_GID = 65534  # nobody: the app is neither root nor the proxy
DEFAULT_WORKDIR = Path("/tmp/amesh-mesh")
DEFAULT_APISIX_HOME = Path("/usr/local/apisix")
# the injector's default capture arguments (charts/amesh injection template, istio-iptables' defaults)
CAPTURE_ARGS = ("istio-iptables", "-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*",
                "-x", "", "-b", "*", "-d", "15090,15021,15020")
STATUS_PORT, ADMIN_PORT = 15021, 15000


def prefix_for(workdir: Path) -> str:
    """Namespace prefix of the mesh in `workdir`: two meshes with different workdirs never collide."""
    return "amm" + hashlib.sha256(str(workdir.resolve()).encode()).hexdigest()[:6]


@dataclass(frozen=True)
class Paths:
    workdir: Path

    @property
    def state(self) -> Path:
        return self.workdir / "mesh.json"

    @property
    def config_dir(self) -> Path:  # istiod's --configDir
        return self.workdir / "istio" / "config"

    @property
    def applied_dir(self) -> Path:  # what `apply` wrote, one file per applied file
        return self.config_dir / "applied"

    def pod(self, name: str) -> Path:
        return self.workdir / "pods" / name

    def log(self, name: str, what: str) -> Path:
        return self.workdir / "logs" / f"{name}.{what}.log"


def load_state(workdir: Path) -> dict:
    paths = Paths(workdir)
    if not paths.state.is_file():
        raise MeshError(f"no mesh in {workdir} (run `amesh-mesh up --workdir {workdir}` first)")
    return json.loads(paths.state.read_text())


def save_state(workdir: Path, state: dict) -> None:
    path = Paths(workdir).state
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    tmp.replace(path)


def namespace(prefix: str, name: str) -> str:
    return f"{prefix}-{name}"


def require_root() -> None:
    if os.geteuid() != 0:
        raise MeshError("amesh-mesh needs root: it creates network namespaces and programs iptables "
                        "(run it with sudo)")


def _tool(name: str) -> str:
    """A console script of this installation (beside the running interpreter), else from PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if not found:
        raise MeshError(f"{name} not found beside {sys.executable} nor on PATH (pip install -e .)")
    return found


def preflight(apisix_home: Path) -> None:
    problems = []
    if not (apisix_home / "apisix" / "cli" / "apisix.lua").is_file():
        problems.append(f"no APISIX in {apisix_home} (install it: sh ../shared/peers/apisix/install.sh, "
                        "or pass --apisix-home)")
    for tool in ("apisix", "openresty", "setpriv", "ip"):
        if shutil.which(tool) is None:
            problems.append(f"`{tool}` is not on PATH")
    if not problems:
        # the agent runs as 1337: the interpreter and the project must be readable by it (not under /root)
        check = subprocess.run(["setpriv", f"--reuid={PROXY_UID}", f"--regid={PROXY_GID}", "--clear-groups",
                                sys.executable, "-c", "import sidecar_agent.app, localmesh.echo"],
                               capture_output=True, text=True)
        if check.returncode != 0:
            problems.append(f"UID {PROXY_UID} cannot run {sys.executable} with this project "
                            f"({check.stderr.strip().splitlines()[-1] if check.stderr.strip() else 'no output'}); "
                            "build the venv from a Python every user can read: bash scripts/setup.sh")
    if problems:
        raise MeshError("cannot start the mesh: " + "; ".join(problems))


# -- up ---------------------------------------------------------------------------------------------------
def up(workdir: Path, *, apisix_mode: str = "file", istiod_path: Path | None = None,
       apisix_home: Path = DEFAULT_APISIX_HOME, ready_timeout: float = 90.0, mtls: bool = False,
       secret_ttl: str | None = None, log=lambda msg: None) -> dict:
    """`mtls`: istiod is also the mesh's CA (FACTS.md (c)), each pod gets a service-account token, the agents
    their workload certificates, and auto-mTLS is on: the sidecars talk Istio mTLS (PeerAuthentication
    decides what they accept). `secret_ttl`: the workload certificates' lifetime (pilot-agent's SECRET_TTL, e.g.
    "60s": renewed at about half of it, to watch rotation under traffic)."""
    require_root()
    workdir = workdir.resolve()
    prefix = prefix_for(workdir)
    if netns.listed(prefix) or Paths(workdir).state.exists():
        raise MeshError(f"a mesh is already up in {workdir} (amesh-mesh down --workdir {workdir} first)")
    preflight(apisix_home)
    for leftover in ("logs", "pods", "istio"):  # a previous mesh's logs and prefixes: this one starts afresh
        shutil.rmtree(workdir / leftover, ignore_errors=True)
    binary = istiod.find_binary(istiod_path, workdir / "cache")
    mesh = topology.bookinfo()
    state = {"prefix": prefix, "workdir": str(workdir), "apisix_mode": apisix_mode, "apisix_home": str(apisix_home),
             "istiod": str(binary), "started": time.time(), "processes": {}, "pods": [w.pod for w in mesh.workloads],
             "ready": False, "mtls": mtls, "secret_ttl": secret_ttl}
    save_state(workdir, state)
    try:
        _build(workdir, state, mesh, binary, apisix_home, log)
        not_ready = wait_sidecars_ready(workdir, state, mesh, ready_timeout)
        if not_ready:
            raise MeshError(f"sidecars not ready after {ready_timeout:.0f}s: {', '.join(not_ready)} "
                            f"(logs in {workdir / 'logs'})")
        state["ready"] = True
        save_state(workdir, state)
        log(f"mesh up in {workdir}: istiod {mesh.istiod_ip}, {len(mesh.workloads)} pods ready")
        return state
    except BaseException:
        down(workdir)
        raise


def _build(workdir: Path, state: dict, mesh: Mesh, binary: Path, apisix_home: Path, log) -> None:
    prefix, paths = state["prefix"], Paths(workdir)
    net = namespace(prefix, "net")
    netns.create(net)
    netns.make_bridge(net, mesh.bridge_ip, mesh.prefixlen)

    def host(name: str, ip: str) -> str:
        ns = namespace(prefix, name)
        netns.create(ns)
        netns.attach(net, ns, ip, mesh.prefixlen, mesh.bridge_ip)
        netns.write_etc(ns, "hosts", topology.hosts_file(mesh))
        return ns

    # istiod, with the mesh's registry in its config directory
    log("starting istiod")
    istiod_ns = host("istiod", mesh.istiod_ip)
    registry_file = paths.config_dir / "registry" / "bookinfo.yaml"
    registry_file.parent.mkdir(parents=True, exist_ok=True)
    mtls = bool(state.get("mtls"))
    registry_file.write_text(yaml.safe_dump_all(topology.registry(mesh, mtls), sort_keys=False))
    paths.applied_dir.mkdir(parents=True, exist_ok=True)
    mesh_file, networks_file = istiod.write_mesh_files(workdir / "istio", topology.mesh_config(mesh, mtls=mtls))
    env = istiod.environment(os.environ.get("PATH", "/usr/bin:/bin"))
    issuer = None
    if mtls:
        ca_dir, issuer = _start_ca(workdir, state, istiod_ns, mesh)
        env = istiod.ca_environment(env, ca_dir, mesh.istiod_ip)
    istiod_log = paths.log("istiod", "out")
    record = procs.spawn(istiod_ns, istiod.command(binary, paths.config_dir, mesh_file, networks_file, ca=mtls),
                         log=istiod_log, env=env)
    state["processes"]["istiod"] = record
    state["istiod_env"] = env
    save_state(workdir, state)
    istiod.wait_ready(istiod_log, is_alive=lambda: procs.alive(record["pid"], record["start"]))

    # the host outside the mesh
    ext = host("external", mesh.external_ip)
    state["processes"]["external/app"] = _start_app(ext, "external", "v1", "external", workdir,
                                                    http=[mesh.external_port])

    for workload in mesh.workloads:
        log(f"starting pod {workload.pod}")
        ns = host(workload.pod, workload.ip)
        procs.run(ns, [_tool("amesh-iptables"), *CAPTURE_ARGS])
        state["processes"][f"{workload.pod}/app"] = _start_app(
            ns, workload.service.name, workload.version, workload.pod, workdir,
            **({"http": [workload.service.port]} if workload.service.protocol == "HTTP"
               else {"tcp": [workload.service.port]}))
        state["processes"][f"{workload.pod}/agent"] = _start_agent(ns, workload, mesh, workdir, state, apisix_home,
                                                                   issuer)
        save_state(workdir, state)


def _start_ca(workdir: Path, state: dict, ns: str, mesh: Mesh) -> tuple[Path, ca.Issuer]:
    """The mesh CA's ROOT_CA_DIR, and the token issuer: its key signs each pod's token (`_pod_token`), its JWKS
    is served in istiod's namespace for istiod's JWT_RULE."""
    ca_dir = workdir / "istio" / "cacerts"
    ca.write_ca_dir(ca_dir)
    for path in (workdir / "istio", ca_dir, ca_dir / "root-cert.pem"):  # the agents (UID 1337) read the root
        path.chmod(path.stat().st_mode | 0o055)
    issuer = ca.Issuer(f"http://{mesh.istiod_ip}:{istiod.JWKS_PORT}")
    jwks = workdir / "istio" / "jwks"
    jwks.mkdir(exist_ok=True)
    (jwks / "jwks.json").write_text(json.dumps(issuer.jwks()))
    state["processes"]["jwks"] = procs.spawn(
        ns, [sys.executable, "-m", "http.server", "--bind", mesh.istiod_ip, "--directory", str(jwks),
             str(istiod.JWKS_PORT)], log=Paths(workdir).log("istiod", "jwks"), env={"PATH": os.environ.get("PATH", "")})
    return ca_dir, issuer


def _pod_token(workdir: Path, issuer: ca.Issuer, workload: topology.Workload) -> Path:
    """The pod's projected service-account token (audience istio-ca), readable by the sidecar only."""
    path = Paths(workdir).pod(workload.pod) / "istio-token"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(issuer.token(topology.NAMESPACE, workload.service_account, ttl=7 * 86400))
    path.chmod(0o600)
    os.chown(path, PROXY_UID, PROXY_GID)
    return path


def _start_app(ns: str, service: str, version: str, pod: str, workdir: Path, http=(), tcp=()) -> dict:
    app_log = Paths(workdir).log(pod, "app.jsonl")
    app_log.parent.mkdir(parents=True, exist_ok=True)
    app_log.touch()
    os.chown(app_log, APP_UID, APP_GID)
    argv = [sys.executable, "-m", "localmesh.echo", "--service", service, "--version", version, "--pod", pod,
            "--log", str(app_log)]
    argv += [a for port in http for a in ("--http", str(port))] + [a for port in tcp for a in ("--tcp", str(port))]
    return procs.spawn(ns, argv, log=Paths(workdir).log(pod, "app.out"), uid=APP_UID, gid=APP_GID,
                       env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(topology_root())})


def topology_root() -> Path:
    return Path(__file__).resolve().parents[1]


def apisix_prefix(apisix_home: Path, target: Path) -> Path:
    """A pod's own APISIX prefix: the Lua tree and dependencies shared (symlinks), conf/ and logs/ its own,
    owned by the proxy user (the agent writes config.yaml there and APISIX its pid and temp files)."""
    target.mkdir(parents=True, exist_ok=True)
    for name in ("apisix", "deps"):
        link = target / name
        if not link.is_symlink():
            link.symlink_to(apisix_home / name)
    conf = target / "conf"
    conf.mkdir(exist_ok=True)
    for item in ("mime.types", "debug.yaml", "cert"):
        source = apisix_home / "conf" / item
        if source.is_dir():
            shutil.copytree(source, conf / item, dirs_exist_ok=True)
        elif source.exists():
            shutil.copy2(source, conf / item)
    (target / "logs").mkdir(exist_ok=True)
    for path in [target, *target.rglob("*")]:
        if not path.is_symlink():
            os.chown(path, PROXY_UID, PROXY_GID)
    return target


def agent_environment(workload: topology.Workload, mesh: Mesh, prefix: Path, apisix_mode: str) -> dict[str, str]:
    """What the injection template gives the istio-proxy container, for this pod."""
    return {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "HOME": str(prefix),
        "POD_NAME": workload.pod,
        "POD_NAMESPACE": topology.NAMESPACE,
        "INSTANCE_IP": workload.ip,
        "SERVICE_ACCOUNT": workload.service_account,
        "PROXY_CONFIG": json.dumps({"discoveryAddress": mesh.discovery_address, "controlPlaneAuthPolicy": "NONE"}),
        "ISTIO_META_CLUSTER_ID": "Kubernetes",
        "ISTIO_META_INTERCEPTION_MODE": "REDIRECT",
        "ISTIO_META_WORKLOAD_NAME": workload.pod,
        "ISTIO_META_MESH_ID": topology.DOMAIN,
        "ISTIO_META_APP_CONTAINERS": workload.service.name,
        "ISTIO_META_POD_PORTS": json.dumps([{"containerPort": workload.service.port, "protocol": "TCP"}]),
        "TRUST_DOMAIN": topology.DOMAIN,
        "AMESH_APISIX_PREFIX": str(prefix),
        "AMESH_APISIX_MODE": apisix_mode,
        "TERMINATION_DRAIN_DURATION_SECONDS": "1",
    }


def _start_agent(ns: str, workload: topology.Workload, mesh: Mesh, workdir: Path, state: dict,
                 apisix_home: Path, issuer: ca.Issuer | None = None) -> dict:
    prefix = apisix_prefix(apisix_home, Paths(workdir).pod(workload.pod) / "apisix")
    env = agent_environment(workload, mesh, prefix, state["apisix_mode"])
    if issuer is not None:  # the workload certificate from istiod's CA; xDS stays plaintext on 15010
        env.update(CA_ADDR=f"{mesh.istiod_ip}:{istiod.SECURE_PORT}",
                   CA_ROOT_CA=str(workdir / "istio" / "cacerts" / "root-cert.pem"),
                   AMESH_XDS_TOKEN=str(_pod_token(workdir, issuer, workload)))
        if state.get("secret_ttl"):
            env["SECRET_TTL"] = state["secret_ttl"]
    return procs.spawn(ns, [_tool("amesh-agent"), "run"], log=Paths(workdir).log(workload.pod, "agent"),
                       env=env, uid=PROXY_UID, gid=PROXY_GID, cwd=prefix)


def wait_sidecars_ready(workdir: Path, state: dict, mesh: Mesh, timeout: float) -> list[str]:
    deadline = time.monotonic() + timeout
    pending = [w.pod for w in mesh.workloads]
    while pending and time.monotonic() < deadline:
        pending = [pod for pod in pending if ready_status(namespace(state["prefix"], pod))[0] != 200]
        for pod in pending:
            record = state["processes"][f"{pod}/agent"]
            if not procs.alive(record["pid"], record["start"]):
                tail = "\n".join(Path(record["log"]).read_text(errors="replace").splitlines()[-8:])
                raise MeshError(f"the sidecar agent of {pod} exited; end of {record['log']}:\n{tail}")
        if pending:
            time.sleep(0.25)
    return pending


def ready_status(ns: str) -> tuple[int, str]:
    from localmesh.client import http_request

    response = http_request(ns, "127.0.0.1", STATUS_PORT, "localhost", path="/healthz/ready", timeout=2)
    return response.status, response.error or response.body.decode(errors="replace").strip()


# -- istiod outages (the end-to-end tests' control-plane failures) ------------------------------------------
def stop_istiod(workdir: Path) -> None:
    workdir = workdir.resolve()
    state = load_state(workdir)
    record = state["processes"]["istiod"]
    if procs.alive(record["pid"], record["start"]):
        procs.terminate([record["pid"]], grace=5.0)


def start_istiod(workdir: Path) -> None:
    """Start istiod again with the command and environment `up` used (its config directory unchanged)."""
    workdir = workdir.resolve()
    state = load_state(workdir)
    old = state["processes"]["istiod"]
    if procs.alive(old["pid"], old["start"]):
        raise MeshError(f"istiod is running (pid {old['pid']})")
    log = Path(old["log"])
    offset = log.stat().st_size if log.exists() else 0
    record = procs.spawn(old["namespace"], old["argv"], log=log, env=state["istiod_env"])
    state["processes"]["istiod"] = record
    save_state(workdir, state)
    istiod.wait_ready(log, is_alive=lambda: procs.alive(record["pid"], record["start"]), offset=offset)


# -- down --------------------------------------------------------------------------------------------------
def down(workdir: Path) -> list[str]:
    """Stop every process in the mesh's namespaces (and any it recorded), remove the namespaces and the
    state file. Safe to run again, and after the process that ran `up` was killed."""
    require_root()
    workdir = workdir.resolve()
    prefix = prefix_for(workdir)
    names = netns.listed(prefix)
    recorded = []
    state_file = Paths(workdir).state
    if state_file.is_file():
        try:
            for record in json.loads(state_file.read_text()).get("processes", {}).values():
                if procs.alive(record["pid"], record.get("start")):
                    recorded.append(record["pid"])
        except (ValueError, KeyError):
            pass  # a state file cut short by a crash: the namespaces still find the processes
    procs.terminate(sorted(set(netns.pids_in(names)) | set(recorded)), grace=3.0)
    for name in names:
        netns.remove(name)
    state_file.unlink(missing_ok=True)
    return names


# -- apply -------------------------------------------------------------------------------------------------
KNOWN_KINDS = {"AuthorizationPolicy", "DestinationRule", "EnvoyFilter", "Gateway", "PeerAuthentication",
               "ProxyConfig", "RequestAuthentication", "ServiceEntry", "Sidecar", "Telemetry", "VirtualService",
               "WasmPlugin", "WorkloadEntry", "WorkloadGroup"}


def parse_istio_yaml(text: str, source: str) -> list[dict]:
    """The Istio objects of one file, each given `metadata.namespace: default` when it has none (as kubectl
    apply would; istiod's file store does not default it). Errors name the file and the object."""
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise MeshError(f"{source}: not valid YAML: {exc}") from None
    if not documents:
        raise MeshError(f"{source}: no Istio objects in it")
    out = []
    for index, doc in enumerate(documents):
        where = f"{source} (document {index + 1})"
        if not isinstance(doc, dict):
            raise MeshError(f"{where}: not a Kubernetes object")
        kind, api = doc.get("kind"), str(doc.get("apiVersion", ""))
        if kind not in KNOWN_KINDS or not api.endswith(".istio.io/v1") and ".istio.io/" not in api:
            raise MeshError(f"{where}: {api or '?'} {kind or '?'} is not an Istio kind istiod reads "
                            f"({', '.join(sorted(KNOWN_KINDS))})")
        metadata = doc.get("metadata")
        if not isinstance(metadata, dict) or not metadata.get("name"):
            raise MeshError(f"{where}: metadata.name is missing")
        if not isinstance(doc.get("spec"), dict):
            raise MeshError(f"{where}: spec is missing")
        metadata.setdefault("namespace", topology.NAMESPACE)
        out.append(doc)
    return out


def _object_file(paths: Paths, obj: dict) -> Path:
    """One file per object, named by its key: applying an object again replaces it, as kubectl apply does."""
    meta = obj["metadata"]
    return paths.applied_dir / f"{obj['kind'].lower()}.{meta['namespace']}.{meta['name']}.yaml"


def _objects(files: list[Path]) -> list[dict]:
    out = []
    for file in files:
        if not file.is_file():
            raise MeshError(f"{file}: no such file")
        out += parse_istio_yaml(file.read_text(), str(file))
    return out


def apply(workdir: Path, files: list[Path], timeout: float = 30.0) -> list[tuple[str, str]]:
    """Write the files' objects into istiod's config directory and wait for istiod's verdict, then until
    every sidecar serves the result; (file, "created" | "configured" | "unchanged") per object, as kubectl
    says. istiod validates the whole directory on reload (as its admission webhook would) and keeps its
    previous state when any object is invalid; then the objects are taken back, so the mesh is unchanged
    and the error names the object. Nothing changed: nothing is written and nothing awaited (istiod need
    not push for a reload that changes nothing, and measured, it sometimes does not)."""
    require_root()
    workdir = workdir.resolve()
    state = load_state(workdir)
    paths = Paths(workdir)
    staged, outcome = {}, []
    for obj in _objects(files):
        target = _object_file(paths, obj)
        text, previous = yaml.safe_dump(obj, sort_keys=False), target.read_text() if target.exists() else None
        outcome.append((str(target), "created" if previous is None else
                        "unchanged" if previous == text else "configured"))
        if previous != text:
            staged[target] = (text, previous)
    if not staged:
        return outcome
    log_file = Path(state["processes"]["istiod"]["log"])
    offset = log_file.stat().st_size
    started = time.time()
    for target, (text, _) in staged.items():
        tmp = target.with_name("." + target.name + ".tmp")  # not .yaml: istiod ignores it until renamed
        tmp.write_text(text)
        tmp.replace(target)
    problem = istiod.reload_outcome(log_file, offset, timeout)
    if problem is not None:
        for target, (_, previous) in staged.items():
            if previous is None:
                target.unlink(missing_ok=True)
            else:
                target.write_text(previous)
        raise MeshError(f"istiod refused the change, nothing applied: {problem}")
    wait_converged(workdir, state, since=started, timeout=timeout)
    return outcome


def delete(workdir: Path, files: list[Path], timeout: float = 30.0) -> list[str]:
    """Remove the objects the files name (as kubectl delete -f) and wait until the sidecars serve the result."""
    require_root()
    workdir = workdir.resolve()
    state = load_state(workdir)
    paths = Paths(workdir)
    targets = [_object_file(paths, obj) for obj in _objects(files)]
    present = [t for t in targets if t.exists()]
    if not present:
        raise MeshError("none of these objects is applied (applied: "
                        f"{', '.join(sorted(p.name for p in paths.applied_dir.glob('*.yaml'))) or 'none'})")
    started = time.time()
    for target in present:
        target.unlink()
    wait_converged(workdir, state, since=started, timeout=timeout)
    return [str(t) for t in present]


APISIX_POLL_SECONDS = 1.2  # file mode: APISIX re-reads apisix.json every second; API mode: stream routes too


def wait_converged(workdir: Path, state: dict, since: float, timeout: float = 30.0) -> None:
    """Wait until istiod has pushed to every sidecar after `since` (wall clock), every sidecar ACKed it,
    and every agent has handed the resulting document to its APISIX; then one APISIX poll period."""
    deadline = time.monotonic() + timeout
    waiting = {pod: "not checked yet" for pod in state["pods"]}
    while waiting and time.monotonic() < deadline:
        synced = _istiod_sync_state(state, since)
        waiting = {}
        for pod in state["pods"]:
            why = synced.get(pod, "istiod does not list it in /debug/syncz")
            if why is None and not _document_current(state, pod):
                why = "its agent has not handed the ACKed versions to APISIX"
            if why is not None:
                waiting[pod] = why
        if waiting:
            time.sleep(0.1)
    if waiting:
        detail = "; ".join(f"{pod}: {why}" for pod, why in waiting.items())
        raise MeshError(f"the change did not reach {', '.join(waiting)} in {timeout:.0f}s ({detail}; "
                        f"amesh-mesh status --workdir {workdir})")
    time.sleep(APISIX_POLL_SECONDS)


def _istiod_sync_state(state: dict, since: float) -> dict[str, str | None]:
    """Per pod istiod knows (/debug/syncz): None when every xDS type it sent after `since` is ACKed, else
    what is missing."""
    from localmesh.client import http_request

    try:
        response = http_request(namespace(state["prefix"], "istiod"), "127.0.0.1", istiod.HTTP_PORT, "localhost",
                                path="/debug/syncz", timeout=3)
        proxies = json.loads(response.body) if response.status == 200 else []
    except (OSError, ValueError):
        return {}
    out: dict[str, str | None] = {}
    for proxy in proxies or []:
        pod = proxy.get("proxy", "").rsplit(".", 1)[0]
        resources = proxy.get("resources") or {}
        if not any(_rfc3339(r.get("sentTime", "")) >= since for r in resources.values()):
            last = max((r.get("sentTime", "") for r in resources.values()), default="never")
            why = f"istiod has not pushed to it since the change (last push {last})"
        elif any(r.get("sent") != r.get("acked") for r in resources.values()):
            why = "it has not ACKed istiod's push"
        else:
            why = None
        if out.get(pod, "unset") is not None:  # a pod listed twice (a reconnect): one synced entry suffices
            out[pod] = why
    return out


def _document_current(state: dict, pod: str) -> bool:
    """The agent's live APISIX document is the translation of the versions it ACKed."""
    status = admin_json(namespace(state["prefix"], pod), "/status") or {}
    versions = status.get("xds_versions") or {}
    label = ",".join(f"{k}={v}" for k, v in sorted(versions.items()))
    return bool(label) and str(status.get("apisix_document") or "").split(";")[0] == label


def _rfc3339(text: str) -> float:
    """istiod's UTC times with nanoseconds ("2026-12-03T03:47:52.581844965Z"), in seconds."""
    try:
        return datetime.fromisoformat(text.rstrip("Z")[:26]).replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        return 0.0


# -- status ------------------------------------------------------------------------------------------------
def status(workdir: Path) -> dict:
    require_root()
    workdir = workdir.resolve()
    state = load_state(workdir)
    prefix = state["prefix"]
    out = {"workdir": str(workdir), "prefix": prefix, "apisix_mode": state["apisix_mode"], "pods": []}
    record = state["processes"].get("istiod", {})
    out["istiod"] = {"pid": record.get("pid"), "running": procs.alive(record.get("pid", 0), record.get("start"))}
    for pod in state["pods"]:
        ns = namespace(prefix, pod)
        code, detail = ready_status(ns) if netns.exists(ns) else (0, "namespace missing")
        agent_status = admin_json(ns, "/status")
        apisix = apisix_processes(ns) if netns.exists(ns) else {}
        out["pods"].append({"pod": pod, "ready": code == 200, "readiness": detail,
                            "xds_versions": (agent_status or {}).get("xds_versions"),
                            "document": (agent_status or {}).get("apisix_document"),
                            "last_nack": (agent_status or {}).get("last_nack"),
                            "apisix": apisix})
    return out


def admin_json(ns: str, path: str) -> dict | None:
    from localmesh.client import http_request

    if not netns.exists(ns):
        return None
    response = http_request(ns, "127.0.0.1", ADMIN_PORT, "localhost", path=path, timeout=3)
    return response.json() if response.status == 200 else None


def apisix_processes(ns: str) -> dict:
    """APISIX's master (the openresty process whose parent is not openresty) and its worker count."""
    pids = netns.pids_in([ns])
    nginx = {p: procs.cmdline(p) for p in pids}
    nginx = {p: c for p, c in nginx.items() if c and ("openresty" in c[0] or c[0].startswith("nginx"))}
    masters = [p for p in nginx if _parent(p) not in nginx]
    return {"master": masters[0] if masters else None, "processes": len(nginx)}


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
    except (OSError, ValueError, IndexError):
        return None
