"""APISIX's own JSON Schemas as the pipeline's `check`, paid only for what changed.

The translator hands back the same dict for an object it did not recompute, so an object already
validated is recognised by identity and not checked again: a route change at 1,000 services checks
that route configuration's routes, not every upstream. A plugin set from the controller replaces the
route objects but keeps their other fields and shares one config object per plugin across the routes, so
the core schema is skipped for a route whose other fields are the same objects as before, and each
distinct plugin config is validated once.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sidecar_agent.schema import KINDS, Schemas

Slot = tuple[str, Any]  # (document key, object id)


def _core_signature(obj: Mapping) -> tuple:
    """What the core schema sees of an object, by identity: every field but the plugins' contents."""
    return tuple((k, id(v)) for k, v in obj.items() if k != "plugins") + (("plugins", bool(obj.get("plugins"))),)


class SchemaCheck:
    def __init__(self, schema_dir: str | Path) -> None:
        self._schemas = Schemas(schema_dir)
        self._valid: dict[Slot, Mapping] = {}  # the object found valid, whole
        # The core schema passed for these fields; the values are kept so their ids stay theirs.
        self._core: dict[Slot, tuple[tuple, tuple]] = {}
        self._plugins: dict[tuple[str, int], Any] = {}  # (plugin, id(config)) -> that valid config

    def __call__(self, document: Mapping[str, Any]) -> list[str]:
        problems: list[str] = []
        valid: dict[Slot, Mapping] = {}
        core: dict[Slot, tuple[tuple, tuple]] = {}
        plugins: dict[tuple[str, int], Any] = {}
        for key, objects in sorted(document.items()):
            kind = KINDS.get(key)
            if kind is None:
                problems.append(f"{key}: not a document key APISIX knows")
                continue
            for obj in objects:
                slot = (key, obj.get("id"))
                found = [] if self._valid.get(slot) is obj else self._check(kind, obj, slot, plugins)
                if found:
                    problems += [f"{key}/{slot[1]}: {p}" for p in found]
                    continue
                valid[slot] = obj
                core[slot] = self._core.get(slot) or (_core_signature(obj), tuple(obj.values()))
                for name, conf in (obj.get("plugins") or {}).items():
                    plugins[(name, id(conf))] = conf
        if not problems:
            # Only references: the objects are the translator's and the overlay's own.
            self._valid, self._core, self._plugins = valid, core, plugins
        return problems

    def _check(self, kind: str, obj: Mapping, slot: Slot, seen: dict) -> list[str]:
        known = self._core.get(slot)
        signature = _core_signature(obj)
        found = [] if known is not None and known[0] == signature else self._schemas.check_core(kind, obj)
        if known is not None and known[0] != signature:
            self._core.pop(slot, None)
        if not found:
            self._core[slot] = (signature, tuple(obj.values()))
        for name, conf in sorted((obj.get("plugins") or {}).items()):
            key = (name, id(conf))
            if self._plugins.get(key) is conf or seen.get(key) is conf:
                continue
            errors = self._schemas.check_plugin(name, conf)
            if errors:
                found += errors
            else:
                seen[key] = conf
        return found
