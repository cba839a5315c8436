"""End to end on the real pair: istiod 1.29 (pilot-discovery) + APISIX 3.18 sidecars in file mode
(conf/apisix.json, the agent's default). One test per Bookinfo traffic-management task, then the data path
(inbound source address, TCP, passthrough, keep-alive, h2c, WebSocket) and the failures (a change under
traffic, istiod down, APISIX killed)."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from localmesh import client, mesh as mesh_mod, requests as req, tasks
from netns_tests.meshfixture import clean, mesh  # noqa: F401 (fixtures)



def assert_outcomes(outcomes):
    failed = [o for o in outcomes if not o.ok]
    assert not failed, "\n".join(f"{o.task}: sent {o.sent}; answered {o.answered}; Istio: {o.istio}" for o in failed)


@pytest.mark.parametrize("task", tasks.TASKS, ids=lambda t: t.__name__)
def test_bookinfo_task(clean, task):
    assert_outcomes(task(clean))


def test_apply_says_what_changed_and_skips_a_no_op(clean):
    """As kubectl apply: the same objects again are `unchanged` (nothing written, nothing to wait for: istiod
    need not push on a reload that changes nothing); a changed one is `configured`."""
    again = mesh_mod.apply(clean, tasks.files("destination-rule-all.yaml", "virtual-service-all-v1.yaml"))
    assert again and {verb for _, verb in again} == {"unchanged"}, again
    changed = mesh_mod.apply(clean, tasks.files("virtual-service-reviews-jason-v2.yaml"))
    assert [(Path(f).name, verb) for f, verb in changed] == [
        ("virtualservice.default.reviews.yaml", "configured")], changed
    answer = req.send(clean, "productpage-v1", "http://reviews:9080/", headers={"end-user": "jason"})
    assert req.answered_by(answer) == "reviews v2"


def test_inbound_reaches_the_app_from_127_0_0_6(clean):
    """The app listens on its own port and sees the sidecar's inbound source, as with Istio."""
    response = req.send(clean, "productpage-v1", "http://details:9080/who")
    body = response.json()
    assert response.status == 200 and body["pod"] == "details-v1" and body["source"] == "127.0.0.6"


def test_tcp_service_through_stream_routes(clean):
    response = req.send(clean, "productpage-v1", "tcp://mongodb:27017", data="ping 1")
    assert response.status == 200, response.error
    assert response.json() == {"replies": ["mongodb-v1 ping 1"]}
    state = mesh_mod.load_state(clean)
    log = mesh_mod.Paths(clean).log("mongodb-v1", "app.jsonl").read_text()
    assert '"source": "127.0.0.6"' in log  # inbound TCP also leaves the sidecar from Istio's inbound source
    assert state["pods"]


def test_outside_the_mesh_allow_any_then_registry_only(clean, tmp_path):
    url = "http://external.example:8080/outside"
    allowed = req.send(clean, "productpage-v1", url)
    assert req.answered_by(allowed) == "external v1"
    assert allowed.json()["source"] == mesh_mod.topology.bookinfo().workload("productpage-v1").ip  # passthrough
    sidecar = tmp_path / "registry-only.yaml"
    sidecar.write_text("apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: default}\n"
                       "spec:\n  outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n")
    mesh_mod.apply(clean, [sidecar])
    try:
        refused = req.send(clean, "productpage-v1", url, timeout=5)
        assert refused.status in (0, 502), f"REGISTRY_ONLY let {url} through: {refused.as_dict()}"
        assert req.answered_by(req.send(clean, "productpage-v1", "http://reviews:9080/")) == "reviews v1"
    finally:
        mesh_mod.delete(clean, [sidecar])
    assert req.answered_by(req.send(clean, "productpage-v1", url)) == "external v1"


def test_http11_keep_alive(clean):
    ns = req.source_namespace(clean, "productpage-v1")
    vip = mesh_mod.topology.bookinfo().service("reviews").vip
    conn = client.NamespaceConnection(ns, vip, 9080, timeout=10)
    try:
        answers = [client.http_request(ns, vip, 9080, "reviews:9080", path=f"/ka{i}", connection=conn)
                   for i in range(5)]
    finally:
        conn.close()
    assert [a.status for a in answers] == [200] * 5
    assert all(a.headers.get("connection", "keep-alive").lower() != "close" for a in answers)


def test_h2c_prior_knowledge(clean):
    response = req.send(clean, "productpage-v1", "http://reviews:9080/h2", h2c=True)
    assert response.status == 200, response.error
    assert response.json()["pod"] == "reviews-v1" and response.meta["protocol"] == "h2c"


def test_websocket_through_two_sidecars(clean):
    response = req.send(clean, "productpage-v1", "http://reviews:9080/ws", websocket=True, data="hello")
    assert response.status == 101, response.as_dict()
    assert response.json() == {"replies": ["reviews-v1 hello"]}


def test_change_under_traffic_fails_no_request(clean):
    """A VirtualService edited while requests flow: every request succeeds, and the new routing takes over."""
    stop = threading.Event()
    results: list = []

    def traffic():
        while not stop.is_set() and len(results) < 20000:
            results.append(req.answered_by(req.send(clean, "productpage-v1", "http://reviews:9080/")))

    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        time.sleep(0.5)
        mesh_mod.apply(clean, tasks.files("virtual-service-reviews-50-v3.yaml"))
        time.sleep(0.5)
        tasks.reset(clean)
        time.sleep(0.5)
    finally:
        stop.set()
        worker.join(30)
    counts = Counter(results)
    assert set(counts) <= {"reviews v1", "reviews v3"}, counts
    assert counts["reviews v3"] > 0 and len(results) > 50, counts


def test_istiod_down_traffic_flows_and_agents_resync(clean):
    before = req.send(clean, "productpage-v1", "http://reviews:9080/", headers={"end-user": "jason"})
    assert req.answered_by(before) == "reviews v1"
    mesh_mod.stop_istiod(clean)
    try:
        during = tasks.answered(clean, "http://reviews:9080/", 10)
        assert during == Counter({"reviews v1": 10})  # the last configuration stays in force
    finally:
        mesh_mod.start_istiod(clean)
    # resynchronised: a change made now reaches every sidecar (apply waits until all serve it)
    mesh_mod.apply(clean, tasks.files("virtual-service-reviews-jason-v2.yaml"))
    after = req.send(clean, "productpage-v1", "http://reviews:9080/", headers={"end-user": "jason"})
    assert req.answered_by(after) == "reviews v2"


def test_apisix_killed_is_restarted_and_traffic_recovers(clean):
    ns = mesh_mod.namespace(mesh_mod.load_state(clean)["prefix"], "productpage-v1")
    master = mesh_mod.apisix_processes(ns)["master"]
    assert master
    os.kill(master, signal.SIGKILL)
    deadline = time.monotonic() + 30
    recovered = None
    while time.monotonic() < deadline:
        now = mesh_mod.apisix_processes(ns)["master"]
        if now and now != master:
            answer = req.send(clean, "productpage-v1", "http://reviews:9080/", timeout=3)
            if answer.status == 200:
                recovered = answer
                break
        time.sleep(0.2)
    assert recovered is not None, "traffic did not recover within 30 s of APISIX being killed"
    assert req.answered_by(recovered) == "reviews v1"
    for line in mesh_mod.status(clean)["pods"]:
        assert line["ready"], line
