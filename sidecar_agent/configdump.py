"""Load Envoy xDS resources from an admin `/config_dump`, a resource list or a directory.

Accepted input (JSON or YAML, snake_case or camelCase protojson names):

- an Envoy admin `/config_dump` (`{"configs": [...ListenersConfigDump, RoutesConfigDump, ...]}`), with or
  without the EDS section; only the *dynamic* (xDS-delivered) resources are taken, bootstrap (static)
  ones are skipped and noted;
- a DiscoveryResponse-like `{"resources": [...]}`, a list of resources, or one resource; a resource
  without `@type` is recognised by its fields or by the file name (`*.routes.yaml`, `*.clusters.json`…);
- a directory: every `*.json`, `*.yaml`, `*.yml` file in it (sorted by name) is read that way.

Typed configs that xds-protos does not know (Istio's `istio.*` filters, stats, metadata exchange) are
kept as `xds.type.v3.TypedStruct` (type URL + JSON value) instead of failing the parse; fields unknown
to this xds-protos version are ignored. Both are recorded as `ParseNote`s so the translation report
shows them. Structurally invalid input raises `ConfigDumpError` naming the resource and the problem.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import pkgutil
from collections import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from google.protobuf import descriptor_pool, json_format
from google.protobuf.descriptor import FieldDescriptor as _CPP

from sidecar_agent.xds import types

LISTENER, ROUTE_CONFIG, CLUSTER, ENDPOINTS = "listener", "route_config", "cluster", "endpoints"

_TYPE_URL_KIND = {
    types.LISTENER: LISTENER,
    types.ROUTE_CONFIGURATION: ROUTE_CONFIG,
    types.CLUSTER: CLUSTER,
    types.CLUSTER_LOAD_ASSIGNMENT: ENDPOINTS,
}
_TYPED_STRUCT = types.PREFIX + "xds.type.v3.TypedStruct"


class ConfigDumpError(ValueError):
    """The input is not a readable set of xDS resources (the message says where and why)."""


@dataclass(frozen=True)
class ParseNote:
    """Something the parse could not carry over exactly (shown in the translation report)."""

    kind: str
    resource: str
    field: str
    detail: str


@dataclass(frozen=True)
class XdsResources:
    """Envoy v3 resources by name: Listener, RouteConfiguration, Cluster, ClusterLoadAssignment."""

    listeners: Mapping[str, Any] = field(default_factory=dict)
    route_configs: Mapping[str, Any] = field(default_factory=dict)
    clusters: Mapping[str, Any] = field(default_factory=dict)
    endpoints: Mapping[str, Any] = field(default_factory=dict)
    notes: tuple[ParseNote, ...] = ()


def load_config_dump(source: str | Path | Mapping | list, *, contents: Any = None) -> XdsResources:
    """Read `source` (a path to a file or directory, or already-parsed data) into xds-protos messages.
    `contents`: the file `source` names, already read with `read_file` (a caller that needed it first
    does not make it read twice)."""
    collector = _Collector()
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix in (".json", ".yaml", ".yml") and p.is_file())
            if not files:
                raise ConfigDumpError(f"{path}: directory holds no .json/.yaml/.yml files")
            for file in files:
                collector.collect(_read(file), _hint_from_name(file.name), str(file))
        elif path.is_file():
            collector.collect(_read(path) if contents is None else contents, _hint_from_name(path.name), str(path))
        else:
            raise ConfigDumpError(f"{path}: no such file or directory")
    elif isinstance(source, (Mapping, list)):
        collector.collect(source, None, "<data>")
    else:
        raise ConfigDumpError(f"unsupported source type {type(source).__name__}")
    return collector.result()


# --- reading -------------------------------------------------------------------------------------


def read_file(path: Path) -> Any:
    """One input file's data (JSON, else YAML); ConfigDumpError when it is neither."""
    return _read(path)


def _read(path: Path) -> Any:
    text = path.read_text(encoding="utf-8")
    try:
        return json.loads(text)
    except ValueError:
        pass
    import yaml  # only YAML input pays for the import

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        return yaml.load(text, Loader=loader)
    except yaml.YAMLError as exc:
        raise ConfigDumpError(f"{path}: neither JSON nor YAML: {exc}") from None


def _hint_from_name(name: str) -> str | None:
    lowered = name.lower()
    for marker, kind in (("listener", LISTENER), ("route", ROUTE_CONFIG), ("edsz", ENDPOINTS),
                         ("endpoint", ENDPOINTS), ("cluster", CLUSTER)):
        if marker in lowered:
            return kind
    return None


