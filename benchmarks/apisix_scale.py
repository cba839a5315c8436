"""APISIX at 10,000 services (issue 12): the real APISIX 3.18 loading the agent's document.

    sudo .venv/bin/python benchmarks/apisix_scale.py [--services 1000,10000] [--modes file,api,file-yaml]
        [--variants as-is,per-service-regex,no-regex,no-hosts] [--changes 3] [--standalone-dict-mb 256] [--json]

Needs root (network namespaces), /usr/local/apisix and `ip netns`. For each size, the synthetic mesh of
benchmarks/translate.py (``istiogen.synthetic_mesh(n)``: 10 endpoints, 2 subsets and a VirtualService per
service) is translated once with the agent's ``Translator``; config.yaml is ``render_yaml(ApisixSettings(...),
translator.data_path_settings)`` with the agent's defaults (2 workers). Each (mode, size, variant) then runs
in a fresh APISIX: a private prefix inside a network namespace of its own with a unique name
(tests/realapisix.py), stopped by PID, prefix and namespace removed afterwards (also on Ctrl-C / SIGTERM);
workers still busy in Lua after the master is gone are killed by PID. A run that fails (a PUT refused, a
document not serving within --timeout) is a row saying so; the next runs go on.

Two probe routes are added to the document, shaped like the translated outbound routes (``hosts``, the
``amesh_direction == outbound`` and ``original_dst_port == 9080`` vars the Lua hook sets on the internal
listener of port 9080, the ``http_host`` regex var) and answering by themselves (serverless-pre-function):
``probe`` answers a generation marker, ``steady`` always the same. Requests go straight to the internal
HTTP listener from a thread that entered the namespace (setns), each on a fresh connection.

Figures:
* load: APISIX started empty; the full document pushed the agent's way (API: one ``PUT /apisix/admin/configs``
  with the admin_api sink's body; file: sink/file.py's atomic apisix.yaml write); the time from the start of
  the PUT / the rename until the probe answers the new marker on ``--confirm`` fresh connections in a row
  (both workers, most likely: a worker builds its router on its first request after a change). The agent's
  own serialisation (JSON body / YAML text) is timed apart, before.
* memory: RSS and PSS of each worker (and the privileged agent) from /proc/<pid>/smaps_rollup after load.
* recheck (API mode): the agent asks every few seconds whether APISIX still holds its push
  (``AdminApiSink.holds_last``): a HEAD, answered by the hook from stored metadata; the GET it used before
  (APISIX decodes, encodes and sends the whole configuration) is timed beside it.
* change: ``--changes`` times the full document again with one route changed (the probe's marker): time
  from the PUT / rename to the changed route serving; meanwhile an open-loop paced stream (``--rate``
  requests/s, each on a fresh connection from its own thread, 10 s timeout, latency counted from the scheduled
  send time) hits ``steady`` from 1 s before the push until 2 s after the change serves: p50 / p99 / max
  latency and failed requests (not 200 with the right body, or an error / timeout).
* variants: ``as-is`` the agent's document (one ``http_host`` regex per port on Istio-shaped routes);
  ``per-service-regex`` the shape before issue 12 (each such route with the regex of its own names, see
  ``variant``), for before/after in one run; ``one-host`` one name per route (diagnostic: as if the Host
  were mapped to one canonical name first); ``no-regex`` without the host regex
  and ``no-hosts`` without ``hosts`` (both diagnostic: not the same routing).
* modes: ``api``, ``file`` (the agent's conf/apisix.json, ``config_provider: json``) and ``file-yaml``
  (``config_provider: yaml`` reading conf/apisix.yaml, what the agent wrote before; for comparison).
  ``--standalone-dict-mb`` sizes API mode's ``standalone-config`` shared dict otherwise than the agent does
  (``ApisixSettings.config_dict_mb``, 256m; APISIX's own 10m is too small for ~1,500 services and more: the PUT
  then answers 500).

Targets (issue 12): 10,000 services applied in <= 2 s in API mode; no request failing during a change.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import gc
import http.client
import json
import os
import resource
import signal
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sidecar_agent.apisix import config as apisix_config  # noqa: E402
from sidecar_agent.apisix.datapath import Direction, internal_ports  # noqa: E402
from sidecar_agent.sink import admin_api  # noqa: E402
from sidecar_agent.sink.file import FileSink, render as render_file  # noqa: E402

import yaml  # noqa: E402

import issue_rows  # noqa: E402  (beside this script)

GOAL_API_LOAD_S = 2.0
PORT = 9080  # the synthetic mesh's HTTP service port
PROBE_HOST = "amesh-bench-probe.mesh.svc.cluster.local"
STEADY_HOST = "amesh-bench-steady.mesh.svc.cluster.local"
ADMIN_KEY = "amesh-bench-admin-key-0123456789"


# --- the document -----------------------------------------------------------------------------------

def translate_mesh(n: int) -> tuple[dict, object, float]:
    from amesh_testing import istiogen
    from sidecar_agent.configdump import XdsResources
    from sidecar_agent.translate import Translator

    xds = istiogen.synthetic_mesh(n, endpoints=10, subsets=2)
    resources = XdsResources(listeners={m.name: m for m in xds.listeners},
                             route_configs={m.name: m for m in xds.route_configs},
                             clusters={m.name: m for m in xds.clusters},
                             endpoints={m.cluster_name: m for m in xds.endpoints})
    started = time.perf_counter()
    translator = Translator().load(resources)
    document = translator.document()
    elapsed = time.perf_counter() - started
    return document, translator.data_path_settings, elapsed


def probe_route(rid: str, host: str, marker: str, regex: bool, per_service: bool = False,
                hosts: bool = True) -> dict:
    """A route shaped as the translator shapes an outbound one of PORT (`per_service`: as it did before)."""
    from sidecar_agent.translate.route import host_condition

    answer = ("return function(conf, ctx) require('apisix.core').response.exit(200, "
              + json.dumps(marker) + ") end")
    route_vars = [["amesh_direction", "==", "outbound"], ["original_dst_port", "==", PORT]]
    if regex:
        _, host_vars = host_condition([host, f"{host}:{PORT}"], False, None if per_service else PORT)
        route_vars += [list(v) for v in host_vars]
    return {"id": rid, "name": f"{PORT}/{host}:{PORT}/bench", "priority": 400000003, "uris": ["/*"],
            **({"hosts": [host]} if hosts else {}), "vars": route_vars,
            "plugins": {"serverless-pre-function": {"phase": "access", "functions": [answer]}}}


def is_host_regex(item) -> bool:
    return isinstance(item, list) and len(item) == 3 and item[0] == "http_host" and item[1] in ("~~", "~*")


def variant(document: dict, name: str) -> dict:
    if name == "as-is":
        return document
    if name == "no-regex":
        routes = []
        for route in document["routes"]:
            kept = [v for v in route.get("vars", ()) if not is_host_regex(v)]
            if len(kept) != len(route.get("vars", ())):
                route = dict(route, vars=kept)
            routes.append(route)
        return dict(document, routes=routes)
    if name == "per-service-regex":
        # The shape before issue 12's change: each Istio-shaped route (`hosts` + one port) gets the regex of
        # its own names (host_condition without the port) instead of the one its port shares.
        from sidecar_agent.translate.route import host_condition, port_host_regex

        routes = []
        for route in document["routes"]:
            route_vars = route.get("vars", ())
            ports = [v[2] for v in route_vars if isinstance(v, list) and v[:2] == ["original_dst_port", "=="]]
            shared = list(port_host_regex(ports[0])) if len(ports) == 1 else None
            if route.get("hosts") and shared in route_vars:
                _, own = host_condition([d for h in route["hosts"] for d in (h, f"{h}:{ports[0]}")], False)
                route = dict(route, vars=[list(own[0]) if v == shared else v for v in route_vars])
            routes.append(route)
        return dict(document, routes=routes)
    if name == "one-host":
        # diagnostic: one name per route instead of Istio's six (the FQDN), as if the Host were mapped to a
        # canonical name before routing: how much of the cost is radixtree_host_uri's sub-router per name
        return dict(document, routes=[dict(r, hosts=[max(r["hosts"], key=len)]) if r.get("hosts") else r
                                      for r in document["routes"]])
    if name == "no-hosts":
        # diagnostic: no `hosts` pre-filter (the per-route regex still decides the host exactly), so
        # radixtree_host_uri builds no per-host sub-router; every request then scans the routes of its uri
        return dict(document, routes=[{k: v for k, v in r.items() if k != "hosts"} for r in document["routes"]])
    raise SystemExit(f"unknown variant {name!r} (as-is, per-service-regex, no-regex, one-host, no-hosts)")


def with_probes(document: dict, marker: str, regex: bool, per_service: bool = False, hosts: bool = True) -> dict:
    return dict(document, routes=[*document["routes"],
                                  probe_route("bench-probe", PROBE_HOST, marker, regex, per_service, hosts),
                                  probe_route("bench-steady", STEADY_HOST, "steady", regex, per_service, hosts)])


def shape(document: dict) -> dict:
    routes = document["routes"]
    return {"routes": len(routes), "upstreams": len(document["upstreams"]),
            "stream_routes": len(document.get("stream_routes", ())),
            "regex_vars": sum(1 for r in routes for v in r.get("vars", ()) if is_host_regex(v)),
            "distinct_regexes": len({v[2] for r in routes for v in r.get("vars", ()) if is_host_regex(v)}),
            "hosts": sum(len(r.get("hosts", ())) for r in routes),
            "nodes": sum(len(u.get("nodes", ())) for u in document["upstreams"])}


# --- reaching APISIX inside its namespace -------------------------------------------------------------

def request(port: int, host: str, timeout: float = 10.0) -> tuple[int, bytes]:
    """One GET on a fresh connection (the calling thread must be in the namespace)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/", headers={"Host": host})
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


