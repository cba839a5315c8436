"""The supervisor with a real child process standing in for APISIX (APISIX is not installable here)."""

from __future__ import annotations

import asyncio
import signal
import sys

from sidecar_agent.apisix.supervisor import Command, Supervisor
from amesh_common.backoff import Backoff
from tests.agent.waiting import eventually

# Stands in for openresty: records signals in a file, drains on SIGQUIT, reloads on SIGHUP.
CHILD = r"""
import signal, sys, time
log = open(sys.argv[1], "a", buffering=1)
def quit_(s, f):
    log.write("quit\n"); time.sleep(0.1); sys.exit(0)
signal.signal(signal.SIGQUIT, quit_)
signal.signal(signal.SIGHUP, lambda s, f: log.write("hup\n"))
if len(sys.argv) > 2 and sys.argv[2] == "ignore-quit":
    signal.signal(signal.SIGQUIT, lambda s, f: log.write("quit-ignored\n"))
log.write("start\n")  # only once the handlers are in place: a signal sent on "start" is caught
while True:
    time.sleep(0.05)
"""


def command(tmp_path, *extra) -> Command:
    script = tmp_path / "fake_openresty.py"
    script.write_text(CHILD)
    return Command(run=(sys.executable, str(script), str(tmp_path / "log"), *extra),
                   prepare=((sys.executable, "-c", f"open({str(tmp_path / 'init')!r}, 'a').write('init\\n')"),))


def lines(tmp_path, name="log") -> list[str]:
    path = tmp_path / name
    return path.read_text().split() if path.exists() else []


def test_start_restart_forward_and_drain(tmp_path):
    async def main():
        started = []
        sup = Supervisor(command(tmp_path), backoff=Backoff(initial=0.05, maximum=0.1), on_start=started.append)
        task = asyncio.create_task(sup.run())
        await eventually(lambda: lines(tmp_path) == ["start"], what="first start")
        assert lines(tmp_path, "init") == ["init"]  # prepare ran before the start
        first = sup.pid
        sup.forward(signal.SIGHUP)
        await eventually(lambda: "hup" in lines(tmp_path), what="forwarded SIGHUP")
        import os
        os.kill(first, signal.SIGKILL)  # APISIX crashes: restarted with backoff, prepare again
        await eventually(lambda: sup.pid not in (None, first) and lines(tmp_path).count("start") == 2,
                         what="restart")
        assert len(started) == 2 and started[0] == first and lines(tmp_path, "init") == ["init", "init"]
        code = await sup.stop(drain_seconds=5)
        assert code == 0 and lines(tmp_path)[-1] == "quit"  # graceful SIGQUIT, not a kill
        await asyncio.wait_for(task, 5)

    asyncio.run(main())


def test_drain_timeout_kills(tmp_path):
    async def main():
        sup = Supervisor(command(tmp_path, "ignore-quit"))
        task = asyncio.create_task(sup.run())
        await eventually(lambda: sup.pid is not None, what="start")
        await eventually(lambda: "start" in lines(tmp_path), what="child ready")
        code = await sup.stop(drain_seconds=0.3)
        assert code == -signal.SIGKILL and "quit-ignored" in lines(tmp_path)
        await asyncio.wait_for(task, 5)

    asyncio.run(main())


def test_reload_reruns_prepare_then_sighups_the_same_process(tmp_path):
    """A regenerated config.yaml is applied by `apisix init` + SIGHUP: no restart, connections kept."""
    async def main():
        sup = Supervisor(command(tmp_path))
        assert await sup.reload() is False  # not running: the next start prepares anyway
        task = asyncio.create_task(sup.run())
        await eventually(lambda: lines(tmp_path) == ["start"], what="first start")
        pid = sup.pid
        assert await sup.reload() is True and sup.reloads == 0  # config.yaml unchanged: nothing to do
        sup.config_changed()
        assert not sup.current
        assert await sup.reload() is True and sup.current
        await eventually(lambda: "hup" in lines(tmp_path), what="SIGHUP after prepare")
        assert lines(tmp_path, "init") == ["init", "init"] and sup.pid == pid and sup.reloads == 1
        assert lines(tmp_path).count("start") == 1
        await sup.stop(drain_seconds=5)
        await asyncio.wait_for(task, 5)

    asyncio.run(main())


def test_config_changed_during_a_start_is_applied_once_the_process_serves(tmp_path):
    """config.yaml rewritten after a start's `apisix init` (the first xDS document arriving while APISIX
    starts): no SIGHUP before the process serves (it would kill nginx before its handlers exist), then one
    reload with the new config."""
    async def main():
        serving = {"now": False}
        sup = Supervisor(command(tmp_path), serving=lambda: serving["now"])
        task = asyncio.create_task(sup.run())
        await eventually(lambda: lines(tmp_path) == ["start"], what="first start")
        sup.config_changed()
        assert await sup.reload() is False and sup.reloads == 0  # not serving yet
        serving["now"] = True
        await eventually(lambda: sup.reloads == 1 and "hup" in lines(tmp_path), what="catch-up reload")
        assert sup.current and lines(tmp_path, "init") == ["init", "init"]
        await sup.stop(drain_seconds=5)
        await asyncio.wait_for(task, 5)

    asyncio.run(main())
