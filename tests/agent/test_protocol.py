"""Transcript tests of the sans-IO ADS state: responses in, requests out."""

from __future__ import annotations

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2

from sidecar_agent.xds import kinds
from sidecar_agent.xds.protocol import AdsSession, Pending, ProtocolMisuse, Rejected
from tests.agent import mesh

NODE = base_pb2.Node(id="sidecar~10.0.0.9~p.default~default.svc.cluster.local")


def response(kind: kinds.Kind, version: str, nonce: str, resources) -> discovery_pb2.DiscoveryResponse:
    packed = []
    for r in resources:
        a = any_pb2.Any()
        a.Pack(r)
        packed.append(a)
    return discovery_pb2.DiscoveryResponse(
        type_url=kind.type_url, version_info=version, nonce=nonce, resources=packed
    )


def summary(request: discovery_pb2.DiscoveryRequest) -> tuple:
    kind = kinds.BY_TYPE_URL[request.type_url]
    return (
        kind.short,
        request.version_info,
        request.response_nonce,
        tuple(request.resource_names),
        request.error_detail.message or None,
    )


def test_first_requests_are_wildcard_cds_and_lds_with_node_once():
    session = AdsSession(NODE)
    requests = session.start()
    assert [summary(r) for r in requests] == [("cds", "", "", (), None), ("lds", "", "", (), None)]
    assert requests[0].node.id == NODE.id
    assert not requests[1].HasField("node")


def test_ack_subscribes_referenced_names_then_nack_keeps_last_good():
    session = AdsSession(NODE)
    session.start()
    m = mesh.bookinfo()

    pending = session.receive(response(kinds.CDS, "c1", "n1", m["cds"]))
    assert isinstance(pending, Pending)
    eds_names = tuple(sorted(c.name for c in m["cds"] if c.type == c.EDS))
    assert [summary(r) for r in session.accept(pending)] == [
        ("cds", "c1", "n1", (), None),
        ("eds", "", "", eds_names, None),
    ]

    pending = session.receive(response(kinds.EDS, "e1", "n2", m["eds"]))
    assert [summary(r) for r in session.accept(pending)] == [("eds", "e1", "n2", eds_names, None)]

    pending = session.receive(response(kinds.LDS, "l1", "n3", m["lds"]))
    assert [summary(r) for r in session.accept(pending)] == [
        ("lds", "l1", "n3", (), None),
        ("rds", "", "", ("9080",), None),
    ]
    assert session.snapshot.missing().routes == {"9080"}

    pending = session.receive(response(kinds.RDS, "r1", "n4", m["rds"]))
    session.accept(pending)
    assert session.snapshot.complete()

    # The caller refuses r2: the NACK echoes r1 and the r2 nonce, and r1 stays held.
    bad = mesh.route_config("9080", {"x": "outbound|1||x"})
    pending = session.receive(response(kinds.RDS, "r2", "n5", [bad]))
    assert [summary(r) for r in session.reject(pending, "boom")] == [
        ("rds", "r1", "n5", ("9080",), "boom")
    ]
    assert session.snapshot.version(kinds.RDS) == "r1"
    assert session.snapshot.items(kinds.RDS)["9080"].message(kinds.RDS) == m["rds"][0]
    assert session.last_nack.version == "r2"


def test_undecodable_resource_is_nacked_by_the_protocol_itself():
    session = AdsSession(NODE)
    session.start()
    session.accept(session.receive(response(kinds.LDS, "l1", "n1", [])))
    broken = any_pb2.Any(type_url=kinds.LDS.type_url, value=b"\xff\xff\xff")
    outcome = session.receive(
        discovery_pb2.DiscoveryResponse(
            type_url=kinds.LDS.type_url, version_info="l2", nonce="n2", resources=[broken]
        )
    )
    assert isinstance(outcome, Rejected)
    assert [summary(r)[:3] for r in outcome.requests] == [("lds", "l1", "n2")]
    assert "undecodable" in outcome.requests[0].error_detail.message
    assert session.snapshot.version(kinds.LDS) == "l1"


def test_unknown_type_url_and_duplicate_names_are_rejected():
    session = AdsSession(NODE)
    session.start()
    outcome = session.receive(discovery_pb2.DiscoveryResponse(type_url="type.googleapis.com/x.Y", nonce="1"))
    assert isinstance(outcome, Rejected) and "unsupported type URL" in outcome.error
    listener = mesh.http_listener(9080)
    outcome = session.receive(response(kinds.LDS, "l1", "2", [listener, listener]))
    assert isinstance(outcome, Rejected) and "duplicate resource name" in outcome.error


