"""Build the xDS a sidecar gets from istiod 1.13+ out of a small Kubernetes/Istio model.

The shapes follow istiod's own code (pilot/pkg/networking/core/v1alpha3: route/route.go, route/retry,
cluster builder, EDS) and the real dumps in ../shared/fixtures/istio-xds: cluster names
``outbound|9080|v1|reviews.default.svc.cluster.local``, one RouteConfiguration per HTTP port named
``"9080"``, one virtual host per service with every short-name/port/ClusterIP domain variant, the
``allow_any`` catch-all to ``PassthroughCluster``, the default retry policy, per-route fault config,
``weighted_clusters``, ``request_mirror_policies``, ``hash_policy`` from DestinationRule consistent hash,
ClusterLoadAssignments grouped by locality with ``tlsMode`` metadata.

Two front doors: :func:`bookinfo` (Istio's traffic-management tasks) and :func:`synthetic_mesh` (the
benchmark's large meshes). :func:`config_dump_json` prints what Envoy's admin ``/config_dump`` would.

Deliberately left out: inbound listeners/clusters (``virtualInbound``), gateways, Sidecar scoping,
ServiceEntry, EnvoyFilter, TLS origination.
"""

from __future__ import annotations

import argparse
import enum
import functools
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from envoy.admin.v3 import config_dump_pb2, config_dump_shared_pb2
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from google.protobuf import json_format

# Imported for their descriptors: json_format resolves the typed configs below by type URL.
from envoy.extensions.filters.http.cors.v3 import cors_pb2  # noqa: F401
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401
from envoy.extensions.filters.listener.http_inspector.v3 import http_inspector_pb2  # noqa: F401
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2  # noqa: F401
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2  # noqa: F401
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2  # noqa: F401
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2  # noqa: F401
from envoy.extensions.transport_sockets.raw_buffer.v3 import raw_buffer_pb2  # noqa: F401
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from udpa.type.v1 import typed_struct_pb2  # noqa: F401

from sidecar_agent.xds import chains, types

DOMAIN = "cluster.local"
# Fixed timestamps and versions: the same model must print the same bytes.
LAST_UPDATED = "2026-12-01T00:00:00Z"
VERSION_INFO = "2026-12-01T00:00:00Z/1"

# --------------------------------------------------------------------------------------------------
# The model: a few Kubernetes and Istio objects, as plain frozen values.


class MatchKind(enum.Enum):
    EXACT = "exact"
    PREFIX = "prefix"
    REGEX = "regex"


@dataclass(frozen=True)
class StringMatch:
    kind: MatchKind
    value: str


def exact(value: str) -> StringMatch:
    return StringMatch(MatchKind.EXACT, value)


def prefix(value: str) -> StringMatch:
    return StringMatch(MatchKind.PREFIX, value)


def regex(value: str) -> StringMatch:
    return StringMatch(MatchKind.REGEX, value)


@dataclass(frozen=True)
class ServicePort:
    number: int
    name: str = "http"
    protocol: str = "HTTP"  # HTTP, HTTP2, GRPC, TCP

    @property
    def is_http(self) -> bool:
        return self.protocol in ("HTTP", "HTTP2", "GRPC")


@dataclass(frozen=True)
class Service:
    name: str
    cluster_ip: str
    ports: tuple[ServicePort, ...] = (ServicePort(9080),)
    namespace: str = "default"
    service_account: str = ""

    @property
    def hostname(self) -> str:
        return f"{self.name}.{self.namespace}.svc.{DOMAIN}"


@dataclass(frozen=True)
class Workload:
    """A Deployment's pods behind one Service (labels ``app=<service>``, ``version=<version>``)."""

    service: str
    version: str
    ips: tuple[str, ...]
    namespace: str = "default"
    locality: str = ""  # "region/zone/subzone", as istiod reads it from node labels
    health: str = "HEALTHY"  # HEALTHY, UNHEALTHY, DRAINING (istiod sends unready pods when asked to)
    tls_mode: str = "istio"  # pods with a sidecar carry security.istio.io/tlsMode=istio
    target_port: int | None = None  # container port when it differs from the service port
    priority: int = 0  # locality failover priority, as istiod computes it

    @property
    def labels(self) -> dict[str, str]:
        return {"app": self.service, "version": self.version}

    @property
    def name(self) -> str:
        return f"{self.service}-{self.version}"


@dataclass(frozen=True)
class Destination:
    host: str
    subset: str = ""
    port: int | None = None


@dataclass(frozen=True)
class RouteDestination:
    destination: Destination
    weight: int = 0


@dataclass(frozen=True)
class HTTPMatch:
    uri: StringMatch | None = None
    headers: Mapping[str, StringMatch] = field(default_factory=dict)
    without_headers: Mapping[str, StringMatch] = field(default_factory=dict)
    query_params: Mapping[str, StringMatch] = field(default_factory=dict)
    method: StringMatch | None = None
    authority: StringMatch | None = None
    ignore_uri_case: bool = False
    port: int = 0
    name: str = ""


@dataclass(frozen=True)
class HTTPRetry:
    attempts: int
    per_try_timeout: float | None = None
    retry_on: str = ""


@dataclass(frozen=True)
class FaultDelay:
    fixed_delay: float  # seconds
    percentage: float = 100.0


@dataclass(frozen=True)
class FaultAbort:
    http_status: int
    percentage: float = 100.0


@dataclass(frozen=True)
class HTTPRewrite:
    uri: str = ""
    authority: str = ""


@dataclass(frozen=True)
class HTTPRedirect:
    uri: str = ""
    authority: str = ""
    code: int = 301


@dataclass(frozen=True)
class HeaderOps:
    request_set: Mapping[str, str] = field(default_factory=dict)
    request_add: Mapping[str, str] = field(default_factory=dict)
    request_remove: tuple[str, ...] = ()
    response_set: Mapping[str, str] = field(default_factory=dict)
    response_add: Mapping[str, str] = field(default_factory=dict)
    response_remove: tuple[str, ...] = ()


@dataclass(frozen=True)
class CorsPolicy:
    allow_origins: tuple[StringMatch, ...] = ()
    allow_methods: tuple[str, ...] = ()
    allow_headers: tuple[str, ...] = ()
    expose_headers: tuple[str, ...] = ()
    max_age: int | None = None  # seconds
    allow_credentials: bool | None = None


@dataclass(frozen=True)
class HTTPRoute:
    route: tuple[RouteDestination, ...] = ()
    match: tuple[HTTPMatch, ...] = ()
    name: str = ""
    redirect: HTTPRedirect | None = None
    timeout: float | None = None
    retries: HTTPRetry | None = None
    fault_delay: FaultDelay | None = None
    fault_abort: FaultAbort | None = None
    mirror: Destination | None = None
    mirror_percentage: float | None = None
    rewrite: HTTPRewrite | None = None
    headers: HeaderOps | None = None
    cors: CorsPolicy | None = None


@dataclass(frozen=True)
class VirtualService:
    name: str
    hosts: tuple[str, ...]
    http: tuple[HTTPRoute, ...]
    namespace: str = "default"


class SimpleLB(enum.Enum):
    ROUND_ROBIN = "ROUND_ROBIN"
    LEAST_REQUEST = "LEAST_REQUEST"
    RANDOM = "RANDOM"


@dataclass(frozen=True)
class ConsistentHash:
    http_header_name: str = ""
    http_cookie_name: str = ""
    http_cookie_ttl: float | None = None
    http_cookie_path: str = ""
    use_source_ip: bool = False
    http_query_parameter_name: str = ""
    minimum_ring_size: int = 1024