LAST: dict = {}


def serves(port: int, host: str, marker: str) -> bool:
    try:
        status, body = request(port, host, timeout=10)
    except (OSError, http.client.HTTPException) as exc:
        LAST["answer"] = repr(exc)
        return False
    LAST["answer"] = (status, body[:200])
    return status == 200 and body == marker.encode()


def wait_serving(port: int, host: str, marker: str, confirm: int, timeout: float,
                 stopping: threading.Event) -> float:
    """Seconds (monotonic clock) at which `marker` was first served, once seen `confirm` times in a row."""
    deadline = time.monotonic() + timeout
    first = None
    streak = 0
    while time.monotonic() < deadline and not stopping.is_set():
        if serves(port, host, marker):
            if streak == 0:
                first = time.monotonic()
            streak += 1
            if streak >= confirm:
                return first
        else:
            streak = 0
            time.sleep(0.01)
    raise TimeoutError(f"{host} did not serve {marker!r} within {timeout} s (last answer {LAST.get('answer')})")


def admin_seconds(port: int, method: str) -> float:
    """Seconds one Admin API call on the configuration takes, answer read (in the namespace)."""
    started = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    connection.request(method, admin_api.CONFIGS_PATH, headers={"X-API-KEY": ADMIN_KEY})
    answer = connection.getresponse()
    answer.read()
    connection.close()
    if answer.status != 200:
        raise RuntimeError(f"{method} answered {answer.status}")
    return time.perf_counter() - started


