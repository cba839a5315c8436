"""Wires a real agent runtime (session, client, pipeline with the real Translator, pusher, sink) for the tests."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from envoy.config.core.v3 import base_pb2

from sidecar_agent.http.metrics import AgentMetrics
from sidecar_agent.pipeline import Pipeline
from sidecar_agent.sink.pusher import Pusher
from amesh_testing import istiogen
from amesh_common.backoff import Backoff
from sidecar_agent.xds.client import AdsClient, Transport
from sidecar_agent.xds.protocol import AdsSession

FAST = Backoff(initial=0.02, maximum=0.2)


def xds_of(x: istiogen.Xds) -> dict[str, list]:
    return {"lds": list(x.listeners), "rds": list(x.route_configs), "cds": list(x.clusters),
            "eds": list(x.endpoints)}


def consistent(document: dict) -> bool:
    """Every route names an upstream the same document holds."""
    ids = {u["id"] for u in document.get("upstreams", [])}
    return all(r["upstream_id"] in ids for r in document.get("routes", []) if "upstream_id" in r)


@dataclass
class Agent:
    session: AdsSession
    client: AdsClient
    pipeline: Pipeline
    pusher: Pusher
    metrics: AgentMetrics


@contextlib.asynccontextmanager
async def running_agent(transport: Transport, sink, partial_timeout: float = 30.0, **pipeline_options):
    metrics = AgentMetrics()
    pusher = Pusher(sink, backoff=FAST, recheck_seconds=0.2, observer=metrics)
    pipeline = Pipeline(pusher, metrics, partial_timeout=partial_timeout, **pipeline_options)
    session = AdsSession(base_pb2.Node(id="sidecar~10.244.0.10~productpage-v1.default~default.svc.cluster.local"))
    client = AdsClient(transport, session, pipeline.decide, pipeline.on_accepted, backoff=FAST, observer=metrics)
    tasks = [asyncio.create_task(client.run()), asyncio.create_task(pusher.run())]
    try:
        yield Agent(session, client, pipeline, pusher, metrics)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