@dataclass(frozen=True)
class OutlierDetection:
    consecutive_5xx_errors: int = 5
    interval: float = 10.0
    base_ejection_time: float = 30.0
    max_ejection_percent: int = 10


@dataclass(frozen=True)
class ConnectionPool:
    tcp_max_connections: int | None = None
    connect_timeout: float | None = None
    http1_max_pending_requests: int | None = None
    http2_max_requests: int | None = None
    max_requests_per_connection: int | None = None
    max_retries: int | None = None


@dataclass(frozen=True)
class TrafficPolicy:
    simple: SimpleLB | None = None
    consistent_hash: ConsistentHash | None = None
    outlier_detection: OutlierDetection | None = None
    connection_pool: ConnectionPool | None = None


@dataclass(frozen=True)
class Subset:
    name: str
    labels: Mapping[str, str]
    traffic_policy: TrafficPolicy | None = None


@dataclass(frozen=True)
class DestinationRule:
    name: str
    host: str
    subsets: tuple[Subset, ...] = ()
    traffic_policy: TrafficPolicy | None = None
    namespace: str = "default"


@dataclass(frozen=True)
class Mesh:
    services: tuple[Service, ...]
    workloads: tuple[Workload, ...] = ()
    virtual_services: tuple[VirtualService, ...] = ()
    destination_rules: tuple[DestinationRule, ...] = ()
    proxy_namespace: str = "default"  # namespace of the sidecar we generate for
    proxy_id: str = "sidecar~10.244.0.10~productpage-v1-6b746f74dc-9stvs.default~default.svc.cluster.local"
    # istiod 1.20+ sends port-less domains with RouteConfiguration.ignore_port_in_host_matching.
    ignore_port_in_host_matching: bool = False


@dataclass(frozen=True)
class Xds:
    """What istiod pushes: LDS, RDS, CDS and EDS resources (xds-protos messages), in push order."""

    listeners: tuple[listener_pb2.Listener, ...]
    route_configs: tuple[route_pb2.RouteConfiguration, ...]
    clusters: tuple[cluster_pb2.Cluster, ...]
    endpoints: tuple[endpoint_pb2.ClusterLoadAssignment, ...]
    node_id: str = ""


class ModelError(ValueError):
    """The model cannot be turned into xDS (a reference to something that does not exist)."""


# --------------------------------------------------------------------------------------------------
# Names, as istiod builds them.


def subset_key(port: int, subset: str, hostname: str, direction: str = "outbound") -> str:
    return f"{direction}|{port}|{subset}|{hostname}"


def sni(port: int, subset: str, hostname: str) -> str:
    return f"outbound_.{port}_.{subset}_.{hostname}"


def resolve_host(host: str, namespace: str) -> str:
    """Short VirtualService/DestinationRule hosts resolve in the config's namespace."""
    if host.endswith(DOMAIN):
        return host
    if host.endswith(".svc"):
        return f"{host}.{DOMAIN}"
    if "." in host:
        return f"{host}.svc.{DOMAIN}" if host.count(".") == 1 else host
    return f"{host}.{namespace}.svc.{DOMAIN}"


def vhost_domains(svc: Service, port: int, proxy_namespace: str, ignore_port: bool = False) -> list[str]:
    """Every name a client may put in Host for this service: with and without the port (istiod 1.13),
    or only without it when the route configuration ignores ports (istiod 1.20+)."""
    if ignore_port:
        short = [svc.name] if svc.namespace == proxy_namespace else []
        return [svc.hostname, *short, f"{svc.name}.{svc.namespace}.svc", f"{svc.name}.{svc.namespace}",
                svc.cluster_ip]
    names = [svc.hostname]
    if svc.namespace == proxy_namespace:
        names.append(svc.name)
    names += [f"{svc.name}.{svc.namespace}.svc.{DOMAIN.split('.')[0]}", f"{svc.name}.{svc.namespace}.svc",
              f"{svc.name}.{svc.namespace}", svc.cluster_ip]
    out: list[str] = []
    for n in names:
        out += [n, f"{n}:{port}"]
    return out


def _set_dur(msg, seconds: float) -> None:
    msg.seconds = int(seconds)
    msg.nanos = round((seconds - int(seconds)) * 1e9)


def _parse(cls, d: dict):
    return json_format.ParseDict(d, cls())


# --------------------------------------------------------------------------------------------------
# Clusters (CDS).

_SDS = {"api_config_source": {"api_type": "GRPC", "grpc_services": [{"envoy_grpc": {"cluster_name": "sds-grpc"}}],
                              "set_node_on_first_message_only": True, "transport_api_version": "V3"},
        "initial_fetch_timeout": "0s", "resource_api_version": "V3"}

_METADATA_EXCHANGE = {"name": "istio.metadata_exchange", "typed_config": {
    "@type": "type.googleapis.com/udpa.type.v1.TypedStruct",
    "type_url": "type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange",
    "value": {"protocol": "istio-peer-exchange"}}}

_MAX_CB = {"max_connections": 4294967295, "max_pending_requests": 4294967295, "max_requests": 4294967295,
           "max_retries": 4294967295}


@functools.lru_cache(maxsize=1)
def _eds_cluster_template() -> cluster_pb2.Cluster:
    """One EDS cluster with Istio's auto-mTLS transport socket matches; copied for every cluster
    (CopyFrom is what makes 10,000-service meshes quick to build)."""
    tls = {"@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
           "common_tls_context": {
               "alpn_protocols": ["istio-peer-exchange", "istio"],
               "tls_certificate_sds_secret_configs": [{"name": "default", "sds_config": _SDS}],
               "combined_validation_context": {
                   "default_validation_context": {"match_subject_alt_names": [{"exact": "SAN"}]},
                   "validation_context_sds_secret_config": {"name": "ROOTCA", "sds_config": _SDS}}},
           "sni": "SNI"}
    return _parse(cluster_pb2.Cluster, {
        "name": "NAME", "type": "EDS",
        "eds_cluster_config": {"eds_config": {"ads": {}, "initial_fetch_timeout": "0s", "resource_api_version": "V3"},
                               "service_name": "NAME"},
        "connect_timeout": "10s",
        "circuit_breakers": {"thresholds": [dict(_MAX_CB)]},
        "common_lb_config": {"locality_weighted_lb_config": {}},
        "filters": [_METADATA_EXCHANGE],
        "transport_socket_matches": [
            {"name": "tlsMode-istio", "match": {"tlsMode": "istio"},
             "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": tls}},
            {"name": "tlsMode-disabled", "match": {},
             "transport_socket": {"name": "envoy.transport_sockets.raw_buffer", "typed_config": {
                 "@type": "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"}}}],
    })


