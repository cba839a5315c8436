"""The fast paths give the same answers as the plain ones.

- `Translator.document()` patches its assembled lists after a change (or assembles anew after many):
  after every single-resource change, as the agent applies them, it must equal a fresh `translate()`
  of the same resources, byte for byte, and never alter a document it returned before.
- `Coverage.unhandled` checks fields one by one instead of walking `ListFields()`; `match.escape`
  replaces `re.escape`; both must agree with what they replace on real and edge-case input.
"""

from __future__ import annotations

import gc
import random
import re

import pytest
import yaml

from sidecar_agent.configdump import XdsResources, load_config_dump
from amesh_testing import istiogen
from sidecar_agent.translate import Translator, document, report, translate
from sidecar_agent.translate.match import escape
from sidecar_agent.translate.render import to_json, to_yaml
from sidecar_agent.translate.route import translate_route_config

from .conftest import fixture

KINDS = ("clusters", "endpoints", "listeners", "route_configs")
SETTERS = {"clusters": ("set_cluster", "remove_cluster"), "endpoints": ("set_endpoints", "remove_endpoints"),
           "listeners": ("set_listener", "remove_listener"),
           "route_configs": ("set_route_config", "remove_route_config")}
# Bookinfo variants one after another: faults, retries, mirrors, hash policies, subsets come and go.
SEQUENCE = ["default", "all-v1", "reviews-jason-v2", "ratings-delay-jason", "reviews-mirror", "lb-policies",
            "reviews-matches", "ratings-retries", "all-v1", "default"]


def resources_of(xds: istiogen.Xds) -> dict[str, dict]:
    return {"listeners": {m.name: m for m in xds.listeners}, "route_configs": {m.name: m for m in xds.route_configs},
            "clusters": {m.name: m for m in xds.clusters}, "endpoints": {m.cluster_name: m for m in xds.endpoints}}


def full(state: dict[str, dict]) -> str:
    return to_json(translate(XdsResources(**state)).document)


def changes(old: dict[str, dict], new: dict[str, dict]):
    """(kind, name, message or None) turning `old` into `new`, in ADS order, like the agent's diff."""
    for kind in KINDS:
        for name, message in new[kind].items():
            if old[kind].get(name) != message:
                yield kind, name, message
        for name in old[kind].keys() - new[kind].keys():
            yield kind, name, None


def apply(translator: Translator, kind: str, name: str, message) -> None:
    setter, remover = SETTERS[kind]
    if message is None:
        getattr(translator, remover)(name)
    elif kind == "route_configs":  # with the bytes it came in, as the agent's pipeline hands them
        translator.set_route_config(message, message.SerializeToString())
    else:
        getattr(translator, setter)(message)


def moved_endpoints(state: dict[str, dict], count: int) -> dict[str, dict]:
    """`state` with the first endpoint of `count` assignments at a new address."""
    out = {k: dict(v) for k, v in state.items()}
    for i, name in enumerate(sorted(out["endpoints"])[:count]):
        cla = type(out["endpoints"][name])()
        cla.CopyFrom(out["endpoints"][name])
        if cla.endpoints and cla.endpoints[0].lb_endpoints:
            cla.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address = f"10.99.0.{i + 1}"
        out["endpoints"][name] = cla
    return out


def without(state: dict[str, dict], kind: str, name: str) -> dict[str, dict]:
    out = {k: dict(v) for k, v in state.items()}
    del out[kind][name]
    return out


@pytest.fixture(params=["patched", "assembled-anew"])
def assembly(request, monkeypatch):
    """Run each test with document() patching every change, and with it always assembling anew."""
    limit = (lambda size: 1 << 30) if request.param == "patched" else (lambda size: -1)
    monkeypatch.setattr(document, "_patch_limit", limit)
    return request.param


