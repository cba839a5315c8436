"""Envoy admin's `/clusters` from the CDS and EDS held — what `istioctl proxy-config endpoints` reads
(`/clusters?format=json`, an `envoy.admin.v3.Clusters`).

Hosts come from the ClusterLoadAssignment an EDS cluster names (`eds_cluster_config.service_name`, else
its name) or from a cluster's inline `load_assignment`. The agent has no per-host counters or active
health checks of its own, so `stats` stay empty and the health is the EDS one (UNKNOWN reported as
HEALTHY, as Envoy does for a host nobody marked).
"""

from __future__ import annotations

from envoy.admin.v3 import clusters_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import health_check_pb2
from google.protobuf import json_format

from sidecar_agent.store import Snapshot
from sidecar_agent.xds import kinds


def _eds_name(cluster: cluster_pb2.Cluster) -> str | None:
    if cluster.WhichOneof("cluster_discovery_type") == "type" and cluster.type == cluster_pb2.Cluster.EDS:
        return cluster.eds_cluster_config.service_name or cluster.name
    return None


def clusters_message(snapshot: Snapshot) -> clusters_pb2.Clusters:
    endpoints = snapshot.items(kinds.EDS)
    out = clusters_pb2.Clusters()
    for name, held in sorted(snapshot.items(kinds.CDS).items()):
        cluster = held.message(kinds.CDS)
        status = out.cluster_statuses.add(name=name, added_via_api=True)
        eds_name = _eds_name(cluster)
        if eds_name is not None:
            status.eds_service_name = eds_name
            cla = endpoints[eds_name].message(kinds.EDS) if eds_name in endpoints else None
        else:
            cla = cluster.load_assignment if cluster.HasField("load_assignment") else None
        for group in cla.endpoints if cla is not None else ():
            for lb in group.lb_endpoints:
                host = status.host_statuses.add(
                    weight=lb.load_balancing_weight.value or 1, hostname=lb.endpoint.hostname,
                    priority=group.priority,
                )
                host.address.CopyFrom(lb.endpoint.address)
                if group.HasField("locality"):
                    host.locality.CopyFrom(group.locality)
                health = lb.health_status
                host.health_status.eds_health_status = (
                    health_check_pb2.HEALTHY if health == health_check_pb2.UNKNOWN else health)
    return out


def clusters_json(snapshot: Snapshot) -> str:
    return json_format.MessageToJson(clusters_message(snapshot), preserving_proto_field_name=True, indent=2)


def clusters_text(snapshot: Snapshot) -> str:
    """Envoy's plain `/clusters` lines: `<cluster>::<ip>:<port>::<field>::<value>` (no counters)."""
    lines = []
    for status in clusters_message(snapshot).cluster_statuses:
        lines.append(f"{status.name}::added_via_api::true")
        for host in status.host_statuses:
            socket = host.address.socket_address
            prefix = f"{status.name}::{socket.address}:{socket.port_value}"
            healthy = health_check_pb2.HealthStatus.Name(host.health_status.eds_health_status).lower()
            lines += [f"{prefix}::hostname::{host.hostname}", f"{prefix}::health_flags::{healthy}",
                      f"{prefix}::weight::{host.weight}", f"{prefix}::region::{host.locality.region}",
                      f"{prefix}::zone::{host.locality.zone}", f"{prefix}::sub_zone::{host.locality.sub_zone}",
                      f"{prefix}::priority::{host.priority}"]
    return "\n".join(lines) + "\n"
