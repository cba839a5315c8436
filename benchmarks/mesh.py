"""Mesh figures on the local mesh (localmesh/): the data path through two APISIX sidecars, the time from a
VirtualService write to the new route serving, and the memory of a sidecar (agent + APISIX) per pod.

    /work/venv-sys/bin/python benchmarks/mesh.py [--apisix-mode file|api | --modes file,api]
        [--transports plaintext,mtls] [--seconds 5] [--repeat 3] [--workdir DIR] [--json]

Needs Debian's `hey` and `wrk` (apt-get install hey wrk).

Root. Brings up its own mesh (`localmesh.mesh.up`) in --workdir (default /tmp/amesh-bench-mesh, one mesh
per APISIX mode in turn) and always takes it down again (`localmesh.mesh.down`), also on failure. All traffic
stays inside the mesh's network namespaces.

1. Data path. Through two sidecars: from pod productpage-v1's namespace to http://reviews:9080/ (the VIP:
   captured → productpage's APISIX outbound → reviews-v1's APISIX inbound → the echo app), with Bookinfo's
   DestinationRules and `virtual-service-all-v1.yaml` applied so that reviews is pinned to v1.
   Direct (the baseline): the same echo app, same Python, same user, in a plain namespace `bench-server` on
   the mesh's bridge, called from a plain namespace `bench-client` on the same bridge: one bridge crossing,
   no capture, no sidecar -- what the mesh path is minus the two sidecars. (The pods' own inbound is
   captured on every port but 15090/15021/15020, so a pod cannot serve an uncaptured baseline; the
   `external` host runs the app in the client's own namespace, which would skip the bridge.)
   Latency at a fixed rate: `hey` (Debian) at 1,000 req/s over 16 connections (`-q` per connection),
   per-request times from its CSV (0.1 ms resolution); added = mesh - direct per percentile; Istio's
   published figure is p90 +2.65 ms for its two Envoy sidecars at 1,000 req/s, 16 connections (Istio
   1.12-1.15 "Performance and Scalability"). Throughput: `wrk` unpaced, 2 threads, 16 connections; the
   APISIX CPU time of each sidecar over the run gives requests per APISIX CPU-second (what one worker on
   a core of its own would serve) -- Istio's figure is 0.35 vCPU per 1,000 req/s per Envoy.
   Keep-alive and one request per connection (`Connection: close` / `-disable-keepalive`). The client
   namespaces get `net.ipv4.tcp_tw_reuse=1` (docs/data-path.md: otherwise the per-connection runs
   measure the client's exhausted ephemeral ports).
2. Configuration change: reviews' VirtualService is rewritten (v1 → v2 → v1 …) into istiod's config
   directory the way `amesh-mesh apply` writes it; from just before the write to the first response from
   the new version, polled from productpage-v1 (a new connection every ~20 ms). istiod's share comes from
   its log: the write → "Triggering reload" (its file watch) → the push to productpage-v1 (after its
   PILOT_DEBOUNCE_AFTER, 100 ms by default); the rest is the agent's translation and APISIX taking the
   document (Admin API, or its 1 s poll of apisix.yaml in file mode).
With `--transports plaintext,mtls` each mode runs twice: plaintext sidecars, then `amesh-mesh up --mtls`
(istiod's CA, workload certificates, auto-mTLS) with a mesh-wide PeerAuthentication STRICT, so that the hop
between the two sidecars is Istio mTLS; the difference of the two "added" rows is what mTLS costs. (The
sidecar-to-sidecar connections are pooled, so even the one-request-per-connection rows handshake rarely.)
Handshakes: `openssl s_time -new` from the plain client namespace straight to reviews-v1's address:9080
(captured → amesh-mtls → the port's TLS listener), with a client certificate from the mesh CA: full TLS 1.3
handshakes with client authentication, one per connection, for --seconds; with the server sidecar's
APISIX CPU time over the run that is handshakes per second per worker.
TCP: from productpage-v1 to the mongodb service (VIP:27017, a line echo), one line and its echo per
connection, back to back for --seconds: latency percentiles, exchanges per second, and the client sidecar's
APISIX CPU per exchange. Under mTLS every connection is a full Istio mTLS handshake through the client
sidecar's TLS origin server (docs/data-path.md, "TCP services"): TCP hops are not pooled.
3. Memory per pod after sync (Bookinfo's rules applied, before any load): RSS and PSS
   (/proc/<pid>/smaps_rollup) of the agent and of APISIX (master, workers, privileged agent). RSS counts
   the pages the workers share with their master once per process; PSS divides them, so PSS sums.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from localmesh import mesh as mesh_mod, netns, topology  # noqa: E402
from localmesh.client import http_request  # noqa: E402

BOOKINFO_RULES = [REPO / "e2e/bookinfo/networking/destination-rule-all.yaml",
                  REPO / "e2e/bookinfo/networking/virtual-service-all-v1.yaml"]
CLIENT_POD, SERVER_POD = "productpage-v1", "reviews-v1"
MESH_STRICT = ("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n"
               "metadata: {name: default, namespace: istio-system}\nspec: {mtls: {mode: STRICT}}\n")
# the baseline's plain namespaces, on the mesh's bridge (named with the mesh's prefix, so `down` removes them)
BENCH_SERVER_IP, BENCH_CLIENT_IP = "10.77.0.240", "10.77.0.241"
RATE, CONNECTIONS = 1000, 16
FLIPS, POLL_SECONDS = 10, 0.02
ISTIO_P90_ADDED_MS = 2.65           # two Envoy sidecars, 1,000 req/s (Istio 1.12-1.15)
ISTIO_VCPU_PER_1000_RPS = 0.35      # one Envoy sidecar (same pages)
ISTIO_MB_PER_PROXY = 40             # "40 MB memory per 1000 requests per second" (same pages; under load)
PILOT_DEBOUNCE_MS = 100             # istiod's PILOT_DEBOUNCE_AFTER default
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- processes of a pod ------------------------------------------------------------------------------------
def pod_processes(ns: str) -> dict[str, list[int]]:
    """The sidecar's processes in namespace `ns`: the agent, and APISIX's nginx processes (they rename
    themselves "nginx: master process …", "nginx: worker process", "nginx: privileged agent process")."""
    out: dict[str, list[int]] = {"agent": [], "apisix": []}
    for pid in netns.pids_in([ns]):
        argv = cmdline(pid).decode(errors="replace").split("\0")
        if argv[0].startswith("nginx:"):
            out["apisix"].append(pid)
        elif any(a.endswith("amesh-agent") for a in argv[:2]):
            out["agent"].append(pid)
    return out


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # gone meanwhile
        return b""


def shutting_down(ns: str) -> int:
    """nginx processes of a reload still finishing ("nginx: worker process is shutting down")."""
    return sum(1 for pid in netns.pids_in([ns]) if b"shutting down" in cmdline(pid))


def wait_settled(prefix: str, pods: list[str], timeout: float = 30.0) -> None:
    """Until no APISIX is in the middle of a reload (its old workers would be counted, and freed soon)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(shutting_down(mesh_mod.namespace(prefix, p)) for p in pods):
        time.sleep(0.5)


