"""APISIX's own JSON Schemas as the pipeline's `check`, paid only for objects that changed.

The translator hands back the same dict for an object it did not recompute, so an object already
validated is recognised by identity and not checked again: a route change at 1,000 services checks
that route configuration's routes, not every upstream.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sidecar_agent.schema import KINDS, Schemas


class SchemaCheck:
    def __init__(self, schema_dir: str | Path) -> None:
        self._schemas = Schemas(schema_dir)
        self._valid: dict[tuple[str, Any], Mapping] = {}  # (document key, id) -> the object found valid

    def __call__(self, document: Mapping[str, Any]) -> list[str]:
        problems: list[str] = []
        valid: dict[tuple[str, Any], Mapping] = {}
        for key, objects in sorted(document.items()):
            kind = KINDS.get(key)
            if kind is None:
                problems.append(f"{key}: not a document key APISIX knows")
                continue
            for obj in objects:
                slot = (key, obj.get("id"))
                if self._valid.get(slot) is not obj:
                    found = self._schemas.check(kind, obj)
                    if found:
                        problems += [f"{key}/{slot[1]}: {p}" for p in found]
                        continue
                valid[slot] = obj
        if not problems:
            self._valid = valid  # only references: the objects are the translator's own
        return problems
