"""The controller's plugin set laid over translated documents, paid only for routes that changed.

`merge.apply_all` is pure and builds new route objects; run on every document it would defeat the
pipeline's identity-based caches (the gate and APISIX's schema check re-check only objects that are not
the very ones they passed before) and the pusher's "same body, no push" test. `Overlay` keeps, for one
plugin set, each translator route it has merged and the merged route it gave back: a route the translator
did not recompute (the same object) gets the same merged object again, and the same document with the
same set gets the same merged document. A set without plugins hands back the translator's document itself,
so an agent without a controller pushes exactly what it did before.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sidecar_agent.plugins.merge import apply_all
from amesh_common.plugin_model import EMPTY, PluginSet


class Overlay:
    def __init__(self) -> None:
        self._set: PluginSet = EMPTY
        # id(translator route) -> (that route, its merged form); the route is held so its id is not reused.
        self._routes: dict[int, tuple[Mapping[str, Any], Mapping[str, Any]]] = {}
        self._last: tuple[Mapping[str, Any], PluginSet, Mapping[str, Any]] | None = None

    def __call__(self, document: Mapping[str, Any], plugin_set: PluginSet) -> Mapping[str, Any]:
        if not plugin_set.plugins or not document.get("routes"):
            return document
        last = self._last
        if last is not None and last[0] is document and last[1] == plugin_set:
            return last[2]
        if plugin_set != self._set:
            self._set, self._routes = plugin_set, {}
        known = self._routes
        routes = document["routes"]
        fresh = [route for route in routes if (hit := known.get(id(route))) is None or hit[0] is not route]
        merged_fresh = iter(apply_all({"routes": fresh}, plugin_set)["routes"]) if fresh else iter(())
        out_routes, kept = [], {}
        for route in routes:
            hit = known.get(id(route))
            merged = hit[1] if hit is not None and hit[0] is route else next(merged_fresh)
            kept[id(route)] = (route, merged)
            out_routes.append(merged)
        self._routes = kept  # only the current document's routes: the cache never outgrows it
        out = {**document, "routes": out_routes}
        self._last = (document, plugin_set, out)
        return out