def _apply_traffic_policy(c: cluster_pb2.Cluster, tp: TrafficPolicy | None) -> None:
    if tp is None:
        return
    if tp.consistent_hash is not None:
        c.lb_policy = cluster_pb2.Cluster.RING_HASH
        c.ring_hash_lb_config.minimum_ring_size.value = tp.consistent_hash.minimum_ring_size
    elif tp.simple is SimpleLB.LEAST_REQUEST:
        c.lb_policy = cluster_pb2.Cluster.LEAST_REQUEST
    elif tp.simple is SimpleLB.RANDOM:
        c.lb_policy = cluster_pb2.Cluster.RANDOM
    if (od := tp.outlier_detection) is not None:
        o = c.outlier_detection
        o.consecutive_5xx.value = od.consecutive_5xx_errors
        _set_dur(o.interval, od.interval)
        _set_dur(o.base_ejection_time, od.base_ejection_time)
        o.max_ejection_percent.value = od.max_ejection_percent
        o.enforcing_consecutive_5xx.value = 100
        o.enforcing_success_rate.value = 0
        o.consecutive_gateway_failure.value = 0
        o.enforcing_consecutive_gateway_failure.value = 0
        # istiod sets the panic threshold to 0% (DR minHealthPercent default) with outlier detection.
        c.common_lb_config.healthy_panic_threshold.SetInParent()
    if (cp := tp.connection_pool) is not None:
        t = c.circuit_breakers.thresholds[0]
        if cp.tcp_max_connections is not None:
            t.max_connections.value = cp.tcp_max_connections
        if cp.http1_max_pending_requests is not None:
            t.max_pending_requests.value = cp.http1_max_pending_requests
        if cp.http2_max_requests is not None:
            t.max_requests.value = cp.http2_max_requests
        if cp.max_retries is not None:
            t.max_retries.value = cp.max_retries
        if cp.connect_timeout is not None:
            _set_dur(c.connect_timeout, cp.connect_timeout)
        if cp.max_requests_per_connection is not None:
            opts = http_protocol_options_pb2.HttpProtocolOptions()
            opts.common_http_protocol_options.max_requests_per_connection.value = cp.max_requests_per_connection
            opts.use_downstream_protocol_config.SetInParent()
            c.typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].Pack(opts)


def _merge_policy(base: TrafficPolicy | None, over: TrafficPolicy | None) -> TrafficPolicy | None:
    """Subset policy fields replace the DestinationRule's, field by field (istiod MergeTrafficPolicy)."""
    if over is None:
        return base
    if base is None:
        return over
    lb_over = over.simple is not None or over.consistent_hash is not None
    return TrafficPolicy(
        simple=over.simple if lb_over else base.simple,
        consistent_hash=over.consistent_hash if lb_over else base.consistent_hash,
        outlier_detection=over.outlier_detection or base.outlier_detection,
        connection_pool=over.connection_pool or base.connection_pool)


def build_cluster(svc: Service, port: int, subset: Subset | None, dr: DestinationRule | None,
                  sans: Sequence[str]) -> cluster_pb2.Cluster:
    subset_name = subset.name if subset else ""
    name = subset_key(port, subset_name, svc.hostname)
    c = cluster_pb2.Cluster()
    c.CopyFrom(_eds_cluster_template())
    c.name = name
    c.eds_cluster_config.service_name = name
    istio_md = c.metadata.filter_metadata["istio"]
    if dr is not None:
        istio_md["config"] = f"/apis/networking.istio.io/v1alpha3/namespaces/{dr.namespace}/destination-rule/{dr.name}"
    if subset is not None:
        istio_md["subset"] = subset.name
    istio_md["default_original_port"] = port
    istio_md.get_or_create_list("services").add_struct().update(
        {"host": svc.hostname, "name": svc.name, "namespace": svc.namespace})
    tls_ctx_any = c.transport_socket_matches[0].transport_socket.typed_config
    tls = tls_pb2.UpstreamTlsContext()
    tls_ctx_any.Unpack(tls)
    tls.sni = sni(port, subset_name, svc.hostname)
    vc = tls.common_tls_context.combined_validation_context.default_validation_context
    del vc.match_subject_alt_names[:]
    for san in sans:
        vc.match_subject_alt_names.add().exact = san
    tls_ctx_any.Pack(tls)
    policy = dr.traffic_policy if dr else None
    if subset is not None:
        policy = _merge_policy(policy, subset.traffic_policy)
    _apply_traffic_policy(c, policy)
    return c


def static_clusters() -> list[cluster_pb2.Cluster]:
    """BlackHoleCluster and PassthroughCluster, as every sidecar gets them."""
    blackhole = _parse(cluster_pb2.Cluster, {"name": "BlackHoleCluster", "type": "STATIC", "connect_timeout": "10s"})
    passthrough = _parse(cluster_pb2.Cluster, {
        "name": "PassthroughCluster", "type": "ORIGINAL_DST", "connect_timeout": "10s",
        "lb_policy": "CLUSTER_PROVIDED", "circuit_breakers": {"thresholds": [dict(_MAX_CB)]},
        "protocol_selection": "USE_DOWNSTREAM_PROTOCOL", "filters": [_METADATA_EXCHANGE]})
    return [blackhole, passthrough]


# --------------------------------------------------------------------------------------------------
# Endpoints (EDS).

_HEALTH = {"HEALTHY": 1, "UNHEALTHY": 2, "DRAINING": 3, "TIMEOUT": 4, "DEGRADED": 5}


def _lb_endpoint_template(w: Workload, port: int) -> endpoint_components_pb2.LbEndpoint:
    ep = endpoint_components_pb2.LbEndpoint()
    sa = ep.endpoint.address.socket_address
    sa.address = "0.0.0.0"
    sa.port_value = w.target_port or port
    ep.endpoint.health_check_config.SetInParent()
    ep.health_status = _HEALTH[w.health]
    md = ep.metadata.filter_metadata
    md["envoy.transport_socket_match"]["tlsMode"] = w.tls_mode
    md["istio"]["workload"] = f"{w.name};{w.namespace};{w.service};{w.version};Kubernetes"
    ep.load_balancing_weight.value = 1
    return ep


def _locality_key(w: Workload) -> tuple[str, str, str, int]:
    parts = (w.locality.split("/") + ["", "", ""])[:3]
    return parts[0], parts[1], parts[2], w.priority


def build_load_assignment(cluster_name: str, port: int, workloads: Iterable[Workload]
                          ) -> endpoint_pb2.ClusterLoadAssignment:
    cla = endpoint_pb2.ClusterLoadAssignment()
    cla.cluster_name = cluster_name
    groups: dict[tuple[str, str, str, int], list[Workload]] = {}
    for w in workloads:
        groups.setdefault(_locality_key(w), []).append(w)
    for key in sorted(groups):
        region, zone, subzone, priority = key
        le = cla.endpoints.add()
        le.locality.SetInParent()
        if region:
            le.locality.region = region
        if zone:
            le.locality.zone = zone
        if subzone:
            le.locality.sub_zone = subzone
        count = 0
        for w in groups[key]:
            tmpl = _lb_endpoint_template(w, port)
            for ip in w.ips:
                ep = le.lb_endpoints.add()
                ep.CopyFrom(tmpl)
                ep.endpoint.address.socket_address.address = ip
                count += 1
        # istiod weighs a locality by its endpoint count.
        le.load_balancing_weight.value = count
        if priority:
            le.priority = priority
    cla.policy.overprovisioning_factor.value = 140
    return cla


# --------------------------------------------------------------------------------------------------
# Routes (RDS).

_PREVIOUS_HOSTS = "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"


def retry_policy(retry: HTTPRetry | None) -> route_components_pb2.RetryPolicy | None:
    """istiod's retry.ConvertPolicy: defaults, or attempts/per-try timeout/retry_on from the VirtualService."""
    if retry is not None and retry.attempts <= 0:
        return None
    p = route_components_pb2.RetryPolicy()
    p.retry_on = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
    p.num_retries.value = 2
    pred = p.retry_host_predicate.add()
    pred.name = "envoy.retry_host_predicates.previous_hosts"
    pred.typed_config.type_url = _PREVIOUS_HOSTS
    p.host_selection_retry_max_attempts = 5
    p.retriable_status_codes.append(503)
    if retry is None:
        return p
    p.num_retries.value = retry.attempts
    if retry.retry_on:
        parts = [s.strip() for s in retry.retry_on.split(",") if s.strip()]
        codes = [int(s) for s in parts if s.isdigit() and 100 <= int(s) < 600]
        p.retry_on = ",".join(s for s in parts if not (s.isdigit() and 100 <= int(s) < 600))
        del p.retriable_status_codes[:]
        p.retriable_status_codes.extend(codes)
    if retry.per_try_timeout is not None:
        _set_dur(p.per_try_timeout, retry.per_try_timeout)
    return p