def put_config(body: bytes, digest: str, timeout: float = 120.0) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", 9180, timeout=timeout)
    try:
        conn.request("PUT", admin_api.CONFIGS_PATH, body=body,
                     headers={"X-API-KEY": ADMIN_KEY, "X-Digest": digest, "Content-Type": "application/json"})
        answer = conn.getresponse()
        return answer.status, answer.read().decode(errors="replace")[:300]
    finally:
        conn.close()


class Stream:
    """An open-loop paced stream of GETs to the `steady` route, each on a fresh connection from its own thread
    in the namespace (a slow answer does not hold back the next request: up to 500 in flight)."""

    def __init__(self, ns: str, port: int, rate: float) -> None:
        self.ns, self.port, self.interval = ns, port, 1.0 / rate
        self.samples: list[tuple[float, float, bool]] = []  # (sent at, seconds, ok)
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _one(self, scheduled: float) -> None:
        from tests.realapisix import _enter

        try:
            _enter(self.ns)
            status, body = request(self.port, STEADY_HOST, timeout=10)
            ok = status == 200 and body == b"steady"
        except (OSError, http.client.HTTPException):
            ok = False
        # latency from the scheduled send time (no coordinated omission when this client is late)
        with self.lock:
            self.samples.append((scheduled, time.monotonic() - scheduled, ok))

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self.stop.is_set():
            now = time.monotonic()
            if now < next_at:
                time.sleep(next_at - now)
            self.threads = [t for t in self.threads if t.is_alive()]
            if len(self.threads) < 500:
                thread = threading.Thread(target=self._one, args=(next_at,), daemon=True)
                thread.start()
                self.threads.append(thread)
            next_at += self.interval

    def finish(self) -> list[tuple[float, float, bool]]:
        self.stop.set()
        self.thread.join(15)
        for thread in self.threads:
            thread.join(12)
        with self.lock:
            return list(self.samples)


