"""The plugin stream's security for real (issue 11 §5): gRPC over TLS verified against the CA the agent is
given (a certificate for another name, or from another CA, is refused), plaintext only when both sides ask
for it, the token reviewed again while the stream is open (and at its `exp`), and the agent's own plugin
allowlist refusing a set whole."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import grpc
import pytest

from amesh_common.allowlist import Allowlist, runs_code
from amesh_common.backoff import Backoff
from amesh_common.plugin_model import ControllerPlugin, Direction, PluginSet, PluginType
from controller.auth import TokenReviewAuthenticator, check_review, token_expiry
from controller.stream import recheck_delay
from sidecar_agent.plugins.client import PluginClient, StreamSecurity, refusal
from tests.agent.waiting import eventually
from tests.controller import pki
from tests.controller.fake_api import FakeApi, service_account_review
from tests.controller.test_stream import POD, Side, client_for, plugin_set, trusting

FAST = Backoff(initial=0.02, maximum=0.1)


@pytest.fixture
def api():
    server = FakeApi()
    server.reviews["web-1-token"] = service_account_review("shop", "web-1")
    yield server
    server.close()


def run(coro) -> None:
    asyncio.run(coro)


async def stream_once(side: Side, security: StreamSecurity, host: str = "127.0.0.1") -> tuple[list, PluginClient]:
    """Run an agent client against `side` until it received a set or failed three times."""
    received: list[PluginSet] = []
    client = client_for(side.port, "web-1-token", received, security=security, host=host)
    task = asyncio.create_task(client.run())
    try:
        await eventually(lambda: received or client.attempts >= 3, timeout=15, what="a set or three failures")
        if not received:
            await eventually(lambda: client.last_error, what="the failure")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return received, client


# --- TLS ------------------------------------------------------------------------------------------------

def test_tls_stream_verified_against_the_given_ca(api, tmp_path):
    files = pki.standard(tmp_path)

    async def main():
        side = Side(api, files)
        side.sets[POD] = plugin_set("1")
        await side.start()
        try:
            received, client = await stream_once(side, trusting(files))
            assert received == [plugin_set("1")] and client.connected is False  # cancelled after the set
            # The injection template's address names the Service: verified by that name, not the IP.
            received, _ = await stream_once(side, trusting(files, server_name=pki.SERVICE_NAME))
            assert received == [plugin_set("1")]
        finally:
            await side.stop()

    run(main())


def test_a_certificate_for_another_name_is_refused(api, tmp_path):
    ca = pki.Ca.new()
    files = pki.write(tmp_path, ca, "somebody-else.example.com")  # signed by the trusted CA, wrong name

    async def main():
        side = Side(api, files)
        side.sets[POD] = plugin_set("secret")
        await side.start()
        try:
            received, client = await stream_once(side, trusting(files))
            assert received == [] and "UNAVAILABLE" in client.last_error
            received, client = await stream_once(side, trusting(files, server_name=pki.SERVICE_NAME))
            assert received == [] and "UNAVAILABLE" in client.last_error
            assert side.metric("amesh_controller_pushes_total") == 0
        finally:
            await side.stop()

    run(main())


def test_a_certificate_from_another_ca_is_refused(api, tmp_path):
    files = pki.standard(tmp_path / "real")
    impostor = pki.standard(tmp_path / "impostor")  # right names, untrusted CA

    async def main():
        side = Side(api, impostor)
        side.sets[POD] = plugin_set("secret")
        await side.start()
        try:
            received, client = await stream_once(side, trusting(files))
            assert received == [] and "UNAVAILABLE" in client.last_error
        finally:
            await side.stop()

    run(main())


def test_plaintext_only_when_both_sides_ask(api, tmp_path):
    files = pki.standard(tmp_path)

    async def main():
        tls_side, plain_side = Side(api, files), Side(api)
        for side in (tls_side, plain_side):
            side.sets[POD] = plugin_set("1")
            await side.start()
        try:
            received, client = await stream_once(tls_side, StreamSecurity(insecure_plaintext=True))
            assert received == [] and client.last_error  # a plaintext agent cannot talk to a TLS controller
            received, client = await stream_once(plain_side, trusting(files))
            assert received == [] and "UNAVAILABLE" in client.last_error  # nor a TLS agent to a plaintext one
            received, _ = await stream_once(plain_side, StreamSecurity(insecure_plaintext=True))
            assert received == [plugin_set("1")]  # --insecure-plaintext on both sides
        finally:
            await tls_side.stop()
            await plain_side.stop()

    run(main())


def test_a_missing_ca_file_is_named_and_retried(api, tmp_path):
    async def main():
        side = Side(api, pki.standard(tmp_path))
        await side.start()
        try:
            received, client = await stream_once(side, StreamSecurity(ca_file=tmp_path / "nope.crt"))
            assert received == [] and client.attempts >= 3
            assert f"controller CA {tmp_path / 'nope.crt'} (AMESH_CONTROLLER_CA)" in client.last_error
        finally:
            await side.stop()

    run(main())


def test_a_renewed_serving_certificate_is_used_without_restart(api, tmp_path):
    files = pki.standard(tmp_path / "one")

    async def main():
        side = Side(api, files)
        side.sets[POD] = plugin_set("1")
        await side.start()
        try:
            assert (await stream_once(side, trusting(files)))[0]
            # cert-manager renews: new key and certificate from a new CA land in the mounted files.
            renewed = pki.standard(tmp_path / "two")
            files.cert.write_bytes(renewed.cert.read_bytes())
            files.key.write_bytes(renewed.key.read_bytes())
            received, _ = await stream_once(side, trusting(renewed))
            assert received == [plugin_set("1")]
            received, client = await stream_once(side, trusting(files))  # the old CA no longer verifies it
            assert received == [] and "UNAVAILABLE" in client.last_error
        finally:
            await side.stop()

    run(main())


def test_security_from_the_injected_environment(tmp_path):
    env = {"AMESH_CONTROLLER_CA": "/var/run/secrets/amesh-controller/ca.crt",
           "AMESH_ALLOWED_PLUGINS": "response-rewrite, cors,,serverless-pre-function"}
    security = StreamSecurity.from_env(env)
    assert security.ca_file is not None and str(security.ca_file) == env["AMESH_CONTROLLER_CA"]
    assert not security.insecure_plaintext and security.server_name is None
    assert security.allowed.patterns == ("response-rewrite", "cors", "serverless-pre-function")
    assert StreamSecurity.from_env({}).allowed == Allowlist()  # unset: every plugin that runs no code
    assert StreamSecurity.from_env({"AMESH_CONTROLLER_INSECURE_PLAINTEXT": "true"}).insecure_plaintext
    assert not StreamSecurity.from_env({"AMESH_CONTROLLER_INSECURE_PLAINTEXT": "false"}).insecure_plaintext


# --- the token, again and again ---------------------------------------------------------------------------

def jwt(exp: float) -> str:
    def part(obj) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()
    return f"{part({'alg': 'RS256'})}.{part({'aud': ['amesh-controller'], 'exp': int(exp)})}.c2lnbmF0dXJl"


def test_token_expiry_and_recheck_delay():
    token = jwt(1_000_100)
    assert token_expiry(token) == 1_000_100
    assert token_expiry("not-a-jwt") is None and token_expiry("a.b.c") is None
    assert recheck_delay(token, 60, now=1_000_000) == 60
    assert recheck_delay(token, 60, now=1_000_090) == 11  # just past exp
    assert recheck_delay(token, 60, now=1_000_200) == 0
    assert recheck_delay("opaque", 60, now=0) == 60


def test_a_revoked_token_ends_the_open_stream(api, tmp_path):
    files = pki.standard(tmp_path)

    async def main():
        side = Side(api, files, recheck_seconds=0.3)
        side.sets[POD] = plugin_set("1")
        await side.start()
        received: list[PluginSet] = []
        client = client_for(side.port, "web-1-token", received, security=trusting(files))
        task = asyncio.create_task(client.run())
        try:
            await eventually(lambda: received and client.connected, what="stream open")
            reviews = len(api.review_specs)
            await eventually(lambda: len(api.review_specs) >= reviews + 2, what="re-checks while open")
            assert client.connected and side.metric("amesh_controller_connected_agents") == 1
            api.reviews["web-1-token"] = {"authenticated": False}  # pod deleted, token invalidated
            await eventually(lambda: side.metric("amesh_controller_refused_streams_total", {"reason": "expired"}) == 1,
                             what="stream ended")
            await eventually(lambda: "token not authenticated" in (client.last_error or ""), what="agent told")
            assert side.metric("amesh_controller_connected_agents") == 0
            assert client.current == plugin_set("1")  # the agent keeps its set while it cannot reconnect
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await side.stop()

    run(main())


def test_the_stream_is_rechecked_when_the_token_expires(api, tmp_path):
    files = pki.standard(tmp_path)
    token = jwt(time.time() + 1.5)
    api.reviews[token] = service_account_review("shop", "web-1")

    async def main():
        side = Side(api, files, recheck_seconds=3600)  # only the exp can trigger the re-check
        side.sets[POD] = plugin_set("1")
        await side.start()
        received: list[PluginSet] = []
        client = client_for(side.port, token, received, security=trusting(files))
        task = asyncio.create_task(client.run())
        try:
            await eventually(lambda: received, what="stream open")
            api.reviews[token] = {"authenticated": False}  # the API server refuses it once expired
            started = time.monotonic()
            await eventually(lambda: side.metric("amesh_controller_refused_streams_total", {"reason": "expired"}) == 1,
                             timeout=10, what="stream ended at exp")
            assert time.monotonic() - started < 5
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await side.stop()

    run(main())


def test_reviews_must_name_the_audience_asked_for():
    status = service_account_review("shop", "web-1", audience="https://kubernetes.default.svc")
    assert check_review(status, POD) is None
    assert "not for audience amesh-controller" in check_review(status, POD, ("amesh-controller",))
    assert check_review(service_account_review("shop", "web-1"), POD, ("amesh-controller",)) is None


def test_a_cached_review_never_outlives_the_token():
    calls = []
    auth = TokenReviewAuthenticator(lambda t: calls.append(t) or service_account_review("shop", "web-1"), ttl=60)
    token = jwt(time.time() - 1)  # already expired: the cache must not keep it
    asyncio.run(auth(token, POD))
    asyncio.run(auth(token, POD))
    asyncio.run(auth("opaque", POD))
    asyncio.run(auth("opaque", POD))
    asyncio.run(auth("opaque", POD, fresh=True))
    assert calls == [token, token, "opaque", "opaque"]


# --- the agent's allowlist ---------------------------------------------------------------------------------

def plain(name: str, config: dict | None = None) -> ControllerPlugin:
    return ControllerPlugin(Direction.OUTBOUND, PluginType.PLAIN, name, json.dumps(config or {}), "shop/c")


@pytest.mark.parametrize("patterns,plugin,allowed", [
    ("*", "response-rewrite", True),
    ("*", "serverless-pre-function", False),
    ("*", "serverless-post-function", False),
    ("*", "ext-plugin-pre-req", False),
    ("", "fault-injection", True),
    ("response-rewrite,cors", "cors", True),
    ("response-rewrite,cors", "fault-injection", False),
    ("*,serverless-pre-function", "serverless-pre-function", True),
    ("*,serverless-pre-function", "serverless-post-function", False),
    ("serverless-*", "serverless-post-function", True),
    ("ext-plugin-*", "ext-plugin-post-req", True),
])
def test_allowlist(patterns, plugin, allowed):
    assert Allowlist.parse(patterns).allows(plugin) is allowed


def test_pre_req_plugins_are_checked_as_the_ext_plugin_apisix_runs():
    assert runs_code("ext-plugin-pre-req")
    default = Allowlist()
    assert "ext-plugin-pre-req" in default.refusal("my-runner-plugin", PluginType.PRE_REQ)
    assert Allowlist.parse("*,ext-plugin-pre-req").refusal("my-runner-plugin", PluginType.PRE_REQ) is None
    assert Allowlist.parse("*,ext-plugin-pre-req").refusal("x", PluginType.POST_REQ) is not None


def test_refusal_names_every_plugin_outside_the_list():
    s = PluginSet((plain("response-rewrite"), plain("serverless-pre-function"), plain("serverless-post-function")), "v9")
    why = refusal(s, Allowlist())
    assert why.startswith("plugin set 'v9' refused: plugin 'serverless-pre-function' is not in the allowed plugins [*]")
    assert "serverless-post-function" in why and "must be listed by name" in why
    assert refusal(s, Allowlist.parse("*,serverless-*")) is None


def test_the_agent_refuses_a_set_with_a_plugin_outside_its_list_whole(api, tmp_path):
    files = pki.standard(tmp_path)
    good = PluginSet((plain("response-rewrite", {"headers": {"set": {"X-A": "1"}}}),), "good")
    lua = PluginSet((plain("response-rewrite", {"headers": {"set": {"X-A": "1"}}}),
                     plain("serverless-pre-function", {"functions": ["return function() os.exit() end"]})), "lua")

    async def main():
        side = Side(api, files)
        side.sets[POD] = good
        await side.start()
        received: list[PluginSet] = []
        refused: list[tuple[str, str]] = []
        client = client_for(side.port, "web-1-token", received, security=trusting(files))
        client.on_refused = lambda s, why: refused.append((s.version, why))
        task = asyncio.create_task(client.run())
        try:
            await eventually(lambda: received == [good], what="the allowed set")
            side.publish(POD, lua)
            await eventually(lambda: refused, what="refusal")
            assert refused[0][0] == "lua" and "serverless-pre-function" in refused[0][1]
            assert received == [good] and client.current == good  # not handed on: the set in force stays
            assert client.refused == refused[0][1] == client.last_error and client.connected
            side.publish(POD, PluginSet(good.plugins, "good-again"))  # an allowed set is adopted again
            await eventually(lambda: len(received) == 2, what="next allowed set")
            assert client.refused is None and client.last_error is None
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await side.stop()
        # The same set passes an agent whose mesh chart lists the plugin by name.
        side = Side(api, files)
        side.sets[POD] = lua
        await side.start()
        try:
            got, _ = await stream_once(side, trusting(files, allowed=Allowlist.parse("*,serverless-pre-function")))
            assert got == [lua]
        finally:
            await side.stop()

    run(main())


def test_the_stream_listens_on_ipv6_and_ipv4(api, tmp_path):
    files = pki.standard(tmp_path)

    async def main():
        side = Side(api, files, host="[::]")
        side.sets[POD] = plugin_set("1")
        try:
            await side.start()
        except (OSError, RuntimeError) as exc:
            pytest.skip(f"no IPv6 here: {exc}")
        try:
            for host in ("[::1]", "127.0.0.1"):
                received, client = await stream_once(side, trusting(files), host=host)
                assert received == [plugin_set("1")], (host, client.last_error)
        finally:
            await side.stop()

    run(main())


def test_grpc_status_codes_reach_the_agent_over_tls(api, tmp_path):
    """A refusal is still a gRPC status over TLS (not a transport error): the agent can tell why."""
    files = pki.standard(tmp_path)

    async def main():
        side = Side(api, files)
        await side.start()
        try:
            received: list = []
            client = client_for(side.port, "stolen", received, security=trusting(files))
            task = asyncio.create_task(client.run())
            try:
                await eventually(lambda: client.attempts >= 2, what="refused")
                assert grpc.StatusCode.PERMISSION_DENIED.name in client.last_error
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        finally:
            await side.stop()

    run(main())