def test_every_change_gives_the_full_translation(assembly):
    state = resources_of(istiogen.bookinfo(SEQUENCE[0]))
    translator = Translator().load(XdsResources(**state))
    returned = [(translator.document(), full(state))]
    steps = 0
    for name in SEQUENCE[1:]:
        target = resources_of(istiogen.bookinfo(name))
        for kind, resource, message in changes(state, target):
            apply(translator, kind, resource, message)
            state = {k: dict(v) for k, v in state.items()}
            if message is None:
                del state[kind][resource]
            else:
                state[kind][resource] = message
            expected = full(state)
            doc = translator.document()
            assert to_json(doc) == expected, f"after {kind} {resource} on the way to {name}"
            returned.append((doc, expected))
            steps += 1
    assert steps > 20  # the sequence really changes routes, clusters and endpoints one at a time
    for doc, text in returned:  # later changes never reach into a document handed out earlier
        assert to_json(doc) == text


def test_missing_and_returning_resources(assembly):
    state = resources_of(istiogen.bookinfo("reviews-jason-v2"))
    translator = Translator().load(XdsResources(**state))
    cluster = next(n for n in state["clusters"] if "|v2|reviews" in n)
    steps = [("clusters", cluster, None), ("endpoints", cluster, None),
             ("clusters", cluster, state["clusters"][cluster]), ("endpoints", cluster, state["endpoints"][cluster]),
             ("listeners", "virtualOutbound", None),
             ("listeners", "virtualOutbound", state["listeners"]["virtualOutbound"]),
             ("route_configs", "9080", None), ("route_configs", "9080", state["route_configs"]["9080"])]
    current = state
    for kind, name, message in steps:
        apply(translator, kind, name, message)
        current = without(current, kind, name) if message is None else {
            **current, kind: {**current[kind], name: message}}
        what = "removed" if message is None else "set"
        assert to_json(translator.document()) == full(current), f"{kind} {name} {what}"
    assert to_json(translator.document()) == full(state)


def _mirror_variant(rc, name: str | None = None, mirror_to: str | None = "keep"):
    """A copy of route configuration `rc` (renamed to `name`), its mirrors sent to `mirror_to`
    (None: removed)."""
    out = type(rc)()
    out.CopyFrom(rc)
    if name:
        out.name = name
    for vhost in out.virtual_hosts:
        for route in vhost.routes:
            for policy in list(route.route.request_mirror_policies):
                if mirror_to is None:
                    del route.route.request_mirror_policies[:]
                    break
                if mirror_to != "keep":
                    policy.cluster = mirror_to
    return out


def _mirror_routes(doc: dict) -> list[str]:
    return sorted(r["name"] for r in doc["routes"] if r["name"].startswith("mirror/"))


def test_mirror_routes_follow_route_and_cluster_changes(assembly):
    """One mirror-listener route per mirrored upstream, counted over route configurations: it comes
    and goes with the mirrors (not with the clusters), and incremental equals full at every step."""
    state = resources_of(istiogen.bookinfo("reviews-mirror"))
    translator = Translator().load(XdsResources(**state))
    v2 = next(n for n in state["clusters"] if n.startswith("outbound|9080|v2|reviews"))
    v3 = next(n for n in state["clusters"] if n.startswith("outbound|9080|v3|reviews"))
    assert _mirror_routes(translator.document()) == ["mirror/404", f"mirror/{v2}"]
    rc = state["route_configs"]["9080"]
    steps = [("route_configs", "9080", _mirror_variant(rc, mirror_to=v3), [v3]),
             ("route_configs", "9081", _mirror_variant(rc, "9081"), [v2, v3]),
             ("clusters", v3, None, [v2, v3]),  # the mirrored cluster goes: its upstream stays, no nodes
             ("endpoints", v3, None, [v2, v3]),
             ("route_configs", "9080", rc, [v2]),  # now mirrored by two route configurations
             ("route_configs", "9081", None, [v2]),  # one of them goes: the route stays
             ("route_configs", "9080", _mirror_variant(rc, mirror_to=None), []),
             ("route_configs", "9080", rc, [v2])]
    current = state
    for kind, name, message, mirrored in steps:
        apply(translator, kind, name, message)
        current = without(current, kind, name) if message is None else {
            **current, kind: {**current[kind], name: message}}
        doc = translator.document()
        what = "removed" if message is None else "set"
        assert to_json(doc) == full(current), f"{kind} {name} {what}"
        assert _mirror_routes(doc) == (["mirror/404"] + [f"mirror/{c}" for c in sorted(mirrored)]
                                       if mirrored else []), f"{kind} {name} {what}"
        by_name = {r["name"]: r for r in doc["routes"]}
        for cluster in mirrored:
            route = by_name[f"mirror/{cluster}"]
            assert any(u["id"] == route["upstream_id"] for u in doc["upstreams"])
            assert any(r.get("plugins", {}).get("proxy-mirror", {}).get("path") == route["uris"][0][:-2]
                       for r in doc["routes"])
        kept = by_name.get(f"mirror/{v2}")
    # an endpoint change or another route configuration leaves the mirror routes alone: the same objects
    translator.set_endpoints(moved_endpoints(current, 1)["endpoints"][sorted(current["endpoints"])[0]])
    translator.set_route_config(state["route_configs"]["8080"] if "8080" in state["route_configs"]
                                else _mirror_variant(rc, "9082", mirror_to=None))
    assert kept is not None
    assert next(r for r in translator.document()["routes"] if r["name"] == f"mirror/{v2}") is kept


