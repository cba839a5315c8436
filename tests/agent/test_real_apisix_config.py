"""The conf/config.yaml the agent renders (apisix/config.py + apisix/datapath.py) on a real APISIX 3.18:
`apisix init` accepts it in both modes, every listener it names comes up (capture ports as stream,
internal HTTP listeners, Admin API in API mode, Prometheus, nothing else), nothing unexpected is
logged, and a route keyed on the hook's variables serves on an internal listener and through a
stream route on the capture port, pushed the agent's way (Admin API sink or apisix.json)."""

from __future__ import annotations

import asyncio
import dataclasses
import http.client
import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from sidecar_agent.apisix.config import Mode, render_yaml
from sidecar_agent.apisix.datapath import Direction, internal_ports
from sidecar_agent.sink.admin_api import AdminApiSink
from sidecar_agent.sink.base import PushError
from tests import realapisix

ANSWER = {"serverless-pre-function": {"phase": "access", "functions": [
    "return function(conf, ctx) require('apisix.core').response.exit(200, "
    "{port = ctx.var.original_dst_port, direction = ctx.var.amesh_direction}) end"]}}
DOCUMENT = {
    "routes": [{"id": "r-9080", "uri": "/*", "upstream_id": "u-none", "plugins": ANSWER,
                "vars": [["amesh_direction", "==", "outbound"], ["original_dst_port", "==", 9080]]}],
    "upstreams": [{"id": "u-none", "type": "roundrobin", "nodes": [{"host": "127.0.0.1", "port": 1, "weight": 1}]}],
}


# a stream route on the capture port (matched by the client's address: nothing is captured in these tests),
# hopping to the internal HTTP listener: `tcp_hop(port)` is its upstream
STREAM_ROUTE = {"id": "s-local", "remote_addr": "127.0.0.1", "upstream_id": "us-internal"}


def tcp_hop(port: int) -> dict:
    return {"id": "us-internal", "type": "roundrobin", "scheme": "tcp",
            "nodes": [{"host": "127.0.0.1", "port": port, "weight": 1}]}


def get(port: int, path: str = "/") -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _get_or_none(port: int) -> int | None:
    try:
        return get(port)[0]
    except (OSError, http.client.HTTPException):
        return None


@pytest.mark.parametrize("mode", [Mode.API, Mode.FILE], ids=["api", "file"])
@pytest.mark.parametrize("ports", [(), (9080, 15014)], ids=["no-http-port", "http-ports"])
def test_generated_config_is_accepted_and_serves(mode, ports):
    realapisix.skip_unless_available()
    settings, data_path = realapisix.settings(mode, ipv6=True, outbound_http_ports=ports,
                                              inbound_http_ports=(8080,) if ports else ())
    with realapisix.running(render_yaml(settings, data_path)) as apisix:  # waits for every listener
        nginx_conf = (apisix.prefix / "conf" / "nginx.conf").read_text()
        assert "proxy_bind $amesh_upstream_bind;" in nginx_conf and "proxy_bind $amesh_stream_bind;" in nginx_conf
        listens = {line.split()[1].rstrip(";") for line in nginx_conf.splitlines() if line.strip().startswith("listen ")}
        expected = {"0.0.0.0:15001", "[::]:15001", "0.0.0.0:15006", "[::]:15006",
                    f"127.0.0.1:{settings.prometheus_port}",
                    *(f"127.0.0.1:{item['port']}" for item in apisix.conf["apisix"]["node_listen"])}
        if mode is Mode.API:
            expected.add(f"127.0.0.1:{settings.admin_port}")
        # nothing else on an address of the pod (APISIX's default TLS listener 9443 is off)
        assert {a for a in listens if not a.startswith("unix:")} == expected
        prometheus = apisix.forward(settings.prometheus_port)
        # right after a start the exporter answers 500 "no data available" until its first collection
        apisix.wait_for(lambda: get(prometheus, "/apisix/prometheus/metrics")[0] == 200)
        status, body = get(prometheus, "/apisix/prometheus/metrics")
        assert status == 200 and b"apisix_" in body, (status, body, apisix.log())
        if ports:
            internal = internal_ports(data_path)[(Direction.OUTBOUND, 9080)]
            listener = apisix.forward(internal)
            # a stream route on the capture port too: stream routes serve in both modes
            document = dict(DOCUMENT, stream_routes=[STREAM_ROUTE], upstreams=DOCUMENT["upstreams"] + [tcp_hop(internal)])
            front = apisix.forward(settings.outbound_port)
            if mode is Mode.API:
                asyncio.run(AdminApiSink(apisix.admin_url, settings.admin_key).push(document))
                apisix.wait_for(lambda: get(listener)[0] == 200)
            else:
                apisix.load(document, probe=lambda: get(listener)[0] == 200)
            apisix.wait_for(lambda: _get_or_none(front) == 200)
            status, body = get(front)
            assert status == 200 and b'"port":9080' in body
            status, body = get(listener)
            assert status == 200 and b'"port":9080' in body and b'"direction":"outbound"' in body
            # the other internal listener stands for 15014: the route keyed on 9080 does not match
            assert get(apisix.forward(internal_ports(data_path)[(Direction.OUTBOUND, 15014)]))[0] == 404
        assert not apisix.errors(), apisix.log()


