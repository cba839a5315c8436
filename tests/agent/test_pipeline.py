"""The incremental pipeline, driven sans-IO (AdsSession in, documents out) with the real Translator:
each response recomputes only what changed, a refused response leaves translator and document as
they were, and the partial policy never names a missing upstream."""

from __future__ import annotations

import asyncio

from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2
from prometheus_client import generate_latest

from sidecar_agent.http.metrics import AgentMetrics
from sidecar_agent.pipeline import Pipeline, changes, inconsistencies
from sidecar_agent.sink.pusher import Pusher
from sidecar_agent.store import EMPTY, snapshot_of
from amesh_testing import istiogen
from sidecar_agent.translate import Translator
from sidecar_agent.xds import kinds
from sidecar_agent.xds.protocol import AdsSession

NODE = base_pb2.Node(id="sidecar~10.244.0.10~productpage-v1.default~default.svc.cluster.local")
RATINGS = "outbound|9080|v1|ratings.default.svc.cluster.local"
SHORT = {k.short: k for k in kinds.ORDER}


class Spy(Translator):
    """The real translator, recording which per-resource methods were called."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, str]] = []

    def __getattribute__(self, name):
        value = super().__getattribute__(name)
        if name.startswith(("set_", "remove_")) and not name.startswith("_"):
            calls = super().__getattribute__("calls")

            def recorded(arg, *more):
                calls.append((name, arg if isinstance(arg, str) else getattr(arg, "name", "")
                              or getattr(arg, "cluster_name", "")))
                return value(arg, *more)
            return recorded
        return value


class NullSink:
    async def push(self, document) -> None:
        pass

    async def holds_last(self) -> bool:
        return True


def response(short: str, version: str, resources) -> discovery_pb2.DiscoveryResponse:
    packed = []
    for r in resources:
        a = any_pb2.Any()
        a.Pack(r)
        packed.append(a)
    return discovery_pb2.DiscoveryResponse(type_url=SHORT[short].type_url, version_info=version,
                                           nonce=f"{short}-{version}", resources=packed)


class Driver:
    """One session and pipeline; `send` plays a response through decide → accept/reject → on_accepted."""

    def __init__(self, **options) -> None:
        self.spy = Spy()
        self.pipeline = Pipeline(Pusher(NullSink()), AgentMetrics(), new_translator=lambda: self.spy, **options)
        self.session = AdsSession(NODE)
        self.session.start()

    async def send(self, short: str, version: str, resources) -> str | None:
        pending = self.session.receive(response(short, version, resources))
        error = await self.pipeline.decide(pending)
        if error is None:
            self.session.accept(pending)
            await self.pipeline.on_accepted(self.session.snapshot)
        else:
            self.session.reject(pending, error)
        return error

    async def sync(self, x: istiogen.Xds, version: str = "1") -> None:
        for short, items in (("cds", x.clusters), ("eds", x.endpoints), ("lds", x.listeners),
                             ("rds", x.route_configs)):
            assert await self.send(short, version, items) is None


def fresh_document(snapshot) -> dict:
    """What a brand-new translator makes of `snapshot`: the reference for 'nothing half-applied'."""
    translator = Translator()
    for change in changes(EMPTY, snapshot):
        method = {"cds": "set_cluster", "eds": "set_endpoints", "lds": "set_listener",
                  "rds": "set_route_config"}[change.kind.short]
        getattr(translator, method)(change.after.message(change.kind))
    return translator.document()


def by_id(document: dict, key: str) -> dict:
    return {o["id"]: o for o in document[key]}


def test_route_change_recomputes_only_that_route_configuration():
    async def main():
        d = Driver()
        base = istiogen.bookinfo("all-v1")
        await d.sync(base)
        first = d.pipeline.document
        assert first.complete and not inconsistencies(first.body)
        d.spy.calls.clear()

        # istiod re-sends both route configurations; only "9080" differs.
        changed = {rc.name: rc for rc in istiogen.bookinfo("reviews-jason-v2").route_configs}
        assert changed["15014"] == next(rc for rc in base.route_configs if rc.name == "15014")
        assert await d.send("rds", "2", list(changed.values())) is None
        assert d.spy.calls == [("set_route_config", "9080")]
        second = d.pipeline.document
        assert second.label == "cds=1,eds=1,lds=1,rds=2"
        assert second.body["routes"] != first.body["routes"]
        # Routes of the untouched configuration are the very same objects: nothing was rebuilt.
        old, new = by_id(first.body, "routes"), by_id(second.body, "routes")
        kept = [i for i in new if i in old and old[i]["name"].startswith("15014")]
        assert kept and all(new[i] is old[i] for i in kept)
        assert second.body == fresh_document(d.session.snapshot)

        # The same bytes again (a resend after reconnect): nothing to recompute at all.
        d.spy.calls.clear()
        assert await d.send("rds", "3", list(changed.values())) is None
        assert d.spy.calls == []
        assert d.pipeline.document.label.endswith("rds=3") and d.pipeline.document.body is second.body

    asyncio.run(main())


def test_invalid_update_is_nacked_and_the_previous_document_stands():
    async def main():
        d = Driver()
        base = istiogen.bookinfo("all-v1")
        await d.sync(base)
        good = d.pipeline.document
        good_snapshot = d.session.snapshot

        # Two route configurations change; the second one is invalid (a wildcard inside a domain).
        rcs = {rc.name: rc for rc in istiogen.bookinfo("reviews-jason-v2").route_configs}
        first_valid = type(rcs["15014"])()
        first_valid.CopyFrom(rcs["15014"])
        first_valid.virtual_hosts[0].domains.append("extra.example")
        bad = type(rcs["9080"])()
        bad.CopyFrom(rcs["9080"])
        bad.virtual_hosts[0].domains.append("reviews.*.local")
        error = await d.send("rds", "2", [first_valid, bad])
        assert error is not None and "'2'" in error
        assert d.session.snapshot is good_snapshot and d.pipeline.held is good_snapshot
        assert d.pipeline.document is good  # nothing new submitted
        # The translator is back where it was, not half-updated: its document is the good one.
        assert d.spy.document() == good.body == fresh_document(good_snapshot)

        # A refusal by the document gate rolls back changes across several resources too.
        d.pipeline.check = lambda doc: ["refused for the test"] if any(
            n.get("host") == "10.9.9.9" for u in doc["upstreams"] for n in u.get("nodes", [])) else []
        from tests.agent import mesh

        moved = [mesh.endpoints(e.cluster_name, ("10.9.9.9", 9080)) for e in base.endpoints]
        error = await d.send("eds", "2", moved)
        assert error is not None and "refused for the test" in error
        assert d.spy.document() == good.body

        # The fix arrives: accepted, and it is the new document.
        d.pipeline.check = None
        assert await d.send("rds", "3", list(rcs.values())) is None
        assert d.pipeline.document.label == "cds=1,eds=1,lds=1,rds=3"
        assert d.pipeline.document.body == fresh_document(d.session.snapshot)

    asyncio.run(main())


def test_eds_scale_to_zero_and_back_touches_only_that_cluster():
    async def main():
        d = Driver()
        base = istiogen.bookinfo("all-v1")
        await d.sync(base)
        before = by_id(d.pipeline.document.body, "upstreams")
        d.spy.calls.clear()

        ratings = next(e for e in base.endpoints if e.cluster_name == RATINGS)
        empty = type(ratings)(cluster_name=RATINGS)
        others = [e for e in base.endpoints if e.cluster_name != RATINGS]
        assert await d.send("eds", "2", others + [empty]) is None  # state of the world: all names
        assert d.spy.calls == [("set_endpoints", RATINGS)]
        zero = by_id(d.pipeline.document.body, "upstreams")
        emptied = [i for i in zero if zero[i] is not before[i]]
        assert emptied and all(not zero[i].get("nodes") for i in emptied)
        assert all(RATINGS in zero[i].get("name", "") + str(zero[i].get("desc", "")) or
                   RATINGS in str(zero[i]) for i in emptied)
        assert not inconsistencies(d.pipeline.document.body)  # routes still resolve (503, not 404)

        assert await d.send("eds", "3", list(base.endpoints)) is None
        back = by_id(d.pipeline.document.body, "upstreams")
        assert back == before
        assert all(back[i] is before[i] for i in back if i not in emptied)

    asyncio.run(main())


def test_partial_policy_document_never_names_a_missing_upstream():
    async def main():
        d = Driver(partial_timeout=0.05)
        x = istiogen.bookinfo("all-v1")
        assert await d.send("cds", "1", x.clusters) is None
        assert await d.send("lds", "1", x.listeners) is None
        assert d.pipeline.document is None  # incomplete: nothing yet
        deadline = asyncio.get_running_loop().time() + 5
        while d.pipeline.document is None and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        partial = d.pipeline.document
        assert partial is not None and not partial.complete and partial.label.startswith("partial:")
        assert partial.body["upstreams"] and not inconsistencies(partial.body)
        # No EDS yet: no hosts — except the data path's own hops to APISIX's internal listeners.
        assert all(not u.get("nodes") for u in partial.body["upstreams"]
                   if "amesh.internal" not in u.get("labels", {}))
        await d.send("eds", "1", x.endpoints)
        await d.send("rds", "1", x.route_configs)
        assert d.pipeline.document.complete and d.pipeline.document.body["routes"]

    asyncio.run(main())


def test_changes_diff_by_name_and_bytes():
    a1 = istiogen.bookinfo("all-v1")
    held = snapshot_of({kinds.RDS: a1.route_configs, kinds.LDS: a1.listeners})
    same = snapshot_of({kinds.RDS: a1.route_configs, kinds.LDS: a1.listeners}, version="2")
    assert changes(held, same) == []  # different objects, same bytes
    v2 = istiogen.bookinfo("reviews-jason-v2")
    target = snapshot_of({kinds.RDS: [rc for rc in v2.route_configs if rc.name == "9080"],
                          kinds.LDS: a1.listeners})
    found = [(c.kind.short, c.name, c.before is not None, c.after is not None) for c in changes(held, target)]
    assert found == [("rds", "9080", True, True), ("rds", "15014", True, False)]


def test_inconsistencies_name_duplicates_and_dangling_upstreams():
    document = {
        "upstreams": [{"id": "u1"}, {"id": "u1"}],
        "routes": [{"id": "r1", "upstream_id": "u1"}, {"id": "r2", "upstream_id": "u9"},
                   {"id": "r3", "plugins": {"traffic-split": {"rules": [
                       {"weighted_upstreams": [{"upstream_id": "u8", "weight": 1}, {"weight": 1}]}]}}}],
    }
    assert inconsistencies(document) == [
        "upstreams/u1: duplicate id",
        "routes/r2: upstream 'u9' does not exist",
        "routes/r3: upstream 'u8' does not exist",
    ]


def test_unsupported_fields_gauge_is_refreshed_off_the_push_path():
    async def main():
        d = Driver(report_delay=0.02)
        await d.sync(istiogen.bookinfo("all-v1"))
        gauge = d.pipeline.metrics.unsupported
        assert d.pipeline.document is not None and gauge.total() == 0  # pushed first, counted later
        want = sum(d.spy.report().by_field().values())
        deadline = asyncio.get_running_loop().time() + 5
        while gauge.total() != want and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        assert want > 0 and gauge.total() == want
        # labelled by kind, field and effect: what is missing, not only how much
        (kind, field), count = next(iter(d.spy.report().by_field().items()))
        assert gauge.get(kind, field, "ignored") == count
        page = generate_latest(d.pipeline.metrics.registry).decode()
        assert f'amesh_translation_unsupported_fields{{effect="ignored",field="{field}",kind="{kind}"}} {count}.0' \
            in page

    asyncio.run(main())


def test_gate_rechecks_only_new_routes_until_an_upstream_goes_away():
    from sidecar_agent.pipeline import Gate

    gate = Gate()
    u1, u2 = {"id": "u1"}, {"id": "u2"}
    r1, r2 = {"id": "r1", "upstream_id": "u1"}, {"id": "r2", "upstream_id": "u2"}
    assert gate({"upstreams": [u1, u2], "routes": [r1, r2]}) == []
    # A new route naming a missing upstream is caught; the document is refused and nothing is remembered.
    r3 = {"id": "r3", "upstream_id": "u9"}
    assert gate({"upstreams": [u1, u2], "routes": [r1, r2, r3]}) == ["routes/r3: upstream 'u9' does not exist"]
    # An upstream removed under an unchanged route is caught too (everything is looked at again).
    assert gate({"upstreams": [u1], "routes": [r1, r2]}) == ["routes/r2: upstream 'u2' does not exist"]
    assert gate({"upstreams": [u1, u1], "routes": [r1]}) == ["upstreams/u1: duplicate id"]
    assert gate({"upstreams": [u1], "routes": [r1]}) == []


def test_gate_finds_in_place_changes_by_position():
    from sidecar_agent.pipeline import Gate

    gate = Gate()
    u1, u2, u3 = {"id": "u1"}, {"id": "u2"}, {"id": "u3"}
    r1, r2 = {"id": "r1", "upstream_id": "u1"}, {"id": "r2", "upstream_id": "u2"}
    assert gate({"upstreams": [u1, u2], "routes": [r1, r2]}) == []
    # same length, one position holding another upstream: the route naming the one gone is caught
    assert gate({"upstreams": [u1, u3], "routes": [r1, r2]}) == ["routes/r2: upstream 'u2' does not exist"]
    # the very object held at another position, or a new one with a held id: duplicates
    gone = "routes/r2: upstream 'u2' does not exist"
    assert gate({"upstreams": [u1, u1], "routes": [r1, r2]}) == ["upstreams/u1: duplicate id", gone]
    assert gate({"upstreams": [u1, {"id": "u1"}], "routes": [r1, r2]}) == ["upstreams/u1: duplicate id", gone]
    assert gate({"upstreams": [u1, u2], "routes": [r1, r1]}) == ["routes/r1: duplicate id"]
    # two positions swapped: accepted; what is held afterwards is still checked right
    assert gate({"upstreams": [u2, u1], "routes": [r2, r1]}) == []
    assert gate({"upstreams": [u2, u3], "routes": [r2, r1]}) == ["routes/r1: upstream 'u1' does not exist"]
    assert gate({"upstreams": [u2, u3], "routes": [r2, {"id": "r1", "upstream_id": "u3"}]}) == []


def test_gate_agrees_with_the_whole_check_over_random_edits():
    """Whatever the edits (in place, moved, added, removed, duplicated), the gate refuses exactly the
    documents the whole-document check finds a problem in."""
    import random

    from sidecar_agent.pipeline import Gate

    rng = random.Random(12)
    gate = Gate()
    upstreams = [{"id": f"u{i}"} for i in range(30)]
    routes = [{"id": f"r{i}", "upstream_id": f"u{i}"} for i in range(30)]
    assert gate({"upstreams": upstreams, "routes": routes}) == []
    refused = accepted = 0
    for _ in range(600):
        ups, rts = list(upstreams), list(routes)  # candidates start from the last accepted lists
        for _ in range(rng.choice((1, 1, 2, 3))):
            target, pool = rng.choice(((ups, "u"), (rts, "r")))
            i = rng.randrange(len(target))
            edit = rng.choice(("replace", "swap", "insert", "delete", "copy", "same-id"))
            if edit == "replace" and pool == "u":
                target[i] = {"id": f"u{rng.randrange(40)}"}
            elif edit == "replace":
                target[i] = {"id": f"r{rng.randrange(40)}", "upstream_id": f"u{rng.randrange(40)}"}
            elif edit == "swap":
                j = rng.randrange(len(target))
                target[i], target[j] = target[j], target[i]
            elif edit == "insert":
                target.insert(i, dict(target[rng.randrange(len(target))], id=f"{pool}{rng.randrange(40, 45)}"))
            elif edit == "delete" and len(target) > 2:
                del target[i]
            elif edit == "copy":
                target[i] = target[rng.randrange(len(target))]
            elif edit == "same-id":
                target[i] = dict(target[i])
        document = {"upstreams": ups, "routes": rts}
        problems = gate(document)
        assert bool(problems) == bool(inconsistencies(document)), (problems, inconsistencies(document))
        if problems:
            refused += 1
        else:
            accepted += 1
            upstreams, routes = ups, rts
    assert refused > 50 and accepted > 50  # both verdicts exercised