def _get(data: Mapping, snake: str, default: Any = None) -> Any:
    """Field by its protojson snake_case or camelCase name."""
    if snake in data:
        return data[snake]
    head, *rest = snake.split("_")
    return data.get(head + "".join(part.capitalize() for part in rest), default)


class _Collector:
    def __init__(self) -> None:
        self.found: dict[str, dict[str, Any]] = {LISTENER: {}, ROUTE_CONFIG: {}, CLUSTER: {}, ENDPOINTS: {}}
        self.notes: list[ParseNote] = []

    def result(self) -> XdsResources:
        return XdsResources(
            listeners=self.found[LISTENER], route_configs=self.found[ROUTE_CONFIG],
            clusters=self.found[CLUSTER], endpoints=self.found[ENDPOINTS],
            notes=tuple(sorted(set(self.notes), key=lambda n: (n.kind, n.resource, n.field, n.detail))),
        )

    def collect(self, data: Any, hint: str | None, where: str) -> None:
        if data is None:
            return
        if isinstance(data, list):
            for item in data:
                self.collect(item, hint, where)
            return
        if not isinstance(data, Mapping):
            raise ConfigDumpError(f"{where}: expected an object or a list, got {type(data).__name__}")
        if "configs" in data:
            self._config_dump(data["configs"], where)
        elif "resources" in data and isinstance(data["resources"], list):
            url = _get(data, "type_url")
            self.collect(data["resources"], _TYPE_URL_KIND.get(url, hint), where)
        elif "@type" in data:
            url = data["@type"]
            if url == types.PREFIX + "envoy.service.discovery.v3.Resource":
                self.collect(data.get("resource"), hint, where)
            elif url in _TYPE_URL_KIND:
                self.add(_TYPE_URL_KIND[url], data, where)
            else:
                raise ConfigDumpError(f"{where}: unexpected resource type {url}")
        else:
            self.add(_infer_kind(data, hint, where), data, where)

    def _config_dump(self, configs: Any, where: str) -> None:
        if not isinstance(configs, list):
            raise ConfigDumpError(f"{where}: `configs` must be a list")
        for section in configs:
            kind = types.message_name(str(section.get("@type", "")))
            if kind == "envoy.admin.v3.ListenersConfigDump":
                self._static(section, "static_listeners", LISTENER)
                for item in _get(section, "dynamic_listeners", []):
                    state = _get(item, "active_state") or _get(item, "warming_state")
                    if state and "listener" in state:
                        self.add(LISTENER, state["listener"], where)
            elif kind == "envoy.admin.v3.RoutesConfigDump":
                self._static(section, "static_route_configs", ROUTE_CONFIG)
                for item in _get(section, "dynamic_route_configs", []):
                    self.add(ROUTE_CONFIG, _get(item, "route_config"), where)
            elif kind == "envoy.admin.v3.ClustersConfigDump":
                self._static(section, "static_clusters", CLUSTER)
                for key in ("dynamic_active_clusters", "dynamic_warming_clusters"):
                    for item in _get(section, key, []):
                        self.add(CLUSTER, item.get("cluster"), where)
            elif kind == "envoy.admin.v3.EndpointsConfigDump":
                self._static(section, "static_endpoint_configs", ENDPOINTS)
                for item in _get(section, "dynamic_endpoint_configs", []):
                    self.add(ENDPOINTS, _get(item, "endpoint_config"), where)
            # Bootstrap, secrets and scoped routes are not translated: nothing to collect.

    def _static(self, section: Mapping, key: str, kind: str) -> None:
        # Bootstrap resources (admin, stats, the xDS/SDS clusters) belong to Envoy itself, not the mesh.
        for item in _get(section, key, []):
            body = next((v for v in item.values() if isinstance(v, Mapping)), {})
            name = _get(body, "cluster_name" if kind == ENDPOINTS else "name", "?")
            self.notes.append(ParseNote(kind, str(name), "(static)", "bootstrap resource not translated"))

    def add(self, kind: str, data: Any, where: str) -> None:
        if not isinstance(data, Mapping):
            raise ConfigDumpError(f"{where}: a {kind} resource must be an object")
        message = _parse(kind, data, where, self.notes)
        name = message.cluster_name if kind == ENDPOINTS else message.name
        if not name:
            raise ConfigDumpError(f"{where}: {kind} resource without a name")
        table = self.found[kind]
        if name in table and table[name] != message:
            raise ConfigDumpError(f"{where}: two different {kind} resources named {name!r}")
        table[name] = message


