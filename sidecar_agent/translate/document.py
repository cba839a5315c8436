"""The incremental translator: per-resource caches, reassembled into one APISIX document.

Each xDS resource is translated on its own and cached by name: a ClusterLoadAssignment update
recomputes only the upstreams of the clusters reading it, a RouteConfiguration update only its routes
(and builds the upstreams its new references need). `document()` reassembles the whole standalone
document from the caches: routes and upstreams sorted by id, every referenced upstream present (a
cluster missing from CDS gets an upstream without nodes, reported), ids unique.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from sidecar_agent.translate import ids
from sidecar_agent.translate import upstream as upstream_mod
from sidecar_agent.translate.cluster import translate_cluster
from sidecar_agent.translate.endpoint import translate_endpoints
from sidecar_agent.translate.errors import TranslationError
from sidecar_agent.translate.listener import ListenerPart, translate_listener
from sidecar_agent.translate.report import Report, Unsupported
from sidecar_agent.translate.route import RouteSet, translate_route_config
from sidecar_agent.translate.upstream import ClusterPart, EndpointPart, UpstreamRef


@dataclass(frozen=True)
class Translation:
    document: dict  # the APISIX standalone document (plain JSON-ready data)
    report: Report


class Translator:
    """Keeps the translation of every resource; `set_*` / `remove_*` return the ids they touched."""

    def __init__(self) -> None:
        self._clusters: dict[str, tuple[ClusterPart, tuple[Unsupported, ...]]] = {}
        self._endpoints: dict[str, tuple[EndpointPart, tuple[Unsupported, ...]]] = {}
        self._route_sets: dict[str, RouteSet] = {}
        self._listeners: dict[str, ListenerPart] = {}
        self._notes: tuple[Unsupported, ...] = ()
        self._refs: Counter[UpstreamRef] = Counter()  # references from routes
        self._eds_users: dict[str, set[str]] = {}  # ClusterLoadAssignment name -> clusters reading it
        self._upstreams: dict[UpstreamRef, dict] = {}  # built upstreams, invalidated per cluster
        self._by_cluster: dict[str, set[UpstreamRef]] = {}
        self._routes_cache: list[dict] | None = None
        self._upstream_ids: list[tuple[str, UpstreamRef]] | None = None

    # --- whole state ----------------------------------------------------------------------------

    def load(self, resources) -> "Translator":
        """Replace everything with `resources` (a configdump.XdsResources)."""
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
        for name in set(self._clusters) - set(clusters):
            touched |= self.remove_cluster(name)
        for message in clusters.values():
            touched |= self.set_cluster(message)
        return touched

    def replace_endpoints(self, endpoints: Mapping[str, Any]) -> set[str]:
        touched = set()
        for name in set(self._endpoints) - set(endpoints):
            touched |= self.remove_endpoints(name)
        for message in endpoints.values():
            touched |= self.set_endpoints(message)
        return touched

    def replace_route_configs(self, route_configs: Mapping[str, Any]) -> set[str]:
        touched = set()
        for name in set(self._route_sets) - set(route_configs):
            touched |= self.remove_route_config(name)
        for message in route_configs.values():
            touched |= self.set_route_config(message)
        return touched

    def replace_listeners(self, listeners: Mapping[str, Any]) -> set[str]:
        touched = set()
        for name in set(self._listeners) - set(listeners):
            touched |= self.remove_listener(name)
        for message in listeners.values():
            touched |= self.set_listener(message)
        return touched

    # --- one resource ---------------------------------------------------------------------------

    def set_cluster(self, cluster) -> set[str]:
        part, report = translate_cluster(cluster)
        old = self._clusters.get(part.name)
        if old is not None and old[0].eds_name:
            self._eds_users.get(old[0].eds_name, set()).discard(part.name)
        self._clusters[part.name] = (part, report)
        if part.eds_name:
            self._eds_users.setdefault(part.eds_name, set()).add(part.name)
        self._by_cluster.setdefault(part.name, set()).add(UpstreamRef(part.name))
        return self._invalidate(part.name, new_ids=old is None)

    def remove_cluster(self, name: str) -> set[str]:
        old = self._clusters.pop(name, None)
        if old is None:
            return set()
        if old[0].eds_name:
            self._eds_users.get(old[0].eds_name, set()).discard(name)
        return self._invalidate(name, new_ids=True)

    def set_endpoints(self, cla) -> set[str]:
        name = cla.cluster_name
        if not name:
            raise TranslationError("ClusterLoadAssignment without cluster_name")
        self._endpoints[name] = translate_endpoints(cla)
        touched = set()
        for cluster in self._eds_users.get(name, ()):
            touched |= self._invalidate(cluster, new_ids=False)
        return touched

    def remove_endpoints(self, name: str) -> set[str]:
        if self._endpoints.pop(name, None) is None:
            return set()
        touched = set()
        for cluster in self._eds_users.get(name, ()):
            touched |= self._invalidate(cluster, new_ids=False)
        return touched

    def set_route_config(self, rc) -> set[str]:
        new = translate_route_config(rc)
        return self._swap_route_set(rc.name, new)

    def remove_route_config(self, name: str) -> set[str]:
        return self._swap_route_set(name, None)

    def set_listener(self, listener) -> set[str]:
        part = translate_listener(listener)
        touched = set()
        if part.name == "virtualOutbound":
            self._routes_cache = self._upstream_ids = None
        old = self._listeners.get(part.name)
        for rs in old.inline if old else ():
            touched |= self._swap_route_set(rs.name, None, key=f"listener:{part.name}:{rs.name}")
        self._listeners[part.name] = part
        for rs in part.inline:
            touched |= self._swap_route_set(rs.name, rs, key=f"listener:{part.name}:{rs.name}")
        return touched

    def remove_listener(self, name: str) -> set[str]:
        old = self._listeners.pop(name, None)
        touched = set()
        for rs in old.inline if old else ():
            touched |= self._swap_route_set(rs.name, None, key=f"listener:{name}:{rs.name}")
        return touched

    # --- output ---------------------------------------------------------------------------------

    def document(self) -> dict:
        if self._routes_cache is None:
            routes = [r for rs in self._route_sets.values() for r in rs.routes] + self._fallback_routes()
            routes.sort(key=lambda r: r["id"])
            for before, after in zip(routes, routes[1:]):
                if before["id"] == after["id"]:
                    raise TranslationError(f"two route configurations produce route id {after['id']} "
                                           f"({before['name']!r}, {after['name']!r})")
            self._routes_cache = routes
        if self._upstream_ids is None:
            wanted = {UpstreamRef(name) for name in self._clusters}
            wanted.update(UpstreamRef(r["name"].split("/", 1)[1]) for r in self._fallback_routes())
            wanted.update(ref for ref, count in self._refs.items() if count > 0)
            self._upstream_ids = sorted((ref.id, ref) for ref in wanted)
        upstreams = []
        for _, ref in self._upstream_ids:
            built = self._upstreams.get(ref)
            if built is None:
                built = self._build(ref)
            upstreams.append(built)
        return {"routes": list(self._routes_cache), "upstreams": upstreams}

    def _fallback_routes(self) -> list[dict]:
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
        return [{"id": ids.stable_id("r", "virtualOutbound", ref.cluster), "name": f"virtualOutbound/{ref.cluster}",
                 "priority": 0, "uris": ["/*"], "upstream_id": ref.id}]

    def report(self) -> Report:
        groups: list[Iterable[Unsupported]] = [self._notes]
        groups += [r for _, r in self._clusters.values()]
        groups += [r for _, r in self._endpoints.values()]
        groups += [rs.report for rs in self._route_sets.values()]
        groups += [lp.report for lp in self._listeners.values()]
        missing = Counter(ref.cluster for ref, n in self._refs.items() if n > 0 and ref.cluster not in self._clusters)
        groups.append([Unsupported("cluster", name, "(missing: routes reference it, CDS has no such cluster)", n)
                       for name, n in missing.items()])
        unread = [name for name, (part, _) in self._clusters.items()
                  if part.eds_name and part.eds_name not in self._endpoints]
        groups.append([Unsupported("endpoints", name, "(missing: no ClusterLoadAssignment, no nodes)", 1)
                       for name in unread])
        read = {part.eds_name for part, _ in self._clusters.values() if part.eds_name}
        groups.append([Unsupported("endpoints", name, "(unused: no EDS cluster reads it)", 1)
                       for name in self._endpoints if name not in read])
        return Report.of(groups)

    def translation(self) -> Translation:
        return Translation(self.document(), self.report())

    # --- internals ------------------------------------------------------------------------------

    def _swap_route_set(self, name: str, new: RouteSet | None, key: str | None = None) -> set[str]:
        key = key or name
        old = self._route_sets.pop(key, None)
        touched = set()
        if old is not None:
            touched |= {r["id"] for r in old.routes}
            for ref in old.refs:
                self._refs[ref] -= 1
                if self._refs[ref] <= 0:
                    del self._refs[ref]
                    if ref.policy != upstream_mod.DEFAULT_POLICY:
                        self._by_cluster.get(ref.cluster, set()).discard(ref)
                        self._upstreams.pop(ref, None)
        if new is not None:
            self._route_sets[key] = new
            touched |= {r["id"] for r in new.routes}
            for ref in new.refs:
                self._refs[ref] += 1
                self._by_cluster.setdefault(ref.cluster, set()).add(ref)
        if old is None or new is None or old.refs != new.refs:
            self._upstream_ids = None
        self._routes_cache = None
        return touched

    def _invalidate(self, cluster: str, new_ids: bool) -> set[str]:
        refs = self._by_cluster.get(cluster, set())
        for ref in refs:
            self._upstreams.pop(ref, None)
        if new_ids:
            self._upstream_ids = None
        return {ref.id for ref in refs}

    def _build(self, ref: UpstreamRef) -> dict:
        cluster = self._clusters.get(ref.cluster)
        part = cluster[0] if cluster else None
        endpoints = None
        if part is not None and part.eds_name:
            found = self._endpoints.get(part.eds_name)
            endpoints = found[0] if found else None
        built = upstream_mod.build(ref, part, endpoints)
        self._upstreams[ref] = built
        return built


def translate(resources) -> Translation:
    """Translate a whole configdump.XdsResources at once."""
    return Translator().load(resources).translation()
