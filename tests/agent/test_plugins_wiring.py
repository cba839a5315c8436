"""The whole agent with amesh-controller for real: the controller (its gRPC stream, TokenReview and the
Kubernetes API stand-in of tests/controller), a real ADS server and the APISIX Admin API stand-in.
Plugin sets reach the pushed document on the routes of their direction, xDS plugins stay, a changed set
is pushed again, a lost controller leaves the last set in force, and without a controller there is no client."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket

import pytest

from controller import kube
from controller.app import Controller, Settings
from controller.kube import KubeConfig
from controller.stream import ServerTls
from sidecar_agent.app import Agent
from amesh_testing import istiogen
from amesh_common.backoff import Backoff
from amesh_testing.ads_server import AdsServer
from tests.agent import mesh
from tests.agent.harness import xds_of
from tests.agent.test_app import ENV, aget, config
from tests.agent.waiting import eventually
from tests.controller import pki
from tests.controller.conftest import SCHEMA_DIR
from tests.controller.fake_api import FakeApi, event, service_account_review
from tests.controller.objects import ampc, pod, rewrite

FAST = Backoff(initial=0.02, maximum=0.1)
POD_NAME, NAMESPACE = ENV["POD_NAME"], ENV["POD_NAMESPACE"]
TOKEN = "productpage-bound-token"
SELECTOR = {"matchLabels": {"app": "productpage"}}
RATINGS_ABORT = "9080/ratings.default.svc.cluster.local:9080/route0"  # the VirtualService's fault-injection
INBOUND_ROUTES = "inbound|9081||"  # Istio's inbound route-config prefix: these routes are inbound


def needs_schemas() -> None:
    if not (SCHEMA_DIR / "core" / "route.json").is_file():
        pytest.skip(f"APISIX schemas not found at {SCHEMA_DIR}")


def mesh_xds(scenario: str) -> dict[str, list]:
    """Bookinfo's productpage sidecar plus one HTTP listener whose route configuration is inbound-named."""
    x = xds_of(istiogen.bookinfo(scenario))
    x["lds"].append(mesh.http_listener(9081, INBOUND_ROUTES))
    x["rds"].append(mesh.route_config(INBOUND_ROUTES, {
        "productpage.default.svc.cluster.local": "outbound|9080||productpage.default.svc.cluster.local"}))
    return x


PKI: pki.Files | None = None  # the controller's serving certificate and the CA the agents are given


@pytest.fixture(autouse=True)
def controller_tls(tmp_path_factory, monkeypatch):
    """TLS on the plugin stream as deployed: the controller serves a certificate of its CA, and the agent
    verifies it with the CA file the injection template names in AMESH_CONTROLLER_CA."""
    global PKI
    if PKI is None:
        PKI = pki.standard(tmp_path_factory.mktemp("controller-pki"))
    monkeypatch.setenv("AMESH_CONTROLLER_CA", str(PKI.ca))
    for name in ("AMESH_CONTROLLER_INSECURE_PLAINTEXT", "AMESH_CONTROLLER_SERVER_NAME", "AMESH_ALLOWED_PLUGINS"):
        monkeypatch.delenv(name, raising=False)


def fake_kubernetes(*configs: dict) -> FakeApi:
    api = FakeApi()
    api.reviews[TOKEN] = service_account_review(NAMESPACE, POD_NAME)
    api.lists[kube.PODS] = ([pod(POD_NAME, {"app": "productpage"}, NAMESPACE)], "p1")
    api.lists[kube.CONFIGS] = (list(configs), "c1")
    return api


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.asynccontextmanager
async def running_controller(api: FakeApi, port: int = 0):
    controller = Controller(Settings(kube=KubeConfig(api.url), schema_dir=str(SCHEMA_DIR),
                                     grpc_address=f"127.0.0.1:{port}", http_host="127.0.0.1", metrics_port=0,
                                     health_port=0, backoff=FAST, tls=ServerTls(PKI.cert, PKI.key)))
    started = asyncio.Event()
    task = asyncio.create_task(controller.run(started))
    await asyncio.wait_for(started.wait(), 10)
    try:
        yield controller
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@contextlib.asynccontextmanager
async def running_agent(tmp_path, apisix, **over):
    """A real ADS server and the agent running against it and `apisix` (the Admin API stand-in or a real
    APISIX: `apisix_admin`); yields all three and stops them in order."""
    ads = AdsServer()
    ads_port = await ads.start()
    stop = asyncio.Event()
    over.setdefault("apisix_admin_key", apisix.api_key)
    if getattr(apisix, "metrics_url", None):
        over.setdefault("apisix_metrics_url", apisix.metrics_url)
    try:
        agent = Agent(config(ads_port, apisix, tmp_path, **over), ENV)
        if agent.plugin_client is not None:
            agent.plugin_client.backoff = FAST
        task = asyncio.create_task(agent.run(stop))
        yield ads, apisix, agent
        stop.set()
        await asyncio.wait_for(task, 10)
    finally:
        await ads.stop()


