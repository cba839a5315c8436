"""The ADS client end to end: a real grpc.aio ADS server on loopback, the real pipeline and pusher,
and APISIX's Admin API (the stand-in, and a real APISIX where the test is parametrized)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess

import grpc
import pytest

from sidecar_agent.sink.admin_api import AdminApiSink
from sidecar_agent.sink.file import FileSink
from amesh_testing import istiogen
from sidecar_agent.xds import kinds
from sidecar_agent.xds.client import TlsSettings, Transport
from amesh_testing.ads_server import AdsServer
from tests.agent.fake_apisix import FakeApisix
from tests.agent.harness import consistent, running_agent, xds_of
from tests.agent.waiting import eventually

KEY = "test-admin-key"
ALL = "cds={v},eds={v},lds={v},rds={v}"
RATINGS = "outbound|9080|v1|ratings.default.svc.cluster.local"


def _upstream(document: dict, cluster: str) -> dict:
    return next(u for u in document["upstreams"] if u.get("name") == cluster or u["id"].endswith(cluster)
                or cluster in str(u.get("desc", "")) or cluster in str(u.get("labels", "")))


def _with_endpoints(x: istiogen.Xds, cluster: str, cla) -> list:
    return [cla if e.cluster_name == cluster else e for e in x.endpoints]


@contextlib.asynccontextmanager
async def serving(apisix):
    """A real ADS server and an agent pushing to `apisix` (the stand-in or a real APISIX's Admin API)."""
    server = AdsServer()
    port = await server.start()
    try:
        async with running_agent(Transport(f"127.0.0.1:{port}"), AdminApiSink(apisix.url, apisix.api_key)) as agent:
            yield server, apisix, agent
    finally:
        await server.stop()


def test_initial_sync_route_change_and_eds_scale_to_zero_and_back(apisix_admin):
    async def main():
        async with serving(apisix_admin) as (server, apisix, agent):
            base = istiogen.bookinfo("all-v1")
            server.set_snapshot("1", xds_of(base))
            await agent.pusher.wait_live(ALL.format(v="1"), timeout=10)
            first = apisix.config
            assert first["routes"] and consistent(first)
            assert all(server.acked(k, "1") for k in ("cds", "eds", "lds", "rds"))
            # Node sent once per stream, on its first request.
            assert [bool(r.node.id) for r in server.requests].count(True) == 1

            # A route change: only RDS moves; one more PUT, routes rebuilt, upstreams kept.
            changed = istiogen.bookinfo("reviews-jason-v2")
            server.set_snapshot("2", {"rds": list(changed.route_configs)})
            label = "cds=1,eds=1,lds=1,rds=2"
            await agent.pusher.wait_live(label, timeout=10)
            assert apisix.config["routes"] != first["routes"]
            assert apisix.versions["routes"] == 2
            # conf versions move only for the types whose content changed
            same = apisix.config["upstreams"] == first["upstreams"]
            assert apisix.versions["upstreams"] == (1 if same else 2)
            before = {u["id"]: u for u in apisix.config["upstreams"]}

            # EDS: ratings v1 scales to zero, then back.
            ratings = next(e for e in base.endpoints if e.cluster_name == RATINGS)
            empty = type(ratings)(cluster_name=RATINGS)
            server.set_snapshot("3", {"eds": _with_endpoints(base, RATINGS, empty)})
            await agent.pusher.wait_live("cds=1,eds=3,lds=1,rds=2", timeout=10)
            now = {u["id"]: u for u in apisix.config["upstreams"]}
            emptied = [i for i in now if now[i] != before[i]]
            assert emptied and all(not now[i].get("nodes") for i in emptied)
            assert all(now[i] == before[i] for i in now if i not in emptied)
            server.set_snapshot("4", {"eds": list(base.endpoints)})
            await agent.pusher.wait_live("cds=1,eds=4,lds=1,rds=2", timeout=10)
            assert {u["id"]: u for u in apisix.config["upstreams"]} == before
            assert all(consistent(d) for d in apisix.accepted)

    asyncio.run(main())


def test_invalid_resource_is_nacked_and_last_good_kept(apisix_admin):
    async def main():
        async with serving(apisix_admin) as (server, apisix, agent):
            base = istiogen.bookinfo("all-v1")
            server.set_snapshot("1", xds_of(base))
            await agent.pusher.wait_live(ALL.format(v="1"), timeout=10)
            good = apisix.config
            bad_rc = type(base.route_configs[0])()
            bad_rc.CopyFrom(base.route_configs[0])
            bad_rc.virtual_hosts[0].domains.append("reviews.*.local")  # a wildcard mid-name
            server.set_snapshot("2", {"rds": [bad_rc] + list(base.route_configs[1:])})
            await eventually(lambda: server.nacks("rds"), what="an RDS NACK")
            nack = server.nacks("rds")[0]
            assert nack.version_info == "1"  # the last accepted version
            assert nack.response_nonce == [s for s in server.sent if s.version == "2"][0].nonce
            assert "2" in nack.error_detail.message and nack.error_detail.code == 3
            assert agent.session.snapshot.version(kinds.RDS) == "1"
            assert agent.metrics.xds_nacks.labels("rds")._value.get() == 1
            assert apisix.config == good and len(apisix.accepted) == 1
            # The fix arrives: accepted and pushed.
            server.set_snapshot("3", {"rds": list(istiogen.bookinfo("reviews-jason-v2").route_configs)})
            await agent.pusher.wait_live("cds=1,eds=1,lds=1,rds=3", timeout=10)

    asyncio.run(main())


def test_server_killed_and_restarted_20_times_mid_stream():
    async def main():
        server = AdsServer()
        port = await server.start()
        scenarios = ["all-v1", "reviews-jason-v2", "reviews-50-v3", "reviews-80-20", "ratings-abort-jason"]
        try:
            with FakeApisix(KEY) as apisix:
                async with running_agent(Transport(f"127.0.0.1:{port}"), AdminApiSink(apisix.url, KEY)) as agent:
                    server.set_snapshot("0", xds_of(istiogen.bookinfo("all-v1")))
                    await agent.pusher.wait_live(ALL.format(v="0"), timeout=10)
                    for i in range(1, 21):
                        x = xds_of(istiogen.bookinfo(scenarios[i % len(scenarios)]))
                        server.set_snapshot(str(i), x)  # push starts …
                        await server.stop()  # … and the server dies mid-stream
                        server = AdsServer()
                        server.set_snapshot(str(i), x)
                        await server.start(port)
                        await agent.pusher.wait_live(ALL.format(v=i), timeout=15)
                        # The agent reconnected and resynced on the new server (ACKing every type).
                        await eventually(lambda: all(server.acked(k, str(i)) for k in ("cds", "eds", "lds", "rds")),
                                         timeout=15, what=f"resync {i}")
                    assert agent.metrics.xds_reconnects._value.get() >= 20
                    # Nothing partial ever reached APISIX: every accepted document is self-consistent.
                    assert all(consistent(d) for d in apisix.accepted)
                    assert agent.pusher.live.complete
        finally:
            await server.stop()

    asyncio.run(main())


def test_thousand_cluster_push(tmp_path):
    async def main():
        server = AdsServer()
        port = await server.start()
        try:
            path = tmp_path / "apisix.yaml"
            async with running_agent(Transport(f"127.0.0.1:{port}"), FileSink(path)) as agent:
                x = istiogen.synthetic_mesh(1000, endpoints=2, subsets=1)
                assert len(x.clusters) >= 1000
                server.set_snapshot("big", xds_of(x))
                await agent.pusher.wait_live(ALL.format(v="big"), timeout=60)
                assert len(agent.session.snapshot.items(kinds.CDS)) == len(x.clusters)
                text = path.read_text()
                assert text.endswith("#END\n")
                import yaml

                assert len(yaml.safe_load(text)["upstreams"]) >= 1000
        finally:
            await server.stop()

    asyncio.run(main())


def _openssl(*args: str, cwd) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def mesh_ca(tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not available")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "root-cert.pem", "-days", "1",
             "-subj", "/O=cluster.local/CN=test mesh CA", cwd=tmp_path)
    _openssl("req", *ec, "-keyout", "istiod.key", "-out", "istiod.csr", "-subj", "/CN=istiod", cwd=tmp_path)
    (tmp_path / "san.ext").write_text("subjectAltName=DNS:istiod.istio-system.svc\n")
    _openssl("x509", "-req", "-in", "istiod.csr", "-CA", "root-cert.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "istiod.pem", "-days", "1", "-extfile", "san.ext", cwd=tmp_path)
    (tmp_path / "istio-token").write_text("projected-token-xyz\n")
    return tmp_path


def test_tls_with_mesh_ca_and_token(mesh_ca):
    async def main():
        credentials = grpc.ssl_server_credentials(
            [((mesh_ca / "istiod.key").read_bytes(), (mesh_ca / "istiod.pem").read_bytes())]
        )
        server = AdsServer(token="projected-token-xyz")
        port = await server.start(credentials=credentials)
        server.set_snapshot("1", xds_of(istiogen.bookinfo("all-v1")))
        tls = TlsSettings(mesh_ca / "root-cert.pem", mesh_ca / "istio-token", "istiod.istio-system.svc")
        try:
            with FakeApisix(KEY) as apisix:
                async with running_agent(Transport(f"127.0.0.1:{port}", tls), AdminApiSink(apisix.url, KEY)) as agent:
                    await agent.pusher.wait_live(ALL.format(v="1"), timeout=10)
                # A wrong token is refused: the agent never gets a config and keeps retrying.
                (mesh_ca / "bad-token").write_text("stolen")
                bad = TlsSettings(mesh_ca / "root-cert.pem", mesh_ca / "bad-token", "istiod.istio-system.svc")
                async with running_agent(Transport(f"127.0.0.1:{port}", bad), AdminApiSink(apisix.url, KEY)) as agent:
                    await eventually(lambda: agent.metrics.xds_reconnects._value.get() >= 2, what="refusals")
                    assert agent.pusher.live is None
        finally:
            await server.stop()

    asyncio.run(main())


def test_a_write_to_a_stream_istiod_already_ended_raises_its_status():
    """istiod refusing the token ends the stream at once; a request written after that is reported with
    the stream's status (retried, and named as a refusal), not as grpc's InvalidStateError."""
    from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

    from sidecar_agent.xds.client import _send, refusal

    async def main():
        server = AdsServer(token="right")
        port = await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
                assert await call.code() is grpc.StatusCode.UNAUTHENTICATED  # ended before any write
                with pytest.raises(grpc.aio.AioRpcError) as ended:
                    await _send(call, discovery_pb2.DiscoveryRequest(type_url=kinds.CDS.type_url))
                assert refusal(ended.value).startswith("UNAUTHENTICATED")
        finally:
            await server.stop()

    asyncio.run(main())
