"""The Kubernetes layer against API responses served over HTTP on loopback: list, watch, 410, status, TokenReview."""

from __future__ import annotations

import asyncio

import pytest

from controller import kube
from controller.informer import Informer
from controller.kube import Gone, Kube, KubeConfig, KubeConfigError, KubeError
from amesh_common.backoff import Backoff
from tests.agent.waiting import eventually
from tests.controller.fake_api import CLOSE, FakeApi, bookmark, event, gone
from tests.controller.objects import pod


@pytest.fixture
def api():
    server = FakeApi()
    yield server
    server.close()


@pytest.fixture
def client(api, tmp_path):
    token = tmp_path / "token"
    token.write_text("controller-token\n")
    return Kube(KubeConfig(api.url, token_file=token), timeout=5)


def test_list_follows_continue_and_returns_the_list_version(api, client):
    api.lists[kube.PODS] = ([pod(f"p{i}") for i in range(5)], "opaque-rv-7")
    items, rv = client.list(kube.PODS, page=2)
    assert [i["metadata"]["name"] for i in items] == ["p0", "p1", "p2", "p3", "p4"]
    assert rv == "opaque-rv-7"
    assert [q.get("continue") for q in api.list_requests(kube.PODS)] == [None, "2", "4"]


def test_watch_stream_events_and_410(api, client):
    watch = client.watch(kube.PODS, "rv-a", timeout_seconds=5)
    api.emit(kube.PODS, event("ADDED", pod("p"), "rv-b"))
    api.emit(kube.PODS, bookmark("rv-c"))
    api.emit(kube.PODS, gone())
    seen = []
    with pytest.raises(Gone, match="too old resource version"):
        for e in watch:
            seen.append((e.type, e.resource_version))
    assert seen == [("ADDED", "rv-b"), ("BOOKMARK", "rv-c")]
    assert api.watch_requests(kube.PODS)[0] == {"watch": "true", "allowWatchBookmarks": "true",
                                               "timeoutSeconds": "5", "resourceVersion": "rv-a"}


def test_errors_are_named(api, client):
    api.list_errors[kube.CONFIGS] = [403, 410]
    with pytest.raises(KubeError, match="403: scripted failure") as exc:
        client.list(kube.CONFIGS)
    assert exc.value.status == 403 and not isinstance(exc.value, Gone)
    with pytest.raises(Gone):
        client.list(kube.CONFIGS)
    with pytest.raises(KubeConfigError, match="bad API server URL"):
        Kube(KubeConfig("ftp://x"))


def test_status_patch_and_token_review(api, client):
    client.patch_status("ns", "cfg", {"matchedPods": 1})
    assert api.patches == [("/apis/apisix.apache.org/v1alpha1/namespaces/ns/ameshpluginconfigs/cfg/status",
                            {"status": {"matchedPods": 1}})]
    assert ("PATCH", api.patches[0][0], {"content-type": "application/merge-patch+json"}) in api.requests
    api.reviews["t"] = {"authenticated": True}
    assert client.token_review("t") == {"authenticated": True}
    assert client.token_review("other") == {"authenticated": False}


def test_in_cluster_config():
    config = KubeConfig.in_cluster({"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "6443"})
    assert config.base_url == "https://[fd00::1]:6443"
    with pytest.raises(KubeConfigError, match="not running in a Kubernetes pod"):
        KubeConfig.in_cluster({})


def test_informer_resumes_with_opaque_versions_and_relists_on_gone(api, client):
    """resourceVersions here sort backwards as strings and aren't numbers: the informer must only copy them."""
    asyncio.run(_informer_scenario(api, client))


async def _informer_scenario(api, client):
    api.lists[kube.PODS] = ([pod("a")], "zz-9")
    synced, events = [], []

    async def on_sync(items):
        synced.append([i["metadata"]["name"] for i in items])

    async def on_event(e):
        events.append((e.type, e.object["metadata"]["name"]))

    informer = Informer(client, kube.PODS, on_sync, on_event, Backoff(initial=0.01, maximum=0.05), watch_timeout=5)
    task = asyncio.create_task(informer.run())
    try:
        await eventually(lambda: len(api.watch_requests(kube.PODS)) == 1, what="first watch")
        assert api.watch_requests(kube.PODS)[0]["resourceVersion"] == "zz-9"
        api.emit(kube.PODS, event("ADDED", pod("b"), "aa-1"))
        api.emit(kube.PODS, bookmark("mm-5"))
        api.emit(kube.PODS, CLOSE)  # server-side timeout: re-watch from the last version seen
        await eventually(lambda: len(api.watch_requests(kube.PODS)) == 2, what="second watch")
        assert api.watch_requests(kube.PODS)[1]["resourceVersion"] == "mm-5"
        assert len(api.list_requests(kube.PODS)) == 1  # no relist for a normal end
        api.lists[kube.PODS] = ([pod("c")], "x-1")
        api.emit(kube.PODS, gone())
        await eventually(lambda: len(api.watch_requests(kube.PODS)) == 3, what="watch after relist")
        assert api.watch_requests(kube.PODS)[2]["resourceVersion"] == "x-1"
        assert synced == [["a"], ["c"]] and events == [("ADDED", "b")]
        api.list_errors[kube.PODS] = [500, 500]  # API trouble on the next relist: back off, retry
        api.emit(kube.PODS, gone())
        await eventually(lambda: len(api.watch_requests(kube.PODS)) == 4, what="watch after failed lists")
        assert len(api.list_requests(kube.PODS)) == 5 and synced[-1] == ["c"]  # 2 failed + 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