def run_against(api: FakeApi, scenario) -> None:
    try:
        asyncio.run(scenario())
    finally:
        api.close()


def routes(document: dict) -> dict[str, dict]:
    return {r["name"]: r for r in document.get("routes", [])}


def inbound(name: str) -> bool:
    return name.startswith(INBOUND_ROUTES)


def has_everywhere(document: dict, plugin: str, direction_of_route) -> bool:
    chosen = [r for name, r in routes(document).items() if direction_of_route(name)]
    return bool(chosen) and all(plugin in (r.get("plugins") or {}) for r in chosen)


def nowhere(document: dict, plugin: str, direction_of_route) -> bool:
    return not any(plugin in (r.get("plugins") or {}) for name, r in routes(document).items()
                   if direction_of_route(name))


def outbound(name: str) -> bool:
    return not inbound(name)


def metric(agent: Agent, name: str, labels: dict | None = None) -> float:
    return agent.metrics.registry.get_sample_value(name, labels or {}) or 0.0


def test_plugin_sets_flow_from_the_controller_into_the_pushed_document(tmp_path, apisix_admin):
    needs_schemas()
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    api = fake_kubernetes(ampc("headers", [rewrite(direction="outbound")], namespace=NAMESPACE, selector=SELECTOR))

    port = free_port()

    async def main():
        async with running_agent(tmp_path, apisix_admin, schema_dir=SCHEMA_DIR, controller_address=f"127.0.0.1:{port}",
                                 controller_token=token) as (ads, apisix, agent):
            async with running_controller(api, port):
                ads.set_snapshot("1", mesh_xds("ratings-abort-jason"))

                # The set arrives: the next push carries response-rewrite on every outbound route only.
                await eventually(lambda: has_everywhere(apisix.config, "response-rewrite", outbound),
                                 what="response-rewrite pushed on the outbound routes")
                first = apisix.config
                assert nowhere(first, "response-rewrite", inbound)
                assert routes(first)[RATINGS_ABORT]["plugins"]["fault-injection"]["abort"]["http_status"] == 500
                version = agent.pipeline.plugins.version
                assert version  # the label names the set: what /status shows as the live document
                await agent.pusher.wait_live(f"cds=1,eds=1,lds=1,rds=1;plugins={version}", timeout=10)
                assert agent.not_ready() is None
                status, page = await aget(agent.ports["admin"], "/plugins")
                view = json.loads(page)
                assert status == 200 and view["version"] == version and view["stream"]["connected"] is True
                assert [(p["name"], p["direction"], p["source"]) for p in view["plugins"]] == \
                    [("response-rewrite", "outbound", f"{NAMESPACE}/headers")]
                _, text = await aget(agent.ports["metrics"], "/stats/prometheus")
                assert 'amesh_plugin_sets_total{result="applied"} 1.0' in text.decode()
                assert "amesh_plugin_stream_connected 1.0" in text.decode()

                # The set changes: an inbound plugin joins, and an outbound fault-injection that the
                # VirtualService's own fault-injection keeps off the ratings route.
                pushes = len(apisix.accepted)
                changed = ampc("headers", [
                    rewrite(direction="outbound"),
                    {"name": "ip-restriction", "config": {"whitelist": ["10.0.0.0/8"]}, "direction": "inbound"},
                    {"name": "fault-injection", "config": {"abort": {"http_status": 418, "percentage": 1}}},
                ], namespace=NAMESPACE, selector=SELECTOR, generation=2)
                api.emit(kube.CONFIGS, event("MODIFIED", changed, "c2"))
                await eventually(lambda: has_everywhere(apisix.config, "ip-restriction", inbound),
                                 what="the changed set pushed")
                second = apisix.config
                assert len(apisix.accepted) > pushes
                assert nowhere(second, "ip-restriction", outbound)
                assert has_everywhere(second, "response-rewrite", outbound)
                assert nowhere(second, "response-rewrite", inbound)
                ratings = routes(second)[RATINGS_ABORT]["plugins"]["fault-injection"]
                assert ratings == routes(first)[RATINGS_ABORT]["plugins"]["fault-injection"]  # xDS wins
                added = [n for n, r in routes(second).items() if outbound(n) and
                         r["plugins"]["fault-injection"].get("abort", {}).get("http_status") == 418]
                assert added and RATINGS_ABORT not in added
                _, page = await aget(agent.ports["admin"], "/plugins")
                assert {"route": routes(second)[RATINGS_ABORT]["id"], "plugin": "fault-injection"} in \
                    json.loads(page)["shadowed"]
                second_version = agent.pipeline.plugins.version
                assert second_version != version

            # The controller is gone: the stream drops, the last set stays in force ...
            await eventually(lambda: not agent.plugin_client.connected, what="plugin stream lost")
            assert metric(agent, "amesh_plugin_stream_connected") == 0
            assert apisix.config == second and agent.pipeline.plugins.version == second_version
            # ... also for documents translated meanwhile.
            x = mesh_xds("reviews-jason-v2")
            ads.set_snapshot("2", x)
            await agent.pusher.wait_live(f"cds=2,eds=2,lds=2,rds=2;plugins={second_version}", timeout=10)
            third = apisix.config
            assert third != second
            assert has_everywhere(third, "response-rewrite", outbound)
            assert has_everywhere(third, "ip-restriction", inbound)
            _, state = await aget(agent.ports["admin"], "/status")
            summary = json.loads(state)["plugins"]
            assert summary["connected"] is False and summary["version"] == second_version
            assert summary["count"] == 3 and summary["last_error"]
            assert agent.not_ready() is None

    run_against(api, main)


