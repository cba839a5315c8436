"""The translator shares read-only objects to keep its memory down (docs/translation.md, Performance):
node dicts between endpoint sets, node lists between a cluster's upstreams, `timeout`/`labels` between
upstreams, `hosts`/`vars` between the routes of a virtual host, report lines between resources. These
tests pin the sharing and that it never leaks: a change rebuilds what changed and mutates nothing an
earlier document holds."""

from __future__ import annotations

import copy
import json
import pickle

from sidecar_agent.store import Codec
from amesh_testing import istiogen
from sidecar_agent.translate import Translator
from sidecar_agent.translate.endpoint import NodePool
from sidecar_agent.translate.index import SmallSets
from sidecar_agent.translate.report import Coverage, Unsupported
from sidecar_agent.translate.upstream import UpstreamPolicy, UpstreamRef


def loaded(n: int = 3) -> tuple[Translator, istiogen.Xds]:
    xds = istiogen.synthetic_mesh(n)
    t = Translator()
    with t.bulk():
        for c in xds.clusters:
            t.set_cluster(c)
        for e in xds.endpoints:
            t.set_endpoints(e)
        for listener in xds.listeners:
            t.set_listener(listener)
        for rc in xds.route_configs:
            t.set_route_config(rc)
    return t, xds


def frozen(document: dict) -> str:
    return json.dumps(document, sort_keys=True)


def upstreams_of(document: dict, cluster: str) -> list[dict]:
    return [u for u in document["upstreams"] if u["name"].split(" [")[0] == cluster]


def test_endpoint_sets_share_node_dicts_and_upstreams_share_node_lists():
    t, _ = loaded()
    doc = t.document()
    plain = [t.cluster_upstream("outbound|9080||svc-00001.mesh.svc.cluster.local")]  # no route sends to it as is
    subset = upstreams_of(doc, "outbound|9080|v2|svc-00001.mesh.svc.cluster.local")  # two routes, two policies
    assert len(plain) >= 1 and len(subset) >= 2
    assert all(u["nodes"] is subset[0]["nodes"] for u in subset)  # one list for the cluster's upstreams
    by_host = {n["host"]: n for n in plain[0]["nodes"]}
    assert subset[0]["nodes"] and all(n is by_host[n["host"]] for n in subset[0]["nodes"])  # one dict per pod
    assert all(u["timeout"] is subset[0]["timeout"] for u in subset if u["timeout"] == subset[0]["timeout"])


def test_an_endpoint_change_leaks_into_no_other_set_and_no_earlier_document():
    t, xds = loaded()
    before = t.document()
    snapshot = frozen(before)
    name = "outbound|9080|v1|svc-00001.mesh.svc.cluster.local"
    cla = copy.deepcopy(next(e for e in xds.endpoints if e.cluster_name == name))
    host = cla.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address
    cla.endpoints[0].lb_endpoints[0].load_balancing_weight.value = 7  # the same pod, another weight
    t.set_endpoints(cla)
    after = t.document()
    assert frozen(before) == snapshot  # nothing an earlier document holds was changed in place
    changed = [n for u in upstreams_of(after, name) for n in u["nodes"] if n["host"] == host]
    assert changed and all(n["weight"] == 7 for n in changed)
    plain = [n for u in upstreams_of(after, "outbound|9080||svc-00001.mesh.svc.cluster.local")
             + [t.cluster_upstream("outbound|9080||svc-00001.mesh.svc.cluster.local")]
             for n in u["nodes"] if n["host"] == host]
    assert plain and all(n["weight"] != 7 for n in plain)  # the service's own set keeps its node


