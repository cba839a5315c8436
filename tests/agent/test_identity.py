from __future__ import annotations

import pytest

from sidecar_agent.identity import IdentityError, from_env, parse_labels_file

ENV = {
    "POD_NAME": "reviews-v1-5d7f8c9b-abcde",
    "POD_NAMESPACE": "bookinfo",
    "INSTANCE_IP": "10.244.1.7",
    "SERVICE_ACCOUNT": "bookinfo-reviews",
    "ISTIO_META_CLUSTER_ID": "Kubernetes",
    "ISTIO_META_MESH_ID": "cluster.local",
    "ISTIO_META_WORKLOAD_NAME": "reviews-v1",
    "ISTIO_META_POD_PORTS": '[{"containerPort":9080,"protocol":"TCP"}]',
    "ISTIO_META_INTERCEPTION_MODE": "REDIRECT",
    "ISTIO_METAJSON_ANNOTATIONS": '{"sidecar.istio.io/status": "x"}',
    "PROXY_CONFIG": '{"discoveryAddress":"istiod.istio-system.svc:15012"}',
    "ISTIO_VERSION": "1.24.0",
    "HOME": "/home/istio-proxy",
}


def test_node_like_pilot_agent():
    identity = from_env(ENV, labels_text='app="reviews"\nversion="v1"\n')
    assert identity.node_id == "sidecar~10.244.1.7~reviews-v1-5d7f8c9b-abcde.bookinfo~bookinfo.svc.cluster.local"
    assert identity.cluster == "reviews.bookinfo"
    meta = identity.metadata
    assert meta["NAMESPACE"] == "bookinfo" and meta["INSTANCE_IPS"] == "10.244.1.7"
    assert meta["LABELS"] == {"app": "reviews", "version": "v1"}
    assert meta["CLUSTER_ID"] == "Kubernetes" and meta["MESH_ID"] == "cluster.local"
    assert meta["WORKLOAD_NAME"] == "reviews-v1" and meta["POD_PORTS"].startswith("[{")
    assert meta["ANNOTATIONS"] == {"sidecar.istio.io/status": "x"}
    assert meta["PROXY_CONFIG"]["discoveryAddress"] == "istiod.istio-system.svc:15012"
    assert meta["ISTIO_VERSION"] == "1.24.0" and meta["SERVICE_ACCOUNT"] == "bookinfo-reviews"
    assert "HOME" not in meta
    node = identity.node()
    assert node.id == identity.node_id and node.metadata["LABELS"]["app"] == "reviews"
    assert node.user_agent_name == "amesh-agent"


def test_dual_stack_instance_ips_take_the_first_for_the_id():
    env = {**ENV, "INSTANCE_IPS": "10.244.1.7,fd00::7"}
    identity = from_env(env)
    assert identity.node_id.split("~")[1] == "10.244.1.7"
    assert identity.metadata["INSTANCE_IPS"] == "10.244.1.7,fd00::7"
    assert identity.cluster == "reviews-v1.bookinfo"


@pytest.mark.parametrize(
    ("drop", "message"),
    [("POD_NAME", "POD_NAME"), ("POD_NAMESPACE", "POD_NAMESPACE"), ("INSTANCE_IP", "INSTANCE_IP")],
)
def test_missing_environment_is_named(drop, message):
    env = {k: v for k, v in ENV.items() if k != drop}
    with pytest.raises(IdentityError, match=message):
        from_env(env)


def test_bad_json_is_named():
    with pytest.raises(IdentityError, match="ISTIO_METAJSON_ANNOTATIONS"):
        from_env({**ENV, "ISTIO_METAJSON_ANNOTATIONS": "{"})


def test_labels_file():
    assert parse_labels_file('app="a"\nsecurity.istio.io/tlsMode="istio"\n\n') == {
        "app": "a", "security.istio.io/tlsMode": "istio"}
