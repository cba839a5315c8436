"""A local mesh (localmesh: real istiod + Bookinfo pods with real APISIX sidecars) for the end-to-end tests.

One mesh per test module (bringing one up takes ~25 s on 2 CPUs); each module's workdir is unique, so its
namespaces never meet another test's. Tests that change the mesh restore it (`tasks.reset`) before they end.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from localmesh import istiod, mesh as mesh_mod


def unavailable() -> str | None:
    """Why the mesh cannot run here, or None. CI installs everything, so there these are failures, not skips
    (tests/allowed_skips.txt does not list them)."""
    if os.geteuid() != 0:
        return "the local mesh needs root"
    if not (mesh_mod.DEFAULT_APISIX_HOME / "apisix" / "cli" / "apisix.lua").is_file():
        return "APISIX is not installed in /usr/local/apisix (bash scripts/setup.sh installs it from ../shared/peers)"
    if not sorted(istiod.SHARED_PEERS.glob("istiod/istiod-*.tar.xz")):
        return f"no istiod tarball in {istiod.SHARED_PEERS / 'istiod'}"
    for tool in ("openresty", "setpriv", "nghttp"):
        if shutil.which(tool) is None:
            return f"{tool} not on PATH (bash scripts/setup.sh)"
    check = subprocess.run(["setpriv", "--reuid=1337", "--regid=1337", "--clear-groups", sys.executable, "-c", "pass"],
                           capture_output=True)
    if check.returncode != 0:
        return f"UID 1337 cannot run {sys.executable} (make the venv with bash scripts/setup.sh)"
    return None


def mesh_up(apisix_mode: str, **options):
    """Bring a mesh up in a fresh world-traversable workdir (the agents run as UID 1337 and write their APISIX
    prefixes there; pytest's own tmp tree is root-only and re-secured by every pytest run), take it down after."""
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    workdir = Path(tempfile.mkdtemp(prefix=f"amesh-e2e-{apisix_mode}-"))
    workdir.chmod(0o755)
    try:
        mesh_mod.up(workdir, apisix_mode=apisix_mode, **options)
        yield workdir
    finally:
        mesh_mod.down(workdir)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def mesh():
    """A file-mode mesh for the module (test_mesh_api_mode.py overrides it with an API-mode one)."""
    yield from mesh_up("file")


@pytest.fixture
def clean(mesh):
    """The mesh with every Bookinfo service routed to v1 before and after the test (tasks.reset)."""
    from localmesh import tasks

    tasks.reset(mesh)
    yield mesh
    tasks.reset(mesh)