def test_the_pod_gets_ready_without_the_controller_and_takes_the_set_once_it_is_up(tmp_path, apisix_admin):
    needs_schemas()
    token = tmp_path / "token"
    token.write_text(TOKEN)
    api = fake_kubernetes(ampc("headers", [rewrite(direction="outbound")], namespace=NAMESPACE, selector=SELECTOR))
    port = free_port()

    async def main():
        async with running_agent(tmp_path, apisix_admin, controller_address=f"127.0.0.1:{port}",
                                 controller_token=token) as (ads, apisix, agent):
            ads.set_snapshot("1", mesh_xds("all-v1"))
            await agent.pusher.wait_live("cds=1,eds=1,lds=1,rds=1", timeout=10)
            status, _ = await aget(agent.ports["status"], "/healthz/ready")
            assert status == 200  # ready with the controller unreachable
            await eventually(lambda: agent.plugin_client.attempts >= 2, what="reconnect attempts")
            _, page = await aget(agent.ports["admin"], "/plugins")
            view = json.loads(page)
            assert view["stream"]["connected"] is False and "UNAVAILABLE" in view["stream"]["last_error"]
            assert view["plugins"] == [] and view["version"] == ""
            assert nowhere(apisix.config, "response-rewrite", outbound)

            async with running_controller(api, port):
                await eventually(lambda: has_everywhere(apisix.config, "response-rewrite", outbound),
                                 what="the set pushed once the controller is up")
                assert agent.plugin_client.connected

    run_against(api, main)


