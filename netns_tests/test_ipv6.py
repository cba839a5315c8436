"""A dual-stack pod: IPv6 outbound and inbound captured like IPv4 (SO_ORIGINAL_DST via SOL_IPV6/80)."""

from __future__ import annotations

import pytest

from netns_tests import capture, pods, processes, ruleset, scenario
from netns_tests.pods import DNS_V6, OTHER_V6, POD_V4, POD_V6, SERVICE_V4, SERVICE_V6
from netns_tests.scenario import APP_PORT, DNS_PORT, INBOUND, OUTBOUND, label

pytestmark = pytest.mark.usefixtures("program")


@pytest.fixture
def pod6(make_network, helpers, backend):
    network = make_network(ipv6=True)
    helpers(scenario.pod_listeners(network))
    remote = helpers(scenario.remote_listeners(network))
    capture.apply(network.pod, backend, *capture.INJECTED, "--redirect-dns")
    return network, remote


def test_ipv6_rules_and_passthrough_address_are_programmed(pod6, backend):
    network, _ = pod6
    assert "::6" in pods.addresses(network.pod, 6)
    nat6 = ruleset.save(network.pod, backend, 6)["nat"]
    assert {"ISTIO_INBOUND", "ISTIO_OUTPUT", "ISTIO_REDIRECT", "ISTIO_IN_REDIRECT"} <= set(nat6)
    assert any("::6/128" in rule for rule in nat6["ISTIO_OUTPUT"][1])


def test_ipv6_outbound_lands_on_15001(pod6):
    network, remote = pod6
    result = processes.dial(network.pod, SERVICE_V6, scenario.REMOTE_PORT, uid=1000)
    assert result["ok"], result
    assert result["reply"]["listener"] == label("tcp", "::", OUTBOUND)
    assert result["reply"]["orig_dst"] == [SERVICE_V6, scenario.REMOTE_PORT]
    v4 = processes.dial(network.pod, SERVICE_V4, scenario.REMOTE_PORT, uid=1000)
    assert v4["reply"]["listener"] == label("tcp", "0.0.0.0", OUTBOUND)
    assert remote.events() == []


def test_ipv6_inbound_lands_on_15006(pod6):
    network, _ = pod6
    result = processes.dial(network.other, POD_V6, APP_PORT)
    assert result["ok"], result
    assert result["reply"]["listener"] == label("tcp", "::", INBOUND)
    assert result["reply"]["orig_dst"] == [POD_V6, APP_PORT]
    assert result["reply"]["peer"][0] == OTHER_V6
    v4 = processes.dial(network.other, POD_V4, APP_PORT)
    assert v4["reply"]["listener"] == label("tcp", "0.0.0.0", INBOUND)


def test_ipv6_proxy_uid_bypasses_capture(pod6):
    network, remote = pod6
    result = processes.dial(network.pod, SERVICE_V6, scenario.REMOTE_PORT, uid=1337, gid=1337)
    assert result["reply"]["name"] == "remote"
    assert result["reply"]["local"] == [SERVICE_V6, scenario.REMOTE_PORT]


def test_ipv6_dns_to_the_resolv_conf_server_is_captured(pod6):
    network, _ = pod6
    for proto in ("udp", "tcp"):
        result = processes.dial(network.pod, DNS_V6, 53, proto=proto, uid=1000)
        assert result["ok"], result
        assert result["reply"]["listener"] == label(proto, "::", DNS_PORT)