def _string_matcher(m: StringMatch, target) -> None:
    if m.kind is MatchKind.EXACT:
        target.exact = m.value
    elif m.kind is MatchKind.PREFIX:
        target.prefix = m.value
    else:
        target.safe_regex.google_re2.SetInParent()
        target.safe_regex.regex = m.value


def _header_matcher(name: str, m: StringMatch | None, invert: bool = False) -> route_components_pb2.HeaderMatcher:
    h = route_components_pb2.HeaderMatcher(name=name)
    if m is None or (m.kind is MatchKind.REGEX and m.value == "*"):
        h.present_match = True
    else:
        _string_matcher(m, h.string_match)
    if invert:
        h.invert_match = True
    return h


def route_match(m: HTTPMatch | None) -> route_components_pb2.RouteMatch:
    out = route_components_pb2.RouteMatch(prefix="/")
    if m is None:
        return out
    headers = [_header_matcher(n, v) for n, v in m.headers.items()]
    headers += [_header_matcher(n, v, invert=True) for n, v in m.without_headers.items()]
    headers.sort(key=lambda h: h.name)
    if m.uri is not None:
        if m.uri.kind is MatchKind.EXACT:
            out.path = m.uri.value
        elif m.uri.kind is MatchKind.PREFIX:
            out.prefix = m.uri.value
        else:
            out.safe_regex.google_re2.SetInParent()
            out.safe_regex.regex = m.uri.value
    out.case_sensitive.value = not m.ignore_uri_case
    if m.method is not None:
        headers.append(_header_matcher(":method", m.method))
    if m.authority is not None:
        headers.append(_header_matcher(":authority", m.authority))
    out.headers.extend(headers)
    for name in sorted(m.query_params):
        q = out.query_parameters.add(name=name)
        _string_matcher(m.query_params[name], q.string_match)
    return out


def _fraction(percent: float, target) -> None:
    target.numerator = int(round(percent * 10000))
    target.denominator = 2  # MILLION, as istiod's translatePercentToFractionalPercent


def fault_config(delay: FaultDelay | None, abort: FaultAbort | None) -> fault_pb2.HTTPFault | None:
    if delay is None and abort is None:
        return None
    f = fault_pb2.HTTPFault()
    if delay is not None:
        _set_dur(f.delay.fixed_delay, delay.fixed_delay)
        _fraction(delay.percentage, f.delay.percentage)
    if abort is not None:
        f.abort.http_status = abort.http_status
        _fraction(abort.percentage, f.abort.percentage)
    return f


def _is_catch_all(m: HTTPMatch) -> bool:
    uri_all = m.uri is not None and ((m.uri.kind is MatchKind.PREFIX and m.uri.value == "/")
                                     or (m.uri.kind is MatchKind.REGEX and m.uri.value == "*"))
    return (uri_all and not m.headers and not m.query_params and not m.without_headers
            and m.method is None and m.authority is None and m.port == 0)


def _header_options(headers: Mapping[str, str], append: bool) -> list:
    out = []
    for k in sorted(headers):
        if k.startswith(":") or k.lower() == "host":
            continue
        o = base_pb2.HeaderValueOption()
        o.header.key = k
        o.header.value = headers[k]
        o.append.value = append
        out.append(o)
    return out


def _authority(ops: HeaderOps | None) -> str:
    if ops is None:
        return ""
    for src in (ops.request_set, ops.request_add):
        for k, v in src.items():
            if k.lower() in (":authority", "host"):
                return v
    return ""


class _Registry:
    """Index of services, workloads and destination rules, the way PushContext answers istiod's lookups."""

    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh
        self.services = {s.hostname: s for s in mesh.services}
        if len(self.services) != len(mesh.services):
            raise ModelError("two services share a hostname")
        self.rules: dict[str, DestinationRule] = {}
        for dr in mesh.destination_rules:
            host = resolve_host(dr.host, dr.namespace)
            if host in self.rules:
                raise ModelError(f"two DestinationRules for {host}")
            self.rules[host] = dr
        self.workloads: dict[str, list[Workload]] = {}
        for w in mesh.workloads:
            host = f"{w.service}.{w.namespace}.svc.{DOMAIN}"
            if host not in self.services:
                raise ModelError(f"workload {w.name} has no service {host}")
            self.workloads.setdefault(host, []).append(w)

    def cluster_name(self, dst: Destination, namespace: str, listen_port: int) -> str:
        """istiod's GetDestinationCluster: explicit port, else the service's only port, else the listener's."""
        host = resolve_host(dst.host, namespace)
        svc = self.services.get(host)
        port = listen_port
        if dst.port is not None:
            port = dst.port
        elif svc is not None and len(svc.ports) == 1:
            port = svc.ports[0].number
        return subset_key(port, dst.subset, host)

    def consistent_hash(self, dst: Destination, namespace: str) -> ConsistentHash | None:
        dr = self.rules.get(resolve_host(dst.host, namespace))
        if dr is None:
            return None
        h = dr.traffic_policy.consistent_hash if dr.traffic_policy else None
        for s in dr.subsets:
            if s.name == dst.subset and s.traffic_policy and s.traffic_policy.consistent_hash:
                h = s.traffic_policy.consistent_hash
        return h


def hash_policy(h: ConsistentHash | None) -> route_components_pb2.RouteAction.HashPolicy | None:
    if h is None:
        return None
    p = route_components_pb2.RouteAction.HashPolicy()
    if h.http_header_name:
        p.header.header_name = h.http_header_name
    elif h.http_cookie_name:
        p.cookie.name = h.http_cookie_name
        if h.http_cookie_ttl is not None:
            _set_dur(p.cookie.ttl, h.http_cookie_ttl)
        if h.http_cookie_path:
            p.cookie.path = h.http_cookie_path
    elif h.use_source_ip:
        p.connection_properties.source_ip = True
    elif h.http_query_parameter_name:
        p.query_parameter.name = h.http_query_parameter_name
    else:
        return None
    return p


def _operation(r: route_components_pb2.Route, vs_name: str, port: int) -> str:
    which = r.match.WhichOneof("path_specifier")
    path = {"prefix": r.match.prefix + "*", "path": r.match.path,
            "safe_regex": r.match.safe_regex.regex}.get(which, "/*")
    cluster = r.route.cluster if r.WhichOneof("action") == "route" else ""
    if cluster.count("|") == 3:
        _, p, _, host = cluster.split("|")
        return f"{host}:{p}{path}"
    return f"{vs_name}:{port}{path}"


