"""The plugin stream for real: grpc.aio server and the agent's client on loopback, TokenReview served over HTTP."""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest

from controller.auth import TokenReviewAuthenticator, check_review
from controller.kube import Kube, KubeConfig
from controller.metrics import ControllerMetrics
from amesh_common.proto import pb2, pb2_grpc
from controller.stream import Hub, PluginStreamServicer, ServerTls, start_server
from sidecar_agent.plugins.client import PluginClient, StreamSecurity
from amesh_common.plugin_model import ControllerPlugin, Direction, PluginSet, PluginType
from amesh_common.backoff import Backoff
from tests.agent.waiting import eventually
from tests.controller import pki
from tests.controller.fake_api import FakeApi, service_account_review

POD = ("shop", "web-1")
FAST = Backoff(initial=0.02, maximum=0.1)


def plugin_set(value: str) -> PluginSet:
    config = json.dumps({"headers": {"set": {"X-V": value}}}, sort_keys=True)
    return PluginSet((ControllerPlugin(Direction.OUTBOUND, PluginType.PLAIN, "response-rewrite", config, "shop/c"),),
                     value)


class Side:
    """A controller-side stream server (TLS with `files`' certificate) whose per-pod sets the test sets directly."""

    def __init__(self, api: FakeApi, files: pki.Files | None = None, recheck_seconds: float = 60.0,
                 host: str = "127.0.0.1") -> None:
        self.sets: dict = {}
        self.hub = Hub(lambda pod: self.sets.get(pod, PluginSet()))
        self.metrics = ControllerMetrics()
        self.not_ready: str | None = None
        review = Kube(KubeConfig(api.url), timeout=5).token_review
        self.servicer = PluginStreamServicer(self.hub, TokenReviewAuthenticator(review), self.metrics,
                                             lambda: self.not_ready, recheck_seconds)
        self.tls = ServerTls(files.cert, files.key) if files is not None else None
        self.host = host
        self.server = None
        self.port = 0

    async def start(self, port: int = 0) -> None:
        self.server, self.port = await start_server(self.servicer, f"{self.host}:{port}", self.tls)

    async def stop(self) -> None:
        await self.server.stop(grace=None)

    def publish(self, pod, s: PluginSet) -> None:
        self.sets[pod] = s
        self.hub.publish({pod: s})

    def metric(self, name: str, labels: dict | None = None) -> float:
        return self.metrics.registry.get_sample_value(name, labels or {}) or 0.0


@pytest.fixture
def pkifiles(tmp_path):
    return pki.standard(tmp_path / "pki")


@pytest.fixture
def api():
    server = FakeApi()
    server.reviews["web-1-token"] = service_account_review("shop", "web-1")
    server.reviews["web-2-token"] = service_account_review("shop", "web-2")
    server.reviews["legacy-token"] = {"authenticated": True,
                                      "user": {"username": "system:serviceaccount:shop:default"}}
    yield server
    server.close()


def client_for(port: int, token: str | None, received: list, pod=POD, security: StreamSecurity | None = None,
               host: str = "127.0.0.1") -> PluginClient:
    async def on_set(s: PluginSet) -> None:
        received.append(s)

    return PluginClient(f"{host}:{port}", pod[0], pod[1], lambda: token, on_set, FAST,
                        security or StreamSecurity(insecure_plaintext=True))


def trusting(files: pki.Files, **over) -> StreamSecurity:
    """The agent's settings as the injection template gives them: verify the controller with this CA."""
    return StreamSecurity(ca_file=files.ca, **over)


def test_full_set_on_connect_then_every_change(api, pkifiles):
    async def main():
        side = Side(api, pkifiles)
        side.sets[POD] = plugin_set("1")
        await side.start()
        received: list[PluginSet] = []
        client = client_for(side.port, "web-1-token", received, security=trusting(pkifiles))
        task = asyncio.create_task(client.run())
        try:
            await eventually(lambda: received, what="initial set")
            assert received[0] == plugin_set("1") and client.connected
            assert side.metric("amesh_controller_connected_agents") == 1
            side.publish(POD, plugin_set("1"))  # same content: not re-sent
            side.publish(("shop", "other"), plugin_set("x"))  # another pod: not ours
            side.publish(POD, plugin_set("2"))
            await eventually(lambda: len(received) == 2, what="changed set")
            assert received[1] == plugin_set("2")
            side.publish(POD, PluginSet())  # all plugins removed: the agent is told
            await eventually(lambda: len(received) == 3, what="empty set")
            assert received[2].plugins == ()
            assert side.metric("amesh_controller_pushes_total") == 3
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await side.stop()

    asyncio.run(main())


