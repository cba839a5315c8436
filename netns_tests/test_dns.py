"""DNS capture (UDP and TCP) to the agent's 15053, against the servers in the pod's resolv.conf."""

from __future__ import annotations

import pytest

from netns_tests import capture, processes, scenario
from netns_tests.pods import DNS_V4, OTHER_DNS_V4
from netns_tests.scenario import DNS_PORT, OUTBOUND, label

pytestmark = pytest.mark.usefixtures("program")

AGENT_UDP = ("pod", label("udp", "0.0.0.0", DNS_PORT))
AGENT_TCP = ("pod", label("tcp", "0.0.0.0", DNS_PORT))
REMOTE_UDP = ("remote", label("udp", "0.0.0.0", 53))
REMOTE_TCP = ("remote", label("tcp", "0.0.0.0", 53))


@pytest.fixture
def dns_pod(make_network, helpers, backend):
    def make(*extra: str):
        network = make_network()
        helpers(scenario.pod_listeners(network))
        helpers(scenario.remote_listeners(network))
        capture.apply(network.pod, backend, *capture.INJECTED, *extra)
        return network
    return make


def where(network, server: str, proto: str, uid: int = 1000, gid: int | None = None) -> tuple[str, str]:
    result = processes.dial(network.pod, server, 53, proto=proto, uid=uid, gid=gid)
    assert result["ok"], result
    return result["reply"]["name"], result["reply"]["listener"]


def test_redirect_dns_captures_the_resolv_conf_server(dns_pod):
    network = dns_pod("--redirect-dns")
    assert where(network, DNS_V4, "udp") == AGENT_UDP
    assert where(network, DNS_V4, "tcp") == AGENT_TCP
    # a server not in resolv.conf: UDP goes out untouched; TCP is ordinary outbound (-i '*') → 15001
    assert where(network, OTHER_DNS_V4, "udp") == REMOTE_UDP
    assert where(network, OTHER_DNS_V4, "tcp") == ("pod", label("tcp", "0.0.0.0", OUTBOUND))


def test_capture_all_dns_captures_any_server(dns_pod):
    network = dns_pod("--redirect-dns", "--capture-all-dns")
    for server in (DNS_V4, OTHER_DNS_V4):
        assert where(network, server, "udp") == AGENT_UDP
        assert where(network, server, "tcp") == AGENT_TCP


def test_dns_not_captured_when_disabled(dns_pod):
    network = dns_pod()
    assert where(network, DNS_V4, "udp") == REMOTE_UDP
    # TCP/53 is then plain outbound traffic, which -i '*' sends to 15001, not 15053
    assert where(network, DNS_V4, "tcp") == ("pod", label("tcp", "0.0.0.0", OUTBOUND))


@pytest.mark.parametrize("uid,gid", [(1337, 1337), (1000, 1337)], ids=["uid1337", "gid1337-only"])
def test_dns_from_the_proxy_is_not_captured(dns_pod, uid, gid):
    network = dns_pod("--redirect-dns", "--capture-all-dns")
    assert where(network, DNS_V4, "udp", uid=uid, gid=gid) == REMOTE_UDP
    assert where(network, DNS_V4, "tcp", uid=uid, gid=gid) == REMOTE_TCP
