"""The incremental translator: per-resource caches, reassembled into one APISIX document.

Each xDS resource is translated on its own and cached by name: a ClusterLoadAssignment update
recomputes only the upstreams of the clusters reading it, a RouteConfiguration update only its routes
(and builds the upstreams its new references need). `document()` reassembles the whole standalone
document from the caches: routes and upstreams sorted by id, every referenced upstream present (a
cluster missing from CDS gets an upstream without nodes, reported), ids unique.

The agent pushes after every change, so `document()` keeps the assembled, sorted lists and patches
only what changed since the last call (an upstream rebuilt, a route set swapped): a few ms at 10,000
services instead of re-sorting 90,000 objects. Many changes at once (a first load) are assembled from
scratch. Bulk loads (`load`, `replace_*`) pause the cyclic garbage collector: they allocate hundreds
of thousands of acyclic containers, which it would otherwise re-scan over and over (a third of the
time at 10,000 services). docs/translation.md ("Performance") has the figures.

Mirrors: route sets name the upstreams their proxy-mirror plugins copy to (`RouteSet.mirrors`); the
document holds one mirror-listener route per such upstream (route.mirror_route, plus one 404 catch-all
while there is any), counted across route sets like references and kept as one more route set
(`MIRROR_ROUTES`), recomputed lazily by document() when the set of mirrored upstreams changed.
"""

from __future__ import annotations

import gc
import sys
from bisect import bisect_left
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping, Sequence

import ipaddress

from sidecar_agent.apisix import datapath
from sidecar_agent.translate import ids
from sidecar_agent.translate import inbound as inbound_mod
from sidecar_agent.translate import stream as stream_mod
from sidecar_agent.translate import upstream as upstream_mod
from sidecar_agent.translate.action import PASSTHROUGH_CLUSTERS
from sidecar_agent.translate.cluster import translate_cluster
from sidecar_agent.translate.endpoint import NodePool, translate_endpoints
from sidecar_agent.translate.errors import TranslationError
from sidecar_agent.translate.index import SmallSets, among
from sidecar_agent.translate.listener import ListenerPart, translate_listener
from sidecar_agent.translate.report import Report, Unsupported
from sidecar_agent.translate.route import (RouteSet, mirror_catch_all, mirror_route, translate_route_config,
                                           with_websocket)
from sidecar_agent.translate.stream import OutboundPolicy
from sidecar_agent.translate.upstream import ClusterPart, EndpointPart, UpstreamRef


MIRROR_ROUTES = "amesh:mirror"  # the route-set key of the mirror listener's routes


@dataclass(frozen=True)
class Translation:
    document: dict  # the APISIX standalone document (plain JSON-ready data)
    report: Report