def translate_http_route(reg: _Registry, vs: VirtualService, http: HTTPRoute, match: HTTPMatch | None,
                         port: int) -> route_components_pb2.Route | None:
    """istiod's translateRoute for one HTTPRoute and one of its matches."""
    if match is not None and match.port and match.port != port:
        return None
    r = route_components_pb2.Route()
    name = http.name + ("." + match.name if match is not None and match.name else "")
    if name:
        r.name = name
    r.match.CopyFrom(route_match(match))
    r.metadata.filter_metadata["istio"]["config"] = (
        f"/apis/networking.istio.io/v1alpha3/namespaces/{vs.namespace}/virtual-service/{vs.name}")
    ops = http.headers
    if ops is not None:
        r.request_headers_to_add.extend(_header_options(ops.request_set, False) + _header_options(ops.request_add, True))
        r.response_headers_to_add.extend(_header_options(ops.response_set, False)
                                         + _header_options(ops.response_add, True))
        r.request_headers_to_remove.extend(h for h in ops.request_remove if not h.startswith(":"))
        r.response_headers_to_remove.extend(h for h in ops.response_remove if not h.startswith(":"))
    if http.redirect is not None:
        rd = r.redirect
        if http.redirect.authority:
            rd.host_redirect = http.redirect.authority
        if http.redirect.uri:
            rd.path_redirect = http.redirect.uri
        codes = {301: 0, 302: 1, 303: 2, 307: 3, 308: 4}
        if http.redirect.code not in codes:
            raise ModelError(f"redirect code {http.redirect.code} is not supported")
        rd.response_code = codes[http.redirect.code]
    else:
        a = r.route
        if http.cors is not None:
            c = http.cors
            for o in c.allow_origins:
                _string_matcher(o, a.cors.allow_origin_string_match.add())
            a.cors.filter_enabled.default_value.numerator = 100
            if c.allow_credentials is not None:
                a.cors.allow_credentials.value = c.allow_credentials
            a.cors.allow_headers = ",".join(c.allow_headers)
            a.cors.allow_methods = ",".join(c.allow_methods)
            a.cors.expose_headers = ",".join(c.expose_headers)
            if c.max_age is not None:
                a.cors.max_age = str(c.max_age)
        rp = retry_policy(http.retries)
        if rp is not None:
            a.retry_policy.CopyFrom(rp)
        _set_dur(a.timeout, http.timeout or 0)
        a.max_grpc_timeout.CopyFrom(a.timeout)  # istiod (1.13-1.19) mirrors the timeout here
        authority = _authority(ops)
        if http.rewrite is not None:
            if http.rewrite.uri:
                a.prefix_rewrite = http.rewrite.uri
            authority = http.rewrite.authority or authority
        if authority:
            a.host_rewrite_literal = authority
        if http.mirror is not None and (http.mirror_percentage is None or http.mirror_percentage > 0):
            mp = a.request_mirror_policies.add()
            mp.cluster = reg.cluster_name(http.mirror, vs.namespace, port)
            if http.mirror_percentage is None:
                mp.runtime_fraction.default_value.numerator = 100  # HUNDRED
            else:
                _fraction(http.mirror_percentage, mp.runtime_fraction.default_value)
            mp.trace_sampled.value = False
        weighted = []
        for rd_ in http.route:
            weight = rd_.weight
            if weight == 0:
                if len(http.route) != 1:
                    continue  # istiod drops 0-weight destinations when there are others
                weight = 100
            weighted.append((reg.cluster_name(rd_.destination, vs.namespace, port), weight))
            hp = hash_policy(reg.consistent_hash(rd_.destination, vs.namespace))
            if hp is not None:
                a.hash_policy.append(hp)
        if not weighted:
            raise ModelError(f"VirtualService {vs.name}: a route without destination or redirect")
        if len(weighted) == 1:
            a.cluster = weighted[0][0]
        else:
            for cname, w in weighted:
                cw = a.weighted_clusters.clusters.add(name=cname)
                cw.weight.value = w
    r.decorator.operation = _operation(r, vs.name, port)
    fault = fault_config(http.fault_delay, http.fault_abort)
    if fault is not None:
        r.typed_per_filter_config["envoy.filters.http.fault"].Pack(fault)
    return r


def default_route(cluster: str, operation: str, hp=None) -> route_components_pb2.Route:
    """istiod's BuildDefaultHTTPOutboundRoute for a service without VirtualService."""
    r = route_components_pb2.Route(name="default")
    r.match.prefix = "/"
    a = r.route
    a.cluster = cluster
    a.timeout.SetInParent()
    a.retry_policy.CopyFrom(retry_policy(None))
    a.max_stream_duration.max_stream_duration.SetInParent()
    a.max_stream_duration.grpc_timeout_header_max.SetInParent()
    if hp is not None:
        a.hash_policy.append(hp)
    r.decorator.operation = operation
    return r


def allow_any_vhost() -> route_components_pb2.VirtualHost:
    vh = route_components_pb2.VirtualHost(name="allow_any", domains=["*"], include_request_attempt_count=True)
    r = vh.routes.add(name="allow_any")
    r.match.prefix = "/"
    r.route.cluster = "PassthroughCluster"
    r.route.timeout.SetInParent()
    r.route.max_grpc_timeout.SetInParent()
    return vh


def build_route_configs(reg: _Registry) -> list[route_pb2.RouteConfiguration]:
    mesh = reg.mesh
    ports = sorted({p.number for s in mesh.services for p in s.ports if p.is_http})
    # VirtualService per service hostname (the first one wins, like istiod's merge by creation time).
    vs_by_host: dict[str, VirtualService] = {}
    for vs in mesh.virtual_services:
        for h in vs.hosts:
            host = resolve_host(h, vs.namespace)
            if host not in reg.services:
                raise ModelError(f"VirtualService {vs.name}: host {h} is not a known service")
            vs_by_host.setdefault(host, vs)
    out = []
    for port in ports:
        rc = route_pb2.RouteConfiguration(name=str(port))
        rc.validate_clusters.value = False
        if mesh.ignore_port_in_host_matching:
            rc.ignore_port_in_host_matching = True
            rc.max_direct_response_body_size_bytes.value = 1048576
        vhosts = []
        for svc in mesh.services:
            if not any(p.number == port and p.is_http for p in svc.ports):
                continue
            vh = route_components_pb2.VirtualHost(name=f"{svc.hostname}:{port}",
                                                  domains=vhost_domains(svc, port, mesh.proxy_namespace,
                                                                        mesh.ignore_port_in_host_matching),
                                                  include_request_attempt_count=True)
            vs = vs_by_host.get(svc.hostname)
            if vs is not None:
                for http in vs.http:
                    matches: Sequence[HTTPMatch | None] = http.match or (None,)
                    stop = False
                    for m in matches:
                        r = translate_http_route(reg, vs, http, m, port)
                        if r is not None:
                            vh.routes.append(r)
                            if m is None or _is_catch_all(m):
                                stop = True  # istiod stops after a catch-all: later rules never match
                                break
                    if stop:
                        break
            if vs is None or not vh.routes:
                ch = reg.consistent_hash(Destination(svc.hostname), svc.namespace)
                vh.routes.append(default_route(subset_key(port, "", svc.hostname), f"{svc.hostname}:{port}/*",
                                               hash_policy(ch)))
            vhosts.append(vh)
        vhosts.sort(key=lambda v: v.name)
        rc.virtual_hosts.extend(vhosts)
        rc.virtual_hosts.append(allow_any_vhost())
        out.append(rc)
    return out


# --------------------------------------------------------------------------------------------------
# Listeners (LDS).

_HCM = types.PREFIX + chains.HCM_TYPE
_TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
_ISTIO_STATS = {"name": "istio.stats", "typed_config": {
    "@type": "type.googleapis.com/udpa.type.v1.TypedStruct",
    "type_url": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
    "value": {"config": {"root_id": "stats_outbound", "vm_config": {
        "vm_id": "stats_outbound", "runtime": "envoy.wasm.runtime.null",
        "code": {"local": {"inline_string": "envoy.wasm.stats"}}},
        "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                          "value": "{\n  \"debug\": \"false\",\n  \"stat_prefix\": \"istio\"\n}\n"}}}}}