def test_routes_of_a_virtual_host_share_hosts_and_vars_and_a_change_stays_in_its_host():
    t, xds = loaded()
    before = t.document()
    snapshot = frozen(before)
    routes = [r for r in before["routes"] if "/svc-00001." in r["name"]]
    assert len(routes) >= 3
    assert all(r["hosts"] is routes[0]["hosts"] for r in routes)
    assert all(r["vars"][0] is routes[0]["vars"][0] for r in routes)  # the port condition, one list
    rc = copy.deepcopy(xds.route_configs[0])
    vhost = next(v for v in rc.virtual_hosts if v.name.startswith("svc-00001."))
    vhost.domains.append("extra.example")  # this host's `hosts` and host condition change
    t.set_route_config(rc)
    after = t.document()
    assert frozen(before) == snapshot
    old_other = {r["id"]: r for r in before["routes"] if "/svc-00002." in r["name"]}
    new_other = {r["id"]: r for r in after["routes"] if "/svc-00002." in r["name"]}
    assert old_other and all(new_other[i] is r for i, r in old_other.items())  # untouched, same objects
    changed = [r for r in after["routes"] if "/svc-00001." in r["name"]]
    assert changed and all("extra.example" in r["hosts"] for r in changed)
    assert all("extra.example" not in r.get("hosts", ()) for r in new_other.values())


def test_node_pool_shares_only_equal_nodes_and_forgets_what_no_set_holds():
    pool = NodePool()
    a = pool.node("10.0.0.1", 80, 1, 0)
    assert pool.node("10.0.0.1", 80, 1, 0) is a
    other = pool.node("10.0.0.1", 81, 1, 0)
    assert other is not a and other == {"host": "10.0.0.1", "port": 81, "weight": 1}
    assert pool.node("10.0.0.1", 80, 1, 2) == {"host": "10.0.0.1", "port": 80, "weight": 1, "priority": -2}
    b = pool.node("10.0.0.2", 80, 1, 0)
    pool.sweep([[b]])
    assert len(pool) == 1 and pool.node("10.0.0.2", 80, 1, 0) is b and pool.node("10.0.0.1", 80, 1, 0) is not a


def test_pool_stays_bounded_when_every_pod_is_replaced():
    t, xds = loaded(50)
    for round_ in range(1, 4):
        for e in xds.endpoints:
            cla = copy.deepcopy(e)
            for locality in cla.endpoints:
                for lbe in locality.lb_endpoints:
                    sa = lbe.endpoint.address.socket_address
                    sa.address = sa.address.replace("10.", f"{10 + round_ * 10}.", 1)
            t.set_endpoints(cla)
    held = {id(n) for part, _ in t._endpoints.values() for n in part.nodes}
    assert len(t._nodes) <= 2 * len(held) + 4096


def test_equal_report_lines_are_held_once_and_iterate_as_entries():
    one, two = Coverage("cluster", "a"), Coverage("cluster", "b")
    for cov in (one, two):
        cov.add("metadata")
        cov.add("filters", 2)
    a, b = one.compact(), two.compact()
    assert a.counts is b.counts
    assert list(a) == [Unsupported("cluster", "a", "filters", 2), Unsupported("cluster", "a", "metadata", 1)]
    assert tuple(a) == one.entries() and len(a) == 2
    assert Coverage("cluster", "c").compact() == ()


def test_refs_pickle_without_their_cached_hash_and_id():
    ref = UpstreamRef("outbound|80||x", UpstreamPolicy(retries=2, read_timeout=5.0))
    assert ref.id and hash(ref)
    back = pickle.loads(pickle.dumps(ref))
    assert back == ref and back._hash is None and back._id is None
    assert hash(back) == hash(ref) and back.id == ref.id
    assert copy.deepcopy(ref) == ref


def test_small_sets():
    s = SmallSets()
    s.add("k", 1)
    s.add("k", 1)
    s.add("k", 2)
    assert s["k"] == (1, 2)
    s.discard("k", 1)
    s.discard("k", 3)
    assert s["k"] == (2,)
    s.discard("k", 2)
    assert "k" not in s


def test_codec_sampled_from_a_response_round_trips():
    xds = istiogen.synthetic_mesh(20)
    values = [c.SerializeToString() for c in xds.clusters]
    codec = Codec.sampling_many(values)
    assert 0 < len(codec.dictionary) <= 4096
    assert all(codec.expand(codec.shrink(v)) == v for v in values)
    assert sum(len(codec.shrink(v)) for v in values) < sum(len(Codec.sampling(values[0]).shrink(v)) for v in values)
