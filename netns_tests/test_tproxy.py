"""TPROXY inbound: the client's own source address is kept and the original destination is the
accepted socket's local address; outbound is still REDIRECTed to 15001."""

from __future__ import annotations

import pytest

from netns_tests import capture, pods, processes, scenario
from netns_tests.pods import OTHER_V4, OTHER_V6, POD_V4, POD_V6, SERVICE_V4
from netns_tests.scenario import APP_PORT, INBOUND, OUTBOUND, label

pytestmark = pytest.mark.usefixtures("program")

MARK, TABLE = 1337, 133


@pytest.fixture
def tproxy_pod(make_network, helpers, backend):
    network = make_network(ipv6=True)
    helpers(scenario.pod_listeners(network, tproxy=True))
    helpers(scenario.remote_listeners(network))
    capture.apply(network.pod, backend, *capture.with_flags(m="TPROXY", t=str(MARK), r=str(TABLE)))
    return network


def test_tproxy_policy_routing_is_installed(tproxy_pod):
    for family in (4, 6):
        rules = pods.ip_rules(tproxy_pod.pod, family)
        assert any(r == f"from all fwmark {hex(MARK)} lookup {TABLE}" for r in rules), (family, rules)
        routes = pods.ip_routes(tproxy_pod.pod, family, str(TABLE))
        assert any(r.startswith("local default dev lo") for r in routes), (family, routes)


@pytest.mark.parametrize("client,pod_ip,any_", [(OTHER_V4, POD_V4, "0.0.0.0"), (OTHER_V6, POD_V6, "::")],
                         ids=["v4", "v6"])
def test_tproxy_inbound_keeps_client_source_and_original_destination(tproxy_pod, client, pod_ip, any_):
    result = processes.dial(tproxy_pod.other, pod_ip, APP_PORT)
    assert result["ok"], result
    reply = result["reply"]
    assert reply["listener"] == label("tproxy_tcp", any_, INBOUND), "not delivered to the transparent 15006 socket"
    assert reply["local"] == [pod_ip, APP_PORT], "TPROXY keeps the original destination as local address"
    assert reply["peer"] == result["local"] and reply["peer"][0] == client, "client source not preserved"


def test_tproxy_mode_outbound_still_redirected(tproxy_pod):
    result = processes.dial(tproxy_pod.pod, SERVICE_V4, scenario.REMOTE_PORT, uid=1000)
    assert result["reply"]["listener"] == label("tcp", "0.0.0.0", OUTBOUND)
    assert result["reply"]["orig_dst"] == [SERVICE_V4, scenario.REMOTE_PORT]