def _passthrough_chain(name: str = "PassthroughFilterChain") -> dict:
    return {"filter_chain_match": {}, "name": name, "filters": [
        {"name": "envoy.filters.network.tcp_proxy",
         "typed_config": {"@type": _TCP_PROXY, "stat_prefix": "PassthroughCluster", "cluster": "PassthroughCluster"}}]}


def http_listener(port: int) -> listener_pb2.Listener:
    hcm = {
        "@type": _HCM, "stat_prefix": f"outbound_0.0.0.0_{port}",
        "rds": {"config_source": {"ads": {}, "initial_fetch_timeout": "0s", "resource_api_version": "V3"},
                "route_config_name": str(port)},
        "http_filters": [
            {"name": "istio.metadata_exchange", "typed_config": {
                "@type": "type.googleapis.com/udpa.type.v1.TypedStruct",
                "type_url": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                "value": {"config": {"vm_config": {"runtime": "envoy.wasm.runtime.null",
                                                   "code": {"local": {"inline_string": "envoy.wasm.metadata_exchange"}}},
                                     "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                                                       "value": "{}\n"}}}}},
            {"name": "envoy.filters.http.cors",
             "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"}},
            {"name": "envoy.filters.http.fault",
             "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"}},
            _ISTIO_STATS,
            {"name": "envoy.filters.http.router",
             "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
        "use_remote_address": False,
        "upgrade_configs": [{"upgrade_type": "websocket"}],
        "stream_idle_timeout": "0s", "normalize_path": True,
        "path_with_escaped_slashes_action": "KEEP_UNCHANGED"}
    return _parse(listener_pb2.Listener, {
        "name": f"0.0.0.0_{port}",
        "address": {"socket_address": {"address": "0.0.0.0", "port_value": port}},
        "filter_chains": [{"filter_chain_match": {"transport_protocol": "raw_buffer",
                                                  "application_protocols": ["http/1.1", "h2c"]},
                           "filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}],
        "default_filter_chain": _passthrough_chain(),
        "listener_filters": [
            {"name": "envoy.filters.listener.tls_inspector", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}},
            {"name": "envoy.filters.listener.http_inspector", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector"}}],
        "listener_filters_timeout": "0s", "continue_on_listener_filters_timeout": True,
        "traffic_direction": "OUTBOUND", "bind_to_port": False})


def tcp_listener(svc: Service, port: int) -> listener_pb2.Listener:
    cluster = subset_key(port, "", svc.hostname)
    return _parse(listener_pb2.Listener, {
        "name": f"{svc.cluster_ip}_{port}",
        "address": {"socket_address": {"address": svc.cluster_ip, "port_value": port}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": {
            "@type": _TCP_PROXY, "stat_prefix": cluster, "cluster": cluster}}]}],
        "traffic_direction": "OUTBOUND", "bind_to_port": False})


def virtual_outbound() -> listener_pb2.Listener:
    blackhole = {"filter_chain_match": {"destination_port": 15001}, "name": "virtualOutbound-blackhole",
                 "filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": {
                     "@type": _TCP_PROXY, "stat_prefix": "BlackHoleCluster", "cluster": "BlackHoleCluster"}}]}
    catchall = _passthrough_chain("virtualOutbound-catchall-tcp")
    return _parse(listener_pb2.Listener, {
        "name": "virtualOutbound", "address": {"socket_address": {"address": "0.0.0.0", "port_value": 15001}},
        "filter_chains": [blackhole, catchall], "use_original_dst": True, "traffic_direction": "OUTBOUND"})


def build_listeners(mesh: Mesh) -> list[listener_pb2.Listener]:
    out = []
    http_ports = sorted({p.number for s in mesh.services for p in s.ports if p.is_http})
    for s in mesh.services:
        for p in s.ports:
            if not p.is_http:
                out.append(tcp_listener(s, p.number))
    out += [http_listener(p) for p in http_ports]
    out.append(virtual_outbound())
    return out


# --------------------------------------------------------------------------------------------------
# The whole push.


def _matches(labels: Mapping[str, str], selector: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def generate(mesh: Mesh) -> Xds:
    reg = _Registry(mesh)
    clusters = static_clusters()
    endpoints = []
    for svc in mesh.services:
        dr = reg.rules.get(svc.hostname)
        wls = reg.workloads.get(svc.hostname, [])
        sas = sorted({f"spiffe://{DOMAIN}/ns/{svc.namespace}/sa/{svc.service_account or svc.name}"})
        for p in svc.ports:
            variants: list[tuple[Subset | None, list[Workload]]] = [(None, wls)]
            if dr is not None:
                variants += [(s, [w for w in wls if _matches(w.labels, s.labels)]) for s in dr.subsets]
            for subset, members in variants:
                c = build_cluster(svc, p.number, subset, dr, sas)
                clusters.append(c)
                endpoints.append(build_load_assignment(c.name, p.number, members))
    return Xds(listeners=tuple(build_listeners(mesh)), route_configs=tuple(build_route_configs(reg)),
               clusters=tuple(clusters), endpoints=tuple(endpoints), node_id=mesh.proxy_id)


# --------------------------------------------------------------------------------------------------
# Envoy admin /config_dump.

# istio.alpn's typed config (istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig) is not in
# xds-protos; Envoy prints it anyway, so it is spliced into the JSON the way a real dump carries it.
_ISTIO_ALPN = {"name": "istio.alpn", "typed_config": {
    "@type": "type.googleapis.com/istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig",
    "alpn_override": [
        {"alpn_override": ["istio-http/1.0", "istio", "http/1.0"]},
        {"upstream_protocol": "HTTP11", "alpn_override": ["istio-http/1.1", "istio", "http/1.1"]},
        {"upstream_protocol": "HTTP2", "alpn_override": ["istio-h2", "istio", "h2"]}]}}


def config_dump_message(xds: Xds, include_eds: bool = True) -> config_dump_pb2.ConfigDump:
    ts = LAST_UPDATED
    dump = config_dump_pb2.ConfigDump()
    shared = config_dump_shared_pb2
    b = bootstrap_pb2.Bootstrap()
    b.node.id = xds.node_id
    # as pilot-agent's bootstrap carries it: the pod's addresses, which the inbound side is keyed by
    b.node.metadata["INSTANCE_IPS"] = xds.node_id.split("~")[1]
    bcd = config_dump_pb2.BootstrapConfigDump(bootstrap=b)
    bcd.last_updated.FromJsonString(ts)
    dump.configs.add().Pack(bcd)

    ccd = shared.ClustersConfigDump(version_info=VERSION_INFO)
    for c in xds.clusters:
        dc = ccd.dynamic_active_clusters.add(version_info=VERSION_INFO)
        dc.cluster.Pack(c)
        dc.last_updated.FromJsonString(ts)
    dump.configs.add().Pack(ccd)

    if include_eds:
        ecd = shared.EndpointsConfigDump()
        for e in xds.endpoints:
            de = ecd.dynamic_endpoint_configs.add(version_info=VERSION_INFO)
            de.endpoint_config.Pack(e)
            de.last_updated.FromJsonString(ts)
        dump.configs.add().Pack(ecd)

    lcd = shared.ListenersConfigDump(version_info=VERSION_INFO)
    for lst in xds.listeners:
        dl = lcd.dynamic_listeners.add(name=lst.name)
        dl.active_state.version_info = VERSION_INFO
        dl.active_state.listener.Pack(lst)
        dl.active_state.last_updated.FromJsonString(ts)
    dump.configs.add().Pack(lcd)

    rcd = shared.RoutesConfigDump()
    for rc in xds.route_configs:
        dr = rcd.dynamic_route_configs.add(version_info=VERSION_INFO)
        dr.route_config.Pack(rc)
        dr.last_updated.FromJsonString(ts)
    dump.configs.add().Pack(rcd)
    return dump


def _sorted_deep(v):
    """A Struct as Envoy prints it: keys in order, integral numbers without ``.0``."""
    if isinstance(v, dict):
        return {k: _sorted_deep(v[k]) for k in sorted(v)}
    if isinstance(v, list):
        return [_sorted_deep(x) for x in v]
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


def _stable(v):
    """Sort the keys of protobuf maps and Structs, whose order upb leaves to its hash seed."""
    if isinstance(v, list):
        return [_stable(x) for x in v]
    if not isinstance(v, dict):
        return v
    out = {}
    for k, x in v.items():
        if k == "filter_metadata" or (k == "value" and "type_url" in v) or (k == "match" and "transport_socket" in v):
            out[k] = _sorted_deep(x)
        elif k in ("typed_per_filter_config", "typed_extension_protocol_options"):
            out[k] = {n: _stable(x[n]) for n in sorted(x)}
        else:
            out[k] = _stable(x)
    return out


def config_dump(xds: Xds, include_eds: bool = True, istio_alpn: bool = True) -> dict:
    """The admin ``/config_dump`` as a JSON-ready dict (snake_case, as Envoy prints it)."""
    d = _stable(json_format.MessageToDict(config_dump_message(xds, include_eds), preserving_proto_field_name=True))
    if istio_alpn:
        for cfg in d["configs"]:
            for dl in cfg.get("dynamic_listeners", ()):
                for fc in dl["active_state"]["listener"].get("filter_chains", ()):
                    for f in fc.get("filters", ()):
                        hf = f.get("typed_config", {}).get("http_filters")
                        if hf is not None:
                            hf.insert(1, json.loads(json.dumps(_ISTIO_ALPN)))
    return d


def config_dump_json(xds: Xds, include_eds: bool = True, istio_alpn: bool = True) -> str:
    return json.dumps(config_dump(xds, include_eds, istio_alpn), indent=1, ensure_ascii=False) + "\n"


# --------------------------------------------------------------------------------------------------
# Bookinfo and its traffic-management tasks.

BOOKINFO_SERVICES = (
    Service("details", "10.96.12.34", service_account="bookinfo-details"),
    Service("productpage", "10.96.45.67", service_account="bookinfo-productpage"),
    Service("ratings", "10.96.78.90", service_account="bookinfo-ratings"),
    Service("reviews", "10.96.101.112", service_account="bookinfo-reviews"),
    # A service in another namespace on another HTTP port: no short-name domains, a second RDS.
    Service("istiod", "10.96.0.15", ports=(ServicePort(15014, "http-monitoring"),), namespace="istio-system"),
)

BOOKINFO_WORKLOADS = (
    Workload("details", "v1", ("10.244.0.11",), locality="us-east1/us-east1-b"),
    Workload("productpage", "v1", ("10.244.0.10",), locality="us-east1/us-east1-b"),
    Workload("ratings", "v1", ("10.244.0.12",), locality="us-east1/us-east1-b"),
    Workload("reviews", "v1", ("10.244.0.13",), locality="us-east1/us-east1-b"),
    Workload("reviews", "v2", ("10.244.1.14",), locality="us-east1/us-east1-c"),
    Workload("reviews", "v3", ("10.244.1.15",), locality="us-east1/us-east1-c"),
    Workload("istiod", "latest", ("10.244.0.5",), namespace="istio-system", tls_mode="disabled"),
)


def _subsets(*versions: str) -> tuple[Subset, ...]:
    return tuple(Subset(v, {"version": v}) for v in versions)


# samples/bookinfo/networking/destination-rule-all.yaml
BOOKINFO_RULES = (
    DestinationRule("productpage", "productpage", _subsets("v1")),
    DestinationRule("reviews", "reviews", _subsets("v1", "v2", "v3")),
    DestinationRule("ratings", "ratings", _subsets("v1", "v2")),
    DestinationRule("details", "details", _subsets("v1", "v2")),
)

JASON = HTTPMatch(headers={"end-user": exact("jason")})


def _to(host: str, subset: str, weight: int = 0) -> RouteDestination:
    return RouteDestination(Destination(host, subset), weight)


def _vs(host: str, *http: HTTPRoute) -> VirtualService:
    return VirtualService(host, (host,), tuple(http))


# samples/bookinfo/networking/virtual-service-all-v1.yaml
ALL_V1 = {h: _vs(h, HTTPRoute(route=(_to(h, "v1"),))) for h in ("productpage", "reviews", "ratings", "details")}
REVIEWS_JASON_V2 = _vs("reviews", HTTPRoute(match=(JASON,), route=(_to("reviews", "v2"),)),
                       HTTPRoute(route=(_to("reviews", "v1"),)))


def _with(**override: VirtualService) -> tuple[VirtualService, ...]:
    return tuple({**ALL_V1, **override}.values())


def _scenarios() -> dict[str, tuple[tuple[VirtualService, ...], tuple[DestinationRule, ...]]]:
    rules = BOOKINFO_RULES
    lb_rules = (
        DestinationRule("productpage", "productpage", _subsets("v1")),
        # LEAST_REQUEST for the service, ring hash on a cookie for v3, circuit breaking and outlier detection.
        DestinationRule("reviews", "reviews", _subsets("v1", "v2") + (
            Subset("v3", {"version": "v3"}, TrafficPolicy(consistent_hash=ConsistentHash(
                http_cookie_name="user", http_cookie_ttl=0.0))),),
            TrafficPolicy(simple=SimpleLB.LEAST_REQUEST,
                          outlier_detection=OutlierDetection(consecutive_5xx_errors=7, interval=5.0,
                                                             base_ejection_time=15.0, max_ejection_percent=50),
                          connection_pool=ConnectionPool(tcp_max_connections=100, connect_timeout=0.25,
                                                         http1_max_pending_requests=10, http2_max_requests=1000,
                                                         max_requests_per_connection=10))),
        DestinationRule("ratings", "ratings", _subsets("v1", "v2"),
                        TrafficPolicy(consistent_hash=ConsistentHash(http_header_name="x-user"))),
        DestinationRule("details", "details", _subsets("v1", "v2"),
                        TrafficPolicy(consistent_hash=ConsistentHash(use_source_ip=True))),
    )
    ratings_delay = _vs("ratings", HTTPRoute(match=(JASON,), route=(_to("ratings", "v1"),),
                                             fault_delay=FaultDelay(7.0, 100.0)),
                        HTTPRoute(route=(_to("ratings", "v1"),)))
    return {
        "default": ((), ()),
        "all-v1": (_with(), rules),
        "reviews-jason-v2": (_with(reviews=REVIEWS_JASON_V2), rules),
        "reviews-50-v3": (_with(reviews=_vs("reviews", HTTPRoute(route=(_to("reviews", "v1", 50),
                                                                         _to("reviews", "v3", 50))))), rules),
        "reviews-80-20": (_with(reviews=_vs("reviews", HTTPRoute(route=(_to("reviews", "v1", 80),
                                                                         _to("reviews", "v3", 20))))), rules),
        # virtual-service-ratings-test-delay.yaml (on top of reviews-test-v2, as the task does)
        "ratings-delay-jason": (_with(reviews=REVIEWS_JASON_V2, ratings=ratings_delay), rules),
        # virtual-service-ratings-test-abort.yaml
        "ratings-abort-jason": (_with(reviews=REVIEWS_JASON_V2, ratings=_vs(
            "ratings", HTTPRoute(match=(JASON,), route=(_to("ratings", "v1"),), fault_abort=FaultAbort(500, 100.0)),
            HTTPRoute(route=(_to("ratings", "v1"),)))), rules),
        # Request timeouts task: reviews v2 with 0.5 s, ratings delayed 2 s.
        "reviews-timeout": (_with(reviews=_vs("reviews", HTTPRoute(route=(_to("reviews", "v2"),), timeout=0.5)),
                                  ratings=_vs("ratings", HTTPRoute(route=(_to("ratings", "v1"),),
                                                                   fault_delay=FaultDelay(2.0, 100.0)))), rules),
        "ratings-retries": (_with(ratings=_vs("ratings", HTTPRoute(
            route=(_to("ratings", "v1"),),
            retries=HTTPRetry(3, per_try_timeout=2.0, retry_on="gateway-error,connect-failure,refused-stream,503")))),
            rules),
        # Mirroring task: all live traffic to v1, a copy of all of it to v2.
        "reviews-mirror": (_with(reviews=_vs("reviews", HTTPRoute(route=(_to("reviews", "v1", 100),),
                                                                  mirror=Destination("reviews", "v2"),
                                                                  mirror_percentage=100.0))), rules),
        "lb-policies": (_with(reviews=_vs("reviews", HTTPRoute(route=(_to("reviews", "v3"),)))), lb_rules),
        # Not a Bookinfo task: every kind of match and action a VirtualService can carry, in one place.
        "reviews-matches": (_with(reviews=_vs(
            "reviews",
            HTTPRoute(name="canary", match=(HTTPMatch(uri=prefix("/api/v1"), headers={"x-canary": regex("a|b")}),),
                      route=(_to("reviews", "v3"),)),
            HTTPRoute(name="exact", match=(HTTPMatch(uri=exact("/reviews/exact"), ignore_uri_case=True),),
                      route=(_to("reviews", "v2"),), rewrite=HTTPRewrite(uri="/reviews/0", authority="reviews-v2")),
            HTTPRoute(name="debug", match=(HTTPMatch(uri=regex("/reviews/[0-9]+"),
                                                     query_params={"debug": exact("1")}),),
                      route=(_to("reviews", "v3"),),
                      headers=HeaderOps(request_set={"x-debug": "on"}, response_remove=("server",))),
            HTTPRoute(name="unblocked", match=(HTTPMatch(uri=prefix("/blocked"),
                                                         without_headers={"x-allow": exact("yes")}),),
                      route=(_to("reviews", "v1"),), fault_abort=FaultAbort(403, 100.0)),
            HTTPRoute(name="post", match=(HTTPMatch(method=exact("POST")),), route=(_to("reviews", "v2"),),
                      retries=HTTPRetry(0)),
            HTTPRoute(name="moved", match=(HTTPMatch(uri=prefix("/old")),),
                      redirect=HTTPRedirect(uri="/new", code=302)),
            HTTPRoute(name="cors", match=(HTTPMatch(uri=prefix("/cors")),), route=(_to("reviews", "v1"),),
                      cors=CorsPolicy(allow_origins=(exact("https://example.com"),), allow_methods=("GET", "POST"),
                                      allow_headers=("x-user",), max_age=3600, allow_credentials=True)),
            HTTPRoute(name="split", route=(_to("reviews", "v1", 80), _to("reviews", "v2", 20), _to("reviews", "v3", 0)),
                      fault_delay=FaultDelay(0.25, 12.5), mirror=Destination("reviews", "v3"), mirror_percentage=5.0),
        )), rules),
    }


BOOKINFO_SCENARIOS = tuple(_scenarios())
SEED_SCENARIO = "ratings-delay-jason"


def bookinfo_mesh(scenario: str = SEED_SCENARIO, ignore_port_in_host_matching: bool = False) -> Mesh:
    table = _scenarios()
    if scenario not in table:
        raise ModelError(f"unknown Bookinfo scenario {scenario!r}; known: {', '.join(table)}")
    vss, drs = table[scenario]
    return Mesh(BOOKINFO_SERVICES, BOOKINFO_WORKLOADS, vss, drs,
                ignore_port_in_host_matching=ignore_port_in_host_matching)


def bookinfo(scenario: str = SEED_SCENARIO, ignore_port_in_host_matching: bool = False) -> Xds:
    """What istiod sends the productpage-v1 sidecar for one of Bookinfo's traffic-management tasks
    (``ignore_port_in_host_matching=True``: the port-less domains of istiod 1.20+)."""
    return generate(bookinfo_mesh(scenario, ignore_port_in_host_matching))


# --------------------------------------------------------------------------------------------------
# Synthetic meshes for the benchmark.


def _ip(base: int, n: int) -> str:
    v = base + n
    return f"{v >> 24 & 255}.{v >> 16 & 255}.{v >> 8 & 255}.{v & 255}"


def synthetic_model(n_services: int, endpoints: int = 10, subsets: int = 2, port: int = 9080) -> Mesh:
    """n services on one HTTP port, each with `subsets` versions sharing `endpoints` pods, a DestinationRule
    with one subset per version and one VirtualService (a header match to the last version, then a 90/10
    split between the first two or all to the first)."""
    if n_services < 1 or endpoints < 1 or subsets < 1:
        raise ModelError("synthetic_mesh needs at least one service, endpoint and subset")
    services, workloads, vss, drs = [], [], [], []
    versions = [f"v{i + 1}" for i in range(subsets)]
    pod = 0
    for i in range(n_services):
        name = f"svc-{i:05d}"
        services.append(Service(name, _ip(0x0A600000, i + 1), (ServicePort(port),), namespace="mesh"))
        for j, v in enumerate(versions):
            count = endpoints // subsets + (1 if j < endpoints % subsets else 0)
            ips = tuple(_ip(0x0AF40000, pod + k + 1) for k in range(count))
            pod += count
            if ips:
                workloads.append(Workload(name, v, ips, namespace="mesh", locality=f"region-{i % 3}/zone-{j % 2}"))
        drs.append(DestinationRule(name, name, tuple(Subset(v, {"version": v}) for v in versions), namespace="mesh"))
        split = ((_to(name, versions[0], 90), _to(name, versions[1], 10)) if subsets > 1
                 else (_to(name, versions[0]),))
        vss.append(VirtualService(name, (name,), (
            HTTPRoute(name="canary", match=(HTTPMatch(headers={"end-user": exact(f"user-{i}")}),),
                      route=(_to(name, versions[-1]),)),
            HTTPRoute(name="split", route=split, timeout=5.0)), namespace="mesh"))
    return Mesh(tuple(services), tuple(workloads), tuple(vss), tuple(drs), proxy_namespace="mesh",
                proxy_id="sidecar~10.244.255.1~bench-0.mesh~mesh.svc.cluster.local")


def synthetic_mesh(n_services: int, endpoints: int = 10, subsets: int = 2) -> Xds:
    return generate(synthetic_model(n_services, endpoints, subsets))


# --------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m amesh_testing.istiogen",
                                 description="Print an Envoy /config_dump for a generated Istio mesh.")
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--bookinfo", nargs="?", const=SEED_SCENARIO, metavar="SCENARIO",
                   help=f"Bookinfo productpage sidecar; scenarios: {', '.join(BOOKINFO_SCENARIOS)}")
    g.add_argument("--synthetic", type=int, metavar="N", help="synthetic mesh with N services")
    ap.add_argument("--no-eds", action="store_true", help="leave out the EndpointsConfigDump")
    args = ap.parse_args(argv)
    try:
        xds = bookinfo(args.bookinfo) if args.bookinfo else synthetic_mesh(args.synthetic)
    except ModelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    sys.stdout.write(config_dump_json(xds, include_eds=not args.no_eds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
