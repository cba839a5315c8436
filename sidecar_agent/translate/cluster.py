"""Envoy Cluster -> the cluster part of an APISIX upstream (pure).

- discovery type: EDS (nodes from the ClusterLoadAssignment named by `eds_cluster_config.service_name`
  or the cluster name), STATIC / STRICT_DNS / LOGICAL_DNS (nodes from `load_assignment`; APISIX
  resolves DNS names itself), ORIGINAL_DST (passthrough: reported, no nodes yet);
- `lb_policy`: ROUND_ROBIN -> roundrobin, LEAST_REQUEST (Istio's default) -> roundrobin, RING_HASH / MAGLEV -> chash
  when the route gives a hash key (without one Envoy picks at random: roundrobin), RANDOM -> roundrobin;
- `connect_timeout` -> `timeout.connect` (Envoy's default 5 s);
- `outlier_detection` -> passive health checks, with an active TCP check (APISIX requires one; it is
  what brings an ejected node back) — reported as approximated;
- `circuit_breakers`: Istio's "unlimited" defaults need nothing; real limits are reported;
- TLS: Istio mutual TLS (SDS secrets `default` + `ROOTCA`) or auto-mTLS (`transport_socket_matches`
  on `tlsMode: istio`) -> `scheme: https` and label `amesh.tls: istio-mutual` (and `amesh.sni`), so the
  agent can attach the workload certificate; auto-mTLS with only some endpoints labelled keeps `http`
  and says `amesh.tls: istio-per-endpoint` (upstream.build; endpoint.py marks those nodes);
- Istio's `outbound|port|subset|host` names -> labels `istio.port`, `istio.subset`, `istio.host`.
"""

from __future__ import annotations

import re
import sys
from functools import lru_cache
from typing import Iterable

from sidecar_agent.translate.action import duration
from sidecar_agent.translate.endpoint import endpoint_nodes
from sidecar_agent.translate.report import Coverage, Unsupported
from sidecar_agent.translate.upstream import ClusterPart
from sidecar_agent.xds import types

ENVOY_DEFAULT_CONNECT_TIMEOUT = 5.0
_UNLIMITED = 4294967295
_ISTIO_NAME = re.compile(r"^(outbound|inbound)\|(\d+)\|([^|]*)\|(.*)$")
_LABEL_VALUE = re.compile(r"^\S{1,256}$")
# LEAST_REQUEST: Envoy picks the better of two random hosts, so idle or sequential traffic spreads evenly;
# APISIX's least_conn breaks ties by heap order and sends every sequential request to one endpoint
# (measured in the local mesh: 9 of 9 to reviews v1). roundrobin keeps Envoy's spread.
_LB = {0: "roundrobin", 1: "roundrobin", 2: "roundrobin", 3: "roundrobin", 5: "roundrobin"}
_LB_NAMES = {0: "ROUND_ROBIN", 1: "LEAST_REQUEST", 2: "RING_HASH", 3: "RANDOM", 5: "MAGLEV",
             6: "CLUSTER_PROVIDED", 7: "LOAD_BALANCING_POLICY_CONFIG"}
_TYPE_NAMES = {0: "STATIC", 1: "STRICT_DNS", 2: "LOGICAL_DNS", 3: "EDS", 4: "ORIGINAL_DST"}
_HANDLED = frozenset({
    "name", "type", "eds_cluster_config", "load_assignment", "lb_policy", "connect_timeout",
    "outlier_detection", "circuit_breakers", "transport_socket", "transport_socket_matches",
    "typed_extension_protocol_options", "http2_protocol_options", "common_http_protocol_options",
    "max_requests_per_connection", "ring_hash_lb_config", "maglev_lb_config", "least_request_lb_config",
    "round_robin_lb_config", "dns_lookup_family", "respect_dns_ttl", "dns_refresh_rate"})
