"""Diagnostics on the loopback admin port: Envoy-format `/config_dump` of the raw xDS held, and the
current APISIX document — so `istioctl proxy-config` and humans see what the agent sees."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

from envoy.admin.v3 import config_dump_pb2, config_dump_shared_pb2
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.core.v3 import base_pb2
from google.protobuf import any_pb2, descriptor_pool, json_format, message_factory

# Registered for json_format: the typed configs Istio puts in listeners, routes and clusters.
from envoy.extensions.filters.http.cors.v3 import cors_pb2  # noqa: F401
from envoy.extensions.filters.http.fault.v3 import fault_pb2  # noqa: F401
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2  # noqa: F401
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2  # noqa: F401
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2  # noqa: F401
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: F401

from sidecar_agent.plugins.merge import shadowed
from amesh_common.plugin_model import PluginSet
from sidecar_agent import configdump
from sidecar_agent.store import Snapshot
from sidecar_agent.xds import kinds, types


def _packed(message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def _held(kind: kinds.Kind, resource) -> any_pb2.Any:
    # The bytes istiod sent, re-wrapped: nothing is decoded to build the dump.
    return any_pb2.Any(type_url=kind.type_url, value=resource.value)


def config_dump_message(snapshot: Snapshot, node: base_pb2.Node, include_eds: bool) -> config_dump_pb2.ConfigDump:
    bootstrap = config_dump_pb2.BootstrapConfigDump(bootstrap=bootstrap_pb2.Bootstrap(node=node))
    clusters = config_dump_shared_pb2.ClustersConfigDump(version_info=snapshot.version(kinds.CDS))
    for cluster in snapshot.items(kinds.CDS).values():
        clusters.dynamic_active_clusters.add(version_info=snapshot.version(kinds.CDS),
                                             cluster=_held(kinds.CDS, cluster))
    listeners = config_dump_shared_pb2.ListenersConfigDump(version_info=snapshot.version(kinds.LDS))
    for name, listener in snapshot.items(kinds.LDS).items():
        dynamic = listeners.dynamic_listeners.add(name=name)
        dynamic.active_state.version_info = snapshot.version(kinds.LDS)
        dynamic.active_state.listener.CopyFrom(_held(kinds.LDS, listener))
    routes = config_dump_shared_pb2.RoutesConfigDump()
    for route in snapshot.items(kinds.RDS).values():
        routes.dynamic_route_configs.add(version_info=snapshot.version(kinds.RDS),
                                         route_config=_held(kinds.RDS, route))
    sections = [bootstrap, clusters, listeners, routes]
    if include_eds:
        endpoints = config_dump_shared_pb2.EndpointsConfigDump()
        for cla in snapshot.items(kinds.EDS).values():
            endpoints.dynamic_endpoint_configs.add(version_info=snapshot.version(kinds.EDS),
                                                   endpoint_config=_held(kinds.EDS, cla))
        sections.append(endpoints)
    return config_dump_pb2.ConfigDump(configs=[_packed(s) for s in sections])


def config_dump(snapshot: Snapshot, node: base_pb2.Node, include_eds: bool = False) -> dict[str, Any]:
    """Envoy admin's /config_dump JSON (EDS only with `?include_eds`, as in Envoy)."""
    return config_dump_of(config_dump_message(snapshot, node, include_eds))


def config_dump_of(message) -> dict[str, Any]:
    """`message` as JSON with proto field names, every Any rendered (opaque when its type is unknown here)."""
    opaque = load_any_types(message)
    out = json_format.MessageToDict(message, preserving_proto_field_name=True)
    for path, type_url, value in opaque:
        holder = out
        for key in path[:-1]:
            holder = holder[key]
        holder[path[-1]] = {"@type": type_url, "value_base64": base64.b64encode(value).decode()}
    return out


_EMPTY = any_pb2.Any(type_url="type.googleapis.com/google.protobuf.Empty")