def test_mirror_port_comes_from_the_data_path_settings():
    from sidecar_agent.apisix import datapath

    state = resources_of(istiogen.bookinfo("reviews-mirror"))
    moved = Translator(data_path=datapath.DataPathSettings(mirror_port=14999)).load(XdsResources(**state))
    hosts = {r["plugins"]["proxy-mirror"]["host"] for r in moved.document()["routes"]
             if "proxy-mirror" in r.get("plugins", {})}
    assert hosts == {"http://127.0.0.1:14999"}
    assert moved.data_path_settings.mirror_port == 14999
    # the default Translator points at the default listener
    assert "http://127.0.0.1:15099" in full(state)


def test_many_endpoint_changes_at_once(assembly):
    state = resources_of(istiogen.synthetic_mesh(40))
    translator = Translator().load(XdsResources(**state))
    before = translator.document()
    moved = moved_endpoints(state, len(state["endpoints"]))
    touched = translator.replace_endpoints(moved["endpoints"])
    assert to_json(translator.document()) == full(moved)
    # every upstream of the document that reads an endpoint set (the routes' variants), and no other
    assert touched == {u["id"] for u in translator.document()["upstreams"] if u["name"].startswith("outbound|")}
    assert len(touched) == len(moved["endpoints"])  # per service: v1's split, v2's canary and split
    assert to_json(before) == full(state)


def test_one_endpoint_change_rebuilds_only_its_upstreams(assembly):
    state = resources_of(istiogen.synthetic_mesh(40))
    translator = Translator().load(XdsResources(**state))
    before = translator.document()
    moved = moved_endpoints(state, 1)
    name = sorted(state["endpoints"])[0]
    touched = translator.set_endpoints(moved["endpoints"][name])
    after = translator.document()
    assert to_json(after) == full(moved)
    rebuilt = {u["id"] for u, old in zip(after["upstreams"], before["upstreams"]) if u is not old}
    assert rebuilt == touched and touched == {u["id"] for u in after["upstreams"]
                                              if u["name"].split(" [")[0] == moved["endpoints"][name].cluster_name}
    assert touched
    assert all(r is old for r, old in zip(after["routes"], before["routes"]))


def test_a_duplicate_route_id_still_fails_at_assembly(assembly):
    rc = istiogen.bookinfo("default").route_configs[0]
    translator = Translator()
    translator.set_route_config(rc)
    translator.document()
    # The same route ids again, inline, with other content (a stale object would show after removal).
    inline = type(rc)()
    inline.CopyFrom(rc)
    for vhost in inline.virtual_hosts:
        for route in vhost.routes:
            route.route.timeout.FromSeconds(3)
    translator.set_listener(_listener_with_inline(inline))
    with pytest.raises(Exception, match="route id"):
        translator.document()
    translator.remove_listener("dup")
    assert to_json(translator.document()) == to_json(Translator().load(
        XdsResources(route_configs={rc.name: rc})).document())


def _listener_with_inline(rc):
    from envoy.config.listener.v3 import listener_pb2
    from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

    hcm = hcm_pb2.HttpConnectionManager(stat_prefix="dup")
    hcm.route_config.CopyFrom(rc)
    listener = listener_pb2.Listener(name="dup")
    network_filter = listener.filter_chains.add().filters.add()
    network_filter.name = "envoy.filters.network.http_connection_manager"
    network_filter.typed_config.Pack(hcm)
    return listener


