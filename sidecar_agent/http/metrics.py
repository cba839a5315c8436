"""The agent's Prometheus metrics, and the merged `/stats/prometheus` page (agent + APISIX)."""

from __future__ import annotations

import urllib.error
import urllib.request

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from sidecar_agent.xds import kinds

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class AgentMetrics:
    """Counters the xDS client and the pusher report into; one registry per agent (tests make many)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.xds_responses = Counter("amesh_xds_responses", "xDS responses received", ["type", "result"], registry=r)
        self.xds_nacks = Counter("amesh_xds_nacks", "xDS responses rejected (NACK)", ["type"], registry=r)
        self.xds_reconnects = Counter("amesh_xds_reconnects", "ADS streams lost", registry=r)
        self.xds_connected = Gauge("amesh_xds_connected", "1 while an ADS stream is open", registry=r)
        self.translation = Histogram("amesh_translation_seconds", "xDS to APISIX translation time",
                                     buckets=_LATENCY_BUCKETS, registry=r)
        self.unsupported = Gauge("amesh_translation_unsupported_fields",
                                 "xDS fields the last translation could not carry over", registry=r)
        self.pushes = Counter("amesh_apisix_pushes", "documents pushed to APISIX", ["result"], registry=r)
        self.push_latency = Histogram("amesh_apisix_push_seconds", "time to hand a document to APISIX",
                                      buckets=_LATENCY_BUCKETS, registry=r)
        self.apisix_restarts = Counter("amesh_apisix_restarts", "APISIX processes restarted", registry=r)
        self.apisix_reloads = Counter("amesh_apisix_reloads",
                                      "APISIX reloaded for a regenerated config.yaml (new data-path listeners)",
                                      registry=r)
        # amesh-controller's plugin stream (only moves when --controller-address is set)
        self.plugin_sets = Counter("amesh_plugin_sets", "plugin sets received from amesh-controller",
                                   ["result"], registry=r)  # applied | refused | unchanged
        self.plugins_active = Gauge("amesh_plugins_active", "controller plugins in the set in force", registry=r)
        self.plugin_stream_connected = Gauge("amesh_plugin_stream_connected",
                                             "1 while the plugin stream from amesh-controller is open", registry=r)

    # xds.client.Observer
    def connected(self) -> None:
        self.xds_connected.set(1)

    def disconnected(self, reason: str) -> None:
        self.xds_connected.set(0)
        self.xds_reconnects.inc()

    def responded(self, type_url: str, accepted: bool) -> None:
        kind = kinds.BY_TYPE_URL.get(type_url)
        short = kind.short if kind else "unknown"
        self.xds_responses.labels(short, "ack" if accepted else "nack").inc()
        if not accepted:
            self.xds_nacks.labels(short).inc()

    # sink.pusher.PushObserver
    def pushed(self, document, seconds: float) -> None:
        self.pushes.labels("ok").inc()
        self.push_latency.observe(seconds)

    def failed(self, document, error: str) -> None:
        self.pushes.labels("error").inc()


def fetch_apisix_metrics(url: str | None, timeout: float = 2.0) -> bytes:
    """APISIX's own exporter page (loopback); empty when it is off or unreachable."""
    if not url:
        return b""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return answer.read()
    except (urllib.error.URLError, OSError):
        return b""


def merged_page(metrics: AgentMetrics, apisix_url: str | None) -> bytes:
    own = generate_latest(metrics.registry)
    theirs = fetch_apisix_metrics(apisix_url)
    if theirs and not theirs.endswith(b"\n"):
        theirs += b"\n"
    return own + theirs