def _big_document(megabytes: float) -> dict:
    """DOCUMENT plus upstreams enough for `megabytes` of JSON (the size of ~1,500 services' document)."""
    nodes = [{"host": f"10.{i // 250 % 250}.{i % 250}.1", "port": 9080, "weight": 1} for i in range(120)]
    count = int(megabytes * 1e6 / len(json.dumps(nodes))) + 1
    extra = [{"id": f"u-big-{i}", "type": "roundrobin", "nodes": nodes} for i in range(count)]
    return dict(DOCUMENT, upstreams=DOCUMENT["upstreams"] + extra)


@pytest.mark.parametrize("dict_mb", [None, 10], ids=["agent-default", "apisix-default-10m"])
def test_api_mode_holds_a_big_mesh_or_names_the_shared_dict(dict_mb):
    """API mode keeps the whole configuration in one shared dict: the agent's size takes a 12 MB
    document (APISIX's own 10m answers 500 "no memory"); too small a dict is named in the error."""
    realapisix.skip_unless_available()
    settings, data_path = realapisix.settings(Mode.API, outbound_http_ports=(9080,))
    if dict_mb is not None:
        settings = dataclasses.replace(settings, config_dict_mb=dict_mb)
    document = _big_document(12)
    with realapisix.running(render_yaml(settings, data_path)) as apisix:
        sink = AdminApiSink(apisix.admin_url, settings.admin_key)
        if dict_mb is None:
            asyncio.run(sink.push(document))
            listener = apisix.forward(internal_ports(data_path)[(Direction.OUTBOUND, 9080)])
            apisix.wait_for(lambda: get(listener)[0] == 200)
        else:
            with pytest.raises(PushError, match=r"answered 500: .*no memory.*does not fit APISIX's standalone-config "
                                                r"shared dict: raise ApisixSettings.config_dict_mb"):
                asyncio.run(sink.push(document))


AGENT_DELAY = 10  # amesh.standalone_poll: the privileged agent loads a version this long after it came


