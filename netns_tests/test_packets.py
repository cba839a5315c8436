"""Packet-level witnesses: scapy on the remote side's veth, python-iptables reading legacy tables."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from netns_tests import capture, pods, processes, scenario
from netns_tests.pods import POD_V4, SERVICE_V4
from netns_tests.scenario import EXCLUDED_OUT_PORT, OUTBOUND, REMOTE_PORT, label

pytestmark = pytest.mark.usefixtures("program")


def test_captured_syn_never_leaves_the_pod_while_excluded_port_syn_does(make_network, helpers, backend):
    network = make_network()
    helpers(scenario.pod_listeners(network))
    helpers(scenario.remote_listeners(network))
    capture.apply(network.pod, backend, *capture.with_flags(o=str(EXCLUDED_OUT_PORT)))
    sniffer = helpers(processes.Helper(network.remote, [str(processes.SNIFF), "to-pod"], ready_timeout=30))

    captured = processes.dial(network.pod, SERVICE_V4, REMOTE_PORT, uid=1000)
    assert captured["reply"]["listener"] == label("tcp", "0.0.0.0", OUTBOUND)
    excluded = processes.dial(network.pod, SERVICE_V4, EXCLUDED_OUT_PORT, uid=1000)
    assert excluded["reply"]["name"] == "remote"

    # the excluded SYN was sent after the captured one, so once it is seen any earlier SYN would be too
    syn = sniffer.wait_for(lambda p: p.get("dport") == EXCLUDED_OUT_PORT, timeout=10)
    assert (syn["src"], syn["dst"], syn["sport"]) == (POD_V4, SERVICE_V4, excluded["local"][1])
    leaked = [p for p in sniffer.events() if p.get("dport") == REMOTE_PORT]
    assert leaked == [], f"captured connection's SYN left the pod: {leaked}"


def test_legacy_nat_table_read_through_python_iptables(make_network):
    backend = pods.Backend.LEGACY
    network = make_network()
    capture.apply(network.pod, backend, *capture.with_flags(o=str(EXCLUDED_OUT_PORT)))
    out = subprocess.run(["ip", "netns", "exec", network.pod, sys.executable, str(processes.IPTC_DUMP), "4"],
                         capture_output=True, text=True, timeout=30, check=True)
    chains = json.loads(out.stdout)["chains"]
    assert {"ISTIO_INBOUND", "ISTIO_REDIRECT", "ISTIO_IN_REDIRECT", "ISTIO_OUTPUT"} <= set(chains)
    assert [r["target"] for r in chains["PREROUTING"]] == ["ISTIO_INBOUND"]
    assert [r["target"] for r in chains["OUTPUT"]] == ["ISTIO_OUTPUT"]
    (redirect,) = chains["ISTIO_REDIRECT"]
    assert (redirect["target"], redirect["target_params"]) == ("REDIRECT", {"to-ports": ["15001"]})
    (in_redirect,) = chains["ISTIO_IN_REDIRECT"]
    assert in_redirect["target_params"] == {"to-ports": ["15006"]}
    inbound_returns = [r["matches"].get("tcp", {}).get("dport") for r in chains["ISTIO_INBOUND"]
                       if r["target"] == "RETURN"]
    assert inbound_returns == [["15008"], ["15090"], ["15021"], ["15020"]]
    owners = [r["matches"]["owner"] for r in chains["ISTIO_OUTPUT"] if "owner" in r["matches"]]
    assert {"uid-owner": ["1337"]} in owners and {"gid-owner": ["1337"]} in owners
    out_ports = [r["matches"]["tcp"]["dport"] for r in chains["ISTIO_OUTPUT"] if "tcp" in r["matches"]]
    assert ["8443"] in out_ports
    assert chains["ISTIO_OUTPUT"][-1]["target"] == "ISTIO_REDIRECT"
    # the nft backend's view of the same namespace holds none of it
    nft = subprocess.run(["ip", "netns", "exec", network.pod, "iptables-nft-save", "-t", "nat"],
                         capture_output=True, text=True, check=False)
    assert "ISTIO_" not in nft.stdout
