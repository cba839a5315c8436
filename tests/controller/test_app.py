"""The whole controller against Kubernetes API responses on loopback, with a real agent client subscribed."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request

from controller import kube
from controller.app import Controller, Settings
from controller.kube import KubeConfig
from controller.stream import ServerTls
from sidecar_agent.plugins.client import PluginClient, StreamSecurity
from amesh_common.plugin_model import PluginSet
from amesh_common.backoff import Backoff
from tests.agent.waiting import eventually
from tests.controller.conftest import SCHEMA_DIR
from tests.controller import pki
from tests.controller.fake_api import FakeApi, event, service_account_review
from tests.controller.objects import ampc, pod, rewrite


WEB = {"matchLabels": {"app": "web"}}


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def statuses(api: FakeApi, name: str) -> list[dict]:
    suffix = f"/namespaces/shop/ameshpluginconfigs/{name}/status"
    return [body["status"] for path, body in api.patches if path.endswith(suffix)]


def test_controller_end_to_end(checker, tmp_path):
    files = pki.standard(tmp_path)
    api = FakeApi()
    api.reviews["tok"] = service_account_review("shop", "web-1")
    api.lists[kube.PODS] = ([pod("web-1", {"app": "web"}, "shop"), pod("db-1", {"app": "db"}, "shop")], "p1")
    api.lists[kube.CONFIGS] = ([ampc("headers", [rewrite()], namespace="shop", selector=WEB)], "c1")

    async def main():
        controller = Controller(Settings(kube=KubeConfig(api.url), schema_dir=str(SCHEMA_DIR),
                                         grpc_address="127.0.0.1:0", http_host="127.0.0.1", metrics_port=0, health_port=0,
                                         backoff=Backoff(initial=0.02, maximum=0.1),
                                         tls=ServerTls(files.cert, files.key)))
        started = asyncio.Event()
        run = asyncio.create_task(controller.run(started))
        await started.wait()
        received: list[PluginSet] = []

        async def on_set(s):
            received.append(s)

        agent = PluginClient(f"127.0.0.1:{controller.grpc_port}", "shop", "web-1", lambda: "tok", on_set,
                             Backoff(initial=0.02, maximum=0.1), StreamSecurity(ca_file=files.ca))
        agent_task = asyncio.create_task(agent.run())
        try:
            await eventually(lambda: controller.not_ready() is None, what="ready")
            assert http_get(controller.health_port, "/readyz") == (200, "ok\n")
            assert http_get(controller.health_port, "/healthz")[0] == 200
            await eventually(lambda: received, what="initial set")
            assert [p.name for p in received[0].plugins] == ["response-rewrite"]
            # The TokenReview asked for the audience the injection template projects, by default.
            assert api.review_specs and all(spec["audiences"] == ["amesh-controller"] for spec in api.review_specs)
            await eventually(lambda: statuses(api, "headers"), what="status patch")
            first = statuses(api, "headers")[0]
            assert first["matchedPods"] == 1
            assert [(c["type"], c["status"]) for c in first["conditions"]] == [("Ready", "True"),
                                                                               ("Conflicted", "False")]
            await eventually(lambda: len(api.watch_requests(kube.CONFIGS)) == 1, what="config watch")
            await eventually(lambda: len(api.watch_requests(kube.PODS)) == 1, what="pod watch")
            # Our own status write comes back as MODIFIED: no second patch (no loop).
            api.emit(kube.CONFIGS, event("MODIFIED", {**ampc("headers", [rewrite()], namespace="shop", selector=WEB),
                                                      "status": first}, "c2"))
            # A second, invalid config aimed at the same pod: status False, nothing delivered.
            bad = ampc("broken", [{"name": "fault-injection", "config": {"abort": {"http_status": 99}}}],
                       namespace="shop", selector=WEB)
            api.emit(kube.CONFIGS, event("ADDED", bad, "c3"))
            await eventually(lambda: statuses(api, "broken"), what="invalid status")
            ready = statuses(api, "broken")[0]["conditions"][0]
            assert (ready["status"], ready["reason"]) == ("False", "Invalid")
            assert "99 is less than the minimum of 200" in ready["message"]
            assert len(received) == 1 and len(statuses(api, "headers")) == 1
            _, metrics = http_get(controller.metrics_port, "/metrics")
            assert "amesh_controller_invalid_configs 1.0" in metrics
            assert "amesh_controller_connected_agents 1.0" in metrics
            # Narrow the selector so web-1 stops matching: the agent is told to drop the plugin.
            narrowed = ampc("headers", [rewrite()], namespace="shop", selector={"matchLabels": {"app": "db"}},
                            generation=2)
            api.emit(kube.CONFIGS, event("MODIFIED", {**narrowed, "status": first}, "c4"))
            await eventually(lambda: len(received) == 2, what="set after narrowing")
            assert received[1].plugins == ()
            # The pod is relabelled to match again.
            api.emit(kube.PODS, event("MODIFIED", pod("web-1", {"app": "db"}, "shop"), "p2"))
            await eventually(lambda: len(received) == 3, what="set after relabel")
            assert [p.name for p in received[2].plugins] == ["response-rewrite"]
            # Config deleted: the pod loses the plugin.
            api.emit(kube.CONFIGS, event("DELETED", narrowed, "c5"))
            await eventually(lambda: len(received) == 4, what="set after delete")
            assert received[3].plugins == ()
        finally:
            agent_task.cancel()
            run.cancel()
            await asyncio.gather(agent_task, run, return_exceptions=True)

    try:
        asyncio.run(main())
    finally:
        api.close()


def test_plugins_outside_the_controllers_list_make_the_config_invalid(tmp_path):
    files = pki.standard(tmp_path)
    lua = {"name": "serverless-pre-function", "config": {"phase": "access", "functions": ["return function() end"]}}
    api = FakeApi()
    api.reviews["tok"] = service_account_review("shop", "web-1")
    api.lists[kube.PODS] = ([pod("web-1", {"app": "web"}, "shop")], "p1")
    api.lists[kube.CONFIGS] = ([ampc("lua", [rewrite(), lua], namespace="shop", selector=WEB),
                                ampc("headers", [rewrite("X-Other")], namespace="shop", selector=WEB,
                                     created="2026-01-02T00:00:00Z")], "c1")

    async def main():
        controller = Controller(Settings(kube=KubeConfig(api.url), schema_dir=str(SCHEMA_DIR),
                                         grpc_address="127.0.0.1:0", http_host="127.0.0.1", metrics_port=0,
                                         health_port=0, backoff=Backoff(initial=0.02, maximum=0.1),
                                         tls=ServerTls(files.cert, files.key)))
        started = asyncio.Event()
        run = asyncio.create_task(controller.run(started))
        await started.wait()
        try:
            await eventually(lambda: statuses(api, "lua") and statuses(api, "headers"), what="statuses")
            ready = statuses(api, "lua")[0]["conditions"][0]
            assert (ready["status"], ready["reason"]) == ("False", "Invalid")
            assert ("plugin 'serverless-pre-function' is not in the allowed plugins [*] (it runs code in APISIX: "
                    "it must be listed by name): not delivered (the controller's --allowed-plugins)") in ready["message"]
            # Nothing of the refused config reaches the pod; the other config does.
            plugins = controller.reconciler.set_of(("shop", "web-1")).plugins
            assert [(p.name, p.source) for p in plugins] == [("response-rewrite", "shop/headers")]
        finally:
            run.cancel()
            await asyncio.gather(run, return_exceptions=True)

    try:
        asyncio.run(main())
    finally:
        api.close()


def test_the_plugin_stream_needs_a_certificate_or_the_explicit_plaintext_flag():
    import pytest

    with pytest.raises(ValueError, match="--insecure-plaintext"):
        Controller(Settings(kube=KubeConfig("http://127.0.0.1:9"), schema_dir=str(SCHEMA_DIR)))
    Controller(Settings(kube=KubeConfig("http://127.0.0.1:9"), schema_dir=str(SCHEMA_DIR), insecure_plaintext=True))


def test_controller_defaults_listen_on_every_address_and_ask_for_its_audience():
    settings = Settings(kube=KubeConfig("http://127.0.0.1:9"), schema_dir=str(SCHEMA_DIR))
    assert settings.grpc_address == "[::]:15810" and settings.http_host == "::"
    assert settings.token_audiences == ("amesh-controller",) and settings.allowed_plugins.patterns == ("*",)