def _cpu_seconds(pids: set[int]) -> float:
    """User + system CPU seconds the processes `pids` have used (proc(5) stat fields 14 and 15)."""
    ticks = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def test_api_mode_idle_apisix_leaves_the_configuration_alone_and_still_follows_pushes():
    """APISIX 3.18 polls the standalone-config dict once a second in every Lua VM (each worker's http and
    stream VM, the privileged agent) and decodes the whole configuration to read one field: with this 12 MB
    document ~0.15 s per VM and second, at 10,000 services more than a second, so nothing else runs. The
    hook's version gate (amesh.standalone_poll) keeps an idle APISIX idle, and keeps the privileged agent
    (which serves no route) from loading a document until it has settled; a later push still reaches the http
    VMs (update event) and the stream VMs, which only the poll tells."""
    realapisix.skip_unless_available()
    settings, data_path = realapisix.settings(Mode.API, outbound_http_ports=(9080,))
    internal = internal_ports(data_path)[(Direction.OUTBOUND, 9080)]
    big = _big_document(12)
    hop = tcp_hop(internal)
    document = dict(big, stream_routes=[STREAM_ROUTE], upstreams=big["upstreams"] + [hop])
    with realapisix.running(render_yaml(settings, data_path)) as apisix:
        sink = AdminApiSink(apisix.admin_url, settings.admin_key)
        listener, front = apisix.forward(internal), apisix.forward(settings.outbound_port)
        apisix.wait_for(lambda: apisix.processes(b"nginx: privileged agent"))  # forked after the workers
        worker, agent = apisix.processes(b"nginx: worker process"), apisix.processes(b"nginx: privileged agent")
        assert len(worker) == len(agent) == 1, (worker, agent)
        worker_before, agent_before = _cpu_seconds(worker), _cpu_seconds(agent)
        asyncio.run(sink.push(document))
        apisix.wait_for(lambda: get(listener)[0] == 200 and _get_or_none(front) == 200)
        time.sleep(2)  # each VM's poll has seen the push once
        # the worker decoded and checked the document in both VMs; the privileged agent waits for it to settle
        worker_used, agent_used = _cpu_seconds(worker) - worker_before, _cpu_seconds(agent) - agent_before
        assert worker_used > 0.2 and agent_used < worker_used / 4, (worker_used, agent_used)
        time.sleep(AGENT_DELAY + 1)
        agent_loaded = _cpu_seconds(agent) - agent_before - agent_used
        assert agent_loaded > worker_used / 4, (worker_used, agent_loaded)  # then loads it (upstream_status)
        processes = worker | agent
        before = _cpu_seconds(processes)
        time.sleep(3)
        used = _cpu_seconds(processes) - before
        assert used < 0.2, f"idle APISIX used {used:.2f} s CPU in 3 s: the poll decodes the configuration"

        # the route and the stream route go: both subsystems follow
        asyncio.run(sink.push(dict(big, upstreams=big["upstreams"] + [hop], routes=[])))
        apisix.wait_for(lambda: get(listener)[0] == 404 and _get_or_none(front) is None)
        assert not apisix.errors(), apisix.log()


STATS = {"serverless-pre-function": {"phase": "access", "functions": [
    "return function(conf, ctx) local poll = require('amesh.standalone_poll') "
    "local share = ngx.shared[poll.DICT]:get(poll.STREAM_KEY) "
    "require('apisix.core').response.exit(200, {stats = poll.stats, "
    "version = ngx.shared[poll.DICT]:get(poll.VERSION_KEY), share = share}) end"]}}


def test_api_mode_stream_vms_load_their_share_and_the_admin_worker_its_own_table():
    """Each load of the stored JSON costs ~0.6-0.9 s at 10,000 services, and a worker's http and stream VMs share
    its one thread (amesh.standalone_poll). The stream VMs load the stream share the Admin API worker stores
    with each version (all but routes, only the upstreams something else than a route names), and the Admin API
    worker's http VM (the only worker here) loads the table it stored instead of decoding it again. A stream
    route added while the upstreams stay as they were (same conf version) still finds its upstream: the share's
    upstream version moves with the other types'."""
    realapisix.skip_unless_available()
    settings, data_path = realapisix.settings(Mode.API, outbound_http_ports=(9080,))
    internal = internal_ports(data_path)[(Direction.OUTBOUND, 9080)]
    stats_route = {"id": "r-stats", "uri": "/amesh-stats", "priority": 1, "upstream_id": "u-none", "plugins": STATS,
                   "vars": DOCUMENT["routes"][0]["vars"]}
    document = dict(DOCUMENT, routes=DOCUMENT["routes"] + [stats_route],
                    upstreams=DOCUMENT["upstreams"] + [tcp_hop(internal)])
    with_stream = dict(document, stream_routes=[STREAM_ROUTE])
    with realapisix.running(render_yaml(settings, data_path)) as apisix:
        sink = AdminApiSink(apisix.admin_url, settings.admin_key)
        listener, front = apisix.forward(internal), apisix.forward(settings.outbound_port)

        def seen() -> dict:
            status, body = get(listener, "/amesh-stats")
            assert status == 200, (status, body)
            return json.loads(body)

        asyncio.run(sink.push(document))
        apisix.wait_for(lambda: get(listener)[0] == 200)
        assert _get_or_none(front) is None  # no stream route yet
        time.sleep(2)  # the stream VM's poll (once a second) has loaded this version: no upstream in its share
        asyncio.run(sink.push(with_stream))
        status, held, _ = apisix.admin("GET")
        assert status == 200 and (held["upstreams_conf_version"], held["stream_routes_conf_version"]) == (1, 2), held
        apisix.wait_for(lambda: _get_or_none(front) == 200)  # the stream VM found us-internal
        state = seen()
        assert state["stats"] == {"own": 2, "share": 0, "stock": 0}, state
        version, share = state["share"].split("\n", 1)
        assert version == state["version"]
        share = json.loads(share)
        assert "routes" not in share and [u["id"] for u in share["upstreams"]] == ["us-internal"], share
        assert share["stream_routes"][0]["id"] == "s-local"

        asyncio.run(sink.push(document))  # the stream route goes
        apisix.wait_for(lambda: _get_or_none(front) is None)
        state = seen()
        assert state["stats"] == {"own": 3, "share": 0, "stock": 0}, state
        assert "upstreams" not in json.loads(state["share"].split("\n", 1)[1])  # nothing else names one
        assert not apisix.errors(), apisix.log()


