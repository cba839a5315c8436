"""The admin-API sink against APISIX's PUT contract (the stand-in and a real APISIX: `apisix_admin`),
and the file sink for real."""

from __future__ import annotations

import asyncio
import json
import os
import time

import pytest
import yaml

from sidecar_agent.sink import admin_api, file as file_sink
from sidecar_agent.sink.admin_api import AdminApiSink
from sidecar_agent.sink.base import PushError
from sidecar_agent.sink.file import FileSink
from sidecar_agent.sink.pusher import Document, Pusher
from amesh_common.backoff import Backoff
from tests.agent.fake_apisix import FakeApisix
from tests.agent.waiting import eventually

KEY = "k-3f9a"


def doc(port: int = 9080, host: str = "reviews") -> dict:
    return {
        "routes": [{"id": f"r-{host}", "uri": "/*", "hosts": [host], "upstream_id": f"u-{host}"}],
        "upstreams": [{"id": f"u-{host}", "type": "roundrobin", "nodes": [{"host": "10.0.0.1", "port": port, "weight": 1}]}],
    }


def test_encode_bumps_only_changed_types_and_starts_above_held_versions():
    first = admin_api.encode(doc(), None, floor={"routes": 7})
    assert dict(first.versions) == {"routes": 8, "upstreams": 1}
    body = json.loads(first.body)
    assert body["routes_conf_version"] == 8 and body["upstreams_conf_version"] == 1
    same = admin_api.encode(doc(), first)
    assert same.body == first.body and same.digest == first.digest
    moved = admin_api.encode(doc(port=9081), first)
    assert dict(moved.versions) == {"routes": 8, "upstreams": 2}
    cleared = admin_api.encode({"upstreams": doc(port=9081)["upstreams"]}, moved)
    assert dict(cleared.versions) == {"routes": 9, "upstreams": 2}
    assert "routes" not in json.loads(cleared.body)
    # a type left out still carries its version, or APISIX bumps it on its own and runs ahead of ours
    assert json.loads(cleared.body)["routes_conf_version"] == 9
    with pytest.raises(ValueError, match="conf versions"):
        admin_api.encode({"routes_conf_version": 3}, None)


def test_encoded_body_is_the_canonical_json_and_only_digests_are_kept():
    document = {"upstreams": doc()["upstreams"], "routes": doc()["routes"], "ssls": []}
    encoded = admin_api.encode(document, None)
    payload = dict(document, routes_conf_version=1, upstreams_conf_version=1, ssls_conf_version=1)
    assert encoded.body == json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    import hashlib

    assert encoded.digest == hashlib.sha256(encoded.body).hexdigest()
    # What the sink keeps after a push: digests, never the body or the sections' text.
    assert all(len(v) == 64 for v in encoded.sent.sections.values())
    assert admin_api.encode(document, encoded.sent).body == encoded.body


def test_admin_api_sink_follows_the_put_contract(apisix_admin):
    async def main():
        apisix = apisix_admin
        sink = AdminApiSink(apisix.url, apisix.api_key)
        await sink.push(doc())
        await sink.push(doc())  # same digest: 204, nothing changes
        await sink.push(doc(port=9090))
        assert apisix.answers == [202, 204, 202]
        assert apisix.config["upstreams"][0]["nodes"][0]["port"] == 9090
        assert apisix.versions["upstreams"] == 2 and apisix.versions["routes"] == 1
        assert isinstance(sink.last, admin_api.Sent)  # no body held between pushes
        assert await sink.holds_last()
        apisix.restart()
        assert not await sink.holds_last()
        await sink.push(doc(port=9090))
        assert await sink.holds_last()

        wrong = AdminApiSink(apisix.url, "not-the-key")
        with pytest.raises(PushError, match="401"):
            await wrong.push(doc())
        invalid = {"routes": [{"id": "a", "uri": "/", "upstream_id": "u"}, {"id": "a", "uri": "/x", "upstream_id": "u"}]}
        with pytest.raises(PushError, match="duplicate id"):
            await sink.push(invalid)
        assert apisix.config["upstreams"][0]["nodes"][0]["port"] == 9090  # unchanged

    asyncio.run(main())


