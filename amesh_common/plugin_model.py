"""The plugin set the controller streams to one pod, as plain values (no gRPC types)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum


class PluginType(Enum):
    PLAIN = ""
    PRE_REQ = "pre-req"
    POST_REQ = "post-req"


class Direction(Enum):
    OUTBOUND = "outbound"
    INBOUND = "inbound"


# Where a pre-req/post-req plugin goes on an APISIX route.
EXT_PLUGIN = {PluginType.PRE_REQ: "ext-plugin-pre-req", PluginType.POST_REQ: "ext-plugin-post-req"}


@dataclass(frozen=True)
class ControllerPlugin:
    direction: Direction
    type: PluginType
    name: str
    config_json: str  # canonical JSON of the plugin config
    source: str = ""  # "<namespace>/<name>" of the AmeshPluginConfig

    def __lt__(self, other: "ControllerPlugin") -> bool:  # enums don't order; order by their values
        return self.sort_key() < other.sort_key()

    def sort_key(self) -> tuple:
        return (self.direction.value, self.type.value, self.name, self.config_json, self.source)

    @property
    def config(self) -> dict:
        return json.loads(self.config_json)


@dataclass(frozen=True)
class PluginSet:
    plugins: tuple[ControllerPlugin, ...] = ()
    version: str = ""

    def of(self, direction: Direction) -> tuple[ControllerPlugin, ...]:
        return tuple(p for p in self.plugins if p.direction is direction)


EMPTY = PluginSet()
