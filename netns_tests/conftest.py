"""Root tests in real network namespaces: skipped cleanly without root or `ip netns`."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from netns_tests import pods, processes

HERE = Path(__file__).resolve().parent


@functools.cache
def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "network-namespace tests need root"
    if shutil.which("ip") is None:
        return "iproute2 `ip` not found"
    if subprocess.run(["ip", "netns", "list"], capture_output=True).returncode != 0:
        return "`ip netns` unavailable"
    return None


def _backend_missing(backend: pods.Backend) -> str | None:
    for family in (4, 6):
        for suffix in ("", "-save", "-restore"):
            if shutil.which(backend.tool(family, suffix)) is None:
                return f"{backend.tool(family, suffix)} not installed"
    return None


def pytest_collection_modifyitems(config, items):
    reason = _unavailable()
    if reason is None:
        return
    for item in items:
        if Path(str(item.fspath)).resolve().is_relative_to(HERE):
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(params=list(pods.Backend), ids=lambda b: b.value)
def backend(request) -> pods.Backend:
    missing = _backend_missing(request.param)
    if missing:
        pytest.skip(missing)
    return request.param


@pytest.fixture
def program() -> Path:
    if not processes.AMESH.exists() or not (processes.REPO / "init" / "cli.py").exists():
        pytest.skip(f"{processes.AMESH} (init/cli.py) not there yet")
    return processes.AMESH


@pytest.fixture
def make_network(request):
    """make_network(ipv6=False) -> a built pods.Network, removed at teardown whatever happens."""
    networks: list[pods.Network] = []

    def make(ipv6: bool = False) -> pods.Network:
        network = pods.Network(prefix=pods.unique_prefix(), ipv6=ipv6)
        networks.append(network)
        return network.build()

    yield make
    for network in networks:
        network.close()


@pytest.fixture
def helpers():
    """start(helper_factory_result) registers a helper process; every one is stopped by PID at teardown."""
    started: list[processes.Helper] = []

    def track(helper: processes.Helper) -> processes.Helper:
        started.append(helper)
        return helper

    yield track
    for helper in started:
        helper.stop()
