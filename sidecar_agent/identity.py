"""The node identity istiod sees, built from the injector's environment exactly as pilot-agent does.

Node id: `sidecar~<INSTANCE_IP>~<POD_NAME>.<POD_NAMESPACE>~<POD_NAMESPACE>.svc.<domain>`; metadata
from `ISTIO_META_*` (prefix stripped, string values), `ISTIO_METAJSON_*` (parsed JSON) and the well
known keys istiod reads (NAMESPACE, INSTANCE_IPS, LABELS, ISTIO_VERSION, CLUSTER_ID, MESH_ID,
WORKLOAD_NAME, POD_PORTS, SERVICE_ACCOUNT …), so istiod treats the pod as an Envoy sidecar.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from envoy.config.core.v3 import base_pb2
from google.protobuf import struct_pb2

USER_AGENT = "amesh-agent"


class IdentityError(ValueError):
    """The environment lacks what a sidecar identity needs (the message names it)."""


@dataclass(frozen=True)
class Identity:
    node_id: str
    cluster: str
    metadata: Mapping[str, object] = field(default_factory=dict)

    def node(self, version: str = "0.1.0") -> base_pb2.Node:
        meta = struct_pb2.Struct()
        meta.update(dict(self.metadata))
        return base_pb2.Node(
            id=self.node_id, cluster=self.cluster, metadata=meta,
            user_agent_name=USER_AGENT, user_agent_version=version,
        )


def parse_labels_file(text: str) -> dict[str, str]:
    """The downward-API labels file (`key="value"` per line) pilot-agent reads from /etc/istio/pod/labels."""
    labels = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip():
            labels[key.strip()] = json.loads(value) if value.startswith('"') else value
    return labels


def from_env(env: Mapping[str, str], labels_text: str | None = None, domain_suffix: str = "cluster.local") -> Identity:
    missing = [k for k in ("POD_NAME", "POD_NAMESPACE") if not env.get(k)]
    ips = [ip for ip in env.get("INSTANCE_IPS", env.get("INSTANCE_IP", "")).split(",") if ip]
    if not ips:
        missing.append("INSTANCE_IP")
    if missing:
        raise IdentityError(f"missing environment for the sidecar identity: {', '.join(missing)}")
    namespace = env["POD_NAMESPACE"]
    metadata: dict[str, object] = {}
    for key, value in env.items():
        if key.startswith("ISTIO_META_"):
            metadata[key[len("ISTIO_META_"):]] = value
        elif key.startswith("ISTIO_METAJSON_"):
            try:
                metadata[key[len("ISTIO_METAJSON_"):]] = json.loads(value)
            except ValueError as exc:
                raise IdentityError(f"{key} is not valid JSON: {exc}") from None
    metadata["NAMESPACE"] = namespace
    metadata["INSTANCE_IPS"] = ",".join(ips)
    for key in ("ISTIO_VERSION", "SERVICE_ACCOUNT", "HOST_IP"):
        if env.get(key):
            metadata.setdefault(key, env[key])
    if env.get("PROXY_CONFIG"):
        try:
            metadata["PROXY_CONFIG"] = json.loads(env["PROXY_CONFIG"])
        except ValueError as exc:
            raise IdentityError(f"PROXY_CONFIG is not valid JSON: {exc}") from None
    labels = dict(metadata.get("LABELS") or {}) if isinstance(metadata.get("LABELS"), dict) else {}
    if labels_text:
        labels.update(parse_labels_file(labels_text))
    if labels:
        metadata["LABELS"] = labels
    workload = str(metadata.get("WORKLOAD_NAME") or "")
    canonical = labels.get("service.istio.io/canonical-name") or labels.get("app") or workload
    cluster = f"{canonical}.{namespace}" if canonical else "istio-proxy"
    node_id = f"sidecar~{ips[0]}~{env['POD_NAME']}.{namespace}~{namespace}.svc.{domain_suffix}"
    return Identity(node_id, cluster, metadata)