def test_reconnects_with_backoff_and_keeps_the_last_set_meanwhile(api, pkifiles):
    async def main():
        side = Side(api, pkifiles)
        side.sets[POD] = plugin_set("1")
        await side.start()
        port = side.port
        received: list[PluginSet] = []
        client = client_for(port, "web-1-token", received, security=trusting(pkifiles))
        task = asyncio.create_task(client.run())
        try:
            await eventually(lambda: received, what="initial set")
            await side.stop()
            await eventually(lambda: not client.connected and client.attempts >= 3, what="retries while down")
            assert client.current == plugin_set("1")  # kept while the controller is away
            restarted = Side(api, pkifiles)
            restarted.sets[POD] = plugin_set("2")
            await restarted.start(port)
            try:
                await eventually(lambda: len(received) == 2, timeout=15, what="set after reconnect")
                assert received[1] == plugin_set("2") and client.connected
            finally:
                await restarted.stop()
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())


@pytest.mark.parametrize("token,code,detail", [
    (None, grpc.StatusCode.UNAUTHENTICATED, "no service-account token"),
    ("web-2-token", grpc.StatusCode.PERMISSION_DENIED, "token of pod shop/web-2 cannot subscribe for pod shop/web-1"),
    ("legacy-token", grpc.StatusCode.PERMISSION_DENIED, "token has no pod-name claim"),
    ("forged", grpc.StatusCode.PERMISSION_DENIED, "token not authenticated"),
])
def test_a_pod_cannot_read_another_pods_plugins(api, pkifiles, token, code, detail):
    async def main():
        side = Side(api, pkifiles)
        side.sets[POD] = plugin_set("secret")
        await side.start()
        try:
            async with trusting(pkifiles).channel(f"127.0.0.1:{side.port}") as channel:
                stub = pb2_grpc.PluginServiceStub(channel)
                metadata = (("authorization", f"Bearer {token}"),) if token else ()
                call = stub.StreamPlugins(pb2.StreamPluginsRequest(pod=pb2.PodIdentity(namespace=POD[0], name=POD[1])),
                                          metadata=metadata)
                with pytest.raises(grpc.aio.AioRpcError) as exc:
                    async for _ in call:
                        pass
                assert exc.value.code() == code and detail in exc.value.details()
            # The agent client keeps retrying with backoff and never sees the set.
            received: list[PluginSet] = []
            client = client_for(side.port, token, received, security=trusting(pkifiles))
            task = asyncio.create_task(client.run())
            try:
                await eventually(lambda: client.attempts >= 3, what="retries after refusal")
                assert received == [] and detail in (client.last_error or "")
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            assert side.metric("amesh_controller_pushes_total") == 0
        finally:
            await side.stop()

    asyncio.run(main())


def test_not_ready_controller_refuses_instead_of_sending_an_empty_set(api, pkifiles):
    async def main():
        side = Side(api, pkifiles)
        side.not_ready = "not yet listed: pods"
        await side.start()
        received: list[PluginSet] = []
        client = client_for(side.port, "web-1-token", received, security=trusting(pkifiles))
        task = asyncio.create_task(client.run())
        try:
            await eventually(lambda: client.last_error and "UNAVAILABLE" in client.last_error, what="refusal")
            assert received == []
            side.not_ready = None
            await eventually(lambda: received, timeout=15, what="set once ready")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await side.stop()

    asyncio.run(main())


REVIEWS = [
    ("ok", service_account_review("shop", "web-1"), None),
    ("error", {"error": "boom"}, "token review failed: boom"),
    ("user, not SA", {"authenticated": True, "user": {"username": "alice"}}, "'alice' is not a service account"),
    ("other namespace", service_account_review("dev", "web-1"),
     "token of namespace 'dev' cannot subscribe for pod shop/web-1"),
]


@pytest.mark.parametrize("name,status,reason", REVIEWS, ids=[r[0] for r in REVIEWS])
def test_check_review(name, status, reason):
    assert check_review(status, POD) == reason


def test_accepted_reviews_are_cached():
    calls = []

    def review(token):
        calls.append(token)
        return service_account_review("shop", "web-1")

    now = [0.0]
    auth = TokenReviewAuthenticator(review, ttl=10, clock=lambda: now[0])
    asyncio.run(auth("t", POD))
    asyncio.run(auth("t", POD))
    now[0] = 11
    asyncio.run(auth("t", POD))
    assert calls == ["t", "t"]
