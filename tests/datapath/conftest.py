"""Data-path tests: the pure ones always run; the network ones need root, `ip netns`, the capture
program, and either the real APISIX (tests/realapisix.py: the hook, the passthrough plugin, stream
routes) or, for amesh/origdst.lua alone, Debian's nginx with lua-nginx-module; they skip saying which
is missing."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from netns_tests import capture, pods, processes
from tests.datapath import testnginx

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared"
SCHEMA_DIR = SHARED / "apisix-schema" / "3.18"
FIXTURES = SHARED / "fixtures" / "istio-xds"


@functools.cache
def netns_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "network-namespace tests need root"
    if shutil.which("ip") is None or subprocess.run(["ip", "netns", "list"], capture_output=True).returncode:
        return "`ip netns` unavailable"
    if not processes.AMESH.exists():
        return f"{processes.AMESH} missing (pip install -e .)"
    if shutil.which(pods.Backend.NFT.tool(4, "-restore")) is None:
        return "iptables-nft not installed"
    return None


@pytest.fixture(scope="module")
def captured_pod():
    """A dual-stack pod with Istio's injected REDIRECT capture applied by amesh-iptables (nft)."""
    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
    network = pods.Network(prefix=pods.unique_prefix(), ipv6=True)
    try:
        network.build()
        capture.apply(network.pod, pods.Backend.NFT, *capture.INJECTED)
        yield network
    finally:
        network.close()


@pytest.fixture
def nginx_required():
    reason = testnginx.unavailable()
    if reason:
        pytest.skip(reason)


@pytest.fixture
def schema_dir() -> Path:
    """APISIX 3.18's schemas as shipped in the package (tests/schemas checks them against ../shared's copy)."""
    from sidecar_agent.schemas import APISIX_SCHEMA_DIR

    return APISIX_SCHEMA_DIR


@pytest.fixture
def fixtures_dir() -> Path:
    if not FIXTURES.is_dir():
        pytest.skip(f"xDS fixtures not found in {FIXTURES}")
    return FIXTURES