def memory_kb(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in kB from smaps_rollup."""
    fields = {}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in ("Rss", "Pss"):
                fields[name] = int(rest.split()[0])
    except OSError:
        return 0, 0
    return fields.get("Rss", 0), fields.get("Pss", 0)


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of `pids` (the nginx processes: workers do the proxying)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


# -- the baseline ------------------------------------------------------------------------------------------
def start_baseline(workdir: Path, prefix: str) -> tuple[str, str]:
    """A plain server namespace running the pods' echo app, and a plain client namespace, on the bridge."""
    mesh = topology.bookinfo()
    bridge = mesh_mod.namespace(prefix, "net")
    server, client = mesh_mod.namespace(prefix, "bench-server"), mesh_mod.namespace(prefix, "bench-client")
    for name, ip in ((server, BENCH_SERVER_IP), (client, BENCH_CLIENT_IP)):
        netns.create(name)
        netns.attach(bridge, name, ip, mesh.prefixlen, mesh.bridge_ip)
    # the very app (and user) the pods run; a private helper of localmesh.mesh, so it stays identical
    mesh_mod._start_app(server, "reviews", "v1", "bench-server", workdir, http=[9080])
    for _ in range(100):
        if http_request(client, BENCH_SERVER_IP, 9080, "reviews:9080", timeout=1).status == 200:
            return server, client
        time.sleep(0.1)
    raise RuntimeError("the baseline echo app did not answer")


def tw_reuse(ns: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w", "net.ipv4.tcp_tw_reuse=1"], check=True)


# -- load generators ---------------------------------------------------------------------------------------
def hey_paced(ns: str, url: str, seconds: int, keepalive: bool) -> dict:
    """`hey` at RATE req/s over CONNECTIONS connections; percentiles from its per-request CSV."""
    argv = ["ip", "netns", "exec", ns, "hey", "-z", f"{seconds}s", "-c", str(CONNECTIONS),
            "-q", f"{RATE / CONNECTIONS:g}", "-o", "csv", url]
    if not keepalive:
        argv.insert(-1, "-disable-keepalive")
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    if not rows:
        raise RuntimeError(f"hey gave no figures for {url}: {done.stderr[-500:]}")
    # the achieved rate over hey's own clock (offset = when each request started), not its start-up
    elapsed = max(float(r["offset"]) + float(r["response-time"]) for r in rows)
    times = sorted(float(r["response-time"]) * 1000 for r in rows)
    bad = sum(1 for r in rows if r["status-code"] != "200")
    return {"requests": len(rows), "errors": bad, "rps": len(rows) / elapsed,
            "p50": pct(times, 50), "p90": pct(times, 90), "p99": pct(times, 99)}


def wrk_unpaced(ns: str, url: str, seconds: int, keepalive: bool) -> dict:
    argv = ["ip", "netns", "exec", ns, "wrk", "-t2", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency", url]
    if not keepalive:
        argv[6:6] = ["-H", "Connection: close"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    out = done.stdout + done.stderr
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    if not found or not total:
        raise RuntimeError(f"wrk gave no figures for {url}:\n{out}")
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {"rps": float(found.group(1)), "requests": int(total.group(1)),
            "errors": int(bad.group(1)) if bad else 0, "socket_errors": errors.group(1) if errors else None}


def median_by(runs: list[dict], key: str) -> dict:
    return sorted(runs, key=lambda r: r[key])[len(runs) // 2]


def pct(sorted_values: list[float], q: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(q / 100 * len(sorted_values)) - 1))
    return sorted_values[index]


# -- 1. data path ------------------------------------------------------------------------------------------
def data_path(prefix: str, client: str, seconds: int, repeat: int) -> dict:
    pod_ns = mesh_mod.namespace(prefix, CLIENT_POD)
    sidecars = {pod: pod_processes(mesh_mod.namespace(prefix, pod))["apisix"] for pod in (CLIENT_POD, SERVER_POD)}
    workers = sum(1 for pid in sidecars[CLIENT_POD]
                  if cmdline(pid).rstrip(b" \0") == b"nginx: worker process")
    paths = {"mesh": (pod_ns, "http://reviews:9080/"), "direct": (client, f"http://{BENCH_SERVER_IP}:9080/")}
    out: dict = {"workers_per_sidecar": workers, "rate": RATE, "connections": CONNECTIONS, "repeat": repeat}
    for keepalive in (True, False):
        mode = "keepalive" if keepalive else "per_connection"
        runs: dict = {name: {"paced": [], "unpaced": []} for name in paths}
        for name, (ns, url) in paths.items():
            hey_paced(ns, url, 1, keepalive)  # warm-up: connection pools, Lua code caches, the app's threads
        # mesh and direct alternate, so a burst of load from elsewhere on the host hits both alike
        for attempt in range(repeat):
            for name, (ns, url) in paths.items():
                log(f"  {mode} {name} {attempt + 1}/{repeat}")
                before = {pod: cpu_seconds(p) for pod, p in sidecars.items()}
                paced = hey_paced(ns, url, seconds, keepalive)
                if name == "mesh":  # vCPU of each sidecar per 1,000 req/s at the fixed rate
                    paced["vcpu_per_1000_rps"] = {pod: (cpu_seconds(p) - before[pod]) / seconds / (paced["rps"] / 1000)
                                                  for pod, p in sidecars.items()}
                runs[name]["paced"].append(paced)
                before = {pod: cpu_seconds(p) for pod, p in sidecars.items()}
                unpaced = wrk_unpaced(ns, url, seconds, keepalive)
                if name == "mesh":  # requests per APISIX CPU-second: one worker's capacity on a core of its own
                    unpaced["rps_per_apisix_cpu"] = {pod: unpaced["requests"] / max(cpu_seconds(p) - before[pod], 1e-9)
                                                     for pod, p in sidecars.items()}
                    unpaced["rps_per_worker"] = unpaced["rps"] / workers
                runs[name]["unpaced"].append(unpaced)
        # the median run (by p90, by req/s): one run on a shared 2-CPU host is not a figure
        row: dict = {name: {"paced": median_by(r["paced"], "p90"), "unpaced": median_by(r["unpaced"], "rps"),
                            "paced_p90_runs": [x["p90"] for x in r["paced"]]} for name, r in runs.items()}
        row["added_ms"] = {q: row["mesh"]["paced"][q] - row["direct"]["paced"][q] for q in ("p50", "p90", "p99")}
        row["ratio_p90"] = row["mesh"]["paced"]["p90"] / row["direct"]["paced"]["p90"]
        out[mode] = row
    return out


def handshakes(workdir: Path, prefix: str, client: str, seconds: int) -> dict:
    """Full mTLS handshakes per second against reviews-v1's inbound TLS listener, and per APISIX CPU-second."""
    from localmesh import ca

    chain, key = ca.issue_workload(workdir / "istio" / "cacerts", "spiffe://cluster.local/ns/default/sa/bench")
    files = workdir / "bench-client-cert"
    files.mkdir(exist_ok=True)
    (files / "chain.pem").write_bytes(chain)
    (files / "key.pem").write_bytes(key)
    server = pod_processes(mesh_mod.namespace(prefix, SERVER_POD))["apisix"]
    workers = sum(1 for pid in server if cmdline(pid).rstrip(b" \0") == b"nginx: worker process")
    address = topology.bookinfo().workload(SERVER_POD).ip
    before = cpu_seconds(server)
    out = subprocess.run(["ip", "netns", "exec", client, "openssl", "s_time", "-connect", f"{address}:9080", "-new",
                          "-time", str(seconds), "-cert", str(files / "chain.pem"), "-key", str(files / "key.pem"),
                          "-CAfile", str(workdir / "istio" / "cacerts" / "root-cert.pem")],
                         capture_output=True, text=True, timeout=seconds + 60)
    used = cpu_seconds(server) - before
    found = re.search(r"(\d+) connections in ([\d.]+)s", out.stdout)
    if out.returncode or not found:
        raise RuntimeError(f"openssl s_time failed ({out.returncode}): {out.stdout[-500:]} {out.stderr[-500:]}")
    count, elapsed = int(found.group(1)), float(found.group(2))
    return {"connections": count, "per_second": count / elapsed, "apisix_cpu_s": used, "workers": workers,
            "per_apisix_cpu_second": count / max(used, 1e-9)}


TCP_EXCHANGES = r"""
import json, socket, sys, time
host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
times, errors = [], 0
end = time.monotonic() + seconds
while time.monotonic() < end:
    start = time.monotonic()
    try:
        with socket.create_connection((host, port), timeout=5) as conn:
            conn.sendall(b"ping\n")
            reply = b""
            while not reply.endswith(b"\n"):
                chunk = conn.recv(100)
                if not chunk:
                    raise OSError("closed")
                reply += chunk
        times.append((time.monotonic() - start) * 1000)
    except OSError:
        errors += 1
print(json.dumps({"times_ms": times, "errors": errors}))
"""


def tcp_exchanges(prefix: str, seconds: int) -> dict:
    """A TCP service through two sidecars: from productpage-v1 to mongodb:27017 (its VIP), one line and its
    echo per connection, back to back for `seconds` -- under mTLS each connection is a new Istio mTLS
    handshake (TCP hops are not pooled) through the client sidecar's TLS origin server. Latency
    percentiles, exchanges per second and the client sidecar's APISIX CPU per exchange."""
    client_ns = mesh_mod.namespace(prefix, CLIENT_POD)
    sidecar = pod_processes(client_ns)["apisix"]
    vip = topology.bookinfo().service("mongodb").vip
    before = cpu_seconds(sidecar)
    out = subprocess.run(["ip", "netns", "exec", client_ns, sys.executable, "-c", TCP_EXCHANGES, vip, "27017",
                          str(seconds)], capture_output=True, text=True, timeout=seconds + 60)
    used = cpu_seconds(sidecar) - before
    if out.returncode:
        raise RuntimeError(f"TCP exchanges failed: {out.stderr[-500:]}")
    found = json.loads(out.stdout)
    times = sorted(found["times_ms"])
    if not times:
        raise RuntimeError(f"no TCP exchange succeeded ({found['errors']} errors)")
    return {"exchanges": len(times), "errors": found["errors"], "per_second": len(times) / seconds,
            "p50": pct(times, 50), "p90": pct(times, 90), "p99": pct(times, 99),
            "client_apisix_cpu_ms_per_exchange": used * 1000 / len(times)}


# -- 2. configuration change -------------------------------------------------------------------------------
def reviews_vs(subset: str) -> dict:
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "reviews", "namespace": topology.NAMESPACE},
            "spec": {"hosts": ["reviews"],
                     "http": [{"route": [{"destination": {"host": "reviews", "subset": subset}}]}]}}


def answered_version(ns: str, vip: str) -> str | None:
    response = http_request(ns, vip, 9080, "reviews:9080", timeout=1)
    body = response.json() if response.status == 200 else None
    return body.get("version") if body else None


def wait_pinned(ns: str, timeout: float = 15.0) -> None:
    """Until reviews answers v1 five times in a row (file mode: APISIX may take its next 1 s poll)."""
    vip, streak = topology.bookinfo().service("reviews").vip, 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and streak < 5:
        streak = streak + 1 if answered_version(ns, vip) == "v1" else 0
        time.sleep(0.05)
    if streak < 5:
        raise RuntimeError(f"reviews is not pinned to v1 {timeout:.0f} s after applying Bookinfo's rules")


def log_time(line: str) -> float:
    """istiod's log stamp ("2026-12-03T03:55:24.538659Z\t…") as a wall-clock time."""
    stamp = line.split("\t", 1)[0].rstrip("Z")
    return datetime.fromisoformat(stamp[:26]).replace(tzinfo=timezone.utc).timestamp()


def istiod_marks(log_file: Path, offset: int) -> tuple[float | None, float | None]:
    """(reload triggered, first push to productpage-v1) after `offset` of istiod's log."""
    with open(log_file, "rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    reload = push = None
    for line in text.splitlines():
        if reload is None and "Triggering reload of file configuration" in line:
            reload = log_time(line)
        elif reload is not None and f"PUSH for node:{CLIENT_POD}." in line:
            push = log_time(line)
            break
    return reload, push


def one_flip(workdir: Path, state: dict, subset: str) -> dict:
    """Write reviews' VirtualService routing to `subset` as `amesh-mesh apply` does (tmp file, rename),
    poll from productpage-v1 until `subset` answers, then wait until every sidecar has converged."""
    paths = mesh_mod.Paths(workdir)
    ns = mesh_mod.namespace(state["prefix"], CLIENT_POD)
    vip = topology.bookinfo().service("reviews").vip
    obj = reviews_vs(subset)
    target = mesh_mod._object_file(paths, obj)  # the name `apply` gives it, so it replaces the applied one
    tmp = target.with_name("." + target.name + ".tmp")
    log_file = Path(state["processes"]["istiod"]["log"])
    offset = log_file.stat().st_size
    started = time.time()
    tmp.write_text(yaml.safe_dump(obj, sort_keys=False))
    tmp.replace(target)
    deadline = started + 15
    served = None
    while time.time() < deadline:
        if answered_version(ns, vip) == subset:
            served = time.time()
            break
        time.sleep(POLL_SECONDS)
    if served is None:
        raise RuntimeError(f"reviews {subset} did not serve within 15 s of the write")
    mesh_mod.wait_converged(workdir, state, since=started, timeout=15)  # settle before the next flip
    reload, push = istiod_marks(log_file, offset)
    return {"total_ms": (served - started) * 1000,
            "istiod_detect_ms": (reload - started) * 1000 if reload else None,
            "istiod_push_ms": (push - started) * 1000 if push else None}


def config_change(workdir: Path, state: dict, mode: str) -> dict:
    flips = [one_flip(workdir, state, "v2" if i % 2 == 0 else "v1") for i in range(FLIPS)]
    median = lambda key: statistics.median(f[key] for f in flips if f[key] is not None)  # noqa: E731
    total, istiod_ms = median("total_ms"), median("istiod_push_ms")
    sidecar = statistics.median(f["total_ms"] - f["istiod_push_ms"] for f in flips if f["istiod_push_ms"])
    # targets: 1.5x APISIX's own apply (~100 ms via the Admin API; ~1 s poll of apisix.yaml), plus the debounce
    sidecar_target = 150 if mode == "api" else 1500
    total_target = sidecar_target + PILOT_DEBOUNCE_MS if mode == "api" else 1500
    return {"flips": flips, "median_ms": total, "min_ms": min(f["total_ms"] for f in flips),
            "max_ms": max(f["total_ms"] for f in flips), "istiod_detect_ms": median("istiod_detect_ms"),
            "istiod_push_ms": istiod_ms, "sidecar_ms": sidecar, "target_total_ms": total_target,
            "target_sidecar_ms": sidecar_target}


# -- 3. memory ---------------------------------------------------------------------------------------------
def memory(prefix: str, pods: list[str]) -> dict:
    out = {}
    for pod in pods:
        found = pod_processes(mesh_mod.namespace(prefix, pod))
        row = {}
        for what, pids in found.items():
            sizes = [memory_kb(p) for p in pids]
            row[what] = {"processes": len(pids), "rss_mb": sum(s[0] for s in sizes) / 1024,
                         "pss_mb": sum(s[1] for s in sizes) / 1024}
        row["rss_mb"] = row["agent"]["rss_mb"] + row["apisix"]["rss_mb"]
        row["pss_mb"] = row["agent"]["pss_mb"] + row["apisix"]["pss_mb"]
        out[pod] = row
    return out


# -- one mesh ----------------------------------------------------------------------------------------------
def run_mode(mode: str, workdir: Path, seconds: int, repeat: int, mtls: bool = False) -> dict:
    workdir = workdir.resolve()
    if mesh_mod.Paths(workdir).state.exists() or netns.listed(mesh_mod.prefix_for(workdir)):
        raise SystemExit(f"a mesh is already up in {workdir}: amesh-mesh down --workdir {workdir}, or pass "
                         "another --workdir (this benchmark only uses a mesh it brought up itself)")
    try:
        log(f"{mode}: mesh up in {workdir}")
        state = mesh_mod.up(workdir, apisix_mode=mode, mtls=mtls, log=lambda m: None)
        rules = list(BOOKINFO_RULES)
        if mtls:
            strict = workdir / "bench-strict.yaml"
            strict.write_text(MESH_STRICT)
            rules.append(strict)
        mesh_mod.apply(workdir, rules)
        state = mesh_mod.load_state(workdir)
        # the host is shared: its load says how much of the figures is other people's CPU
        result: dict = {"apisix_mode": mode, "transport": "mtls" if mtls else "plaintext", "cpus": os.cpu_count(),
                        "loadavg_start": os.getloadavg()[0]}
        log(f"{mode}: memory after sync")
        wait_settled(state["prefix"], state["pods"])
        result["memory"] = memory(state["prefix"], state["pods"])
        pod_ns = mesh_mod.namespace(state["prefix"], CLIENT_POD)
        wait_pinned(pod_ns)
        _, client = start_baseline(workdir, state["prefix"])
        for ns in (pod_ns, client):
            tw_reuse(ns)
        log(f"{mode}: data path ({seconds} s per run)")
        result["data_path"] = data_path(state["prefix"], client, seconds, repeat)
        log(f"{mode}: TCP service, one exchange per connection ({seconds} s)")
        result["tcp"] = tcp_exchanges(state["prefix"], seconds)
        log(f"{mode}: configuration change ({FLIPS} flips)")
        result["config_change"] = config_change(workdir, state, mode)
        if mtls:
            log(f"{mode}: mTLS handshakes ({seconds} s)")
            result["handshakes"] = handshakes(workdir, state["prefix"], client, seconds)
        result["loadavg_end"] = os.getloadavg()[0]
        return result
    finally:
        log(f"{mode}: mesh down")
        mesh_mod.down(workdir)


# -- output ------------------------------------------------------------------------------------------------
def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def versus(ok: bool) -> str:
    """For Istio's published Envoy figures: a comparison, not a target of this project."""
    return "better than Envoy" if ok else "worse than Envoy"


def table(results: list[dict]) -> str:
    lines = []
    for r in results:
        mode, dp, cc, mem = r["apisix_mode"], r["data_path"], r["config_change"], r["memory"]
        lines.append(f"== APISIX {mode} mode, {r.get('transport', 'plaintext')} between the sidecars; "
                     f"{dp['workers_per_sidecar']} workers per sidecar; "
                     f"paced {dp['rate']} req/s over {dp['connections']} connections; median of {dp['repeat']} runs; "
                     f"host load average {r['loadavg_start']:.1f} -> {r['loadavg_end']:.1f} on {r['cpus']} CPUs")
        lines.append(f"{'measure':58} {'value':>26}  {'target':>22}  verdict")
        for kind in ("keepalive", "per_connection"):
            row, label = dp[kind], "keep-alive" if kind == "keepalive" else "1 req/conn"
            m, d = row["mesh"]["paced"], row["direct"]["paced"]
            lines.append(f"{label}: direct p50/p90/p99 ms{'':30} {d['p50']:6.2f} {d['p90']:6.2f} {d['p99']:6.2f}"
                         f"  ({d['rps']:,.0f} req/s, {d['errors']} errors)")
            lines.append(f"{label}: two sidecars p50/p90/p99 ms{'':24} {m['p50']:6.2f} {m['p90']:6.2f} {m['p99']:6.2f}"
                         f"  ({m['rps']:,.0f} req/s, {m['errors']} errors)")
            a = row["added_ms"]
            target = ISTIO_P90_ADDED_MS
            lines.append(f"{label}: added p50/p90/p99 ms (p90 ratio {row['ratio_p90']:.1f}x direct){'':6} "
                         f"{a['p50']:6.2f} {a['p90']:6.2f} {a['p99']:6.2f}  {'p90 <= %.2f' % target:>22}  "
                         f"{verdict(a['p90'] <= target)}")
            v = m["vcpu_per_1000_rps"]
            lines.append(f"{label}: APISIX vCPU per 1,000 req/s (outbound/inbound){'':11} "
                         f"{v[CLIENT_POD]:13.2f} {v[SERVER_POD]:6.2f}  "
                         f"{'ref Envoy %.2f' % ISTIO_VCPU_PER_1000_RPS:>22}  "
                         f"{versus(max(v.values()) <= ISTIO_VCPU_PER_1000_RPS)}")
            mu, du = row["mesh"]["unpaced"], row["direct"]["unpaced"]
            lines.append(f"{label}: unpaced req/s direct / two sidecars{'':19} {du['rps']:13,.0f} {mu['rps']:6,.0f}")
            c = mu["rps_per_apisix_cpu"]
            lines.append(f"{label}: req/s per APISIX worker (unpaced / per CPU-s out,in) "
                         f"{mu['rps_per_worker']:6,.0f} {c[CLIENT_POD]:6,.0f} {c[SERVER_POD]:6,.0f}  "
                         f"{'ref Envoy %.0f/CPU-s' % (1000 / ISTIO_VCPU_PER_1000_RPS):>22}  "
                         f"{versus(min(c.values()) >= 1000 / ISTIO_VCPU_PER_1000_RPS)}")
        if "tcp" in r:
            t = r["tcp"]
            lines.append(f"TCP service, 1 exchange/conn, two sidecars: p50/p90/p99 ms{'':6} "
                         f"{t['p50']:6.2f} {t['p90']:6.2f} {t['p99']:6.2f}  ({t['per_second']:,.0f}/s, "
                         f"{t['errors']} errors, client APISIX {t['client_apisix_cpu_ms_per_exchange']:.2f} CPU-ms each)")
        if "handshakes" in r:
            h = r["handshakes"]
            lines.append(f"mTLS handshakes into one sidecar (openssl s_time -new): per s / per APISIX CPU-s "
                         f"{h['per_second']:6,.0f} {h['per_apisix_cpu_second']:6,.0f}  ({h['workers']} workers)")
        lines.append(f"config change, write -> new version serves: median ms (min-max){'':2} "
                     f"{cc['median_ms']:6.0f} ({cc['min_ms']:.0f}-{cc['max_ms']:.0f})"
                     f"  {'<= %d' % cc['target_total_ms']:>22}  {verdict(cc['median_ms'] <= cc['target_total_ms'])}")
        lines.append(f"  of which istiod: detect / pushed (debounce {PILOT_DEBOUNCE_MS} ms){'':14} "
                     f"{cc['istiod_detect_ms']:6.0f} {cc['istiod_push_ms']:6.0f}")
        lines.append(f"  of which the sidecar (push -> serving: agent + APISIX){'':5} {cc['sidecar_ms']:6.0f}"
                     f"  {'<= %d' % cc['target_sidecar_ms']:>22}  "
                     f"{verdict(cc['sidecar_ms'] <= cc['target_sidecar_ms'])}")
        lines.append(f"memory after sync, MB: {'pod':16} {'agent RSS/PSS':>15} {'APISIX RSS/PSS (n)':>22} "
                     f"{'pod RSS/PSS':>15}")
        for pod, row in mem.items():
            ag, ap = row["agent"], row["apisix"]
            lines.append(f"{'':23}{pod:16} {ag['rss_mb']:7.1f} {ag['pss_mb']:7.1f} "
                         f"{ap['rss_mb']:9.1f} {ap['pss_mb']:7.1f} "
                         f"({ap['processes']}) {row['rss_mb']:7.1f} {row['pss_mb']:7.1f}")
        rss = sum(row["rss_mb"] for row in mem.values())
        pss = sum(row["pss_mb"] for row in mem.values())
        lines.append(f"{'':23}{'total (%d pods)' % len(mem):16} {'':41} {rss:7.1f} {pss:7.1f}")
        lines.append(f"{'':23}{'per pod (PSS)':16} {'':41} {'':7} {pss / len(mem):7.1f}  "
                     f"{'ref Envoy %d MB' % ISTIO_MB_PER_PROXY:>22}  {versus(pss / len(mem) <= ISTIO_MB_PER_PROXY)}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--apisix-mode", choices=["file", "api"], default="file", help="one mode")
    parser.add_argument("--modes", help="comma-separated modes, one mesh each in turn (e.g. file,api)")
    parser.add_argument("--transports", default="plaintext",
                        help="comma-separated: plaintext and/or mtls (Istio mTLS between the sidecars, STRICT)")
    parser.add_argument("--seconds", type=int, default=5, help="per load run (default 5)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per data-path figure, median taken (default 3)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/amesh-bench-mesh"))
    parser.add_argument("--json", action="store_true", help="one JSON document instead of the table")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: the mesh is network namespaces and iptables")
    missing = [tool for tool in ("hey", "wrk") if shutil.which(tool) is None]
    if missing:
        raise SystemExit(f"{' and '.join(missing)} not found: apt-get install hey wrk")
    modes = args.modes.split(",") if args.modes else [args.apisix_mode]
    if any(m not in ("file", "api") for m in modes):
        raise SystemExit(f"--modes: file and/or api, not {args.modes}")
    transports = args.transports.split(",")
    if any(t not in ("plaintext", "mtls") for t in transports):
        raise SystemExit(f"--transports: plaintext and/or mtls, not {args.transports}")
    results, failed = [], []
    for mode in modes:  # a failed run (its mesh already down) does not lose the others' figures
        for transport in transports:
            try:
                results.append(run_mode(mode, args.workdir, args.seconds, args.repeat, mtls=transport == "mtls"))
            except Exception as exc:  # noqa: BLE001 - reported, and the exit status says so
                log(f"{mode}/{transport}: FAILED: {type(exc).__name__}: {exc}")
                failed.append({"apisix_mode": mode, "transport": transport, "error": f"{type(exc).__name__}: {exc}"})
    print(json.dumps(results + failed, indent=1) if args.json else table(results))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
