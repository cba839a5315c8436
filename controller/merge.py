"""Each pod's plugin set from the AmeshPluginConfigs that select it (pure, deterministic).

Conflict rule (the one Gateway API uses for conflicting routes): configs are ranked by
`metadata.creationTimestamp`, oldest first, then by name. A plugin is identified by (direction, type,
name) — for pre-req/post-req the name is the external plugin's — and the highest-ranked config that
sets it wins on that pod; every lower one is reported as a `Conflict` in its status. Creation time, not
name alone, so that a newly created config can never take over plugins that pods already run.
Different external plugins of the same type combine: they become entries of one ext-plugin-pre-req
`conf` list, in rank order, then spec order.

Invalid configs contribute nothing (they still count matched pods for their status).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from controller.crd import PluginConfig
from controller.selection import Pod, PodKey, selects
from amesh_common.plugin_model import ControllerPlugin, Direction, PluginSet, PluginType


@dataclass(frozen=True)
class Conflict:
    pod: PodKey
    direction: Direction
    type: PluginType
    plugin: str
    winner: str  # "<ns>/<name>" of the config whose plugin is used
    loser: str

    def describe(self) -> str:
        kind = f"{self.type.value} plugin" if self.type is not PluginType.PLAIN else "plugin"
        return (f"{kind} {self.plugin} ({self.direction.value}) on pod {self.pod[0]}/{self.pod[1]} "
                f"comes from {self.winner}")


def rank(config: PluginConfig) -> tuple:
    return (config.created, config.namespace, config.name)


def version_of(plugins: tuple[ControllerPlugin, ...]) -> str:
    digest = hashlib.sha256()
    for p in plugins:
        digest.update("\0".join((p.direction.value, p.type.value, p.name, p.config_json, p.source)).encode())
        digest.update(b"\1")
    return digest.hexdigest()[:16]


def merge_for_pod(pod: Pod, configs: Iterable[PluginConfig]) -> tuple[PluginSet, list[Conflict]]:
    """`configs` may be any configs; those that are valid and select the pod are merged."""
    chosen: dict[tuple, tuple[int, int, ControllerPlugin]] = {}
    conflicts: list[Conflict] = []
    ranked = sorted((c for c in configs if c.valid and selects(c, pod)), key=rank)
    for order, config in enumerate(ranked):
        for index, spec in enumerate(config.plugins):
            for direction in spec.directions:
                key = (direction, spec.type, spec.name)
                if key in chosen:
                    conflicts.append(Conflict(pod.key, direction, spec.type, spec.name,
                                              chosen[key][2].source, config.source))
                    continue
                chosen[key] = (order, index, ControllerPlugin(direction, spec.type, spec.name,
                                                              spec.config_json, config.source))
    # Plain plugins by name; external ones keep rank then spec order, since that is their run order.
    plugins = tuple(p for _, _, p in sorted(chosen.values(), key=lambda item: (
        item[2].direction.value, item[2].type.value,
        item[2].name if item[2].type is PluginType.PLAIN else "", item[0], item[1])))
    return PluginSet(plugins, version_of(plugins)), conflicts
