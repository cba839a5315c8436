"""Validate an APISIX document against APISIX's own JSON Schemas (3.18: `../shared/apisix-schema/3.18`).

Like APISIX: Draft 7, `format` asserted, `default`s filled in while validating (before `anyOf`/`if`
are looked at), every plugin checked with its own `plugins/<name>.json` (an unknown plugin is an error).
On top of the schemas, the document-level rules APISIX's standalone mode enforces or that the agent
guarantees: ids unique per type, every `upstream_id` (route or traffic-split) names an upstream.

The sidecar's own plugins (`amesh-passthrough`, `amesh-rbac`, shipped in sidecar_agent/lua/apisix/plugins/
and enabled by the generated config.yaml) are not in APISIX's set: exactly those plugins are checked with
the schema shipped beside each (the one its Lua `check_schema` uses); any other unknown plugin stays an error.
"""

from __future__ import annotations

import copy
import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

from sidecar_agent.apisix.datapath import PASSTHROUGH_PLUGIN, RBAC_PLUGIN, TLS_PLUGIN

# The sidecar's own plugins -> their schema, beside the Lua module.
OWN_PLUGINS = {name: Path(__file__).resolve().parent / "lua" / "apisix" / "plugins" / f"{name}.schema.json"
               for name in (PASSTHROUGH_PLUGIN, RBAC_PLUGIN, TLS_PLUGIN)}
# Document key -> core schema name.
KINDS = {"routes": "route", "upstreams": "upstream", "services": "service", "stream_routes": "stream_route",
         "ssls": "ssl", "global_rules": "global_rule", "plugin_configs": "plugin_config", "consumers": "consumer"}


class SchemaDirError(FileNotFoundError, ValueError):
    """The schema directory is not one (a FileNotFoundError for callers that catch that)."""


class Schemas:
    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        if not (self.directory / "core" / "route.json").is_file():
            raise SchemaDirError(_not_a_schema_dir(self.directory))

    @lru_cache(maxsize=None)
    def _validator(self, relative: str):
        from jsonschema import Draft7Validator

        path = self.directory / relative
        name = relative.removeprefix("plugins/").removesuffix(".json")
        if relative.startswith("plugins/") and name in OWN_PLUGINS:
            path = OWN_PLUGINS[name]
        if not path.is_file():
            return None
        return _apisix_like()(json.loads(path.read_text()), format_checker=Draft7Validator.FORMAT_CHECKER)

    def check(self, kind: str, obj: dict) -> list[str]:
        """Problems of one object of core schema `kind` (route, upstream, …) and of its plugins."""
        errors = self.check_core(kind, obj)
        for name, conf in sorted((obj.get("plugins") or {}).items()):
            errors += self.check_plugin(name, conf)
        return errors

    def check_core(self, kind: str, obj: dict) -> list[str]:
        """The object against its core schema (which sees `plugins` only as an object)."""
        core = self._validator(f"core/{kind}.json")
        if core is None:
            return [f"no core schema {kind!r}"]
        return [_describe(e) for e in core.iter_errors(copy.deepcopy(obj))]  # defaults are filled in: a copy

    def check_plugin(self, name: str, conf: Any) -> list[str]:
        plugin = self._validator(f"plugins/{name}.json")
        if plugin is None:
            return [f"unknown plugin {name!r}"]
        return [f"plugin {name}: {_describe(e)}" for e in plugin.iter_errors(copy.deepcopy(conf))]


def _not_a_schema_dir(directory: Path) -> str:
    """One line naming the problem and what to give instead (a version folder below, if there is one)."""
    below = sorted(p.parent.parent for p in directory.glob("*/core/route.json")) if directory.is_dir() else []
    hint = (f"give a version folder, e.g. {below[-1]}" if below
            else "give the folder holding core/ and plugins/, e.g. sidecar_agent/schemas/apisix-3.18")
    return f"{directory}: not an APISIX schema directory (no core/route.json); {hint}"


def validate_document(document: dict, schema_dir: str | Path) -> list[str]:
    """Every problem of `document`, each naming the object; empty when APISIX would accept it."""
    schemas = Schemas(schema_dir)
    problems = []
    for key, objects in sorted(document.items()):
        if key.endswith("_conf_version"):
            continue
        kind = KINDS.get(key)
        if kind is None:
            problems.append(f"{key}: not a document key this validator knows")
            continue
        seen: set = set()
        for obj in objects:
            oid = obj.get("id")
            if oid is None:
                problems.append(f"{key}: an object without id")
            elif oid in seen:
                problems.append(f"{key}/{oid}: duplicate id")
            seen.add(oid)
            problems += [f"{key}/{oid}: {p}" for p in schemas.check(kind, obj)]
    upstream_ids = {u.get("id") for u in document.get("upstreams", [])}
    for key in ("routes", "services", "stream_routes"):
        for obj in document.get(key, []):
            for ref in _upstream_refs(obj):
                if ref not in upstream_ids:
                    problems.append(f"{key}/{obj.get('id')}: upstream {ref!r} does not exist")
    return problems


def _upstream_refs(obj: dict) -> Iterator[Any]:
    if "upstream_id" in obj:
        yield obj["upstream_id"]
    split = (obj.get("plugins") or {}).get("traffic-split") or {}
    for rule in split.get("rules", []):
        for entry in rule.get("weighted_upstreams", []):
            if "upstream_id" in entry:
                yield entry["upstream_id"]


def _describe(error) -> str:
    where = "/".join(str(p) for p in error.absolute_path)
    return f"{where}: {error.message}" if where else error.message


@lru_cache(maxsize=1)
def _apisix_like():
    """A Draft-7 validator class that fills defaults first, as APISIX's Lua validator does."""
    from jsonschema import Draft7Validator, validators

    def properties_with_defaults(validator, properties, instance, schema):
        if validator.is_type(instance, "object"):
            for name, sub in properties.items():
                if isinstance(sub, dict) and "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from Draft7Validator.VALIDATORS["properties"](validator, properties, instance, schema)

    def properties_first(schema):
        if not isinstance(schema, dict):
            return []
        return sorted(schema.items(), key=lambda item: item[0] != "properties")

    return validators.create(
        meta_schema=Draft7Validator.META_SCHEMA,
        validators={**Draft7Validator.VALIDATORS, "properties": properties_with_defaults},
        type_checker=Draft7Validator.TYPE_CHECKER,
        format_checker=Draft7Validator.FORMAT_CHECKER,
        applicable_validators=properties_first,
    )