def test_api_mode_head_answers_from_the_metadata_without_decoding():
    """The agent asks every few seconds whether APISIX still holds its last push (AdminApiSink.holds_last,
    HEAD). Stock APISIX decodes the whole stored configuration for a HEAD, to read two fields (~0.15 s for
    this 12 MB document, ~0.9 s at 10,000 services, on a worker that serves requests); amesh.standalone_poll
    answers it from the metadata stored with the version: the same headers as a GET, at no cost."""
    realapisix.skip_unless_available()
    settings, data_path = realapisix.settings(Mode.API)
    with realapisix.running(render_yaml(settings, data_path)) as apisix:
        sink = AdminApiSink(apisix.admin_url, settings.admin_key)
        asyncio.run(sink.push(_big_document(12)))
        workers = apisix.processes(b"nginx: worker process")
        time.sleep(2)  # the load of the push is over
        before = _cpu_seconds(workers)
        heads = [apisix.admin("HEAD") for _ in range(5)]
        used = _cpu_seconds(workers) - before
        status, _, got = apisix.admin("GET")
        assert status == 200 and got["X-Digest"] == sink.last.digest
        assert {(s, h.get("X-Digest"), h.get("X-Last-Modified")) for s, _, h in heads} == {
            (200, sink.last.digest, str(got["X-Last-Modified"]))}
        assert used < 0.15, f"5 HEADs took {used:.2f} s of worker CPU: each decoded the configuration"
        asyncio.run(sink.push(dict(_big_document(12), routes=[])))  # HEAD follows the next push
        assert apisix.admin("HEAD")[2].get("X-Digest") == sink.last.digest
        assert asyncio.run(sink.holds_last())
        assert not apisix.errors(), apisix.log()


def test_api_mode_a_worker_started_after_the_pushes_serves_the_current_configuration():
    """A worker that nginx starts again (after a crash) finds the configuration in the dict at start, then its
    VMs follow the hook's version, stream share and metadata like the others: the HTTP route and the stream
    route of the last push both serve from it, and the next push reaches it."""
    realapisix.skip_unless_available()
    settings, data_path = realapisix.settings(Mode.API, outbound_http_ports=(9080,))
    internal = internal_ports(data_path)[(Direction.OUTBOUND, 9080)]
    document = dict(DOCUMENT, upstreams=DOCUMENT["upstreams"] + [tcp_hop(internal)], stream_routes=[STREAM_ROUTE])
    with realapisix.running(render_yaml(settings, data_path)) as apisix:
        sink = AdminApiSink(apisix.admin_url, settings.admin_key)
        listener, front = apisix.forward(internal), apisix.forward(settings.outbound_port)
        asyncio.run(sink.push(dict(document, stream_routes=[])))
        asyncio.run(sink.push(document))
        apisix.wait_for(lambda: get(listener)[0] == 200 and _get_or_none(front) == 200)
        (worker,) = apisix.processes(b"nginx: worker process")
        os.kill(worker, 9)
        apisix.wait_for(lambda: apisix.processes(b"nginx: worker process") - {worker})
        apisix.wait_for(lambda: get(listener)[0] == 200 and _get_or_none(front) == 200)
        assert asyncio.run(sink.holds_last())
        asyncio.run(sink.push(dict(document, stream_routes=[], routes=[])))  # the next push reaches it
        apisix.wait_for(lambda: get(listener)[0] == 404 and _get_or_none(front) is None)
        errors = [line for line in apisix.errors() if "exited on signal 9" not in line]
        assert not errors, apisix.log()
