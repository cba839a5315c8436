"""`amesh-agent run` composed for real (--no-apisix): health, metrics and diagnostics on loopback ports."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request

import pytest
from envoy.admin.v3 import clusters_pb2
from envoy.config.core.v3 import health_check_pb2
from google.protobuf import json_format

from sidecar_agent.apisix.config import Mode
from sidecar_agent.app import Agent, AgentConfig
from amesh_testing import istiogen
from amesh_testing.ads_server import AdsServer
from tests.agent.fake_apisix import FakeApisix
from tests.agent.harness import xds_of
from tests.agent.waiting import eventually

KEY = "app-test-admin-key"
ENV = {"POD_NAME": "productpage-v1-abc", "POD_NAMESPACE": "default", "INSTANCE_IP": "10.244.0.10",
       "ISTIO_META_CLUSTER_ID": "Kubernetes"}


def get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


async def aget(port: int, path: str) -> tuple[int, bytes]:
    return await asyncio.to_thread(get, port, path)


def config(ads_port: int, apisix: FakeApisix, tmp_path, **over) -> AgentConfig:
    base = dict(discovery_address=f"127.0.0.1:{ads_port}", plaintext=True, no_apisix=True,
                apisix_mode=Mode.API, apisix_admin_url=apisix.url, apisix_admin_key=KEY, apisix_prefix=tmp_path,
                apisix_metrics_url=f"{apisix.url}/apisix/prometheus/metrics",
                listen_host="127.0.0.1", status_port=0, metrics_port=0, admin_port=0,
                labels_file=tmp_path / "labels")
    base.update(over)
    return AgentConfig(**base)


def test_health_metrics_and_config_dump(tmp_path):
    async def main():
        server = AdsServer()
        port = await server.start()
        stop = asyncio.Event()
        try:
            with FakeApisix(KEY) as apisix:
                agent = Agent(config(port, apisix, tmp_path), ENV)
                task = asyncio.create_task(agent.run(stop))
                await eventually(lambda: agent.ports, what="ports bound")
                status, body = await aget(agent.ports["status"], "/healthz/ready")
                assert status == 503 and b"no complete configuration" in body

                x = istiogen.bookinfo("all-v1")
                server.set_snapshot("1", {"cds": x.clusters, "lds": x.listeners})  # RDS/EDS not yet there
                await eventually(lambda: agent.pipeline.snapshot is not None, what="first snapshot")
                status, _ = await aget(agent.ports["status"], "/healthz/ready")
                assert status == 503 and apisix.accepted == []  # incomplete: nothing pushed
                server.set_snapshot("1", xds_of(x))
                await agent.pusher.wait_live("cds=1,eds=1,lds=1,rds=1", timeout=10)
                status, _ = await aget(agent.ports["status"], "/healthz/ready")
                assert status == 200

                status, page = await aget(agent.ports["metrics"], "/stats/prometheus")
                text = page.decode()
                assert status == 200
                assert 'amesh_xds_responses_total{result="ack",type="lds"}' in text
                assert "amesh_apisix_push_seconds_count 1.0" in text
                assert 'apisix_http_status{code="200",route="r1"} 3' in text  # APISIX's own, merged

                status, dump = await aget(agent.ports["admin"], "/config_dump")
                configs = json.loads(dump)["configs"]
                types = [c["@type"].rsplit(".", 1)[-1] for c in configs]
                assert types == ["BootstrapConfigDump", "ClustersConfigDump", "ListenersConfigDump",
                                 "RoutesConfigDump"]
                assert configs[0]["bootstrap"]["node"]["id"] == \
                    "sidecar~10.244.0.10~productpage-v1-abc.default~default.svc.cluster.local"
                listeners = {d["name"] for d in configs[2]["dynamic_listeners"]}
                assert listeners == {l.name for l in x.listeners}
                assert configs[1]["dynamic_active_clusters"][0]["cluster"]["@type"].endswith("Cluster")
                _, dump = await aget(agent.ports["admin"], "/config_dump?include_eds")
                assert len(json.loads(dump)["configs"]) == 5
                # What `istioctl proxy-config endpoints` reads: Envoy admin's Clusters, from the EDS held.
                status, page = await aget(agent.ports["admin"], "/clusters?format=json")
                clusters = json_format.Parse(page, clusters_pb2.Clusters())
                statuses = {c.name: c for c in clusters.cluster_statuses}
                assert status == 200 and set(statuses) == {c.name for c in x.clusters}
                for cla in x.endpoints:
                    users = [c for c in statuses.values() if c.eds_service_name == cla.cluster_name]
                    want = sorted((lb.endpoint.address.socket_address.address,
                                   lb.endpoint.address.socket_address.port_value)
                                  for group in cla.endpoints for lb in group.lb_endpoints)
                    for user in users:
                        assert sorted((h.address.socket_address.address, h.address.socket_address.port_value)
                                      for h in user.host_statuses) == want
                        assert all(h.health_status.eds_health_status == health_check_pb2.HEALTHY
                                   for h in user.host_statuses)
                assert any(c.host_statuses for c in statuses.values())
                _, text = await aget(agent.ports["admin"], "/clusters")
                assert b"::health_flags::healthy" in text
                _, document = await aget(agent.ports["admin"], "/apisix/document")
                assert json.loads(document) == apisix.config
                _, state = await aget(agent.ports["admin"], "/status")
                assert json.loads(state)["ready"] is True

                stop.set()  # SIGTERM: drain, readiness goes first
                await asyncio.wait_for(task, 10)
                assert agent.not_ready() == "draining"
        finally:
            await server.stop()

    asyncio.run(main())


def test_partial_policy_after_timeout(tmp_path):
    async def main():
        server = AdsServer()
        port = await server.start()
        stop = asyncio.Event()
        try:
            with FakeApisix(KEY) as apisix:
                agent = Agent(config(port, apisix, tmp_path, partial_timeout=0.2), ENV)
                task = asyncio.create_task(agent.run(stop))
                x = istiogen.bookinfo("all-v1")
                server.set_snapshot("1", {"cds": x.clusters, "lds": x.listeners})
                await eventually(lambda: agent.pusher.live, what="partial document live")
                assert agent.pusher.live.label.startswith("partial:")
                assert agent.not_ready() is not None  # partial is not ready
                ids = {u["id"] for u in apisix.config.get("upstreams", [])}
                assert all(r.get("upstream_id") in ids for r in apisix.config.get("routes", []) if "upstream_id" in r)
                server.set_snapshot("1", xds_of(x))
                await agent.pusher.wait_live("cds=1,eds=1,lds=1,rds=1", timeout=10)
                assert agent.not_ready() is None
                stop.set()
                await asyncio.wait_for(task, 10)
        finally:
            await server.stop()

    asyncio.run(main())


def test_bad_configuration_is_refused_before_anything_starts(tmp_path):
    with FakeApisix(KEY) as apisix:
        with pytest.raises(ValueError, match="HOST:PORT"):
            Agent(config(0, apisix, tmp_path, discovery_address="istiod"), ENV)
        with pytest.raises(ValueError, match="mesh CA"):
            Agent(config(1, apisix, tmp_path, plaintext=False, root_cert=tmp_path / "none.pem"), ENV)
        with pytest.raises(ValueError, match="admin-key"):
            Agent(config(1, apisix, tmp_path, apisix_admin_key=None), ENV)
        with pytest.raises(ValueError, match="POD_NAME"):
            Agent(config(1, apisix, tmp_path), {})


def test_file_mode_writes_the_document(tmp_path):
    async def main():
        server = AdsServer()
        port = await server.start()
        stop = asyncio.Event()
        target = tmp_path / "apisix.yaml"
        try:
            with FakeApisix(KEY) as apisix:
                agent = Agent(config(port, apisix, tmp_path, apisix_mode=Mode.FILE, apisix_config_file=target),
                              ENV)
                task = asyncio.create_task(agent.run(stop))
                server.set_snapshot("1", xds_of(istiogen.bookinfo("all-v1")))
                await agent.pusher.wait_live("cds=1,eds=1,lds=1,rds=1", timeout=10)
                assert target.read_text().endswith("#END\n")
                stop.set()
                await asyncio.wait_for(task, 10)
        finally:
            await server.stop()

    asyncio.run(main())


SCHEMAS = __import__("pathlib").Path(__file__).resolve().parents[2] / ".." / "shared" / "apisix-schema" / "3.18"


def test_schema_check_validates_only_what_changed_and_refuses_bad_objects():
    if not SCHEMAS.is_dir():
        pytest.skip("../shared/apisix-schema/3.18 not present")
    from sidecar_agent.app import default_check
    from sidecar_agent.pipeline import changes
    from sidecar_agent.store import EMPTY, snapshot_of
    from sidecar_agent.translate import Translator
    from sidecar_agent.xds import kinds

    check = default_check(SCHEMAS)
    x = istiogen.bookinfo("all-v1")
    translator = Translator()
    held = snapshot_of({kinds.CDS: x.clusters, kinds.EDS: x.endpoints, kinds.LDS: x.listeners,
                        kinds.RDS: x.route_configs})
    for change in changes(EMPTY, held):
        getattr(translator, {"cds": "set_cluster", "eds": "set_endpoints", "lds": "set_listener",
                             "rds": "set_route_config"}[change.kind.short])(change.after.message(change.kind))
    document = translator.document()
    assert document["routes"] and document["upstreams"]
    assert check(document) == []
    calls = []
    original = check._schemas.check_core
    check._schemas.check_core = lambda kind, obj: calls.append(obj["id"]) or original(kind, obj)
    assert check(translator.document()) == [] and calls == []  # nothing new: nothing re-validated
    broken = dict(document["upstreams"][0], retries=-1)  # the schema says minimum 0
    bad = {"routes": document["routes"], "upstreams": [broken] + document["upstreams"][1:]}
    problems = check(bad)
    assert calls == [broken["id"]] and problems and broken["id"] in problems[0]


def test_new_http_port_regenerates_config_yaml_and_reloads_apisix(tmp_path):
    """The data path needs an internal HTTP listener per served port: a document that brings one first gets
    config.yaml rewritten and APISIX reloaded (here a stand-in child; APISIX itself is not installable)."""
    import sys

    import yaml

    from sidecar_agent.apisix.supervisor import Command, Supervisor

    async def main():
        apisix = FakeApisix(KEY)
        agent = Agent(config(0, apisix, tmp_path, no_apisix=False, apisix_mode=Mode.FILE,
                             apisix_config_file=tmp_path / "apisix.yaml"), ENV)
        marker = tmp_path / "init.log"
        agent.supervisor = Supervisor(Command(
            run=(sys.executable, "-c", "import signal, time; signal.signal(signal.SIGHUP, signal.SIG_IGN); time.sleep(60)"),
            prepare=((sys.executable, "-c", f"open({str(marker)!r}, 'a').write('init\\n')"),)))
        task = asyncio.create_task(agent.supervisor.run())
        try:
            agent._write_apisix_config()
            await eventually(lambda: agent.supervisor.pid is not None, what="stand-in started")
            before = yaml.safe_load((tmp_path / "conf" / "config.yaml").read_text())
            for listener in istiogen.bookinfo().listeners:
                agent.pipeline.translator.set_listener(listener)
            agent._before_push(None)
            after = yaml.safe_load((tmp_path / "conf" / "config.yaml").read_text())
            assert after != before and 9080 in agent.data_path.outbound_http_ports
            listens = json.dumps(after["apisix"]["node_listen"])
            assert "15100" in listens, listens  # the first internal HTTP listener, for outbound port 9080
            pid = agent.supervisor.pid
            await eventually(lambda: agent.supervisor.reloads == 1, what="reloaded")
            assert marker.read_text().count("init") == 2 and agent.supervisor.pid == pid  # init re-run, same APISIX
            agent._before_push(None)  # nothing new: no second reload
            await asyncio.sleep(0.1)
            assert agent.supervisor.reloads == 1
        finally:
            await agent.supervisor.stop(1)
            await asyncio.wait_for(task, 5)

    asyncio.run(main())


CONFIG_DUMP_OF_WRAPPED = r"""
import json, sys
from envoy.config.listener.v3 import listener_pb2
from google.protobuf import any_pb2, json_format, struct_pb2
from xds.type.v3 import typed_struct_pb2  # same wire format as udpa's, which must not be loaded yet
from sidecar_agent.http import diag

