"""vhost_bytes: the layout patched from the last one equals the layout walked anew, for every kind of
edit a resend can bring; the translation fed the bytes gives what it gives without them."""

from __future__ import annotations

import random

from envoy.config.route.v3 import route_components_pb2, route_pb2

from amesh_testing import istiogen
from sidecar_agent.translate.route import translate_route_config
from sidecar_agent.translate.render import to_json
from sidecar_agent.translate.vhost_bytes import layout, patched


def _route_config(n: int) -> route_pb2.RouteConfiguration:
    return next(rc for rc in istiogen.synthetic_mesh(n).route_configs if rc.name == "9080")


def _edited(rc, rng: random.Random) -> route_pb2.RouteConfiguration:
    out = route_pb2.RouteConfiguration()
    out.CopyFrom(rc)
    vhosts = out.virtual_hosts
    for _ in range(rng.choice((1, 1, 2, 5))):
        i = rng.randrange(len(vhosts))
        edit = rng.choice(("timeout", "domain", "insert", "delete", "swap", "name", "trailing", "same", "last-byte",
                           "first-byte"))
        if edit == "first-byte":  # the same length, at the virtual host's start: only its first bytes differ
            vhosts[i].name = rng.choice("xyz") + vhosts[i].name[1:]
        elif edit == "last-byte":  # the same length, near the virtual host's end: only its last bytes differ
            route = vhosts[i].routes[-1]
            route.name = route.name[:-1] + rng.choice("xyz")
        elif edit == "timeout":
            vhosts[i].routes[0].route.timeout.seconds = rng.randrange(1, 99)
        elif edit == "domain":
            vhosts[i].domains.append(f"extra-{rng.randrange(1000)}.example")
        elif edit == "insert":
            vhosts.insert(i, vhosts[rng.randrange(len(vhosts))])
            vhosts[i].name += "-copy"
        elif edit == "delete" and len(vhosts) > 2:
            del vhosts[i]
        elif edit == "swap":
            j = rng.randrange(len(vhosts))
            a, b = route_components_pb2.VirtualHost(), route_components_pb2.VirtualHost()
            a.CopyFrom(vhosts[i])
            b.CopyFrom(vhosts[j])
            vhosts[i].CopyFrom(b)
            vhosts[j].CopyFrom(a)
        elif edit == "name":  # a field before the virtual hosts
            out.name = rng.choice(("9080", "9080x", "80"))
        elif edit == "trailing":  # fields after them
            out.validate_clusters.value = not out.validate_clusters.value
            out.max_direct_response_body_size_bytes.value = rng.randrange(1, 1 << 20)
    return out


def _fields(found):
    return found.starts, found.ends, found.digests


def test_patched_equals_walked_over_random_edits():
    rng = random.Random(7)
    rc = _route_config(60)
    before = layout(rc.SerializeToString())
    patched_count = 0
    for _ in range(300):
        new = _edited(rc, rng) if rng.random() < 0.9 else rc
        data = new.SerializeToString()
        walked = layout(data)
        found = patched(before, data)
        if found is not None:
            patched_count += 1
            assert _fields(found) == _fields(walked)
        assert len(walked.digests) == len(new.virtual_hosts)
        if rng.random() < 0.5:  # go on from the new one or stay
            rc, before = new, walked
    assert patched_count > 250  # the patch is the path taken, not the fallback


def test_identical_and_empty_bytes():
    data = _route_config(5).SerializeToString()
    assert _fields(patched(layout(data), data)) == _fields(layout(data))
    assert _fields(patched(layout(b""), data)) == _fields(layout(data))
    assert _fields(patched(layout(data), b"")) == ([], [], [])


def test_a_group_is_refused_by_both():
    data = _route_config(3).SerializeToString()
    group = b"\xb3\x3e\x08\x01\xb4\x3e"  # field 998, a group holding a varint
    assert layout(data + group) is None
    assert patched(layout(data), data + group) is None


def test_translations_fed_the_bytes_equal_those_without_over_random_edits():
    rng = random.Random(3)
    rc = _route_config(25)
    previous = translate_route_config(rc, wire=rc.SerializeToString())
    for _ in range(40):
        new = _edited(rc, rng)
        data = new.SerializeToString()
        try:
            fed = translate_route_config(route_pb2.RouteConfiguration.FromString(data), previous, wire=data)
        except Exception as exc:  # an edit may make the configuration invalid: then both refuse alike
            try:
                translate_route_config(new)
            except type(exc) as again:
                assert str(again) == str(exc)
                continue
            raise
        assert to_json({"routes": list(fed.routes)}) == to_json({"routes": list(translate_route_config(new).routes)})
        assert fed.layout is not None and fed.layout.data is data
        rc, previous = new, fed


def test_bytes_beyond_the_limit_are_not_kept(monkeypatch):
    from sidecar_agent.translate import route

    rc = _route_config(8)
    data = rc.SerializeToString()
    monkeypatch.setattr(route, "KEEP_BYTES", len(data) - 1)
    first = translate_route_config(rc, wire=data)
    assert first.layout is None
    new = _edited(rc, random.Random(1))
    again = translate_route_config(new, first, wire=new.SerializeToString())
    assert to_json({"routes": list(again.routes)}) == to_json({"routes": list(translate_route_config(new).routes)})
    monkeypatch.setattr(route, "KEEP_BYTES", len(data))
    assert translate_route_config(rc, wire=data).layout.data is data
