"""The controller's Prometheus metrics, in their own registry (no process-global state in tests)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest


@dataclass(eq=False)
class ControllerMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.connected = Gauge("amesh_controller_connected_agents", "Agent plugin streams open now", registry=r)
        self.pushes = Counter("amesh_controller_pushes", "Plugin sets sent to agents", registry=r)
        self.invalid = Gauge("amesh_controller_invalid_configs", "AmeshPluginConfigs with a False Ready condition",
                             registry=r)
        self.configs = Gauge("amesh_controller_configs", "AmeshPluginConfigs known", registry=r)
        self.refused = Counter("amesh_controller_refused_streams", "Agent streams refused", ["reason"], registry=r)
        self.watch_restarts = Counter("amesh_controller_watch_restarts", "List/watch restarts",
                                      ["resource", "reason"], registry=r)
        self.status_patches = Counter("amesh_controller_status_patches", "Status patches", ["result"], registry=r)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