def test_partial_eds_merges_and_unreferenced_names_are_pruned():
    session = AdsSession(NODE)
    session.start()
    a, b = mesh.eds_cluster("a"), mesh.eds_cluster("b")
    session.accept(session.receive(response(kinds.CDS, "c1", "1", [a, b])))
    session.accept(session.receive(response(kinds.EDS, "e1", "2", [mesh.endpoints("a", ("10.0.0.1", 80)),
                                                                    mesh.endpoints("b", ("10.0.0.2", 80))])))
    # An incremental EDS push names only "a": "b" is kept.
    session.accept(session.receive(response(kinds.EDS, "e2", "3", [mesh.endpoints("a")])))
    assert set(session.snapshot.items(kinds.EDS)) == {"a", "b"}
    # Cluster "b" goes away: its endpoints are dropped and EDS is re-subscribed to "a" only.
    requests = session.accept(session.receive(response(kinds.CDS, "c2", "4", [a])))
    assert [summary(r) for r in requests] == [("cds", "c2", "4", (), None), ("eds", "e2", "3", ("a",), None)]
    assert set(session.snapshot.items(kinds.EDS)) == {"a"}


def test_reconnect_resubscribes_with_accepted_versions_and_fresh_nonces():
    session = AdsSession(NODE)
    session.start()
    m = mesh.bookinfo()
    for kind, key in ((kinds.CDS, "cds"), (kinds.EDS, "eds"), (kinds.LDS, "lds"), (kinds.RDS, "rds")):
        session.accept(session.receive(response(kind, f"{key}-1", f"nonce-{key}", m[key])))
    requests = session.start()
    assert [summary(r)[:3] for r in requests] == [
        ("cds", "cds-1", ""), ("eds", "eds-1", ""), ("lds", "lds-1", ""), ("rds", "rds-1", "")
    ]
    assert requests[0].node.id == NODE.id
    assert session.snapshot.complete()


def test_misuse_is_refused():
    session = AdsSession(NODE)
    session.start()
    pending = session.receive(response(kinds.LDS, "l1", "1", []))
    with pytest.raises(ProtocolMisuse):
        session.receive(response(kinds.CDS, "c1", "2", []))
    session.accept(pending)
    with pytest.raises(ProtocolMisuse):
        session.accept(pending)


def test_unchanged_bytes_are_recognised_not_decoded_again():
    session = AdsSession(NODE)
    session.start()
    a, b = mesh.eds_cluster("a"), mesh.eds_cluster("b")
    first = session.receive(response(kinds.CDS, "c1", "1", [a, b]))
    assert set(first.decoded) == {"a", "b"}
    session.accept(first)
    held = session.snapshot.items(kinds.CDS)
    assert held["a"].refs == ("a",)  # the EDS name it references, worked out once

    b2 = mesh.eds_cluster("b")
    b2.connect_timeout.FromMilliseconds(1)
    again = session.receive(response(kinds.CDS, "c2", "2", [a, b2]))
    # State of the world sends both; only "b" changed, so only "b" was decoded and is a new Resource.
    assert set(again.decoded) == {"b"}
    # handed on with the bytes it came in: the very bytes of the Resource held
    assert again.decoded["b"].message == b2 and again.decoded["b"].wire == again.snapshot.items(kinds.CDS)["b"].value
    assert again.snapshot.items(kinds.CDS)["a"] is held["a"]
    assert again.snapshot.items(kinds.CDS)["b"] is not held["b"]
    assert again.snapshot.items(kinds.CDS)["b"].message(kinds.CDS) == b2
    session.reject(again, "no")
    assert session.snapshot.items(kinds.CDS)["b"] is held["b"]  # a NACK keeps the held bytes


def test_held_bytes_are_compressed_and_round_trip():
    session = AdsSession(NODE)
    session.start()
    clusters = [mesh.eds_cluster(f"outbound|9080||svc-{i}.default.svc.cluster.local") for i in range(200)]
    session.accept(session.receive(response(kinds.CDS, "c1", "1", clusters)))
    held = session.snapshot.items(kinds.CDS)
    wire = sum(c.ByteSize() for c in clusters)
    assert all(held[c.name].value == c.SerializeToString() for c in clusters)  # what istiod sent
    assert all(held[c.name].message(kinds.CDS) == c for c in clusters)
    # Alike resources compress well against a dictionary sampled from the first one.
    assert sum(len(r.packed) for r in held.values()) < wire / 3
