"""An IPv6-only pod becomes Ready: the agent's status port and the controller's health, metrics and gRPC
ports listen on IPv6 as well as IPv4 (amesh_common.http_server's dual-stack `::`, gRPC's `[::]`). Run in a
network namespace whose eth0 carries only an IPv6 address."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from netns_tests import pods
from netns_tests.pods import POD_V6
from netns_tests.processes import REPO
from sidecar_agent.schemas import APISIX_SCHEMA_DIR
from tests.controller import pki

SCRIPT = REPO / "netns_tests" / "ipv6_only_ports.py"


@pytest.fixture
def ipv6_only_pod():
    name = pods.unique_prefix() + "v6"
    pods.create_namespace(name)
    try:
        pods.veth(pods.unique_prefix(), (name, "eth0"), (name, "peer0"))
        pods.set_sysctls(name, {"net.ipv6.conf.all.accept_dad": "0", "net.ipv6.conf.eth0.accept_dad": "0"})
        pods.configure(name, "peer0", [])
        pods.configure(name, "eth0", [(POD_V6, 64)])  # no IPv4 address on the pod's interface
        yield name
    finally:
        pods.remove_namespace(name)


def run_in(ns: str, *args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, str(SCRIPT), *args], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_an_ipv6_only_pod_becomes_ready_and_gets_its_plugins(ipv6_only_pod, tmp_path):
    assert pods.non_link_local(ipv6_only_pod) == {POD_V6, "127.0.0.1", "::1"}
    pki.standard(tmp_path)
    result = run_in(ipv6_only_pod, POD_V6, str(tmp_path), str(APISIX_SCHEMA_DIR))
    assert result["defaults"] == ["[::]:15810", "::"]
    assert result["agent_ready_v6"] == result["agent_ready_v4"] == 200
    assert result["controller_readyz_v6"] == result["controller_readyz_v4"] == 200
    assert result["stream_v6"] == result["stream_v4"] == ["response-rewrite"]
