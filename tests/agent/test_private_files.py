"""APISIX's conf/config.yaml (it holds the admin key) and the file-mode apisix.yaml (upstream TLS keys, plugin
credentials) are 0600 from the moment they exist: with umask 0 — the worst case — neither the file nor the
temp file it is renamed from is ever readable by anyone else, and nothing is left beside it."""

from __future__ import annotations

import asyncio
import os
import stat
import tempfile

import pytest

from sidecar_agent.app import Agent
from sidecar_agent.sink.file import FileSink
from tests.agent.test_app import ENV, config


class _FakeApisix:  # config() only needs these two attributes
    url = "http://127.0.0.1:9"
    api_key = "k" * 32


@pytest.fixture
def umask_zero():
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def watched(monkeypatch):
    """Every mode a file had when created (mkstemp) and when renamed into place (os.replace)."""
    seen: list[tuple[str, str, int]] = []
    real_mkstemp, real_replace = tempfile.mkstemp, os.replace

    def mkstemp(*args, **kwargs):
        fd, path = real_mkstemp(*args, **kwargs)
        seen.append(("created", path, stat.S_IMODE(os.fstat(fd).st_mode)))
        return fd, path

    def replace(src, dst, *args, **kwargs):
        seen.append(("renamed", str(dst), stat.S_IMODE(os.stat(src).st_mode)))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(os, "replace", replace)
    return seen


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_config_yaml_is_0600_from_the_start(tmp_path, umask_zero, watched):
    agent = Agent(config(1, _FakeApisix(), tmp_path, apisix_admin_key="k" * 32), ENV)
    conf = tmp_path / "conf" / "config.yaml"
    conf.parent.mkdir(parents=True)
    conf.write_text("old: world-readable\n")
    os.chmod(conf, 0o644)
    agent._write_apisix_config()
    assert agent.apisix_settings.admin_key in conf.read_text()
    assert mode(conf) == 0o600
    assert [m for what, _, m in watched] == [0o600, 0o600] and watched[-1][1] == str(conf)
    assert sorted(p.name for p in conf.parent.iterdir()) == ["config.yaml"]  # no temp file left
    agent._write_apisix_config()  # rewritten (new data path): still never wider
    assert mode(conf) == 0o600 and all(m == 0o600 for _, _, m in watched)


def test_apisix_yaml_is_0600_from_the_start(tmp_path, umask_zero, watched):
    path = tmp_path / "conf" / "apisix.yaml"
    sink = FileSink(path)
    asyncio.run(sink.push({"routes": [], "upstreams": []}))
    assert mode(path) == 0o600 and path.read_text().endswith("#END\n")
    assert [m for _, _, m in watched] == [0o600, 0o600]
    assert sorted(p.name for p in path.parent.iterdir()) == ["apisix.yaml"]


@pytest.mark.skipif(os.geteuid() != 0, reason="handing a file to another user needs root")
def test_root_keeps_the_apisix_users_ownership(tmp_path, umask_zero):
    conf = tmp_path / "conf"
    conf.mkdir()
    os.chown(conf, 1337, 1337)  # APISIX's prefix, as the image (and tests/realapisix.py) has it
    path = conf / "apisix.yaml"
    asyncio.run(FileSink(path).push({"routes": []}))
    st = os.stat(path)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1337, 1337, 0o600)
    agent = Agent(config(1, _FakeApisix(), tmp_path, apisix_admin_key="k" * 32), ENV)
    agent._write_apisix_config()
    st = os.stat(conf / "config.yaml")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1337, 1337, 0o600)
    mine = tmp_path / "mine"
    asyncio.run(FileSink(mine / "apisix.yaml").push({"routes": []}))  # a root-owned directory: stays root's
    assert os.stat(mine / "apisix.yaml").st_uid == 0
