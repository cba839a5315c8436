"""Agent runtime figures: ADS response → document at the sink latency, and agent RSS.

    .venv/bin/python benchmarks/agent.py [--sizes 1000,10000] [--repeat 20]

- one route change: an RDS-only push on a 1,000-service mesh, from the response leaving the test ADS
  server to `Sink.push` being called with the new document (median / p90 of --repeat changes);
- initial push: 1,000 services, from the first response (CDS) leaving the server to the document at the sink;
- RSS of an agent process (server in another process) after syncing 1,000 and 10,000 services.

Goals (issue #4): ≤ 50 ms for one change, ≤ 300 MB at 10,000 services. Uses the real translation when
`sidecar_agent.translate` provides one, else the tests' stand-in (printed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from envoy.config.core.v3 import base_pb2  # noqa: E402

from sidecar_agent.http.metrics import AgentMetrics  # noqa: E402
from sidecar_agent.pipeline import Pipeline  # noqa: E402
from sidecar_agent.sink.pusher import Pusher  # noqa: E402
from sidecar_agent.testing import istiogen  # noqa: E402
from sidecar_agent.xds.client import AdsClient, Transport  # noqa: E402
from sidecar_agent.xds.protocol import AdsSession  # noqa: E402
from sidecar_agent.xds.server import AdsServer  # noqa: E402

try:
    from sidecar_agent.translate import translate as _translate

    def translate(resources):
        result = _translate(resources)
        return result.document, sum(result.report.by_field().values())

    WHICH = "sidecar_agent.translate"
except ImportError:
    from tests.agent.standin import translate  # noqa: F401

    WHICH = "tests/agent/standin.py (real translation not available yet)"


class ClockSink:
    """Records when each document reaches the sink; APISIX's own ~100 ms apply time is not included."""

    def __init__(self) -> None:
        self.arrivals: list[float] = []

    async def push(self, document) -> None:
        self.arrivals.append(time.perf_counter())

    async def holds_last(self) -> bool:
        return True


def xds_of(x: istiogen.Xds) -> dict:
    return {"lds": x.listeners, "rds": x.route_configs, "cds": x.clusters, "eds": x.endpoints}


async def start_agent(port: int, sink):
    metrics = AgentMetrics()
    pusher = Pusher(sink, observer=metrics)
    pipeline = Pipeline(translate, pusher, metrics)
    session = AdsSession(base_pb2.Node(id="sidecar~10.244.0.10~bench.default~default.svc.cluster.local"))
    client = AdsClient(Transport(f"127.0.0.1:{port}"), session, pipeline.decide, pipeline.on_accepted)
    tasks = [asyncio.create_task(client.run()), asyncio.create_task(pusher.run())]
    return pusher, tasks


async def latency(n: int, repeat: int) -> dict:
    server = AdsServer()
    port = await server.start()
    sink = ClockSink()
    pusher, tasks = await start_agent(port, sink)
    try:
        mesh = istiogen.synthetic_mesh(n)
        server.set_snapshot("0", xds_of(mesh))
        await pusher.wait_live("cds=0,eds=0,lds=0,rds=0", timeout=300)
        initial = sink.arrivals[-1] - server.sent[0].at
        changes = []
        alt = istiogen.synthetic_mesh(n, subsets=1).route_configs
        for i in range(1, repeat + 1):
            routes = alt if i % 2 else mesh.route_configs
            server.set_snapshot(str(i), {"rds": routes})
            await pusher.wait_live(f"cds=0,eds=0,lds=0,rds={i}", timeout=60)
            sent = next(s for s in reversed(server.sent) if s.version == str(i))
            changes.append(sink.arrivals[-1] - sent.at)
        return {"services": n, "initial_push_ms": round(initial * 1000, 1),
                "route_change_ms_median": round(statistics.median(changes) * 1000, 1),
                "route_change_ms_p90": round(sorted(changes)[int(0.9 * (len(changes) - 1))] * 1000, 1)}
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.stop()


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def agent_only(port: int) -> None:
    """Child process: sync from the server at `port`, print RSS once the document reached the sink."""
    sink = ClockSink()
    pusher, tasks = await start_agent(port, sink)
    await pusher.wait_live("cds=1,eds=1,lds=1,rds=1", timeout=600)
    print(json.dumps({"rss_mb": round(rss_mb(), 1)}), flush=True)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def rss(n: int) -> dict:
    server = AdsServer()
    port = await server.start()
    server.set_snapshot("1", xds_of(istiogen.synthetic_mesh(n)))
    child = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--agent-only", str(port), stdout=subprocess.PIPE)
    try:
        out, _ = await asyncio.wait_for(child.communicate(), 900)
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
        await server.stop()
    return {"services": n, **json.loads(out.decode().strip().splitlines()[-1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--agent-only", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.agent_only:
        asyncio.run(agent_only(args.agent_only))
        return
    print(f"translation: {WHICH}")
    small = asyncio.run(latency(1000, args.repeat))
    print(f"1,000 services: initial push {small['initial_push_ms']} ms (response sent → document at sink)")
    print(f"1,000 services: one route change median {small['route_change_ms_median']} ms, "
          f"p90 {small['route_change_ms_p90']} ms over {args.repeat} (goal ≤ 50 ms)")
    for n in [int(s) for s in args.sizes.split(",") if s]:
        figure = asyncio.run(rss(n))
        goal = " (goal ≤ 300 MB)" if n == 10000 else ""
        print(f"{n:,} services: agent RSS {figure['rss_mb']} MB after sync{goal}")


if __name__ == "__main__":
    main()