class Translator:
    """Keeps the translation of every resource; `set_*` / `remove_*` return the ids they touched.

    The data path (docs/data-path.md) is part of the document: `pod_ips` (INSTANCE_IPS) enable the
    inbound side (virtualInbound -> routes and stream routes on 15006; without them it is reported as
    not translated), `outbound_policy` overrides the one istiod encodes in virtualOutbound, and
    `data_path` is the base of the settings config.yaml is rendered from (`data_path_settings`:
    the HTTP ports of the held listeners, internal ports pinned while they stay)."""

    def __init__(self, *, pod_ips: Sequence[str] = (), outbound_policy: OutboundPolicy | None = None,
                 data_path: datapath.DataPathSettings | None = None) -> None:
        bad = [ip for ip in pod_ips if not _is_ip(ip)]
        if bad:
            raise ValueError(f"pod IPs {bad} are not IP addresses")
        if outbound_policy is not None and not isinstance(outbound_policy, OutboundPolicy):
            raise ValueError(f"outbound_policy {outbound_policy!r} is not an OutboundPolicy")
        self._pod_ips = tuple(pod_ips)
        self._policy = outbound_policy
        self._dp_base = data_path or datapath.DataPathSettings()
        self._dp_settings = datapath.with_ports(self._dp_base, (), (), self._pod_ips)
        self._listener_messages: dict[str, Any] = {}  # what stream.py / inbound.py read
        self._http_port: dict[str, int] = {}  # outbound HTTP listener -> its port
        self._inbound_clusters: dict[str, Any] = {}  # inbound|P|| clusters (STATIC vs ORIGINAL_DST)
        # data-path parts by key (an outbound listener's name, "virtualOutbound" for the catch-all,
        # "virtualInbound"); each part's stream routes and upstreams, counted by id across parts
        self._dp_parts: dict[str, tuple[tuple[dict, ...], tuple[dict, ...], tuple[Unsupported, ...]]] = {}
        self._dp_dirty: set[str] = set()
        self._stream_by_id: dict[str, dict] = {}
        self._stream_count: Counter[str] = Counter()
        self._stream_list: list[dict] | None = None
        self._dp_upstreams: dict[str, dict] = {}  # data-path upstream id -> object
        self._dp_upstream_count: Counter[str] = Counter()
        self._pending_dp_upstreams: set[str] = set()
        self._clusters: dict[str, tuple[ClusterPart, tuple[Unsupported, ...]]] = {}
        self._endpoints: dict[str, tuple[EndpointPart, tuple[Unsupported, ...]]] = {}
        self._route_sets: dict[str, RouteSet] = {}
        self._listeners: dict[str, ListenerPart] = {}
        # RDS name -> {listener: its connection manager upgrades websockets}: what the routes inherit
        self._rds_websocket: dict[str, dict[str, bool]] = {}
        self._notes: tuple[Unsupported, ...] = ()
        self._refs: Counter[UpstreamRef] = Counter()  # references from routes
        self._eds_users = SmallSets()  # ClusterLoadAssignment name -> clusters reading it
        self._upstreams: dict[UpstreamRef, dict] = {}  # built upstreams, invalidated per cluster
        self._by_cluster = SmallSets()  # cluster name -> its refs
        self._nodes = NodePool()  # node dicts shared by endpoint sets listing the same host
        self._plain: dict[str, UpstreamRef] = {}  # each cluster's plain ref, one object (its id computed once)
        # The assembled document: sorted ids and the objects in the same order (None: assemble anew),
        # patched by document() from what changed since (pending ids / refs).
        self._routes_cache: list[dict] | None = None
        self._route_order: list[str] = []
        self._route_count: Counter[str] = Counter()  # route id -> route sets producing it
        self._route_by_id: dict[str, dict] = {}
        self._pending_routes: set[str] = set()
        self._upstream_ids: list[str] | None = None
        self._fallback: tuple[ListenerPart | None, list[dict], frozenset[str]] | None = None
        self._upstream_list: list[dict] = []
        self._pending_upstreams: set[UpstreamRef] = set()
        # Mirrored upstreams (counted over route sets) and their mirror-listener routes (one object each)
        self._mirror_count: Counter[UpstreamRef] = Counter()
        self._mirror_routes: dict[UpstreamRef, dict] = {}
        self._mirror_catch_all = mirror_catch_all()
        self._mirrors_dirty = False

    # --- whole state ----------------------------------------------------------------------------

    def bulk(self):
        """Context manager for applying many resources one by one (a first snapshot): pauses the
        cyclic garbage collector as `load`/`replace_*` do (nothing here creates reference cycles;
        at 10,000 services the collector would otherwise cost a quarter of the time). Reentrant."""
        return _bulk()

    def load(self, resources) -> "Translator":
        """Replace everything with `resources` (a configdump.XdsResources)."""
        with _bulk():
            self.replace_clusters(resources.clusters)
            self.replace_endpoints(resources.endpoints)
            self.replace_listeners(resources.listeners)
            self.replace_route_configs(resources.route_configs)
        self._notes = tuple(Unsupported(n.kind, n.resource, f"{n.field}[{n.detail}]", 1)
                            for n in getattr(resources, "notes", ()))
        return self

    def replace_clusters(self, clusters: Mapping[str, Any]) -> set[str]:
        """State-of-the-world CDS: clusters not in `clusters` are removed."""
        touched = set()
        with _bulk():
            for name in set(self._clusters) - set(clusters):
                touched |= self.remove_cluster(name)
            for message in clusters.values():
                touched |= self.set_cluster(message)
        return touched

    def replace_endpoints(self, endpoints: Mapping[str, Any]) -> set[str]:
        touched = set()
        with _bulk():
            for name in set(self._endpoints) - set(endpoints):
                touched |= self.remove_endpoints(name)
            for message in endpoints.values():
                touched |= self.set_endpoints(message)
        return touched

    def replace_route_configs(self, route_configs: Mapping[str, Any]) -> set[str]:
        touched = set()
        with _bulk():
            for name in set(self._route_sets) - set(route_configs):
                touched |= self.remove_route_config(name)
            for message in route_configs.values():
                touched |= self.set_route_config(message)
        return touched

    def replace_listeners(self, listeners: Mapping[str, Any]) -> set[str]:
        touched = set()
        with _bulk():
            for name in set(self._listeners) - set(listeners):
                touched |= self.remove_listener(name)
            for message in listeners.values():
                touched |= self.set_listener(message)
        return touched

    # --- one resource ---------------------------------------------------------------------------

    def set_cluster(self, cluster) -> set[str]:
        part, report = translate_cluster(cluster)
        if part.name.startswith("inbound|"):
            self._inbound_clusters[part.name] = cluster
            self._dp_dirty.add("virtualInbound")
        old = self._clusters.get(part.name)
        if old is not None and old[0].eds_name:
            self._eds_users.discard(old[0].eds_name, part.name)
        self._clusters[part.name] = (part, report)
        if part.eds_name:
            self._eds_users.add(part.eds_name, part.name)
        plain = self._plain.get(part.name) or self._plain.setdefault(part.name, UpstreamRef(part.name))
        self._by_cluster.add(part.name, plain)
        return self._invalidate(part.name)

    def remove_cluster(self, name: str) -> set[str]:
        if self._inbound_clusters.pop(name, None) is not None:
            self._dp_dirty.add("virtualInbound")
        old = self._clusters.pop(name, None)
        if old is None:
            return set()
        if old[0].eds_name:
            self._eds_users.discard(old[0].eds_name, name)
        touched = self._invalidate(name)
        # Forget the plain ref unless routes still reference it (their upstream stays, without nodes).
        plain = self._plain.pop(name, None)
        if plain is not None and self._refs.get(plain, 0) <= 0:
            self._by_cluster.discard(name, plain)
        return touched

    def set_endpoints(self, cla) -> set[str]:
        name = sys.intern(cla.cluster_name)  # the str the cluster's eds_name already is
        if not name:
            raise TranslationError("ClusterLoadAssignment without cluster_name")
        self._endpoints[name] = translate_endpoints(cla, resource=name, pool=self._nodes)
        if self._nodes.needs_sweep():
            self._nodes.sweep(part.nodes for part, _ in self._endpoints.values())
        touched = set()
        for cluster in self._eds_users.get(name, ()):
            touched |= self._invalidate(cluster)
        return touched

    def remove_endpoints(self, name: str) -> set[str]:
        if self._endpoints.pop(name, None) is None:
            return set()
        touched = set()
        for cluster in self._eds_users.get(name, ()):
            touched |= self._invalidate(cluster)
        return touched

    def set_route_config(self, rc, wire: bytes | None = None) -> set[str]:
        """`wire`: the bytes `rc` was parsed from, if the caller has them (they find the unchanged virtual
        hosts without serializing `rc` again)."""
        # Virtual hosts unchanged since the last version are reused: their routes are the same objects.
        new = translate_route_config(rc, self._route_sets.get(rc.name), self._websocket(rc.name),
                                     self._dp_base.mirror_port, wire)
        return self._swap_route_set(rc.name, new)

    def remove_route_config(self, name: str) -> set[str]:
        return self._swap_route_set(name, None)

    def set_listener(self, listener) -> set[str]:
        part = translate_listener(listener, self._dp_base.mirror_port)
        port = stream_mod.http_port(listener)
        self._check_data_path(listener)  # invalid input raises here, not in a later document()
        self._listener_messages[part.name] = listener
        if port is None:
            self._http_port.pop(part.name, None)
        else:
            self._http_port[part.name] = port
        self._dp_dirty.add(part.name)
        touched = set()
        if part.name == "virtualOutbound":
            self._reassemble()
        old = self._listeners.get(part.name)
        for rs in old.inline if old else ():
            touched |= self._swap_route_set(rs.name, None, key=f"listener:{part.name}:{rs.name}")
        self._listeners[part.name] = part
        for rs in part.inline:
            touched |= self._swap_route_set(rs.name, rs, key=f"listener:{part.name}:{rs.name}")
        return touched | self._set_managers(part.name, old, dict(part.managers))

    def remove_listener(self, name: str) -> set[str]:
        if self._listener_messages.pop(name, None) is not None:
            self._http_port.pop(name, None)
            self._dp_dirty.add(name)
        old = self._listeners.pop(name, None)
        if name == "virtualOutbound":
            self._reassemble()
        touched = set()
        for rs in old.inline if old else ():
            touched |= self._swap_route_set(rs.name, None, key=f"listener:{name}:{rs.name}")
        return touched | self._set_managers(name, old, {})

    # --- output ---------------------------------------------------------------------------------

    @property
    def data_path_settings(self) -> datapath.DataPathSettings:
        """The settings this translation's internal ports come from: render config.yaml with them
        (`datapath.needs_reload(old, new)`: regenerate it and reload APISIX when they change)."""
        self._sync_data_path()
        return self._dp_settings

    def document(self) -> dict:
        """The whole APISIX document; shares its objects with the caches and earlier documents (read-only)."""
        with _bulk():
            self._sync_data_path()
            self._sync_mirrors()
            routes, upstreams = list(self._assembled_routes()), list(self._assembled_upstreams())
            stream_routes = self._assembled_stream_routes()
            if not stream_routes:
                return {"routes": routes, "upstreams": upstreams}
            return {"routes": routes, "stream_routes": list(stream_routes), "upstreams": upstreams}

    # --- the mirror listener's routes ----------------------------------------------------------

    def _sync_mirrors(self) -> None:
        """The mirror route set for the upstreams mirrored now; unchanged routes stay the same objects."""
        if not self._mirrors_dirty:
            return
        self._mirrors_dirty = False
        routes = {}
        for ref in self._mirror_count:
            routes[ref] = self._mirror_routes.get(ref) or mirror_route(ref)
        self._mirror_routes = routes
        if not routes:
            self._swap_route_set(MIRROR_ROUTES, None)
            return
        objects = tuple(sorted(routes.values(), key=_route_key)) + (self._mirror_catch_all,)
        self._swap_route_set(MIRROR_ROUTES, RouteSet(MIRROR_ROUTES, objects, frozenset(), ()))

    # --- the data path: stream routes on 15001/15006, inbound HTTP routes ----------------------

    def _sync_data_path(self) -> None:
        """Recompute the data-path parts whose input changed since the last call (lazily: a burst of
        set_* calls costs one recomputation). A listener recomputes its own stream route; a change
        of the HTTP port set re-pins the internal ports and recomputes the listeners whose port's
        internal listener moved (none, with pinning, unless a port came or went) and the inbound side."""
        dirty = self._dp_dirty
        if not dirty:
            return
        old = self._dp_settings
        inbound_ports: tuple[int, ...] = ()
        tls_ports: tuple[int, ...] = ()
        virtual_inbound = self._listener_messages.get("virtualInbound")
        if virtual_inbound is not None and self._pod_ips:
            inbound_ports, tls_ports = inbound_mod.served_ports(virtual_inbound)
        new = datapath.with_ports(self._dp_base, self._http_port.values(), inbound_ports, self._pod_ips, old,
                                  tls_ports)
        if new != old:
            moved = datapath.internal_ports(old).items() ^ datapath.internal_ports(new).items()
            moved_out = {port for (direction, port), _ in moved if direction is datapath.Direction.OUTBOUND}
            dirty.update(name for name, port in self._http_port.items() if port in moved_out)
            if any(direction is not datapath.Direction.OUTBOUND for (direction, _), _ in moved):
                dirty.add("virtualInbound")
            self._dp_settings = new
        internal = datapath.internal_ports(self._dp_settings)
        outbound = {p: i for (d, p), i in internal.items() if d is datapath.Direction.OUTBOUND}
        for key in sorted(dirty):
            listener = self._listener_messages.get(key)
            if key == "virtualInbound":
                self._set_dp_part(key, self._inbound_part(internal))
            elif listener is None:
                self._swap_route_set(f"datapath:{key}", None)
                self._set_dp_part(key, None)
            else:
                if key == "virtualOutbound":
                    part = stream_mod.translate_catch_all(self._policy or stream_mod.policy_of(listener))
                else:
                    part = stream_mod.translate_listener_stream(listener, outbound,
                                                                self._dp_settings.outbound_http_ports)
                # a TCP service's cluster upstream is referenced like a route's (nodes: [] if missing)
                refs = frozenset(self._plain.get(c) or UpstreamRef(c) for c in part.clusters)
                self._swap_route_set(f"datapath:{key}", RouteSet(key, (), refs, ()) if refs else None)
                self._set_dp_part(key, (part.stream_routes, part.upstreams, part.report))
        dirty.clear()

    def _check_data_path(self, listener) -> None:
        if listener.name == "virtualInbound":
            if self._pod_ips:
                http, tls_ports = inbound_mod.served_ports(listener)
                ports = dict.fromkeys(http, 0)
                tls = dict.fromkeys(tls_ports, 0) if self._dp_base.mtls_dir else None
                inbound_mod.translate_inbound(listener, self._pod_ips, ports, self._inbound_clusters, tls)
        elif listener.name != "virtualOutbound":
            port = listener.address.socket_address.port_value
            stream_mod.translate_listener_stream(listener, {port: 0})

    def _inbound_part(self, internal):
        listener = self._listener_messages.get("virtualInbound")
        if listener is None:
            return None
        if not self._pod_ips:
            return (), (), (Unsupported("listener", "virtualInbound",
                                        "listener[inbound: pod IPs unknown (INSTANCE_IPS), not translated]", 1),)
        ports = {p: i for (d, p), i in internal.items() if d is datapath.Direction.INBOUND}
        tls = ({p: i for (d, p), i in internal.items() if d is datapath.Direction.INBOUND_TLS}
               if self._dp_base.mtls_dir else None)
        part = inbound_mod.translate_inbound(listener, self._pod_ips, ports, self._inbound_clusters, tls)
        self._swap_route_set("datapath:virtualInbound",
                             RouteSet("virtualInbound", part.routes, frozenset(), ()))
        return part.stream_routes, part.upstreams, part.report

    def _set_dp_part(self, key: str, part) -> None:
        old = self._dp_parts.pop(key, None)
        if key == "virtualInbound" and (part is None or not part[0]):
            self._swap_route_set("datapath:virtualInbound", None)
        if part is not None:
            self._dp_parts[key] = part
        old_routes, old_upstreams = (old[0], old[1]) if old else ((), ())
        new_routes, new_upstreams = (part[0], part[1]) if part else ((), ())
        if old_routes != new_routes:
            self._stream_list = None
            for route in old_routes:
                self._stream_count[route["id"]] -= 1
                if self._stream_count[route["id"]] <= 0:
                    del self._stream_count[route["id"]]
                    self._stream_by_id.pop(route["id"], None)
            for route in new_routes:
                self._stream_count[route["id"]] += 1
                self._stream_by_id[route["id"]] = route
        if old_upstreams == new_upstreams:  # equal: keep the objects documents already hold
            if part is not None and old is not None:
                self._dp_parts[key] = (part[0] if old_routes != new_routes else old_routes, old_upstreams, part[2])
            return
        if old_routes == new_routes and old is not None and part is not None:
            self._dp_parts[key] = (old_routes, part[1], part[2])
        for upstream in old_upstreams:
            upstream_id = upstream["id"]
            self._dp_upstream_count[upstream_id] -= 1
            if self._dp_upstream_count[upstream_id] <= 0:
                del self._dp_upstream_count[upstream_id]
                self._dp_upstreams.pop(upstream_id, None)
            self._pending_dp_upstreams.add(upstream_id)
        for upstream in new_upstreams:
            self._dp_upstream_count[upstream["id"]] += 1
            self._dp_upstreams[upstream["id"]] = upstream
            self._pending_dp_upstreams.add(upstream["id"])

    def _assembled_stream_routes(self) -> list[dict]:
        # stream routes are one per listener (not per route): re-sorted only when one changed
        if self._stream_list is None:
            duplicated = [i for i, n in self._stream_count.items() if n > 1]
            if duplicated:
                raise TranslationError(f"two listeners produce stream route id {sorted(duplicated)[0]}")
            self._stream_list = sorted(self._stream_by_id.values(), key=stream_mod.precedence)
        return self._stream_list

    def _assembled_routes(self) -> list[dict]:
        routes = self._routes_cache
        pending = self._pending_routes
        if routes is not None and not pending:
            return routes
        if routes is None or len(pending) > _patch_limit(len(routes)):
            return self._assemble_routes()
        order = self._route_order
        for route_id in pending:  # any order: each lands at its sorted place
            at = bisect_left(order, route_id)
            present = at < len(order) and order[at] == route_id
            route = self._route_by_id.get(route_id)
            if route is None:
                if present:
                    del order[at], routes[at]
            elif present:
                routes[at] = route
            else:
                order.insert(at, route_id)
                routes.insert(at, route)
        pending.clear()
        return routes

    def _assemble_routes(self) -> list[dict]:
        routes = [r for rs in self._route_sets.values() for r in rs.routes] + self._fallback_routes()
        routes.sort(key=_route_key)
        for before, after in zip(routes, routes[1:]):
            if before["id"] == after["id"]:
                raise TranslationError(f"two route configurations produce route id {after['id']} "
                                       f"({before['name']!r}, {after['name']!r})")
        self._route_order = [r["id"] for r in routes]
        self._route_by_id = dict(zip(self._route_order, routes))
        self._route_count = Counter(self._route_order)
        self._pending_routes.clear()
        self._routes_cache = routes
        return routes

    def _assembled_upstreams(self) -> list[dict]:
        pending = self._pending_upstreams
        if self._upstream_ids is None or len(pending) + len(self._pending_dp_upstreams) > \
                _patch_limit(len(self._upstream_list)):
            return self._assemble_upstreams()
        order, upstreams = self._upstream_ids, self._upstream_list
        for upstream_id in self._pending_dp_upstreams:
            at = bisect_left(order, upstream_id)
            present = at < len(order) and order[at] == upstream_id
            built = self._dp_upstreams.get(upstream_id)
            if built is None:
                if present:
                    del order[at], upstreams[at]
            elif present:
                upstreams[at] = built
            else:
                order.insert(at, upstream_id)
                upstreams.insert(at, built)
        self._pending_dp_upstreams.clear()
        for ref in pending:  # any order: each lands at its sorted place
            upstream_id = ref.id
            at = bisect_left(order, upstream_id)
            present = at < len(order) and order[at] == upstream_id
            if self._wanted(ref):
                built = self._upstreams.get(ref) or self._build(ref)
                if present:
                    upstreams[at] = built
                else:
                    order.insert(at, upstream_id)
                    upstreams.insert(at, built)
            elif present:
                del order[at], upstreams[at]
        pending.clear()
        return upstreams

    def _assemble_upstreams(self) -> list[dict]:
        wanted = {UpstreamRef(r["name"].split("/", 1)[1]) for r in self._fallback_routes()}
        wanted.update(ref for ref, count in self._refs.items() if count > 0)
        pairs = []
        for ref in wanted:
            built = self._upstreams.get(ref)
            if built is None:
                built = self._build(ref)
            pairs.append((ref.id, built))
        pairs += self._dp_upstreams.items()
        pairs.sort(key=_first)
        for before, after in zip(pairs, pairs[1:]):
            if before[0] == after[0]:
                raise TranslationError(f"two upstreams share the id {after[0]}")
        self._upstream_ids = [upstream_id for upstream_id, _ in pairs]
        self._upstream_list = [built for _, built in pairs]
        self._pending_upstreams.clear()
        self._pending_dp_upstreams.clear()
        return self._upstream_list

    def _wanted(self, ref: UpstreamRef) -> bool:
        """Is `ref`'s upstream in the document: referenced (by a route, a TCP service, a mirror) or the
        fallback's. A cluster's plain upstream is not there for the cluster alone."""
        if self._refs.get(ref, 0) > 0:
            return True
        return ref.policy == upstream_mod.DEFAULT_POLICY and ref.id in self._fallback_upstream_ids()

    def _reassemble(self) -> None:
        self._routes_cache = self._upstream_ids = None

    def _fallback_routes(self) -> list[dict]:
        # Kept until virtualOutbound changes: the same objects in every document, and cheap to ask.
        key = self._listeners.get("virtualOutbound")
        if self._fallback is None or self._fallback[0] is not key:
            routes = self._make_fallback_routes()
            self._fallback = (key, routes, frozenset(r["upstream_id"] for r in routes))
        return self._fallback[1]

    def _fallback_upstream_ids(self) -> frozenset[str]:
        self._fallback_routes()
        return self._fallback[2]

    def _make_fallback_routes(self) -> list[dict]:
        """Envoy sends what no listener takes to `virtualOutbound` (tcp_proxy -> PassthroughCluster).

        The HTTP side keeps that shape: one lowest-priority route to the same cluster, so a request no
        port-scoped route configuration claims goes where Envoy's would (PassthroughCluster has no nodes
        until the passthrough issue gives it a data path; that cluster is reported).
        """
        part = self._listeners.get("virtualOutbound")
        if part is None:
            return []
        # Its blackhole chain only catches connections addressed to 15001 itself.
        targets = [c for c in part.tcp if c == "PassthroughCluster"] or [c for c in part.tcp if "," not in c]
        if len(targets) != 1:
            return []
        ref = UpstreamRef(targets[0])
        # enable_websocket: Envoy tcp-proxies this traffic, so an upgrade goes through as well
        route = {"id": ids.stable_id("r", "virtualOutbound", ref.cluster), "name": f"virtualOutbound/{ref.cluster}",
                 "priority": 0, "uris": ["/*"], "upstream_id": ref.id, "enable_websocket": True}
        if ref.cluster in PASSTHROUGH_CLUSTERS:
            route["plugins"] = {datapath.PASSTHROUGH_PLUGIN: {}}
        return [route]

    def cluster_upstream(self, name: str) -> dict:
        """Cluster `name`'s plain upstream (no route's policy), as a document holds it while a route or a
        TCP service sends to the cluster as it is. Documents hold only referenced upstreams (an Istio
        sidecar's routes mostly carry a retry policy, so most plain upstreams are referenced by nothing):
        this is for diagnostics and tests. Built anew, not kept."""
        ref = self._plain.get(name) or UpstreamRef(name)
        return self._upstreams.get(ref) or self._make(ref)

    def report(self) -> Report:
        with _bulk():
            self._sync_data_path()
            return self._report()

    def _report(self) -> Report:
        groups: list[Iterable[Unsupported]] = [self._notes]
        groups += [r for _, r in self._clusters.values()]
        groups += [r for _, r in self._endpoints.values()]
        groups += [rs.report for rs in self._route_sets.values()]
        groups += [lp.report for lp in self._listeners.values()]
        groups += [part[2] for part in self._dp_parts.values()]
        missing = Counter(ref.cluster for ref, n in self._refs.items() if n > 0 and ref.cluster not in self._clusters)
        groups.append([Unsupported("cluster", name, "(missing: routes reference it, CDS has no such cluster)", n)
                       for name, n in missing.items()])
        unread = [name for name, (part, _) in self._clusters.items()
                  if part.eds_name and part.eds_name not in self._endpoints]
        groups.append([Unsupported("endpoints", name, "(missing: no ClusterLoadAssignment, no nodes)", 1)
                       for name in unread])
        groups.append(self._tcp_mutual_report())
        read = {part.eds_name for part, _ in self._clusters.values() if part.eds_name}
        groups.append([Unsupported("endpoints", name, "(unused: no EDS cluster reads it)", 1)
                       for name in self._endpoints if name not in read])
        return Report.of(groups)

    def _tcp_mutual_report(self) -> list[Unsupported]:
        """TCP services whose cluster asks for Istio mTLS, without a workload certificate (no CA configured):
        the hook closes those connections (lua/amesh/hook.lua) — reported as denied, here where both are
        known. With one they are dialled through the TLS origin server (lua/amesh/mtls_origin.lua)."""
        if self._dp_base.mtls_dir:
            return []
        served = {ref.cluster for key, rs in self._route_sets.items() if key.startswith("datapath:") for ref in rs.refs}
        out = []
        for name in sorted(served):
            part = self._clusters.get(name, (None,))[0]
            if part is None:
                continue
            endpoints = self._endpoints.get(part.eds_name, (None,))[0] if part.eds_name else None
            if upstream_mod.istio_mutual(part, endpoints):
                out.append(Unsupported("cluster", name, "transport_socket[Istio mTLS to a TCP service without a "
                                       "workload certificate (no CA configured): connections closed]", 1, "denied"))
        return out

    def translation(self) -> Translation:
        return Translation(self.document(), self.report())

    # --- internals ------------------------------------------------------------------------------

    def _swap_route_set(self, name: str, new: RouteSet | None, key: str | None = None) -> set[str]:
        key = key or name
        old = self._route_sets.pop(key, None)
        pending, counts, by_id = self._pending_routes, self._route_count, self._route_by_id
        old_routes = old.routes if old is not None else ()
        new_routes = new.routes if new is not None else ()
        # Routes a new version reuses (the same object under the same id) are neither touched nor patched.
        if old_routes and new_routes and old.parts and new.parts:
            # Two translations of one route configuration: only the virtual hosts whose part changed are
            # looked at, so one changed virtual host of 1,000 costs its own routes, not 3,000 (a stale
            # `by_id` entry of a duplicated id is left for document()'s re-assembly, which it forces).
            old_parts, new_parts = old.parts.values(), new.parts.values()
            # by identity, in C (map, set difference, compress): no Python loop over the unchanged parts
            old_ids, new_ids = set(map(id, old_parts)), set(map(id, new_parts))
            gone, came = old_ids - new_ids, new_ids - old_ids
            old_routes = [r for p in among(old_parts, gone) for r in p.routes]
            new_routes = [r for p in among(new_parts, came) for r in p.routes]
            kept = set()
        else:
            kept = {id(r) for r in old_routes if by_id.get(r["id"]) is r} & {id(r) for r in new_routes} \
                if old_routes and new_routes else set()
        touched = set()
        for route in old_routes:
            if id(route) in kept:
                continue
            route_id = route["id"]
            touched.add(route_id)
            pending.add(route_id)
            n = counts[route_id] - 1
            if n <= 0:
                del counts[route_id]
                by_id.pop(route_id, None)
            else:  # another route set produces this id too: which object remains is only known anew
                counts[route_id] = n
                self._routes_cache = None
        if new is not None:
            self._route_sets[key] = new
        for route in new_routes:
            if id(route) in kept:
                continue
            route_id = route["id"]
            touched.add(route_id)
            pending.add(route_id)
            n = counts[route_id] + 1
            counts[route_id] = n
            by_id[route_id] = route
            if n > 1:  # a duplicate id: document() assembles anew, which names the two configurations
                self._routes_cache = None
        old_mirrors = old.mirrors if old is not None else frozenset()
        new_mirrors = new.mirrors if new is not None else frozenset()
        if old_mirrors != new_mirrors:
            for ref in old_mirrors - new_mirrors:
                self._mirror_count[ref] -= 1
                if self._mirror_count[ref] <= 0:
                    del self._mirror_count[ref]
                    self._mirrors_dirty = True
            for ref in new_mirrors - old_mirrors:
                self._mirror_count[ref] += 1
                self._mirrors_dirty = True
        old_refs = old.refs if old is not None else frozenset()
        new_refs = new.refs if new is not None else frozenset()
        for ref in old_refs - new_refs:  # refs both versions hold stay counted as they are
            self._refs[ref] -= 1
            if self._refs[ref] <= 0:
                del self._refs[ref]
                self._pending_upstreams.add(ref)
                if ref.policy != upstream_mod.DEFAULT_POLICY:
                    self._by_cluster.discard(ref.cluster, ref)
                    self._upstreams.pop(ref, None)
        for ref in new_refs - old_refs:
            self._refs[ref] += 1
            if self._refs[ref] == 1:
                self._pending_upstreams.add(ref)
            self._by_cluster.add(ref.cluster, ref)
        return touched

    def _websocket(self, rds_name: str) -> bool:
        return any(self._rds_websocket.get(rds_name, {}).values())

    def _set_managers(self, listener: str, old: ListenerPart | None, managers: Mapping[str, Any]) -> set[str]:
        """Record what `listener`'s connection managers give the route configurations they name;
        a held route configuration whose inheritance changed is re-derived (its message is not kept)."""
        touched: set[str] = set()
        for name in {n for n, _ in (old.managers if old is not None else ())} | set(managers):
            by = self._rds_websocket.setdefault(name, {})
            if name in managers:
                by[listener] = managers[name].websocket
            else:
                by.pop(listener, None)
            if not by:
                del self._rds_websocket[name]
            rs = self._route_sets.get(name)
            if rs is not None and rs.websocket != self._websocket(name):
                touched |= self._swap_route_set(name, with_websocket(rs, self._websocket(name)))
        return touched

    def _invalidate(self, cluster: str) -> set[str]:
        refs = self._by_cluster.get(cluster, ())
        for ref in refs:
            self._upstreams.pop(ref, None)
        self._pending_upstreams.update(refs)
        return {ref.id for ref in refs if self._wanted(ref)}

    def _build(self, ref: UpstreamRef) -> dict:
        built = self._upstreams[ref] = self._make(ref)
        return built

    def _make(self, ref: UpstreamRef) -> dict:
        """`ref`'s upstream from its cluster and endpoints as they are now (not kept)."""
        cluster = self._clusters.get(ref.cluster)
        part = cluster[0] if cluster else None
        endpoints = None
        if part is not None and part.eds_name:
            found = self._endpoints.get(part.eds_name)
            endpoints = found[0] if found else None
        return upstream_mod.build(ref, part, endpoints)


def _route_key(route: dict) -> str:
    return route["id"]


def _first(pair: tuple[str, dict]) -> str:
    return pair[0]


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _patch_limit(size: int) -> int:
    """Up to this many changed objects are patched into the assembled list; more: assemble anew."""
    return max(64, size // 32)


@contextmanager
def _bulk() -> Iterator[None]:
    """Pause the cyclic GC while translating many resources (they create no reference cycles).

    Leaving the outermost one, what survived is handed to the oldest generation (`gc.freeze()` then
    `gc.unfreeze()`: two list splices, and the young count reset) instead of being walked by the first
    young collection after `gc.enable()`: the millions of objects of a 10,000-service load cost 0.2-0.4 s
    there over the exits of a bulk, `document()` and `report()` (benchmarks/translate.py agent-style,
    docs/translation.md "Second round"). Full collections still see them; the agent's pipeline freezes
    the accepted translation afterwards as before (pipeline.settle_heap)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.freeze()
            gc.unfreeze()
            gc.enable()


def translate(resources, **options) -> Translation:
    """Translate a whole configdump.XdsResources at once (`options`: Translator's keyword arguments)."""
    return Translator(**options).load(resources).translation()
