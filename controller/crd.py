"""The AmeshPluginConfig custom resource (apisix.apache.org/v1alpha1, short name ampc) as frozen values.

    spec:
      selector: {matchLabels: {...}, matchExpressions: [{key, operator, values}]}   # absent = every pod
      plugins:                                       # at least one
        - name: response-rewrite
          type: ""                                   # "", pre-req, post-req
          config: {headers: {set: {X-Mesh: "1"}}}    # a structured object, not a JSON string
          direction: both                            # optional: outbound (default), inbound, both

`parse(obj, check_plugin)` never raises for a bad spec: it returns a `PluginConfig` whose `problems` name
each defect, so the controller can report it in status and deliver nothing from it. Only an object that
cannot be identified at all (no metadata.namespace/name) raises `CrdError`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone

from amesh_common.plugin_model import Direction, PluginType

GROUP, VERSION, PLURAL, KIND = "apisix.apache.org", "v1alpha1", "ameshpluginconfigs", "AmeshPluginConfig"


class CrdError(ValueError):
    """The object is not an identifiable AmeshPluginConfig."""


DIRECTIONS = {"outbound": (Direction.OUTBOUND,), "inbound": (Direction.INBOUND,),
              "both": (Direction.OUTBOUND, Direction.INBOUND)}
OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


@dataclass(frozen=True)
class Requirement:
    key: str
    operator: str
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        # Kubernetes semantics: NotIn and DoesNotExist also match pods without the key.
        present = self.key in labels
        if self.operator == "In":
            return present and labels[self.key] in self.values
        if self.operator == "NotIn":
            return not present or labels[self.key] not in self.values
        if self.operator == "Exists":
            return present
        return not present


@dataclass(frozen=True)
class LabelSelector:
    """A parsed metav1.LabelSelector; the empty selector matches every pod (as in Kubernetes)."""

    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return (all(labels.get(k) == v for k, v in self.match_labels)
                and all(r.matches(labels) for r in self.match_expressions))


EVERYTHING = LabelSelector()


@dataclass(frozen=True)
class PluginSpec:
    name: str
    type: PluginType
    config_json: str  # canonical JSON (sorted keys): equal configs compare and hash equal
    directions: tuple[Direction, ...]

    @property
    def config(self) -> dict:
        return json.loads(self.config_json)


@dataclass(frozen=True)
class PluginConfig:
    namespace: str
    name: str
    uid: str = ""
    generation: int = 0
    created: datetime = datetime.min.replace(tzinfo=timezone.utc)
    selector: LabelSelector = EVERYTHING
    plugins: tuple[PluginSpec, ...] = ()
    problems: tuple[str, ...] = ()  # empty = valid; otherwise nothing of this config reaches a sidecar

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    @property
    def source(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def valid(self) -> bool:
        return not self.problems


# (plugin name, type, config) -> problems; the caller validates against APISIX's schema for that plugin.
CheckPlugin = Callable[[str, PluginType, dict], list[str]]


def canonical_json(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def parse(obj: Mapping, check_plugin: CheckPlugin | None = None) -> PluginConfig:
    meta = obj.get("metadata") if isinstance(obj, Mapping) else None
    if not isinstance(meta, Mapping) or not meta.get("namespace") or not meta.get("name"):
        raise CrdError("AmeshPluginConfig without metadata.namespace and metadata.name")
    problems: list[str] = []
    if obj.get("apiVersion") not in (None, f"{GROUP}/{VERSION}") or obj.get("kind") not in (None, KIND):
        problems.append(f"not a {GROUP}/{VERSION} {KIND}: {obj.get('apiVersion')}/{obj.get('kind')}")
    spec = obj.get("spec")
    if not isinstance(spec, Mapping):
        spec = {}
        problems.append("spec: missing or not an object")
    selector = parse_selector(spec.get("selector"), problems)
    plugins = _plugins(spec.get("plugins"), check_plugin, problems)
    return PluginConfig(
        namespace=meta["namespace"], name=meta["name"], uid=str(meta.get("uid", "")),
        generation=int(meta.get("generation") or 0), created=_timestamp(meta.get("creationTimestamp")),
        selector=selector, plugins=plugins, problems=tuple(problems))


def parse_selector(raw: object, problems: list[str], where: str = "spec.selector") -> LabelSelector:
    if raw is None:
        return EVERYTHING
    if not isinstance(raw, Mapping):
        problems.append(f"{where}: not an object")
        return EVERYTHING
    unknown = sorted(set(raw) - {"matchLabels", "matchExpressions"})
    if unknown:
        problems.append(f"{where}: unknown fields {unknown}")
    labels = raw.get("matchLabels") or {}
    if not isinstance(labels, Mapping) or not all(isinstance(k, str) and isinstance(v, str)
                                                  for k, v in labels.items()):
        problems.append(f"{where}.matchLabels: must map label names to string values")
        labels = {}
    requirements = []
    expressions = raw.get("matchExpressions") or []
    if not isinstance(expressions, list):
        problems.append(f"{where}.matchExpressions: not a list")
        expressions = []
    for i, expr in enumerate(expressions):
        at = f"{where}.matchExpressions[{i}]"
        if not isinstance(expr, Mapping) or not isinstance(expr.get("key"), str) or not expr.get("key"):
            problems.append(f"{at}: needs a key")
            continue
        op, values = expr.get("operator"), expr.get("values") or []
        if op not in OPERATORS:
            problems.append(f"{at}: operator {op!r} is not one of {', '.join(OPERATORS)}")
            continue
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            problems.append(f"{at}: values must be a list of strings")
            continue
        if op in ("In", "NotIn") and not values:
            problems.append(f"{at}: operator {op} needs at least one value")
            continue
        if op in ("Exists", "DoesNotExist") and values:
            problems.append(f"{at}: operator {op} takes no values")
            continue
        requirements.append(Requirement(expr["key"], op, frozenset(values)))
    return LabelSelector(tuple(sorted(labels.items())), tuple(requirements))


def _plugins(raw: object, check_plugin: CheckPlugin | None,
             problems: list[str]) -> tuple[PluginSpec, ...]:
    if not isinstance(raw, list) or not raw:
        problems.append("spec.plugins: needs at least one plugin")
        return ()
    out: list[PluginSpec] = []
    claimed: dict[tuple, int] = {}
    for i, item in enumerate(raw):
        at = f"spec.plugins[{i}]"
        if not isinstance(item, Mapping):
            problems.append(f"{at}: not an object")
            continue
        before = len(problems)
        name = item.get("name")
        if not isinstance(name, str) or not name:
            problems.append(f"{at}.name: must be a non-empty string")
        try:
            ptype = PluginType(item.get("type", "") or "")
        except ValueError:
            problems.append(f"{at}.type: {item.get('type')!r} is not one of \"\", pre-req, post-req")
            ptype = PluginType.PLAIN
        config = item.get("config", {})
        if isinstance(config, str):
            problems.append(f"{at}.config: must be an object, not a JSON string")
        elif not isinstance(config, Mapping):
            problems.append(f"{at}.config: must be an object")
        direction = item.get("direction") or "outbound"
        if direction not in DIRECTIONS:
            problems.append(f"{at}.direction: {direction!r} is not one of outbound, inbound, both")
        if len(problems) > before:
            continue
        for d in DIRECTIONS[direction]:
            if (name, ptype, d) in claimed:
                problems.append(f"{at}: {ptype.value or 'plugin'} {name!r} ({d.value}) is already "
                                f"set by spec.plugins[{claimed[(name, ptype, d)]}]")
            claimed.setdefault((name, ptype, d), i)
        if check_plugin is not None:
            problems += [f"{at} ({name}): {p}" for p in check_plugin(name, ptype, dict(config))]
        out.append(PluginSpec(name, ptype, canonical_json(config), DIRECTIONS[direction]))
    return tuple(out)


def _timestamp(raw: object) -> datetime:
    # creationTimestamp is RFC 3339 (UTC, 'Z'); parsed rather than compared as text.
    if isinstance(raw, str) and raw:
        try:
            value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
            return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
        except ValueError:
            pass
    return datetime.min.replace(tzinfo=timezone.utc)