def test_admin_api_sink_asks_with_head_whether_apisix_holds_its_push():
    """A GET makes APISIX decode, encode and send the whole configuration: holds_last asks with HEAD, whose
    X-Digest suffices, and GETs only when HEAD has none."""
    async def main():
        with FakeApisix(KEY) as apisix:
            sink = AdminApiSink(apisix.url, KEY)
            await sink.push(doc())
            gets = apisix.gets
            assert await sink.holds_last() and (apisix.heads, apisix.gets) == (1, gets)
            apisix.restart()
            assert not await sink.holds_last() and (apisix.heads, apisix.gets) == (2, gets + 1)

    asyncio.run(main())


def test_admin_api_sink_without_digest_echo_falls_back_to_versions():
    # fake only: the real 3.18 always echoes X-Digest; some builds do not
    async def main():
        with FakeApisix(KEY) as apisix:
            sink = AdminApiSink(apisix.url, KEY)
            await sink.push(doc())
            apisix.restart()
            apisix.echo_digest = False
            assert not await sink.holds_last()
            await sink.push(doc())
            assert await sink.holds_last()

    asyncio.run(main())


def test_admin_api_sink_resyncs_versions_held_by_a_longer_lived_apisix(apisix_admin):
    async def main():
        apisix = apisix_admin
        await AdminApiSink(apisix.url, apisix.api_key).push(doc())
        await AdminApiSink(apisix.url, apisix.api_key).push(doc(port=1))
        # A fresh agent (no memory of versions) pushes to the same APISIX: it must go above them.
        await AdminApiSink(apisix.url, apisix.api_key).push(doc(port=2))
        assert apisix.answers == [202, 202, 202]
        assert apisix.versions["upstreams"] == 3
        assert apisix.config["upstreams"][0]["nodes"][0]["port"] == 2

    asyncio.run(main())


STREAM_ROUTES = [{"id": "s-echo", "server_port": 9000, "upstream_id": "u-reviews"}]


def test_a_type_that_appears_later_is_applied(apisix_admin):
    """APISIX gives every type the body leaves out its held version + 1 (cleared): a type the agent
    sends for the first time in a later push must go above that, or "equal keeps it" drops it."""
    async def main():
        apisix = apisix_admin
        sink = AdminApiSink(apisix.url, apisix.api_key)
        await sink.push(doc())
        with_stream = dict(doc(), stream_routes=STREAM_ROUTES)
        await sink.push(with_stream)
        assert apisix.config.get("stream_routes") == STREAM_ROUTES
        # gone, and back after more pushes without it: still applied
        await sink.push(doc())
        await sink.push(doc(port=1))
        await sink.push(doc(port=2))
        assert "stream_routes" not in apisix.config
        await sink.push(dict(doc(port=2), stream_routes=STREAM_ROUTES))
        assert apisix.config.get("stream_routes") == STREAM_ROUTES
        assert apisix.answers.count(202) == 6

    asyncio.run(main())


def test_pusher_coalesces_bursts_retries_and_repushes_after_restart(apisix_admin):
    async def main():
        apisix = apisix_admin
        pusher = Pusher(AdminApiSink(apisix.url, apisix.api_key), backoff=Backoff(initial=0.01, maximum=0.05),
                        recheck_seconds=0.05)
        task = asyncio.create_task(pusher.run())
        try:
            for i in range(50):
                pusher.submit(Document(doc(port=1000 + i), label=f"v{i}"))
            await pusher.wait_live("v49", timeout=10)
            assert apisix.config["upstreams"][0]["nodes"][0]["port"] == 1049
            assert len(apisix.accepted) < 10  # a burst of 50 became a handful of PUTs
            before = len(apisix.accepted)
            apisix.restart()
            await eventually(lambda: apisix.config, what="re-push after restart")
            assert apisix.config["upstreams"][0]["nodes"][0]["port"] == 1049
            assert len(apisix.accepted) == before + 1
        finally:
            task.cancel()

    asyncio.run(main())