def _infer_kind(data: Mapping, hint: str | None, where: str) -> str:
    keys = set(data)
    if keys & {"virtual_hosts", "virtualHosts", "vhds"}:
        return ROUTE_CONFIG
    if keys & {"filter_chains", "filterChains", "listener_filters", "listenerFilters", "address",
               "default_filter_chain", "defaultFilterChain"}:
        return LISTENER
    if keys & {"cluster_name", "clusterName"} and keys <= {"cluster_name", "clusterName", "endpoints",
                                                         "policy", "named_endpoints", "namedEndpoints"}:
        return ENDPOINTS
    if keys & {"connect_timeout", "connectTimeout", "lb_policy", "lbPolicy", "eds_cluster_config",
               "edsClusterConfig", "load_assignment", "loadAssignment", "cluster_type", "clusterType"}:
        return CLUSTER
    if hint:
        return hint
    raise ConfigDumpError(f"{where}: cannot tell which xDS resource this is (keys: {sorted(keys)[:8]})")


# --- protobuf parsing ----------------------------------------------------------------------------


def _message_class(kind: str) -> type:
    if kind == LISTENER:
        from envoy.config.listener.v3 import listener_pb2
        return listener_pb2.Listener
    if kind == ROUTE_CONFIG:
        from envoy.config.route.v3 import route_pb2
        return route_pb2.RouteConfiguration
    if kind == CLUSTER:
        from envoy.config.cluster.v3 import cluster_pb2
        return cluster_pb2.Cluster
    from envoy.config.endpoint.v3 import endpoint_pb2
    return endpoint_pb2.ClusterLoadAssignment