def test_bulk_loads_restore_the_garbage_collector():
    resources = XdsResources(**resources_of(istiogen.bookinfo("default")))
    assert gc.isenabled()
    translate(resources)
    assert gc.isenabled()
    gc.disable()
    try:
        translate(resources)
        assert not gc.isenabled()  # a caller that turned it off keeps it off
    finally:
        gc.enable()


def test_yaml_writes_shared_objects_in_full():
    doc = translate(XdsResources(**resources_of(istiogen.synthetic_mesh(3)))).document
    text = to_yaml(doc)
    assert not re.search(r"[&*]id\d+", text)
    assert yaml.safe_load(text[: -len("#END\n")]) == doc


# --- route configurations: unchanged virtual hosts are reused -------------------------------------


def _route_set_text(rs) -> str:
    return to_json({"routes": list(rs.routes), "refs": sorted(r.id for r in rs.refs),
                    "report": [list(map(str, (e.kind, e.resource, e.field, e.count))) for e in rs.report]})


def _edited(rc, edit):
    out = type(rc)()
    out.CopyFrom(rc)
    edit(out)
    return out


EDITS = {
    "one route's timeout": lambda rc: rc.virtual_hosts[3].routes[-1].route.timeout.FromSeconds(9),
    "one header match": lambda rc: setattr(rc.virtual_hosts[1].routes[0].match.headers[0].string_match, "exact", "x"),
    "a virtual host removed": lambda rc: rc.virtual_hosts.pop(2),
    "a virtual host added": lambda rc: rc.virtual_hosts.add().CopyFrom(_renamed(rc.virtual_hosts[0])),
    "ports in host matching ignored": lambda rc: setattr(rc, "ignore_port_in_host_matching", True),
    "a request header on the route configuration": lambda rc: rc.request_headers_to_remove.append("x-debug"),
    "renamed": lambda rc: setattr(rc, "name", "9081"),
}


def _renamed(vhost):
    out = type(vhost)()
    out.CopyFrom(vhost)
    out.name = "extra"
    del out.domains[:]
    out.domains.append("extra.example")
    return out


@pytest.mark.parametrize("edit", EDITS)
def test_reused_virtual_hosts_give_the_fresh_translation(edit):
    rc = istiogen.synthetic_mesh(6).route_configs[0]
    before = translate_route_config(rc)
    changed = _edited(rc, EDITS[edit])
    reused = translate_route_config(changed, before)
    assert _route_set_text(reused) == _route_set_text(translate_route_config(changed))
    # in the same order too (a few changed virtual hosts patch the previous sorted routes)
    assert [r["id"] for r in reused.routes] == [r["id"] for r in translate_route_config(changed).routes]
    shared = {id(r) for r in before.routes} & {id(r) for r in reused.routes}
    if edit in ("ports in host matching ignored", "a request header on the route configuration", "renamed"):
        assert not shared  # the context every virtual host reads changed: nothing is reused
    else:
        assert len(shared) >= len(before.routes) - 3 * 2  # all but the edited virtual host's routes


@pytest.mark.parametrize("new_first", [False, True])
def test_a_new_virtual_host_taking_a_reused_ones_domain_is_refused(new_first):
    """Reused virtual hosts are checked on their stored domains: a duplicate is still named, whichever
    of the two (the reused or the new one) comes first."""
    from sidecar_agent.translate import TranslationError

    rc = istiogen.synthetic_mesh(6).route_configs[0]
    before = translate_route_config(rc)
    taken = rc.virtual_hosts[2].domains[0]

    def edit(out):
        extra = _renamed(out.virtual_hosts[0])
        extra.domains.append(taken.upper())  # domains compare case-insensitively
        if new_first:
            out.virtual_hosts.insert(0, extra)
        else:
            out.virtual_hosts.add().CopyFrom(extra)

    changed = _edited(rc, edit)
    with pytest.raises(TranslationError) as fresh:
        translate_route_config(changed)
    with pytest.raises(TranslationError) as reused:
        translate_route_config(changed, before)
    assert str(reused.value) == str(fresh.value)
    assert "'extra'" in str(reused.value) and repr(rc.virtual_hosts[2].name) in str(reused.value)


