"""REDIRECT mode with real traffic: what is captured, what bypasses capture, on both backends."""

from __future__ import annotations

import pytest

from netns_tests import capture, pods, processes, scenario
from netns_tests.pods import EXCLUDED_V4, OTHER_V4, POD_V4, SERVICE_V4
from netns_tests.scenario import APP_PORT, EXCLUDED_IN_PORT, EXCLUDED_OUT_PORT, INBOUND, OUTBOUND, label

pytestmark = pytest.mark.usefixtures("program")


@pytest.fixture
def pod(make_network, helpers, backend):
    """A REDIRECT pod with -o 8443 and -x 10.20.8.0/24 added to the injected defaults, listeners running."""
    network = make_network()
    pod_side = helpers(scenario.pod_listeners(network))
    remote = helpers(scenario.remote_listeners(network))
    capture.apply(network.pod, backend, *capture.with_flags(o=str(EXCLUDED_OUT_PORT), x=pods.EXCLUDED_CIDR_V4))
    return network, pod_side, remote


def landed(result: dict) -> tuple[str, str]:
    assert result["ok"], result
    return result["reply"]["name"], result["reply"]["listener"]


@pytest.mark.parametrize("uid", [1000, 0], ids=["uid1000", "root"])
def test_outbound_lands_on_15001_with_original_destination(pod, uid):
    network, pod_side, remote = pod
    result = processes.dial(network.pod, SERVICE_V4, scenario.REMOTE_PORT, uid=uid)
    assert landed(result) == ("pod", label("tcp", "0.0.0.0", OUTBOUND))
    assert result["reply"]["orig_dst"] == [SERVICE_V4, scenario.REMOTE_PORT]
    assert remote.events() == [], "a captured connection must not reach the remote service"


def test_inbound_lands_on_15006_with_original_port(pod):
    network, pod_side, _ = pod
    result = processes.dial(network.other, POD_V4, APP_PORT)
    assert landed(result) == ("pod", label("tcp", "0.0.0.0", INBOUND))
    assert result["reply"]["orig_dst"] == [POD_V4, APP_PORT]
    assert result["reply"]["peer"] == result["local"] and result["local"][0] == OTHER_V4
    assert not [e for e in pod_side.events() if e["listener"] == label("tcp", "0.0.0.0", APP_PORT)]


@pytest.mark.parametrize("uid,gid", [(1337, 1337), (1000, 1337), (1337, 1000)],
                         ids=["uid+gid1337", "gid1337-only", "uid1337-only"])
def test_proxy_owner_bypasses_capture(pod, uid, gid):
    network, pod_side, remote = pod
    result = processes.dial(network.pod, SERVICE_V4, scenario.REMOTE_PORT, uid=uid, gid=gid)
    assert landed(result) == ("remote", label("tcp", "0.0.0.0", scenario.REMOTE_PORT))
    assert result["reply"]["local"] == [SERVICE_V4, scenario.REMOTE_PORT]
    assert result["reply"]["peer"][0] == POD_V4
    assert pod_side.events() == [], "the proxy's own connection looped back into the pod"


def test_excluded_inbound_port_reaches_the_app(pod):
    network, _, _ = pod
    result = processes.dial(network.other, POD_V4, EXCLUDED_IN_PORT)
    assert landed(result) == ("pod", label("tcp", "0.0.0.0", EXCLUDED_IN_PORT))
    assert result["reply"]["local"] == [POD_V4, EXCLUDED_IN_PORT]


def test_excluded_outbound_port_reaches_the_remote(pod):
    network, pod_side, _ = pod
    result = processes.dial(network.pod, SERVICE_V4, EXCLUDED_OUT_PORT, uid=1000)
    assert landed(result) == ("remote", label("tcp", "0.0.0.0", EXCLUDED_OUT_PORT))
    assert result["reply"]["local"] == [SERVICE_V4, EXCLUDED_OUT_PORT]
    assert pod_side.events() == []


def test_excluded_cidr_reaches_the_remote_while_others_are_captured(pod):
    network, _, _ = pod
    excluded = processes.dial(network.pod, EXCLUDED_V4, scenario.REMOTE_PORT, uid=1000)
    assert landed(excluded) == ("remote", label("tcp", "0.0.0.0", scenario.REMOTE_PORT))
    assert excluded["reply"]["local"] == [EXCLUDED_V4, scenario.REMOTE_PORT]
    captured = processes.dial(network.pod, SERVICE_V4, scenario.REMOTE_PORT, uid=1000)
    assert landed(captured)[0] == "pod"


@pytest.mark.parametrize("uid", [1000, 1337])
def test_app_to_localhost_is_untouched(pod, uid):
    network, _, _ = pod
    result = processes.dial(network.pod, "127.0.0.1", scenario.LOCAL_APP_PORT, uid=uid)
    assert landed(result) == ("pod", label("tcp", "127.0.0.1", scenario.LOCAL_APP_PORT))
    assert result["reply"]["local"] == ["127.0.0.1", scenario.LOCAL_APP_PORT]


def test_proxy_to_own_pod_address_over_lo_goes_inbound(pod):
    """Istio's rule: uid 1337 → pod's own IP (over lo, not 127.0.0.1) is sent to the inbound port."""
    network, _, _ = pod
    result = processes.dial(network.pod, POD_V4, APP_PORT, uid=1337)
    assert landed(result) == ("pod", label("tcp", "0.0.0.0", INBOUND))
    assert result["reply"]["orig_dst"] == [POD_V4, APP_PORT]
    app = processes.dial(network.pod, POD_V4, APP_PORT, uid=1000)
    assert landed(app) == ("pod", label("tcp", "0.0.0.0", APP_PORT)), "app → own IP over lo is left alone"