# Module constants: the coverage plan cache is keyed by these sets (see report.Coverage.plan).
_OUTLIER_HANDLED = frozenset({"consecutive_5xx", "consecutive_gateway_failure", "interval", "base_ejection_time",
                              "enforcing_consecutive_5xx", "enforcing_consecutive_gateway_failure"})
_THRESHOLD_HANDLED = frozenset({"priority", "max_connections", "max_pending_requests", "max_requests",
                                "max_retries", "track_remaining"})
_BREAKERS_HANDLED = frozenset({"thresholds"})
_HPO_HANDLED = frozenset({"common_http_protocol_options", "explicit_http_config", "use_downstream_protocol_config"})
_COMMON_HANDLED = frozenset({"idle_timeout", "max_requests_per_connection"})
_5XX = [500, 501, 502, 503, 504, 505]
_GATEWAY = [502, 503, 504]


def translate_cluster(cluster) -> tuple[ClusterPart, Iterable[Unsupported]]:
    """The cluster part and its unsupported fields (compact: iterate for the entries)."""
    # Interned: the same name is read again from EDS, routes and the caches' keys (one str for all).
    name = sys.intern(cluster.name)
    cov = Coverage("cluster", name)
    cov.unhandled(cluster, _HANDLED, "")
    kind = cluster.WhichOneof("cluster_discovery_type")
    body: dict = {"scheme": "http"}
    eds_name, static_nodes = None, None
    if kind == "cluster_type":
        cov.add(f"cluster_type[{cluster.cluster_type.name}]")
        static_nodes = []
    elif cluster.type == 3:  # EDS
        eds_name = sys.intern(cluster.eds_cluster_config.service_name) or name
    elif cluster.type == 4:  # ORIGINAL_DST: passthrough, a later issue
        cov.add("type[ORIGINAL_DST]")
        static_nodes = []
    else:
        static_nodes, _ = endpoint_nodes(cluster.load_assignment, cov, "load_assignment")

    lb = cluster.lb_policy
    body["type"] = _LB.get(lb, "roundrobin")
    if lb not in _LB:
        cov.add(f"lb_policy[{_LB_NAMES.get(lb, lb)}]")
    if lb == 3:
        cov.add("lb_policy[RANDOM approximated by roundrobin]")
    hashing = lb in (2, 5)

    connect = duration(cluster.connect_timeout) if cluster.HasField("connect_timeout") else ENVOY_DEFAULT_CONNECT_TIMEOUT
    body["timeout"] = _connect_timeout(connect if connect > 0 else ENVOY_DEFAULT_CONNECT_TIMEOUT)

    if cluster.HasField("outlier_detection"):
        body["checks"] = _checks(cluster.outlier_detection, connect, cov)
    _circuit_breakers(cluster, cov)

    labels = _istio_labels(name)
    tls_auto = _tls(cluster, body, labels, cov)
    _protocol(cluster, body, cov)
    if labels:
        body["labels"] = dict(sorted(labels.items()))
    mutual = {**body.get("labels", {}), "amesh.tls": "istio-mutual"} if tls_auto else None
    per_endpoint = {**mutual, "amesh.tls": "istio-per-endpoint"} if tls_auto else None
    return ClusterPart(name=name, body=body, hashing=hashing, eds_name=eds_name, static_nodes=static_nodes,
                       tls_auto=tls_auto, mutual_labels=mutual, per_endpoint_labels=per_endpoint), cov.compact()


@lru_cache(maxsize=256, typed=True)
def _connect_timeout(connect: float) -> dict:
    """One dict per value for all clusters (read-only; typed: 5 and 5.0 print differently)."""
    return {"connect": connect}


def _istio_labels(name: str) -> dict:
    parsed = _ISTIO_NAME.match(name)
    if not parsed:
        return {}
    direction, port, subset, host = parsed.groups()
    # Interned: every cluster of a service repeats these values.
    labels = {"istio.direction": sys.intern(direction), "istio.port": sys.intern(port)}
    if subset:
        labels["istio.subset"] = sys.intern(subset)
    if host and _LABEL_VALUE.match(host):
        labels["istio.host"] = sys.intern(host)
    return labels