value = struct_pb2.Struct()
value.update({"reporter": "SERVER"})
wrapped = typed_struct_pb2.TypedStruct(type_url="type.googleapis.com/stats.PluginConfig", value=value)
listener = listener_pb2.Listener(name="virtualInbound")
network_filter = listener.filter_chains.add().filters.add(name="istio.stats")
network_filter.typed_config.CopyFrom(any_pb2.Any(type_url="type.googleapis.com/udpa.type.v1.TypedStruct",
                                                 value=wrapped.SerializeToString()))
# and a type no installed module has (Istio's own ALPN filter, which istiod adds with mTLS on)
alpn = listener.filter_chains[0].filters.add(name="istio.alpn")
alpn.typed_config.CopyFrom(any_pb2.Any(type_url="type.googleapis.com/istio.envoy.config.filter.http.alpn.v2alpha1."
                                                "FilterConfig", value=b"\x0a\x02h2"))
assert "udpa.type.v1.typed_struct_pb2" not in sys.modules
print(json.dumps(diag.config_dump_of(listener)))
"""


def test_config_dump_renders_typed_structs_the_agent_never_imported():
    """istiod wraps Istio's own filters in udpa TypedStructs (seen with mTLS on): /config_dump answered 500."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", CONFIG_DUMP_OF_WRAPPED], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    filters = json.loads(out.stdout)["filter_chains"][0]["filters"]
    typed = filters[0]["typed_config"]
    assert typed["@type"] == "type.googleapis.com/udpa.type.v1.TypedStruct"
    assert typed["value"] == {"reporter": "SERVER"}
    assert filters[1]["typed_config"] == {
        "@type": "type.googleapis.com/istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig",
        "value_base64": "CgJoMg=="}