def test_a_changed_virtual_host_listing_a_domain_twice_is_refused():
    from sidecar_agent.translate import TranslationError

    rc = istiogen.synthetic_mesh(6).route_configs[0]
    before = translate_route_config(rc)
    changed = _edited(rc, lambda out: out.virtual_hosts[3].domains.append(out.virtual_hosts[3].domains[0].upper()))
    with pytest.raises(TranslationError) as fresh:
        translate_route_config(changed)
    with pytest.raises(TranslationError) as reused:
        translate_route_config(changed, before)
    assert str(reused.value) == str(fresh.value)


def test_reuse_across_bookinfo_variants():
    previous = None
    for name in SEQUENCE:
        for rc in istiogen.bookinfo(name).route_configs:
            old = previous.get(rc.name) if previous else None
            assert _route_set_text(translate_route_config(rc, old)) == _route_set_text(translate_route_config(rc))
        previous = {rc.name: translate_route_config(rc) for rc in istiogen.bookinfo(name).route_configs}


def test_one_virtual_host_change_touches_only_its_routes(assembly):
    state = resources_of(istiogen.synthetic_mesh(40))
    translator = Translator().load(XdsResources(**state))
    before = translator.document()
    rc = _edited(state["route_configs"]["9080"], EDITS["one route's timeout"])
    touched = translator.set_route_config(rc)
    after = translator.document()
    assert to_json(after) == full({**state, "route_configs": {"9080": rc}})
    replaced = {r["id"] for r in after["routes"]} ^ {r["id"] for r in before["routes"]}
    replaced |= {r["id"] for r, old in zip(after["routes"], before["routes"]) if r is not old}
    assert replaced == touched and 0 < len(touched) <= 3


def test_the_wire_bytes_find_the_unchanged_virtual_hosts():
    """Given the bytes a RouteConfiguration was parsed from, the translation reuses what did not change
    from them (no serialization) and gives what it gives without; bytes that differ for an equal virtual
    host, or that do not fit the message, only cost a translation anew."""
    from envoy.config.route.v3 import route_pb2

    state = resources_of(istiogen.synthetic_mesh(12))
    rc = state["route_configs"]["9080"]
    before = translate_route_config(rc)
    changed = _edited(rc, EDITS["one route's timeout"])
    wire = changed.SerializeToString()
    parsed = route_pb2.RouteConfiguration.FromString(wire)
    plain = translate_route_config(parsed, before)
    fed = translate_route_config(parsed, before, wire=wire)
    assert _route_set_text(fed) == _route_set_text(plain) == _route_set_text(translate_route_config(changed))
    assert _reused(fed, before) == _reused(plain, before) == len(before.parts) - 1
    # Another encoder's bytes: an unknown varint field 999 appended inside the first virtual host (a
    # parser keeps it; its bytes differ) and, after the message, an unknown group (field 998).
    first = rc.virtual_hosts[0].SerializeToString() + b"\xb8\x3e\x01"
    rest = b"".join(b"\x12" + _varint(len(v)) + v for v in (vh.SerializeToString() for vh in rc.virtual_hosts[1:]))
    others = route_pb2.RouteConfiguration(name=rc.name, validate_clusters=rc.validate_clusters)
    odd = b"\x12" + _varint(len(first)) + first + rest + others.SerializeToString()
    odd_rc = route_pb2.RouteConfiguration.FromString(odd)
    # An overlong tag (0x8a 0x00 for 0x0a: the name) that parses to the very same message: the wire bytes
    # are what is compared (a translation anew), a serialization would be canonical (all reused).
    overlong = b"\x8a\x00" + rc.virtual_hosts[0].SerializeToString()[1:]
    same = b"\x12" + _varint(len(overlong)) + overlong + rest + others.SerializeToString()
    same_rc = route_pb2.RouteConfiguration.FromString(same)
    assert same_rc == rc and same != rc.SerializeToString()
    assert _reused(translate_route_config(same_rc, before, wire=same), before) == len(before.parts) - 1
    assert _reused(translate_route_config(same_rc, before), before) == len(before.parts)
    # A group, or bytes of fewer virtual hosts than the message has: the message is serialized instead.
    fewer = route_pb2.RouteConfiguration(name=rc.name, virtual_hosts=rc.virtual_hosts[:3]).SerializeToString()
    for bytes_ in (odd, odd + b"\xb3\x3e\x08\x01\xb4\x3e", fewer):
        again = translate_route_config(odd_rc, before, wire=bytes_)
        assert _route_set_text(again) == _route_set_text(before)
        assert _reused(again, before) == len(before.parts) - 1  # the virtual host with field 999


