"""From accepted xDS snapshots to APISIX documents: decide ACK/NACK, gate on consistency, publish.

- `decide` translates the candidate snapshot of every response; a translation error (or a document
  APISIX's schemas refuse) becomes the NACK's error_detail, so the last good config stays in force.
- `on_accepted` publishes only a complete snapshot (every RDS named by LDS and every EDS named by CDS
  present): APISIX never gets a route to an upstream that is not there.
- If a snapshot stays incomplete for `partial_timeout` seconds, the partial policy publishes
  `Snapshot.filled_in()` (Envoy's initial_fetch_timeout: missing endpoints → no hosts, missing routes
  → empty table) and keeps waiting for the rest. Readiness requires a complete document.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sidecar_agent.configdump import XdsResources
from sidecar_agent.http.metrics import AgentMetrics
from sidecar_agent.sink.pusher import Document, Pusher
from sidecar_agent.store import Snapshot
from sidecar_agent.xds import kinds
from sidecar_agent.xds.protocol import Pending

log = logging.getLogger(__name__)

# Translate resources into (document, number of unsupported fields); raises one of `invalid` on bad input.
Translate = Callable[[XdsResources], tuple[Mapping[str, Any], int]]


def resources_of(snapshot: Snapshot) -> XdsResources:
    return XdsResources(
        listeners=dict(snapshot.items(kinds.LDS)),
        route_configs=dict(snapshot.items(kinds.RDS)),
        clusters=dict(snapshot.items(kinds.CDS)),
        endpoints=dict(snapshot.items(kinds.EDS)),
    )


def label_of(snapshot: Snapshot) -> str:
    return ",".join(f"{k}={v}" for k, v in snapshot.versions().items())


@dataclass(eq=False)
class Pipeline:
    translate: Translate
    pusher: Pusher
    metrics: AgentMetrics
    invalid: tuple[type[Exception], ...] = (ValueError,)
    partial_timeout: float = 10.0
    snapshot: Snapshot | None = field(default=None, init=False)  # last accepted, for /config_dump
    document: Document | None = field(default=None, init=False)  # last submitted
    _cache: tuple[Snapshot, Mapping[str, Any]] | None = field(default=None, init=False)
    _partial: asyncio.TimerHandle | None = field(default=None, init=False)

    async def decide(self, pending: Pending) -> str | None:
        candidate = pending.snapshot
        complete = candidate.complete()
        started = time.perf_counter()
        try:
            document, unsupported = self.translate(resources_of(candidate if complete else candidate.filled_in()))
        except self.invalid as exc:
            return f"{pending.kind.short} version {pending.version!r} rejected: {exc}"
        self.metrics.translation.observe(time.perf_counter() - started)
        self.metrics.unsupported.set(unsupported)
        self._cache = (candidate, document) if complete else None
        return None

    async def on_accepted(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        if snapshot.complete():
            if self._partial is not None:
                self._partial.cancel()
                self._partial = None
            cached = self._cache
            document = cached[1] if cached and cached[0] is snapshot else self.translate(resources_of(snapshot))[0]
            self._submit(Document(document, label_of(snapshot)))
        elif self._partial is None and snapshot.has_received(kinds.LDS) and snapshot.has_received(kinds.CDS):
            self._partial = asyncio.get_running_loop().call_later(self.partial_timeout, self._publish_partial)

    def _publish_partial(self) -> None:
        self._partial = None
        snapshot = self.snapshot
        if snapshot is None or snapshot.complete():
            return
        missing = snapshot.missing()
        log.warning("still missing after %.0fs: routes %s, endpoints %s; publishing the partial policy",
                    self.partial_timeout, sorted(missing.routes), sorted(missing.endpoints))
        try:
            document, _ = self.translate(resources_of(snapshot.filled_in()))
        except self.invalid:
            log.exception("partial translation failed")
            return
        self._submit(Document(document, "partial:" + label_of(snapshot), complete=False))

    def _submit(self, document: Document) -> None:
        self.document = document
        self.pusher.submit(document)