def load_any_types(message, path: tuple = ()) -> list[tuple[tuple, str, bytes]]:
    """Import the generated module of every `Any` inside `message`, nested ones too: json_format resolves them
    through the default pool, and the agent imports only what it translates (istiod's TypedStruct-wrapped
    filters, sent with mTLS on, made /config_dump answer 500). An Any whose type no installed module has (Istio's
    own filters, e.g. istio.envoy.config.filter.http.alpn) is emptied here and returned — (path in the JSON,
    type URL, bytes) — for the dump to show opaque instead of failing."""
    opaque = []
    for field, value in message.ListFields():
        if field.type != field.TYPE_MESSAGE:
            continue
        if field.message_type.GetOptions().map_entry:
            if not field.message_type.fields_by_name["value"].message_type:
                continue
            items = [((*path, field.name, key), item) for key, item in value.items()]
        elif hasattr(value, "DESCRIPTOR"):  # one message
            items = [((*path, field.name), value)]
        else:  # a repeated field
            items = [((*path, field.name, i), item) for i, item in enumerate(value)]
        for where, item in items:
            if item.DESCRIPTOR.full_name != "google.protobuf.Any":
                opaque += load_any_types(item, where)
            elif configdump.known_type(item.type_url):
                descriptor = descriptor_pool.Default().FindMessageTypeByName(types.message_name(item.type_url))
                inner = message_factory.GetMessageClass(descriptor)()
                item.Unpack(inner)
                nested = load_any_types(inner, where)
                if nested:  # the Any's bytes are what json_format renders: re-pack the emptied copy
                    item.Pack(inner)
                    opaque += nested
            else:
                opaque.append((where, item.type_url, item.value))
                item.CopyFrom(_EMPTY)
    return opaque


def status(versions: Mapping[str, str], live_label: str | None, last_nack: Any, ready: str | None,
           plugins: Mapping[str, Any] | None = None, denied: Any = ()) -> dict:
    """`denied`: the translation report's entries with effect "denied" (fail closed: traffic refused)."""
    return {
        "xds_versions": dict(versions),
        "apisix_document": live_label,
        "ready": ready is None,
        "not_ready_reason": ready,
        "last_nack": None if last_nack is None else {
            "type_url": last_nack.type_url, "version": last_nack.version,
            "nonce": last_nack.nonce, "error": last_nack.error,
        },
        "plugins": plugins,
        "denied": [{"kind": e.kind, "resource": e.resource, "field": e.field, "count": e.count} for e in denied],
    }


def plugins(controller: str | None, stream: Mapping[str, Any] | None, in_force: PluginSet,
            refused: str | None, document: Mapping[str, Any] | None) -> dict:
    """/plugins: the controller's set in force, the stream's state, and where xDS plugins won."""
    return {
        "controller": controller,
        "stream": None if stream is None else dict(stream),
        "version": in_force.version,
        "plugins": [{"direction": p.direction.value, "type": p.type.value, "name": p.name, "source": p.source,
                     "config": p.config} for p in in_force.plugins],
        "refused": refused,
        # (route, plugin) where the translator's own plugin of that name kept the controller's off the route
        "shadowed": [{"route": route, "plugin": name}
                     for route, name in (shadowed(document, in_force) if document and in_force.plugins else [])],
    }


def plugins_summary(view: Mapping[str, Any]) -> dict | None:
    """The /status line of `plugins(...)`; None without a controller."""
    if view["controller"] is None:
        return None
    stream = view["stream"] or {}
    return {"controller": view["controller"], "connected": stream.get("connected", False),
            "version": view["version"], "count": len(view["plugins"]), "refused": view["refused"],
            "last_error": stream.get("last_error")}


def as_json(value: Any) -> tuple[int, str, bytes]:
    return 200, "application/json", (json.dumps(value, indent=2, sort_keys=False) + "\n").encode()
