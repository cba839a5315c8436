"""Upstream TLS of a Cluster (translate/cluster.py): Istio mutual TLS marks the upstream for the workload
certificate (lua/amesh/mtls.lua) with the SNI and the server identities istiod names."""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from envoy.type.matcher.v3 import string_pb2

from sidecar_agent.translate.cluster import translate_cluster

SNI = "outbound_.9080_._.reviews.default.svc.cluster.local"
REVIEWS = "spiffe://cluster.local/ns/default/sa/bookinfo-reviews"


def _cluster(*sans: string_pb2.StringMatcher, sds: tuple[str, str] = ("default", "ROOTCA")) -> cluster_pb2.Cluster:
    ctx = tls_pb2.UpstreamTlsContext(sni=SNI)
    common = ctx.common_tls_context
    common.tls_certificate_sds_secret_configs.add(name=sds[0])
    combined = common.combined_validation_context
    combined.validation_context_sds_secret_config.name = sds[1]
    combined.default_validation_context.match_subject_alt_names.extend(sans)
    cluster = cluster_pb2.Cluster(name="outbound|9080||reviews.default.svc.cluster.local", type=cluster_pb2.Cluster.EDS)
    cluster.transport_socket.name = "envoy.transport_sockets.tls"
    cluster.transport_socket.typed_config.Pack(ctx)
    return cluster


def test_istio_mutual_carries_sni_and_identities():
    part, report = translate_cluster(_cluster(string_pb2.StringMatcher(exact=REVIEWS),
                                              string_pb2.StringMatcher(exact=REVIEWS + "-canary")))
    labels = part.body["labels"]
    assert part.body["scheme"] == "https"
    assert (labels["amesh.tls"], labels["amesh.sni"]) == ("istio-mutual", SNI)
    assert labels["amesh.san"] == f"{REVIEWS},{REVIEWS}-canary"
    assert not [e for e in report if "match_subject_alt_names" in e.field]


def test_no_identities_means_any_workload_of_the_mesh():
    part, _ = translate_cluster(_cluster())
    assert part.body["labels"]["amesh.tls"] == "istio-mutual" and "amesh.san" not in part.body["labels"]


def test_identities_that_cannot_be_checked_refuse_every_server():
    for sans in ([string_pb2.StringMatcher(prefix="spiffe://cluster.local/")],
                 [string_pb2.StringMatcher(exact=f"{REVIEWS}-{i:03d}") for i in range(8)]):  # > 256 characters
        part, report = translate_cluster(_cluster(*sans))
        assert part.body["labels"]["amesh.san"] == "amesh:unverifiable-identity"
        denied = [e for e in report if "match_subject_alt_names" in e.field]
        assert denied and denied[0].effect == "denied"


def test_tls_that_is_not_istio_gets_no_identities():
    part, _ = translate_cluster(_cluster(string_pb2.StringMatcher(exact=REVIEWS), sds=("my-cert", "my-ca")))
    assert part.body["labels"]["amesh.tls"] == "mutual" and "amesh.san" not in part.body["labels"]


def _tcp_mesh(tls_mode: str):
    from amesh_testing import istiogen

    mongo = istiogen.Service("mongodb", "10.96.0.50", (istiogen.ServicePort(27017, "tcp", "TCP"),))
    return istiogen.generate(istiogen.Mesh(services=(mongo,), workloads=(
        istiogen.Workload("mongodb", "v1", ("10.244.0.50",), tls_mode=tls_mode),)))


def _report_of(xds, **data_path):
    from sidecar_agent.apisix.datapath import DataPathSettings
    from sidecar_agent.configdump import XdsResources
    from sidecar_agent.translate import Translator

    resources = XdsResources(listeners={m.name: m for m in xds.listeners},
                             route_configs={m.name: m for m in xds.route_configs},
                             clusters={m.name: m for m in xds.clusters},
                             endpoints={m.cluster_name: m for m in xds.endpoints})
    return Translator(pod_ips=("10.244.0.10",), data_path=DataPathSettings(**data_path)).load(resources).report()


def test_tcp_service_with_istio_mtls_and_no_workload_certificate_is_reported_denied():
    """Auto-mTLS to sidecar endpoints on a TCP service, no CA configured: the hook closes those connections
    (never plaintext)."""
    denied = [e for e in _report_of(_tcp_mesh("istio")).entries if e.effect == "denied"]
    assert [(e.resource, "Istio mTLS to a TCP service without a workload certificate" in e.field)
            for e in denied] == [("outbound|27017||mongodb.default.svc.cluster.local", True)]


