"""Merge the controller's plugins into the translated APISIX routes of one direction (pure).

Precedence (Amesh #19): **xDS-derived configuration wins.** A plugin the translator put on a route
(traffic-split, fault-injection, proxy-mirror, proxy-rewrite, cors, …) expresses Istio routing policy
that a VirtualService owner set; a mesh-wide AmeshPluginConfig must not silently change where or how a
request is routed. So a controller plugin whose APISIX name is already on a route is skipped on that
route (`shadowed()` lists those cases), and every other route plugin is left untouched. Amesh instead
deleted every plugin the controller did not supply, wiping xDS policy on each plugin update.

Types: `""` → `route.plugins[name] = config`. `pre-req`/`post-req` → `ext-plugin-pre-req`/
`ext-plugin-post-req` = `{"conf": [{"name": <name>, "value": <config as a JSON string>}, …]}`, in the set's
order; APISIX's schema requires `value` to be a string (Amesh sent an object, which APISIX refuses).

Direction of a route: its `labels["amesh-direction"]` (`inbound`/`outbound`) when the translator sets it,
else `inbound` when the route name starts with Istio's inbound route-config prefix `inbound|` (route names
are `<route config>/<virtual host>/<route>`), else `outbound`.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Mapping
from typing import Any

from amesh_common.plugin_model import EXT_PLUGIN, ControllerPlugin, Direction, PluginSet, PluginType

DIRECTION_LABEL = "amesh-direction"
INBOUND_PREFIX = "inbound|"


def route_direction(route: Mapping[str, Any]) -> Direction:
    label = (route.get("labels") or {}).get(DIRECTION_LABEL)
    if label in ("inbound", "outbound"):
        return Direction(label)
    return Direction.INBOUND if str(route.get("name", "")).startswith(INBOUND_PREFIX) else Direction.OUTBOUND


def ext_entry(plugin: ControllerPlugin) -> dict:
    return {"name": plugin.name, "value": json.dumps(plugin.config, sort_keys=True, separators=(",", ":"))}


def apisix_form(plugins: tuple[ControllerPlugin, ...] | list[ControllerPlugin]) -> dict[str, dict]:
    """The APISIX `plugins` map for these controller plugins (one direction)."""
    out: dict[str, dict] = {}
    for plugin in plugins:
        if plugin.type is PluginType.PLAIN:
            out.setdefault(plugin.name, plugin.config)  # the controller already resolved duplicates
        else:
            out.setdefault(EXT_PLUGIN[plugin.type], {"conf": []})["conf"].append(ext_entry(plugin))
    return out


def apply_plugins(document: Mapping[str, Any], plugin_set: PluginSet, direction: Direction,
                  direction_of: Callable[[Mapping[str, Any]], Direction] = route_direction) -> dict:
    """A new document: `document` with the set's `direction` plugins added to that direction's routes.

    The input is not modified; routes of the other direction and every non-route object are shared
    unchanged. xDS-derived plugins already on a route win over a controller plugin of the same name.
    """
    wanted = apisix_form(plugin_set.of(direction))
    out = dict(document)
    if not wanted or not document.get("routes"):
        return out
    routes = []
    for route in document["routes"]:
        if direction_of(route) is not direction:
            routes.append(route)
            continue
        existing = route.get("plugins") or {}
        added = {name: copy.deepcopy(conf) for name, conf in wanted.items() if name not in existing}
        if added:
            route = {**route, "plugins": {**existing, **added}}
        routes.append(route)
    out["routes"] = routes
    return out


def apply_all(document: Mapping[str, Any], plugin_set: PluginSet,
              direction_of: Callable[[Mapping[str, Any]], Direction] = route_direction) -> dict:
    """Both directions (what the agent applies before every push)."""
    for direction in Direction:
        document = apply_plugins(document, plugin_set, direction, direction_of)
    return dict(document)


def shadowed(document: Mapping[str, Any], plugin_set: PluginSet,
             direction_of: Callable[[Mapping[str, Any]], Direction] = route_direction) -> list[tuple[str, str]]:
    """(route id, plugin name) pairs where an xDS-derived plugin kept a controller plugin off the route."""
    wanted = {d: apisix_form(plugin_set.of(d)) for d in Direction}
    return sorted((str(route.get("id")), name)
                  for route in document.get("routes", [])
                  for name in wanted[direction_of(route)] if name in (route.get("plugins") or {}))
