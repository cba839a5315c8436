"""The harness itself, checked against hand-applied rules: Istio's default REDIRECT rule text (from the
reference) restored with iptables-restore. If these fail, every program test below is meaningless."""

from __future__ import annotations

from netns_tests import pods, processes, ruleset, scenario
from netns_tests.scenario import INBOUND, OUTBOUND

# Istio 1.13's default-injection nat table (istio-iptables-reference.md §2), as an independent oracle.
REFERENCE_DEFAULT = """*nat
:ISTIO_INBOUND - [0:0]
:ISTIO_REDIRECT - [0:0]
:ISTIO_IN_REDIRECT - [0:0]
:ISTIO_OUTPUT - [0:0]
-A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN
-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A PREROUTING -p tcp -j ISTIO_INBOUND
-A ISTIO_INBOUND -p tcp --dport 15090 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15021 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15020 -j RETURN
-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT
-A OUTPUT -p tcp -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
-A ISTIO_OUTPUT -j ISTIO_REDIRECT
COMMIT
"""


def test_hand_applied_reference_rules_capture_and_are_seen(make_network, helpers, backend):
    network = make_network()
    pod = helpers(scenario.pod_listeners(network))
    remote = helpers(scenario.remote_listeners(network))
    # before any rule: the dial reaches the remote service itself
    direct = processes.dial(network.pod, pods.SERVICE_V4, 80, uid=1000)
    assert direct["reply"]["name"] == "remote", direct

    ruleset.restore(network.pod, backend, 4, REFERENCE_DEFAULT)
    saved = ruleset.save(network.pod, backend, 4)
    assert ruleset.custom_chains(saved, "nat") == {"ISTIO_INBOUND", "ISTIO_REDIRECT", "ISTIO_IN_REDIRECT",
                                                   "ISTIO_OUTPUT"}
    other = pods.Backend.LEGACY if backend is pods.Backend.NFT else pods.Backend.NFT
    assert "nat" not in ruleset.save(network.pod, other, 4), "rules leaked into the other backend"

    out = processes.dial(network.pod, pods.SERVICE_V4, 80, uid=1000)
    assert out["ok"], out
    assert out["reply"]["listener"] == scenario.label("tcp", "0.0.0.0", OUTBOUND)
    assert out["reply"]["orig_dst"] == [pods.SERVICE_V4, 80]
    inbound = processes.dial(network.other, pods.POD_V4, scenario.APP_PORT)
    assert inbound["reply"]["listener"] == scenario.label("tcp", "0.0.0.0", INBOUND)
    assert inbound["reply"]["orig_dst"] == [pods.POD_V4, scenario.APP_PORT]
    assert inbound["reply"]["peer"][0] == pods.OTHER_V4
    # the listener process saw the same connections (its stdout, not just the reply)
    pod.wait_for(lambda r: r.get("orig_dst") == [pods.POD_V4, scenario.APP_PORT])
    assert len([e for e in remote.events() if e["proto"] == "tcp"]) == 1