def test_tcp_service_with_istio_mtls_and_a_workload_certificate_is_served():
    """With a workload certificate the TLS origin server dials it (lua/amesh/mtls_origin.lua): nothing denied,
    and the upstream carries what that server needs (SNI, accepted identities)."""
    from sidecar_agent.apisix.datapath import DataPathSettings
    from sidecar_agent.configdump import XdsResources
    from sidecar_agent.translate import Translator

    xds = _tcp_mesh("istio")
    assert not [e for e in _report_of(xds, mtls_dir="/etc/istio/proxy").entries if e.effect == "denied"]
    resources = XdsResources(listeners={m.name: m for m in xds.listeners},
                             route_configs={m.name: m for m in xds.route_configs},
                             clusters={m.name: m for m in xds.clusters},
                             endpoints={m.cluster_name: m for m in xds.endpoints})
    document = Translator(pod_ips=("10.244.0.10",), data_path=DataPathSettings(mtls_dir="/etc/istio/proxy")) \
        .load(resources).document()
    mongo_route = next(r for r in document["stream_routes"] if r.get("server_port") == 27017)
    upstream = next(u for u in document["upstreams"] if u["id"] == mongo_route["upstream_id"])
    assert upstream["labels"]["amesh.tls"] == "istio-mutual"
    assert upstream["labels"]["amesh.sni"] == "outbound_.27017_._.mongodb.default.svc.cluster.local"
    assert upstream["labels"]["amesh.san"] == "spiffe://cluster.local/ns/default/sa/mongodb"


def test_tcp_service_without_sidecars_is_plaintext_and_not_reported():
    assert not [e for e in _report_of(_tcp_mesh("disabled")).entries if e.effect == "denied"]


def test_auto_mtls_with_some_endpoints_only_marks_them():
    """A service whose pods are being given sidecars: Envoy's transport_socket_matches dial the labelled ones
    with mTLS and the rest in plaintext. The upstream stays plaintext, says `istio-per-endpoint`, and marks
    the sidecar's nodes (the hook switches to mTLS for those); the document passes APISIX's schema."""
    from amesh_testing import istiogen
    from sidecar_agent.apisix.datapath import DataPathSettings
    from sidecar_agent.configdump import XdsResources
    from sidecar_agent.schema import Schemas
    from sidecar_agent.schemas import APISIX_SCHEMA_DIR
    from sidecar_agent.translate import Translator

    mongo = istiogen.Service("mongodb", "10.96.0.50", (istiogen.ServicePort(27017, "tcp", "TCP"),))
    xds = istiogen.generate(istiogen.Mesh(services=(mongo,), workloads=(
        istiogen.Workload("mongodb", "v1", ("10.244.0.50",), tls_mode="istio"),
        istiogen.Workload("mongodb", "v2", ("10.244.0.51",), tls_mode="disabled"))))
    resources = XdsResources(listeners={m.name: m for m in xds.listeners},
                             route_configs={m.name: m for m in xds.route_configs},
                             clusters={m.name: m for m in xds.clusters},
                             endpoints={m.cluster_name: m for m in xds.endpoints})
    translator = Translator(pod_ips=("10.244.0.10",), data_path=DataPathSettings(mtls_dir="/etc/istio/proxy"))
    document = translator.load(resources).document()
    route = next(r for r in document["stream_routes"] if r.get("server_port") == 27017)
    upstream = next(u for u in document["upstreams"] if u["id"] == route["upstream_id"])
    assert upstream["scheme"] != "https" and upstream["labels"]["amesh.tls"] == "istio-per-endpoint"
    assert upstream["labels"]["amesh.sni"] == "outbound_.27017_._.mongodb.default.svc.cluster.local"
    assert [(n["host"], n.get("metadata")) for n in upstream["nodes"]] == [
        ("10.244.0.50", {"tlsMode": "istio"}), ("10.244.0.51", None)]
    schemas = Schemas(APISIX_SCHEMA_DIR)
    assert schemas.check("upstream", upstream) == [] and schemas.check("stream_route", route) == []
    # without a workload certificate the sidecar's endpoint is refused: reported as denied
    bare = Translator(pod_ips=("10.244.0.10",)).load(resources).report()
    assert [e.resource for e in bare.entries if e.effect == "denied"] == [
        "outbound|27017||mongodb.default.svc.cluster.local"]
