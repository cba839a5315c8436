"""The agent's Prometheus metrics, and the merged `/stats/prometheus` page (agent + APISIX)."""

from __future__ import annotations

import urllib.error
import urllib.request

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

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
        self.unsupported = UnsupportedFields(registry=r)
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


class UnsupportedFields:
    """`amesh_translation_unsupported_fields{kind, field, effect}`: a gauge of the current translation's
    unsupported fields (occurrences summed over resources; `effect` is denied|ignored). A gauge, not a
    counter: it is the state of the configuration in force, replaced whole on every refresh, so a
    field istiod stops sending disappears instead of staying counted."""

    name = "amesh_translation_unsupported_fields"

    def __init__(self, registry: CollectorRegistry) -> None:
        self._counts: dict[tuple[str, str, str], int] = {}
        registry.register(self)

    def set(self, counts: dict[tuple[str, str, str], int]) -> None:
        """(kind, field, effect) -> count, from `Report.by_effect()`; replaces the previous set."""
        self._counts = dict(counts)

    def get(self, kind: str, field: str, effect: str = "ignored") -> int:
        return self._counts.get((kind, field, effect), 0)

    def total(self) -> int:
        return sum(self._counts.values())

    def collect(self):
        family = GaugeMetricFamily(self.name, "xDS fields the translation in force does not carry over, "
                                   "by resource kind, field path and effect on traffic",
                                   labels=["kind", "field", "effect"])
        for (kind, field, effect), count in self._counts.items():
            family.add_metric([kind, field, effect], count)
        yield family


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
