"""The local mesh's pure parts: the Bookinfo topology, the Istio objects istiod reads, `apply`'s parsing."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
import yaml

from localmesh import mesh, topology
from localmesh.errors import MeshError

NETWORKING = Path(__file__).resolve().parents[2] / "e2e" / "bookinfo" / "networking"


def test_bookinfo_addresses_are_distinct_and_on_the_subnet():
    m = topology.bookinfo()
    assert [w.pod for w in m.workloads] == ["productpage-v1", "details-v1", "reviews-v1", "reviews-v2",
                                            "reviews-v3", "ratings-v1", "mongodb-v1"]
    ips = [m.bridge_ip, m.istiod_ip, m.external_ip, *(w.ip for w in m.workloads)]
    assert len(set(ips)) == len(ips)
    assert all(ipaddress.ip_address(ip) in topology.SUBNET for ip in ips)
    vips = [s.vip for s in m.services]
    assert len(set(vips)) == len(vips) and not any(ipaddress.ip_address(v) in topology.SUBNET for v in vips)


def test_registry_declares_every_service_and_workload_for_istiod():
    m = topology.bookinfo()
    objects = topology.registry(m)
    entries = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ServiceEntry"}
    workloads = {o["metadata"]["name"]: o for o in objects if o["kind"] == "WorkloadEntry"}
    assert set(entries) == {s.name for s in m.services} and set(workloads) == {w.pod for w in m.workloads}
    reviews = entries["reviews"]["spec"]
    assert reviews["hosts"] == ["reviews.default.svc.cluster.local"] and reviews["resolution"] == "STATIC"
    assert reviews["ports"] == [{"number": 9080, "name": "http-reviews", "protocol": "HTTP", "targetPort": 9080}]
    assert entries["mongodb"]["spec"]["ports"][0]["protocol"] == "TCP"
    v2 = workloads["reviews-v2"]
    assert v2["spec"]["labels"] == {"app": "reviews", "version": "v2"}  # DestinationRule subsets select these
    assert v2["spec"]["serviceAccount"] == "bookinfo-reviews"
    assert all(o["metadata"]["namespace"] == "default" for o in objects)  # istiod does not default it


def test_resolve_like_cluster_dns():
    m = topology.bookinfo()
    vip = m.service("reviews").vip
    for name in ("reviews", "reviews.default", "reviews.default.svc", "reviews.default.svc.cluster.local"):
        assert topology.resolve(m, name) == vip
    assert topology.resolve(m, "10.1.2.3") == "10.1.2.3"
    assert topology.resolve(m, "external.example") == m.external_ip
    with pytest.raises(KeyError):
        topology.resolve(m, "nosuch")
    assert f"{vip} reviews.default.svc.cluster.local" in topology.hosts_file(m)


def test_prefix_is_unique_per_workdir(tmp_path):
    a, b = mesh.prefix_for(tmp_path / "a"), mesh.prefix_for(tmp_path / "b")
    assert a != b and a == mesh.prefix_for(tmp_path / "a") and len(a) <= 9


@pytest.mark.parametrize("name", sorted(p.name for p in NETWORKING.glob("*.yaml")))
def test_every_shipped_task_file_parses_and_gets_a_namespace(name):
    objects = mesh.parse_istio_yaml((NETWORKING / name).read_text(), name)
    assert objects and all(o["metadata"]["namespace"] == "default" for o in objects)


@pytest.mark.parametrize("text, problem", [
    ("", "no Istio objects"),
    ("kind: [", "not valid YAML"),
    ("- a\n- b\n", "not a Kubernetes object"),
    ("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\nspec: {}\n", "not an Istio kind"),
    ("apiVersion: networking.istio.io/v1\nkind: VirtualService\nspec: {}\n", "metadata.name is missing"),
    ("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: x}\n", "spec is missing"),
])
def test_bad_files_are_named_before_anything_is_written(text, problem):
    with pytest.raises(MeshError, match=problem):
        mesh.parse_istio_yaml(text, "bad.yaml")


def test_objects_are_keyed_like_kubectl_apply(tmp_path):
    """Applying an object again (same kind, namespace, name) replaces it, whichever file it came from."""
    paths = mesh.Paths(tmp_path)
    first = mesh.parse_istio_yaml((NETWORKING / "virtual-service-reviews-jason-v2.yaml").read_text(), "a")[0]
    second = mesh.parse_istio_yaml((NETWORKING / "virtual-service-reviews-50-v3.yaml").read_text(), "b")[0]
    assert mesh._object_file(paths, first) == mesh._object_file(paths, second)
    assert yaml.safe_load(yaml.safe_dump(first))["kind"] == "VirtualService"


def test_mesh_commands_need_root(monkeypatch, tmp_path):
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    with pytest.raises(MeshError, match="needs root"):
        mesh.up(tmp_path)