def _reused(new, old) -> int:
    """How many virtual hosts' translations `new` took from `old`."""
    return len(set(map(id, new.parts.values())) & set(map(id, old.parts.values())))


def _varint(value: int) -> bytes:
    out = b""
    while value >= 0x80:
        out += bytes([value & 0x7F | 0x80])
        value >>= 7
    return out + bytes([value])


# --- coverage walk --------------------------------------------------------------------------------


def _messages(message):
    """`message` and every message below it."""
    yield message
    for descriptor, value in message.ListFields():
        if descriptor.message_type is None:
            continue
        if descriptor.is_repeated:
            items = value.values() if hasattr(value, "values") and callable(value.values) else value
            for item in items:
                if hasattr(item, "ListFields"):
                    yield from _messages(item)
        else:
            yield from _messages(value)


def _reference(message, handled, path):
    return sorted(f"{path}.{d.name}" if path else d.name for d, _ in message.ListFields() if d.name not in handled)


def _walked(message, handled, path):
    cov = report.Coverage("k", "r")
    cov.unhandled(message, handled, path)
    return sorted(e.field for e in cov.entries() for _ in range(e.count))


def _corpus():
    messages = []
    for name in ("istio1.9-bookinfo-productpage-sidecar.config_dump.json",
                 "istio1.24-dualstack-sleep-sidecar.config_dump.json"):
        resources = load_config_dump(fixture(name))
        for table in (resources.listeners, resources.route_configs, resources.clusters, resources.endpoints):
            for message in table.values():
                messages += list(_messages(message))
    xds = istiogen.bookinfo("reviews-matches")
    for message in (*xds.listeners, *xds.route_configs, *xds.clusters, *xds.endpoints):
        messages += list(_messages(message))
    return messages


@pytest.mark.parametrize("strategy", ["field checks", "ListFields"])
def test_unhandled_agrees_with_list_fields(strategy, monkeypatch):
    monkeypatch.setattr(report, "_MAX_CHECKS", 1 << 30 if strategy == "field checks" else -1)
    monkeypatch.setattr(report, "_plans", {})
    rng = random.Random(7)
    corpus = _corpus()
    assert len(corpus) > 1000
    types_seen = set()
    for message in corpus:
        names = [f.name for f in message.DESCRIPTOR.fields]
        types_seen.add(message.DESCRIPTOR.full_name)
        for handled in (frozenset(), frozenset(rng.sample(names, len(names) // 2)), frozenset(names)):
            assert _walked(message, handled, "p") == _reference(message, handled, "p"), message.DESCRIPTOR.full_name
    assert len(types_seen) > 50


def test_unhandled_counts_negative_zero_like_list_fields():
    from envoy.type.v3 import percent_pb2

    for value in (0.0, -0.0, 0.5):
        message = percent_pb2.Percent(value=value)
        assert _walked(message, frozenset(), "") == _reference(message, frozenset(), "")


def test_escape_is_re_escape():
    rng = random.Random(3)
    alphabet = "ab.-_:*/[]()\\{}?+|^$&~# \t\n\r\v\f\x00é9"
    samples = ["", "reviews.default.svc.cluster.local:9080", "*.example.com", "[::1]:80", "a\\b\\\\c"]
    samples += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 16))) for _ in range(5000)]
    for text in samples:
        assert escape(text) == re.escape(text), repr(text)


def test_bulk_context_applies_resources_like_load():
    state = resources_of(istiogen.bookinfo("reviews-mirror"))
    translator = Translator()
    with translator.bulk():
        assert not gc.isenabled()
        for kind in KINDS:
            for name, message in state[kind].items():
                apply(translator, kind, name, message)
        with translator.bulk():  # reentrant: the inner exit keeps it paused
            pass
        assert not gc.isenabled()
    assert gc.isenabled()
    assert to_json(translator.document()) == full(state)