def _checks(od, connect: float, cov: Coverage) -> dict:
    cov.unhandled(od, _OUTLIER_HANDLED, "outlier_detection")
    cov.add("outlier_detection[approximated: passive checks, recovery by active TCP probe]")
    enforce_5xx = od.enforcing_consecutive_5xx.value if od.HasField("enforcing_consecutive_5xx") else 100
    enforce_gw = od.enforcing_consecutive_gateway_failure.value if od.HasField(
        "enforcing_consecutive_gateway_failure") else 0
    consecutive_5xx = od.consecutive_5xx.value if od.HasField("consecutive_5xx") else 5
    consecutive_gw = od.consecutive_gateway_failure.value if od.HasField("consecutive_gateway_failure") else 5
    if enforce_5xx > 0 and consecutive_5xx > 0:
        statuses, failures = _5XX, consecutive_5xx
    else:
        statuses, failures = _GATEWAY, consecutive_gw if enforce_gw > 0 else 5
    failures = max(1, min(254, failures))
    interval = duration(od.interval) if od.HasField("interval") else 10.0
    ejection = duration(od.base_ejection_time) if od.HasField("base_ejection_time") else 30.0
    return {
        "active": {"type": "tcp", "timeout": connect,
                   "healthy": {"interval": max(1, round(ejection)), "successes": 1},
                   "unhealthy": {"interval": max(1, round(interval)), "tcp_failures": failures,
                                 "timeouts": failures}},
        "passive": {"type": "http",
                    "healthy": {"successes": 1},
                    "unhealthy": {"http_statuses": statuses, "http_failures": failures,
                                  "tcp_failures": failures, "timeouts": failures}},
    }


def _circuit_breakers(cluster, cov: Coverage) -> None:
    if not cluster.HasField("circuit_breakers"):
        return
    for threshold in cluster.circuit_breakers.thresholds:
        for field in ("max_connections", "max_pending_requests", "max_requests", "max_retries"):
            if threshold.HasField(field) and getattr(threshold, field).value < _UNLIMITED:
                cov.add(f"circuit_breakers.thresholds.{field}")
        cov.unhandled(threshold, _THRESHOLD_HANDLED, "circuit_breakers.thresholds")
    cov.unhandled(cluster.circuit_breakers, _BREAKERS_HANDLED, "circuit_breakers")


def _tls(cluster, body: dict, labels: dict, cov: Coverage) -> bool:
    """Mark upstream TLS; True when TLS depends on the endpoints' tlsMode (Istio auto-mTLS)."""
    if cluster.HasField("transport_socket"):
        mode = _tls_socket(cluster.transport_socket, labels, cov, "transport_socket")
        if mode:
            body["scheme"] = "https"
            labels["amesh.tls"] = mode
        return False
    auto = False
    for match in cluster.transport_socket_matches:
        fields = match.match.fields
        if "tlsMode" in fields and fields["tlsMode"].string_value == "istio":
            if _tls_socket(match.transport_socket, labels, cov, "transport_socket_matches.transport_socket"):
                auto = True
        elif fields:
            cov.add(f"transport_socket_matches[{match.name}]")
    return auto