# --- memory -------------------------------------------------------------------------------------------

def process_memory(master: int) -> list[dict]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rpartition(")")[2].split()[1])
            if ppid != master:
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            fields = {}
            for line in (entry / "smaps_rollup").read_text().splitlines():
                key, _, rest = line.partition(":")
                if key in ("Rss", "Pss", "Private_Dirty", "Anonymous"):
                    fields[key] = int(rest.split()[0]) / 1024
        except (OSError, ValueError, IndexError):
            continue
        kind = "worker" if "worker process" in cmdline else "privileged" if "privileged" in cmdline else cmdline
        out.append({"pid": int(entry.name), "kind": kind, "rss_mb": round(fields.get("Rss", 0), 1),
                    "pss_mb": round(fields.get("Pss", 0), 1), "anon_mb": round(fields.get("Anonymous", 0), 1)})
    return sorted(out, key=lambda p: (p["kind"], p["pid"]))


def _start_time(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19]
    except (OSError, IndexError):
        return None


def process_ids(master: int) -> list[tuple[int, str]]:
    """(pid, start time) of the master's children: workers, privileged agent, cache processes."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rpartition(")")[2].split()[1]) == master:
                    out.append((int(entry.name), _start_time(int(entry.name))))
            except (OSError, ValueError, IndexError):
                continue
    return out


def kill_leftovers(children: list[tuple[int, str]]) -> None:
    """A worker busy in a long Lua loop (loading a big document) does not exit on the master's SIGQUIT, and
    outlives a master killed after the grace time: kill those by PID (the same process: same start time)."""
    for pid, started in children:
        if started is not None and _start_time(pid) == started:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# --- one run ------------------------------------------------------------------------------------------

def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def run_one(mode: str, n: int, variant_name: str, base: dict, dp, args) -> dict:
    from tests import realapisix

    regex = variant_name != "no-regex"
    doc = variant(base, variant_name)
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nofile = min(nofile if nofile != resource.RLIM_INFINITY else 1 << 20, 1 << 20)
    agent_mode = "api" if mode == "api" else "file"
    settings = apisix_config.ApisixSettings(admin_key=ADMIN_KEY, mode=apisix_config.Mode(agent_mode),
                                            worker_processes=args.workers, nofile_limit=nofile,
                                            worker_user=dp.proxy_user, worker_group=dp.proxy_group)
    port = internal_ports(dp)[(Direction.OUTBOUND, PORT)]
    result: dict = {"mode": mode, "services": n, "variant": variant_name}

    # the pushes, serialised before APISIX starts (the agent's own cost, timed apart)
    markers = [f"gen-{i}" for i in range(args.changes + 1)]
    documents = [with_probes(doc, m, regex, variant_name == "per-service-regex", variant_name != "no-hosts")
                 for m in markers]
    result["shape"] = shape(documents[0])
    payloads = []
    started = time.perf_counter()
    if mode == "api":
        previous = None
        for d in documents:
            encoded = admin_api.encode(d, previous)
            previous = encoded
            payloads.append((encoded.body, encoded.digest))
        result["body_mb"] = round(len(payloads[0][0]) / 1e6, 1)
    else:
        payloads = [render_file(d, "yaml" if mode == "file-yaml" else "json") for d in documents]
        result["body_mb"] = round(len(payloads[0].encode()) / 1e6, 1)
    result["serialise_s"] = round((time.perf_counter() - started) / len(documents), 2)
    del documents
    gc.collect()

    config_yaml = apisix_config.render_yaml(settings, dp)
    conf = yaml.safe_load(config_yaml)
    if mode == "file-yaml":  # not what the agent renders any more: data_plane reading conf/apisix.yaml (lyaml)
        conf["deployment"]["role_data_plane"]["config_provider"] = "yaml"
    if args.standalone_dict_mb and mode == "api":  # not what the agent renders (ApisixSettings.config_dict_mb)
        meta = conf.setdefault("nginx_config", {}).setdefault("meta", {})
        meta.setdefault("lua_shared_dict", {})["standalone-config"] = f"{args.standalone_dict_mb}m"
        result["standalone_dict_mb"] = args.standalone_dict_mb
    config_yaml = yaml.safe_dump(conf, sort_keys=False)
    apisix = realapisix.Apisix(config_yaml, timeout=60)
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, initializer=realapisix._enter,
                                                     initargs=(apisix.ns,))
    stopping = threading.Event()
    try:
        inside = executor.submit
        result["namespace"] = apisix.ns

        def push(i: int) -> tuple[float, float]:
            """Push payload i; (monotonic start, seconds the push itself took)."""
            if mode == "api":
                body, digest = payloads[i]
                t0 = time.monotonic()
                status, text = inside(put_config, body, digest).result()
                if status not in (200, 202):
                    raise RuntimeError(f"PUT answered {status}: {text}")
                return t0, time.monotonic() - t0
            # file mode: sink/file.py's write (atomic rename; a later second than the last write)
            if mode == "file-yaml" and apisix.sink.path.name != "apisix.yaml":
                apisix.sink = FileSink(apisix.prefix / "conf" / "apisix.yaml")
            apisix.sink.last_mtime_ns = apisix.sink.last_mtime_ns or time.time_ns()
            from sidecar_agent.sink.file import wait_before_write
            delay = wait_before_write(apisix.sink.last_mtime_ns, time.time_ns())
            if delay > 0:
                time.sleep(delay)
            t0 = time.monotonic()
            apisix.sink.last_mtime_ns = apisix.sink._write(payloads[i])
            return t0, time.monotonic() - t0

        # 1. load
        t0, push_s = push(0)
        served = inside(wait_serving, port, PROBE_HOST, markers[0], args.confirm, args.timeout, stopping).result()
        result["load_s"] = round(served - t0, 3)
        result["load_push_s"] = round(push_s, 3)
        # a few more requests on fresh connections, so every worker has built its router
        for _ in range(20):
            inside(serves, port, STEADY_HOST, "steady").result()
        # 2. memory
        time.sleep(0.5)
        result["memory"] = process_memory(apisix.proc.pid)
        if mode == "api":  # the agent's recheck every few seconds (AdminApiSink.holds_last): HEAD, was GET
            admin = apisix.admin_port
            result["recheck_head_ms"] = round(min(inside(admin_seconds, admin, "HEAD").result()
                                                  for _ in range(3)) * 1e3, 1)
            result["recheck_get_s"] = round(inside(admin_seconds, admin, "GET").result(), 2)
        # 3./4. changes under a steady stream
        changes, samples = [], []
        for i in range(1, args.changes + 1):
            stream = Stream(apisix.ns, port, args.rate)
            time.sleep(1.0)
            t0, push_s = push(i)
            served = inside(wait_serving, port, PROBE_HOST, markers[i], args.confirm, args.timeout, stopping).result()
            changes.append({"apply_s": served - t0, "push_s": push_s})
            time.sleep(2.0)
            got = stream.finish()
            samples += got
        lat = [s[1] * 1e3 for s in samples]
        if not changes:
            result.update(change_s=float("nan"), change_s_all=[], change_push_s=None,
                          stream={"requests": 0, "failed": 0, "p50_ms": None, "p99_ms": None, "max_ms": None})
            return result
        result["change_s"] = round(statistics.median(c["apply_s"] for c in changes), 3)
        result["change_s_all"] = [round(c["apply_s"], 3) for c in changes]
        result["change_push_s"] = round(statistics.median(c["push_s"] for c in changes), 3)
        result["stream"] = {"requests": len(samples), "failed": sum(1 for s in samples if not s[2]),
                            "p50_ms": round(percentile(lat, 0.5), 1), "p99_ms": round(percentile(lat, 0.99), 1),
                            "max_ms": round(max(lat), 1) if lat else None}
        errors = apisix.errors()
        result["log_errors"] = len(errors)
        result["log_error_sample"] = errors[:3]
        return result
    except BaseException:
        print(f"# {mode} {n} {variant_name} failed; APISIX log tail:\n{apisix.log()[-3000:]}", file=sys.stderr)
        raise
    finally:
        stopping.set()  # the in-namespace thread gives up at once (it is joined at exit)
        executor.shutdown(wait=False, cancel_futures=True)
        children = process_ids(apisix.proc.pid) if apisix.proc is not None else []
        apisix.stop()
        kill_leftovers(children)


# --- main ---------------------------------------------------------------------------------------------

MAIN_PID = os.getpid()


def _terminate(signum, frame):
    if os.getpid() != MAIN_PID:  # a forked helper (pyroute2's netns child) inherits the handler: die as usual
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    # a second signal (`timeout` passing on its own, a repeated kill) must not cut the cleanup short
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    raise KeyboardInterrupt(f"signal {signum}")  # the `finally` blocks stop APISIX and remove everything


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--services", default="1000,10000", help="mesh sizes, comma-separated")
    ap.add_argument("--modes", default="file,api",
                    help="file (the agent's conf/apisix.json), api (PUT /apisix/admin/configs), file-yaml (the "
                         "YAML provider the agent used before: conf/apisix.yaml; for comparison)")
    ap.add_argument("--variants", default="as-is",
                    help="as-is (the agent's document), per-service-regex, no-regex, one-host, no-hosts (comma-separated)")
    ap.add_argument("--changes", type=int, default=3, help="one-route changes timed per run")
    ap.add_argument("--rate", type=float, default=50.0, help="steady requests per second during a change")
    ap.add_argument("--confirm", type=int, default=4, help="fresh-connection answers in a row that count as served")
    ap.add_argument("--workers", type=int, default=2, help="nginx workers (the agent's default: 2)")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for a document to serve")
    ap.add_argument("--standalone-dict-mb", type=int, default=0,
                    help="API mode: size the standalone-config shared dict (default: what the agent renders, "
                         "ApisixSettings.config_dict_mb)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON instead of the table")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces)")
    from tests import realapisix

    reason = realapisix.unavailable()
    if reason:
        raise SystemExit(reason)
    signal.signal(signal.SIGTERM, _terminate)
    sizes = [int(s) for s in args.services.split(",") if s]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    results = []
    say = (lambda *a: print(*a, file=sys.stderr, flush=True)) if args.json else (lambda *a: print(*a, flush=True))
    say(f"# {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}, load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}, {os.cpu_count()} CPUs, {args.workers} workers")
    header = (f"{'mode':<9} {'services':>8} {'variant':<8} {'routes':>6} {'body MB':>7} {'ser s':>6} {'load s':>7} "
              f"{'worker RSS/PSS MB':>18} {'change s':>8} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'failed':>9}")
    say(header)
    for n in sizes:
        base, dp, translate_s = translate_mesh(n)
        for mode in modes:
            for name in variants:
                try:
                    r = run_one(mode, n, name, base, dp, args)
                except Exception as exc:  # noqa: BLE001  (a failed run is a result: recorded, the next runs on)
                    r = {"mode": mode, "services": n, "variant": name, "error": f"{type(exc).__name__}: {exc}"[:500],
                         "loadavg": [round(x, 2) for x in os.getloadavg()]}
                    results.append(r)
                    say(f"{mode:<9} {n:>8} {name:<8} FAILED: {r['error'][:300]}")
                    continue
                r["translate_s"] = round(translate_s, 2)
                r["loadavg"] = [round(x, 2) for x in os.getloadavg()]
                results.append(r)
                workers = [p for p in r["memory"] if p["kind"] == "worker"]
                mem = "/".join(f"{p['rss_mb']:.0f}:{p['pss_mb']:.0f}" for p in workers)
                s = r["stream"]
                say(f"{mode:<9} {n:>8} {name:<8} {r['shape']['routes']:>6} {r['body_mb']:>7} {r['serialise_s']:>6} "
                    f"{r['load_s']:>7.2f} {mem:>18} {r['change_s']:>8.2f} {str(s['p50_ms']):>7} {str(s['p99_ms']):>7} "
                    f"{str(s['max_ms']):>7} {s['failed']:>4}/{s['requests']:<4}")
                if "recheck_head_ms" in r:
                    say(f"{'':>28} the agent's recheck of what APISIX holds: HEAD {r['recheck_head_ms']} ms "
                        f"(a GET, as before: {r['recheck_get_s']} s, on a worker that serves requests)")
        del base
        gc.collect()
    say(f"# load average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    say(f"# target: 10,000 services applied in <= {GOAL_API_LOAD_S:g} s in API mode; "
        "no request failing during a change")
    for r in results:
        if r["services"] < 10000 or r["mode"] != "api":
            continue
        record = issue_rows.record if r["variant"] == "as-is" else (lambda *row: None)  # the agent's document
        what = f"APISIX 3.18, API mode: the {r['services']:,}-service document applied"
        if "error" in r:
            say(f"#   api {r['variant']}: MISSED ({r['error'][:120]})")
            record(what, r["error"][:120], None, f"<= {GOAL_API_LOAD_S:g} s", False)
            continue
        ok, s = r["load_s"] <= GOAL_API_LOAD_S, r["stream"]
        say(f"#   api {r['variant']}: load {r['load_s']:.2f} s {'ok' if ok else 'MISSED'}; "
            f"failed during changes {s['failed']} {'ok' if not s['failed'] else 'MISSED'}")
        record(what, f"{r['load_s']:.2f} s, {r['body_mb']} MB body", None, f"<= {GOAL_API_LOAD_S:g} s", ok)
        record(f"the same, one route changed ({r['change_s']:.2f} s)", f"{s['failed']} of {s['requests']} requests "
               f"failed during the changes (p99 {s['p99_ms']} ms)", None, "none failing", not s["failed"])
    if args.json:
        print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