def test_pusher_retries_while_apisix_answers_503():
    # fake only: a real APISIX cannot be made to answer 503 to the next N PUTs
    async def main():
        with FakeApisix(KEY) as apisix:
            pusher = Pusher(AdminApiSink(apisix.url, KEY), backoff=Backoff(initial=0.01, maximum=0.05),
                            recheck_seconds=0.05)
            apisix.fail_next = 2
            task = asyncio.create_task(pusher.run())
            try:
                pusher.submit(Document(doc(port=1000), label="v0"))
                await pusher.wait_live("v0", timeout=10)
                assert apisix.answers == [503, 503, 202]
                assert apisix.config["upstreams"][0]["nodes"][0]["port"] == 1000
            finally:
                task.cancel()

    asyncio.run(main())


def test_pusher_relabels_a_resent_document_without_pushing_it_again():
    class Counting:
        def __init__(self):
            self.bodies = []

        async def push(self, document):
            self.bodies.append(document)

        async def holds_last(self):
            return True

    async def main():
        sink = Counting()
        pusher = Pusher(sink, recheck_seconds=0.05)
        task = asyncio.create_task(pusher.run())
        try:
            body = doc()
            pusher.submit(Document(body, label="v1"))
            await pusher.wait_live("v1", timeout=5)
            pusher.submit(Document(body, label="v2"))  # istiod resent the same resources
            await pusher.wait_live("v2", timeout=5)
            assert sink.bodies == [body]
            pusher.submit(Document(doc(port=1), label="v3"))  # new content: pushed
            await pusher.wait_live("v3", timeout=5)
            pusher.resend()  # APISIX restarted: the live body is pushed again, same object or not
            await eventually(lambda: len(sink.bodies) == 3, what="re-push")
            assert sink.bodies[2] is sink.bodies[1] and pusher.pushes == 3
        finally:
            task.cancel()

    asyncio.run(main())


def test_file_sink_writes_atomically_with_end_marker(tmp_path):
    async def main():
        path = tmp_path / "apisix.yaml"
        sink = FileSink(path)
        await sink.push(doc())
        text = path.read_text()
        assert text.endswith("\n#END\n")
        assert yaml.safe_load(text) == doc()
        assert [p.name for p in tmp_path.iterdir()] == ["apisix.yaml"]  # no temp file left
        assert oct(path.stat().st_mode & 0o777) == "0o600"  # secrets (TLS keys, plugin credentials): the agent's UID only

    asyncio.run(main())


def test_file_sink_two_writes_in_the_same_second_land_in_different_seconds(tmp_path):
    async def main():
        path = tmp_path / "apisix.yaml"
        sink = FileSink(path)
        # Start just after a second boundary so both writes would naturally share it.
        await eventually(lambda: time.time_ns() % 1_000_000_000 < 200_000_000, timeout=2)
        await sink.push(doc(port=1))
        first = os.stat(path)
        await sink.push(doc(port=2))
        second = os.stat(path)
        assert int(second.st_mtime) > int(first.st_mtime)
        assert int(second.st_ctime) > int(first.st_ctime)  # what APISIX actually polls
        assert yaml.safe_load(path.read_text())["upstreams"][0]["nodes"][0]["port"] == 2
        path.unlink()
        assert not await sink.holds_last()

    asyncio.run(main())


def test_wait_before_write():
    s = 1_000_000_000
    assert file_sink.wait_before_write(None, 5 * s) == 0
    assert file_sink.wait_before_write(5 * s + 100, 6 * s) == 0
    assert file_sink.wait_before_write(5 * s + 100, 5 * s + s // 4) == pytest.approx(0.75)