def _tls_socket(socket, labels: dict, cov: Coverage, path: str) -> str | None:
    """The TLS mode of an upstream transport socket (None: plaintext); its SNI into `amesh.sni` and, for
    Istio mutual TLS, the server identities to verify into `amesh.san` (lua/amesh/mtls.lua)."""
    if socket.name in ("envoy.transport_sockets.raw_buffer", "raw_buffer") or not socket.name:
        return None
    if socket.name != types.TLS_TRANSPORT_SOCKET and not socket.typed_config.type_url.endswith("UpstreamTlsContext"):
        cov.add(f"{path}[{socket.name}]")
        return None
    from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

    ctx = tls_pb2.UpstreamTlsContext()
    socket.typed_config.Unpack(ctx)
    if ctx.sni and _LABEL_VALUE.match(ctx.sni):
        labels["amesh.sni"] = ctx.sni
    common = ctx.common_tls_context
    cert_names = [s.name for s in common.tls_certificate_sds_secret_configs]
    ca = common.combined_validation_context.validation_context_sds_secret_config.name
    if "default" in cert_names and ca == "ROOTCA":
        sans = _subject_alt_names(common.combined_validation_context.default_validation_context, cov, path)
        if sans is not None:
            labels["amesh.san"] = sans
        return "istio-mutual"
    if common.tls_certificates or cert_names:
        cov.add(f"{path}[client certificate of a non-Istio TLS origination]")
        return "mutual"
    return "simple"


# A label value that no certificate's URI SAN equals: identities that cannot be carried are refused.
_NO_IDENTITY = "amesh:unverifiable-identity"


def _subject_alt_names(validation, cov: Coverage, path: str) -> str | None:
    """`match_subject_alt_names` (Istio: exact SPIFFE ids) as one comma-separated label; None = any
    identity the mesh root signed (Envoy's behaviour without the list). Other matchers, or a list longer
    than a label holds, cannot be verified: the upstream refuses every server (reported, denied)."""
    matchers = validation.match_subject_alt_names
    if not matchers:
        return None
    exact = [m.exact for m in matchers if m.WhichOneof("match_pattern") == "exact"]
    joined = ",".join(exact)
    if len(exact) != len(matchers) or not _LABEL_VALUE.match(joined) or any("," in e for e in exact):
        cov.deny(f"{path}.common_tls_context.combined_validation_context.default_validation_context."
                 "match_subject_alt_names[not exact ids within 256 characters: every server refused]")
        return _NO_IDENTITY
    return joined


def _protocol(cluster, body: dict, cov: Coverage) -> None:
    h2 = cluster.HasField("http2_protocol_options")
    options = cluster.typed_extension_protocol_options
    for key in options:
        if key != types.HTTP_PROTOCOL_OPTIONS:
            cov.add(f"typed_extension_protocol_options[{key}]")
            continue
        from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2

        hpo = http_protocol_options_pb2.HttpProtocolOptions()
        options[key].Unpack(hpo)
        cov.unhandled(hpo, _HPO_HANDLED, "typed_extension_protocol_options.HttpProtocolOptions")
        _keepalive(hpo.common_http_protocol_options, body, cov)
        which = hpo.WhichOneof("upstream_protocol_options")
        if which == "explicit_http_config" and hpo.explicit_http_config.HasField("http2_protocol_options"):
            h2 = True
        elif which == "use_downstream_protocol_config":
            cov.add("typed_extension_protocol_options.HttpProtocolOptions.use_downstream_protocol_config"
                    "[APISIX speaks HTTP/1.1 upstream]")
    if cluster.HasField("common_http_protocol_options"):
        _keepalive(cluster.common_http_protocol_options, body, cov)
    if cluster.HasField("max_requests_per_connection"):
        body.setdefault("keepalive_pool", {})["requests"] = max(1, cluster.max_requests_per_connection.value)
    if h2:
        # nginx proxies h2 upstream only as gRPC.
        body["scheme"] = "grpcs" if body["scheme"] == "https" else "grpc"
        cov.add("http2_protocol_options[h2 upstream proxied as gRPC]")


def _keepalive(common, body: dict, cov: Coverage) -> None:
    cov.unhandled(common, _COMMON_HANDLED, "common_http_protocol_options")
    if common.HasField("idle_timeout"):
        body.setdefault("keepalive_pool", {})["idle_timeout"] = duration(common.idle_timeout)
    if common.HasField("max_requests_per_connection"):
        body.setdefault("keepalive_pool", {})["requests"] = max(1, common.max_requests_per_connection.value)
