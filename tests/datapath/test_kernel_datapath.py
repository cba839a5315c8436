"""The kernel side of inbound, outbound TCP and passthrough under amesh-iptables' REDIRECT capture.

A stand-in stream front (relay.py, running as the exempt UID/GID 1337) makes the decisions the
translated stream routes make; these tests show the kernel delivers what the design relies on:
the original destination on 15001/15006, the proxy's upstream connections not recaptured, inbound
connections reaching the app from 127.0.0.6 / ::6 at the pod address, and unknown destinations
passed through (ALLOW_ANY) or refused (REGISTRY_ONLY).
"""

from __future__ import annotations

import pytest

from netns_tests import processes, scenario
from netns_tests.pods import OTHER_V4, OTHER_V6, POD_V4, POD_V6, SERVICE_V4, SERVICE_V6

RELAY = str(processes.Path(__file__).resolve().parent / "relay.py")
APP = 8080
TCP_SERVICE = (SERVICE_V4, scenario.REMOTE_PORT)  # a tcp_proxy listener 10.20.9.1_80 -> its cluster
UNKNOWN = (SERVICE_V4, scenario.EXCLUDED_OUT_PORT)  # no listener: passthrough / refused


@pytest.fixture(scope="module")
def listeners(captured_pod):
    app = processes.listener(captured_pod.pod, "app", tcp=[f"0.0.0.0:{APP}", f"[::]:{APP}"])
    remote = scenario.remote_listeners(captured_pod)
    yield captured_pod, app, remote
    app.stop()
    remote.stop()


def relay(network, *extra: str) -> processes.Helper:
    route = f"{TCP_SERVICE[0]}:{TCP_SERVICE[1]}={TCP_SERVICE[0]}:{TCP_SERVICE[1]}"
    return processes.Helper(network.pod, [RELAY, "--pod-ip", POD_V4, "--pod-ip6", POD_V6, "--route", route, *extra])


@pytest.fixture
def front(listeners):
    network, app, remote = listeners
    helper = relay(network)
    yield network, app, remote, helper
    helper.stop()


def reply_of(result: dict) -> dict:
    assert result["ok"] and result["reply"], result
    return result["reply"]


@pytest.mark.parametrize("client,pod_addr,source", [(OTHER_V4, POD_V4, "127.0.0.6"), (OTHER_V6, POD_V6, "::6")],
                         ids=["v4", "v6"])
def test_inbound_reaches_the_app_at_the_pod_address_from_istio_source(front, client, pod_addr, source):
    network, app, _, helper = front
    reply = reply_of(processes.dial(network.other, pod_addr, APP))
    assert reply["name"] == "app" and reply["local"] == [pod_addr, APP]
    assert reply["peer"][0] == source, "the app must see Istio's inbound source, not the client"
    decision = helper.wait_for(lambda r: r.get("decision") == "inbound" and r["orig"] == [pod_addr, APP])
    assert decision["upstream_local"][0] == source


def test_outbound_tcp_service_is_routed_by_original_address_and_port(front):
    network, _, remote, helper = front
    reply = reply_of(processes.dial(network.pod, *TCP_SERVICE, uid=1000))
    assert reply["name"] == "remote" and reply["local"] == list(TCP_SERVICE)
    assert reply["peer"][0] == POD_V4, "the proxy's own connection left the pod instead of looping back"
    helper.wait_for(lambda r: r.get("decision") == "route" and r["orig"] == list(TCP_SERVICE))


@pytest.mark.parametrize("target", [UNKNOWN, (SERVICE_V6, scenario.EXCLUDED_OUT_PORT)], ids=["v4", "v6"])
def test_allow_any_passes_unknown_destinations_through(front, target):
    network, _, _, helper = front
    reply = reply_of(processes.dial(network.pod, *target, uid=1000))
    assert reply["name"] == "remote" and reply["local"] == list(target)
    helper.wait_for(lambda r: r.get("decision") == "passthrough" and r["orig"] == list(target))


def test_registry_only_refuses_unknown_destinations_but_routes_known_ones(listeners):
    network, _, _ = listeners
    helper = relay(network, "--registry-only")
    try:
        refused = processes.dial(network.pod, *UNKNOWN, uid=1000)
        assert not refused["ok"] or refused["reply"] is None, refused
        helper.wait_for(lambda r: r.get("decision") == "refused" and r["orig"] == list(UNKNOWN))
        assert reply_of(processes.dial(network.pod, *TCP_SERVICE, uid=1000))["name"] == "remote"
    finally:
        helper.stop()


def test_a_connection_dialled_at_the_capture_port_has_no_destination_to_route(front):
    """Envoy's virtualInbound-blackhole: pod:15006 is REDIRECTed onto itself; nothing is forwarded."""
    network, app, _, helper = front
    before = len(app.events())
    result = processes.dial(network.other, POD_V4, 15006, timeout=2)
    assert not result["ok"] or result["reply"] is None
    helper.wait_for(lambda r: r.get("decision") == "no-original-destination")
    assert len(app.events()) == before