def _parse(kind: str, data: Mapping, where: str, notes: list[ParseNote]) -> Any:
    _import_typed_structs()
    name = str(_get(data, "cluster_name" if kind == ENDPOINTS else "name", "?"))
    body = {k: v for k, v in data.items() if k != "@type"} if "@type" in data else data
    # The fast path first, before the walk for unknown Any types: it takes only types in the pool (an
    # unknown or not yet imported one raises), and then that walk would change nothing.
    message = _fast_parse(kind, body)
    if message is not None:
        return message
    opaque: list[str] = []
    body = _wrap_unknown_any(body, opaque)
    for url in opaque:
        notes.append(ParseNote(kind, name, "typed_config", f"{url} unknown to xds-protos, kept opaque"))
    message = _fast_parse(kind, body)  # with the unknown types wrapped and the others imported
    if message is not None:
        return message
    message = _message_class(kind)()
    try:
        json_format.ParseDict(body, message)
        return message
    except json_format.ParseError as exc:
        strict_error = str(exc)
    message = _message_class(kind)()
    try:
        json_format.ParseDict(body, message, ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        raise ConfigDumpError(f"{where}: invalid {kind} {name!r}: {exc}") from None
    notes.append(ParseNote(kind, name, "(unknown fields)", strict_error.split(" at ")[0][:200]))
    return message


def _fast_parse(kind: str, body: Mapping) -> Any:
    """The message `body` holds, by `_convert`; None when it leaves it to json_format."""
    message = _message_class(kind)()
    try:
        _convert(body, message)
    except Exception:  # noqa: BLE001  anything the fast path does not take: json_format decides, and words errors
        return None
    return message


class _Fallback(Exception):
    """Input the fast JSON -> protobuf path leaves to json_format."""


def _convert(value: Any, message: Any) -> None:
    """json_format.ParseDict(value, message) for the JSON a config dump holds, several times faster.

    protobuf's pure-Python json_format rebuilds a {json_name: field} dict for every message it parses
    (dozens per cluster) and checks every string against a regular expression: JSON -> protobuf was
    ~4x json.loads plus the binary parse (docs/translation.md, "Issue 12"). This walk takes fields from a
    per-type table and handles what dumps hold as json_format does: objects (SetInParent on each),
    lists, string-keyed maps, ints (and int64 strings), doubles, bools, ASCII strings, enum names,
    wrappers, durations, structs, Any of a generated type (packed by SerializeToString); other
    well-known types go to json_format.ParseDict. Anything else — nulls, NaN, floats, bytes, a field or oneof
    given twice, unknown names — raises, and the caller parses the whole resource with json_format
    instead, which also words the errors. Checked against json_format on every fixture dump
    (tests/translate/test_configdump_fast.py)."""
    if type(value) is not dict:
        raise _Fallback
    fields = _fields_of(message.DESCRIPTOR)
    seen: set = set()
    for key, item in value.items():
        spec = fields.get(key)
        if spec is None or item is None:
            raise _Fallback
        field, kind, group = spec
        if group in seen:  # the field (under both names) or its oneof given twice
            raise _Fallback
        seen.add(group)
        if kind is _MAP:
            if type(item) is not dict:
                raise _Fallback
            target = getattr(message, field.name)
            value_field = field.message_type.fields_by_name["value"]
            if value_field.message_type is not None:
                for map_key, entry in item.items():
                    _convert_message(entry, target[_map_key(map_key)])
            else:
                for map_key, entry in item.items():
                    target[_map_key(map_key)] = _scalar(value_field, entry)
        elif kind is _MESSAGES:
            if type(item) is not list:
                raise _Fallback
            target = getattr(message, field.name)
            for entry in item:
                _convert_message(entry, target.add())
        elif kind is _SCALARS:
            if type(item) is not list:
                raise _Fallback
            getattr(message, field.name).extend([_scalar(field, entry) for entry in item])
        elif kind is _MESSAGE:
            sub = getattr(message, field.name)
            sub.SetInParent()
            _convert_message(item, sub)
        else:
            setattr(message, field.name, _scalar(field, item))


def _convert_message(value: Any, message: Any) -> None:
    full_name = message.DESCRIPTOR.full_name
    if full_name == "google.protobuf.Any":
        if type(value) is not dict:
            raise _Fallback
        if not value:
            return
        type_url = value["@type"]
        sub = _any_class(type_url)()
        _convert({k: v for k, v in value.items() if k != "@type"}, sub)
        message.value = sub.SerializeToString()
        message.type_url = type_url
    elif full_name in _WRAPPERS:  # UInt32Value & co: the bare value, converted as the field it wraps
        message.value = _scalar(message.DESCRIPTOR.fields_by_name["value"], value)
    elif full_name in _FROM_STRING:  # what json_format does with them: FromJsonString (ValueError: fall back)
        if type(value) is not str:
            raise _Fallback
        message.FromJsonString(value)
    elif full_name == "google.protobuf.Struct":  # metadata: on every endpoint of a dump
        _convert_struct(value, message)
    elif full_name.startswith("google.protobuf."):  # other well-known types: their own JSON forms
        json_format.ParseDict(value, message)
    else:
        _convert(value, message)


def _convert_struct(value: Any, message: Any) -> None:
    """json_format's Struct, Value and ListValue conversion, step for step."""
    if type(value) is not dict:
        raise _Fallback
    message.Clear()  # as json_format: the struct is set even when empty
    fields = message.fields
    for key, item in value.items():
        _convert_value(item, fields[key])


def _convert_value(value: Any, message: Any) -> None:
    if isinstance(value, dict):
        _convert_struct(value, message.struct_value)
    elif isinstance(value, list):
        values = message.list_value
        values.ClearField("values")
        for item in value:
            _convert_value(item, values.values.add())
    elif value is None:
        message.null_value = 0
    elif isinstance(value, bool):
        message.bool_value = value
    elif isinstance(value, str):
        message.string_value = value
    elif isinstance(value, (int, float)):
        message.number_value = value
    else:
        raise _Fallback


_WRAPPERS = frozenset(f"google.protobuf.{name}Value" for name in
                      ("Double", "Float", "Int64", "UInt64", "Int32", "UInt32", "Bool", "String", "Bytes"))
_FROM_STRING = frozenset({"google.protobuf.Duration", "google.protobuf.Timestamp", "google.protobuf.FieldMask"})


_MAP, _MESSAGES, _SCALARS, _MESSAGE, _SCALAR = range(5)
_field_tables: dict[Any, dict[str, tuple]] = {}
_any_classes: dict[str, type] = {}


def _fields_of(descriptor) -> dict[str, tuple]:
    """JSON name and proto name -> (field, kind, group): `group` is the oneof's name for oneof members."""
    table = _field_tables.get(descriptor)
    if table is None:
        table = {}
        for field in descriptor.fields:
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                kind = _MAP
            elif field.is_repeated:
                kind = _MESSAGES if field.message_type is not None else _SCALARS
            else:
                kind = _MESSAGE if field.message_type is not None else _SCALAR
            group = ("oneof", field.containing_oneof.name) if field.containing_oneof is not None else field.name
            table[field.name] = table[field.json_name] = (field, kind, group)
        _field_tables[descriptor] = table
    return table


def _any_class(type_url: str) -> type:
    cls = _any_classes.get(type_url)
    if cls is None:
        from google.protobuf import message_factory

        descriptor = _pool.FindMessageTypeByName(type_url.split("/")[-1])  # KeyError: unknown, fall back
        if descriptor.full_name.startswith("google.protobuf."):
            raise _Fallback  # a well-known type in an Any has a JSON form of its own
        cls = _any_classes[type_url] = message_factory.GetMessageClass(descriptor)
    return cls


def _map_key(key: str) -> str:
    if key.isascii():  # string keys only (others are converted from their JSON form: json_format's)
        return key
    raise _Fallback


def _scalar(field, value: Any) -> Any:
    cpp = field.cpp_type
    kind = type(value)
    if cpp in (_CPP.CPPTYPE_INT32, _CPP.CPPTYPE_INT64, _CPP.CPPTYPE_UINT32, _CPP.CPPTYPE_UINT64):
        if kind is int:  # not bool, not 1.0
            return value
        if kind is str and " " not in value:  # the JSON form of 64-bit ints: int() as json_format does
            return int(value)
    elif cpp == _CPP.CPPTYPE_STRING:
        if kind is str and field.type == _CPP.TYPE_STRING and value.isascii():  # no surrogate to check
            return value
    elif cpp == _CPP.CPPTYPE_BOOL:
        if kind is bool:
            return value
    elif cpp == _CPP.CPPTYPE_ENUM:
        if kind is str:
            number = field.enum_type.values_by_name.get(value)
            if number is not None:
                return number.number
    elif cpp == _CPP.CPPTYPE_DOUBLE:
        if (kind is float and math.isfinite(value)) or kind is int:  # json_format refuses NaN, Infinity
            return float(value)
    raise _Fallback


def _wrap_unknown_any(value: Any, opaque: list[str]) -> Any:
    """Replace `Any` values whose type xds-protos lacks by a TypedStruct carrying the same JSON.

    Copy on write: a list or object holding no such value is returned as it is (most of a dump), so
    the walk allocates nothing for it; copying everything was a quarter of loading a config dump
    (benchmarks/translate.py, "config dump" rows)."""
    if isinstance(value, list):
        for at, item in enumerate(value):
            if isinstance(item, _SCALARS):  # most leaves: no call
                continue
            wrapped = _wrap_unknown_any(item, opaque)
            if wrapped is not item:
                return value[:at] + [wrapped] + [_wrap_unknown_any(v, opaque) for v in value[at + 1:]]
        return value
    if isinstance(value, _SCALARS) or not isinstance(value, abc.Mapping):
        return value
    url = value.get("@type")
    if isinstance(url, str) and not known_type(url):
        opaque.append(url)
        return {"@type": _TYPED_STRUCT, "type_url": url, "value": {k: v for k, v in value.items() if k != "@type"}}
    changed = {}
    for key, item in value.items():
        if isinstance(item, _SCALARS):
            continue
        wrapped = _wrap_unknown_any(item, opaque)
        if wrapped is not item:
            changed[key] = wrapped
    return {**value, **changed} if changed else value


_SCALARS = (str, int, float, type(None))  # what JSON and YAML leaves are (bool is an int)


def _import_typed_structs() -> None:
    # Generic wrappers that Istio uses and that the opaque fallback produces.
    importlib.import_module("xds.type.v3.typed_struct_pb2")
    importlib.import_module("udpa.type.v1.typed_struct_pb2")


_pool = descriptor_pool.Default()
_known_cache: dict[str, bool] = {}


def known_type(type_url: str) -> bool:
    """Is `type_url`'s message in the default pool (importing its package's generated modules if needed)?"""
    name = types.message_name(type_url)
    if name not in _known_cache:
        _known_cache[name] = _find(name) or (_import_packages_of(name) and _find(name))
    return _known_cache[name]


def _find(name: str) -> bool:
    try:
        _pool.FindMessageTypeByName(name)
        return True
    except KeyError:
        return False


def _import_packages_of(name: str) -> bool:
    """Import the generated modules of the proto package of `name` (a.b.v3.Msg -> a/b/v3/*_pb2)."""
    parts = name.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        package = ".".join(parts[:cut])
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.submodule_search_locations:
            continue
        for info in pkgutil.iter_modules(spec.submodule_search_locations):
            if info.name.endswith("_pb2"):
                importlib.import_module(f"{package}.{info.name}")
        return True
    return False


def iter_resources(resources: XdsResources) -> Iterable[tuple[str, str, Any]]:
    """(kind, name, message) for every resource, in a fixed order."""
    for kind, table in ((CLUSTER, resources.clusters), (ENDPOINTS, resources.endpoints),
                        (LISTENER, resources.listeners), (ROUTE_CONFIG, resources.route_configs)):
        for name in sorted(table):
            yield kind, name, table[name]
