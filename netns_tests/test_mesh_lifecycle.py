"""`amesh-mesh down` removes everything `up` made, also when `up` was killed with SIGKILL halfway; a
non-root run says it needs root."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from localmesh import mesh as mesh_mod, netns
from netns_tests.meshfixture import unavailable

CLI = [sys.executable, "-m", "localmesh.cli"]


def test_down_after_up_was_killed(tmp_path):
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    workdir = Path(tempfile.mkdtemp(prefix="amesh-e2e-kill-"))
    workdir.chmod(0o755)
    prefix = mesh_mod.prefix_for(workdir)
    up = subprocess.Popen([*CLI, "up", "--workdir", str(workdir)], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60  # kill it once pods (and their processes) exist
        while time.monotonic() < deadline and len(netns.listed(prefix)) < 5:
            time.sleep(0.1)
        assert len(netns.listed(prefix)) >= 5, "up made no pods in 60 s"
        up.send_signal(signal.SIGKILL)
        up.wait(10)
        names = netns.listed(prefix)
        assert netns.pids_in(names), "the killed up left no processes: nothing to test"
        done = subprocess.run([*CLI, "down", "--workdir", str(workdir)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert netns.listed(prefix) == [] and not netns.pids_in(names)
        assert not mesh_mod.Paths(workdir).state.exists()
        again = subprocess.run([*CLI, "down", "--workdir", str(workdir)], capture_output=True, text=True, timeout=60)
        assert again.returncode == 0 and "nothing to remove" in again.stdout
    finally:
        if up.poll() is None:
            up.kill()
        mesh_mod.down(workdir)
        shutil.rmtree(workdir, ignore_errors=True)


def test_non_root_is_told_it_needs_root():
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root to drop to another user")
    done = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *CLI, "status",
                           "--workdir", "/tmp/amesh-nonroot-check"], capture_output=True, text=True, timeout=60,
                          cwd=str(Path(__file__).resolve().parents[1]))
    assert done.returncode == 1 and "needs root" in done.stderr, (done.stdout, done.stderr)