def test_a_token_the_controller_refuses_leaves_the_document_alone(tmp_path, apisix_admin):
    needs_schemas()
    token = tmp_path / "token"
    token.write_text("a-token-of-another-pod")
    api = fake_kubernetes(ampc("headers", [rewrite(direction="outbound")], namespace=NAMESPACE, selector=SELECTOR))
    api.reviews["a-token-of-another-pod"] = service_account_review(NAMESPACE, "reviews-v1-xyz")

    port = free_port()

    async def main():
        async with running_agent(tmp_path, apisix_admin, controller_address=f"127.0.0.1:{port}",
                                 controller_token=token) as (ads, apisix, agent):
            async with running_controller(api, port):
                ads.set_snapshot("1", mesh_xds("all-v1"))
                await agent.pusher.wait_live("cds=1,eds=1,lds=1,rds=1", timeout=10)
                await eventually(lambda: agent.plugin_client.last_error
                                 and "PERMISSION_DENIED" in agent.plugin_client.last_error, what="refusal")
                assert "cannot subscribe for pod" in agent.plugin_client.last_error
                assert agent.pipeline.plugins.version == "" and nowhere(apisix.config, "response-rewrite", outbound)
                assert agent.not_ready() is None

    run_against(api, main)


def test_no_controller_configured_means_no_client_and_the_translated_document(tmp_path, apisix_admin):
    async def main():
        async with running_agent(tmp_path, apisix_admin) as (ads, apisix, agent):
            assert agent.plugin_client is None
            ads.set_snapshot("1", mesh_xds("all-v1"))
            live = await agent.pusher.wait_live("cds=1,eds=1,lds=1,rds=1", timeout=10)
            names = {t.get_name() for t in asyncio.all_tasks()}
            assert {"ads", "pusher"} <= names and "plugins" not in names
            assert live.body is agent.pipeline.source.body  # nothing laid over the translator's document
            _, page = await aget(agent.ports["admin"], "/plugins")
            assert json.loads(page) == {"controller": None, "stream": None, "version": "", "plugins": [],
                                        "refused": None, "shadowed": []}
            _, state = await aget(agent.ports["admin"], "/status")
            assert json.loads(state)["plugins"] is None
            assert metric(agent, "amesh_plugin_sets_total", {"result": "applied"}) == 0

    asyncio.run(main())


def test_a_set_with_a_plugin_outside_the_agents_list_is_refused_whole(tmp_path, apisix_admin, monkeypatch):
    needs_schemas()
    monkeypatch.setenv("AMESH_ALLOWED_PLUGINS", "response-rewrite,ip-restriction")  # what the mesh chart sets
    token = tmp_path / "token"
    token.write_text(TOKEN)
    api = fake_kubernetes(ampc("headers", [rewrite(direction="outbound")], namespace=NAMESPACE, selector=SELECTOR))
    port = free_port()

    async def main():
        async with running_agent(tmp_path, apisix_admin, schema_dir=SCHEMA_DIR, controller_address=f"127.0.0.1:{port}",
                                 controller_token=token) as (ads, apisix, agent):
            async with running_controller(api, port):
                ads.set_snapshot("1", mesh_xds("all-v1"))
                await eventually(lambda: has_everywhere(apisix.config, "response-rewrite", outbound),
                                 what="the allowed set pushed")
                version = agent.pipeline.plugins.version
                # The controller (whose own list is the default '*') now adds fault-injection: the agent's
                # list does not name it, so the whole set is refused and the one in force stays.
                changed = ampc("headers", [rewrite(direction="outbound"),
                                           {"name": "fault-injection", "config": {"abort": {"http_status": 418}}}],
                               namespace=NAMESPACE, selector=SELECTOR, generation=2)
                api.emit(kube.CONFIGS, event("MODIFIED", changed, "c2"))
                await eventually(lambda: agent.plugin_client.refused, what="refusal")
                assert "plugin 'fault-injection' is not in the allowed plugins [response-rewrite,ip-restriction]" \
                    in agent.plugin_client.refused
                assert agent.pipeline.plugins.version == version
                assert nowhere(apisix.config, "fault-injection", outbound) or \
                    all(r["plugins"]["fault-injection"]["abort"]["http_status"] != 418
                        for r in routes(apisix.config).values() if "fault-injection" in (r.get("plugins") or {}))
                _, page = await aget(agent.ports["admin"], "/plugins")
                view = json.loads(page)
                assert view["version"] == version and "fault-injection" in view["stream"]["last_error"]
                assert view["stream"]["connected"] is True
                assert "fault-injection" in (agent.pipeline.plugins_refused or "")  # shown as any refusal
                assert agent.metrics.plugin_sets.labels("refused")._value.get() >= 1  # and counted

    run_against(api, main)
