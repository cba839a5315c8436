"""PluginSet values <-> amesh.v1 protobuf messages (used by the controller and the agent client)."""

from __future__ import annotations

from amesh_common.plugin_model import ControllerPlugin, Direction, PluginSet, PluginType
from amesh_common.proto import pb2

_TYPES = {PluginType.PLAIN: pb2.PLUGIN_TYPE_PLAIN, PluginType.PRE_REQ: pb2.PLUGIN_TYPE_PRE_REQ,
          PluginType.POST_REQ: pb2.PLUGIN_TYPE_POST_REQ}
_DIRECTIONS = {Direction.OUTBOUND: pb2.DIRECTION_OUTBOUND, Direction.INBOUND: pb2.DIRECTION_INBOUND}
_TYPES_BACK = {v: k for k, v in _TYPES.items()}
_DIRECTIONS_BACK = {v: k for k, v in _DIRECTIONS.items()}


class WireError(ValueError):
    """A message the agent cannot use (unknown enum value from a newer controller, bad JSON)."""


def to_message(plugin_set: PluginSet) -> pb2.PluginSet:
    return pb2.PluginSet(version=plugin_set.version, plugins=[
        pb2.Plugin(name=p.name, type=_TYPES[p.type], direction=_DIRECTIONS[p.direction],
                   config_json=p.config_json, source=p.source) for p in plugin_set.plugins])


def from_message(message: pb2.PluginSet) -> PluginSet:
    plugins = []
    for p in message.plugins:
        if p.type not in _TYPES_BACK or p.direction not in _DIRECTIONS_BACK:
            raise WireError(f"plugin {p.name!r}: unknown type {p.type} or direction {p.direction}")
        plugin = ControllerPlugin(_DIRECTIONS_BACK[p.direction], _TYPES_BACK[p.type], p.name, p.config_json, p.source)
        try:
            if not isinstance(plugin.config, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            raise WireError(f"plugin {p.name!r}: config_json is not a JSON object: {exc}") from None
        plugins.append(plugin)
    return PluginSet(tuple(plugins), message.version)
