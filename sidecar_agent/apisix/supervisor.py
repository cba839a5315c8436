"""Start APISIX, restart it with backoff when it dies, forward signals, drain it on shutdown.

The child is tracked by PID only. nginx semantics: SIGQUIT is a graceful shutdown (finish
in-flight requests), SIGTERM a fast one, SIGHUP a reload.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from amesh_common.backoff import Backoff

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Command:
    run: tuple[str, ...]  # the long-running process (stays in the foreground)
    prepare: tuple[tuple[str, ...], ...] = ()  # one-shot steps before each start (e.g. `apisix init`)
    cwd: str | None = None
    env: Mapping[str, str] | None = None
    # files a killed process leaves behind that stop the next start (glob patterns under cwd); removed
    # before each start, never before a reload
    stale: tuple[str, ...] = ()


def apisix_command(prefix: str = "/usr/local/apisix") -> Command:
    return Command(
        prepare=(("apisix", "init"),),
        run=("openresty", "-p", prefix, "-g", "daemon off;"),
        cwd=prefix,
        # APISIX's event sockets: after a SIGKILL nginx's next bind() fails with "Address already in use"
        # (the official image's entrypoint removes them for the same reason)
        stale=("logs/*.sock",),
    )


@dataclass(eq=False)
class Supervisor:
    command: Command
    backoff: Backoff = field(default_factory=lambda: Backoff(initial=0.5, maximum=30.0))
    healthy_after: float = 10.0  # a run this long resets the backoff
    on_start: Callable[[int], None] = lambda pid: None  # e.g. re-push the config to a fresh APISIX
    # True once the started process is up and serving (e.g. one of its listeners accepts): a reload signal
    # sent before nginx has installed its signal handlers would kill it instead
    serving: Callable[[], bool] = lambda: True
    rng: random.Random = field(default_factory=random.Random)
    pid: int | None = field(default=None, init=False)
    started_at: float | None = field(default=None, init=False)  # monotonic time of the running process's start
    starts: int = field(default=0, init=False)
    reloads: int = field(default=0, init=False)
    # config.yaml generations: bumped by config_changed(); `prepared` is the one the running APISIX was
    # initialised with (`apisix init` turns config.yaml into nginx.conf), so a change made while a start is
    # under way is not lost between that start's `apisix init` and its first reload
    generation: int = field(default=0, init=False)
    prepared: int = field(default=-1, init=False)
    _process: asyncio.subprocess.Process | None = field(default=None, init=False)
    _stopping: bool = field(default=False, init=False)
    _reloading: asyncio.Lock = field(default_factory=asyncio.Lock, init=False)  # one reload at a time

    async def run(self) -> None:
        attempt = 0
        while not self._stopping:
            started = time.monotonic()
            code = await self._run_once()
            if self._stopping:
                return
            if time.monotonic() - started >= self.healthy_after:
                attempt = 0
            delay = self.backoff.delay(attempt, self.rng.random())
            attempt += 1
            log.warning("APISIX exited with %s; restarting in %.1fs", code, delay)
            await asyncio.sleep(delay)

    def config_changed(self) -> None:
        self.generation += 1

    @property
    def current(self) -> bool:
        """The running APISIX was initialised with the latest config.yaml."""
        return self.pid is not None and self.prepared == self.generation

    async def _run_once(self) -> int | None:
        env = dict(self.command.env) if self.command.env is not None else None
        generation = self.generation
        base = Path(self.command.cwd or ".")
        for pattern in self.command.stale:
            for path in base.glob(pattern):
                path.unlink(missing_ok=True)
        for step in self.command.prepare:
            prep = await asyncio.create_subprocess_exec(*step, cwd=self.command.cwd, env=env)
            code = await prep.wait()
            if code != 0:
                log.error("%s failed with %s", " ".join(step), code)
                return code
        self._process = await asyncio.create_subprocess_exec(
            *self.command.run, cwd=self.command.cwd, env=env, start_new_session=True
        )
        self.pid = self._process.pid
        self.prepared = generation
        self.started_at = time.monotonic()
        self.starts += 1
        log.info("APISIX started, pid %d", self.pid)
        self.on_start(self.pid)
        catch_up = asyncio.create_task(self._reload_when_serving(self._process), name="apisix-catch-up")
        try:
            code = await self._process.wait()
        finally:
            catch_up.cancel()
        self.pid = None
        # a master that died (killed, crashed) leaves its workers behind, still accepting on the reuseport
        # listeners with the old configuration: end its whole process group before the next start
        try:
            os.killpg(self._process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        return code

    async def _reload_when_serving(self, process: asyncio.subprocess.Process, timeout: float = 60.0) -> None:
        """Once the fresh process serves, reload it if config.yaml changed after its `apisix init`."""
        deadline = time.monotonic() + timeout
        while process.returncode is None and not self.serving() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        if process.returncode is None and self.prepared != self.generation:
            await self.reload()

    async def reload(self) -> bool:
        """Apply a regenerated config.yaml without dropping connections: re-run the prepare steps
        (`apisix init` writes nginx.conf from it), then SIGHUP the master, which starts new workers on the new
        listeners and lets the old ones finish. False when APISIX is not running or a step failed."""
        async with self._reloading:
            return await self._reload()

    async def _reload(self) -> bool:
        if self._process is None or self._process.returncode is not None:
            return False  # the next start runs the prepare steps anyway
        if self.prepared == self.generation:
            return True  # a concurrent reload already applied the latest config.yaml
        if not self.serving():
            return False  # still starting: _reload_when_serving reloads it once it serves
        env = dict(self.command.env) if self.command.env is not None else None
        generation = self.generation
        for step in self.command.prepare:
            prep = await asyncio.create_subprocess_exec(*step, cwd=self.command.cwd, env=env)
            if await prep.wait() != 0:
                log.error("reload: %s failed", " ".join(step))
                return False
        self.prepared = generation
        log.info("reloading APISIX (pid %d) for a new config.yaml", self._process.pid)
        self.forward(signal.SIGHUP)
        self.reloads += 1
        return True

    def forward(self, signum: int) -> None:
        if self._process is not None and self._process.returncode is None:
            os.kill(self._process.pid, signum)

    async def stop(self, drain_seconds: float = 5.0) -> int | None:
        """Graceful stop: SIGQUIT, wait up to `drain_seconds`, then SIGKILL. Returns the exit code."""
        self._stopping = True
        process = self._process
        if process is None or process.returncode is not None:
            return process.returncode if process else None
        os.kill(process.pid, signal.SIGQUIT)
        try:
            return await asyncio.wait_for(process.wait(), drain_seconds)
        except asyncio.TimeoutError:
            log.warning("APISIX did not drain in %.0fs: killing pid %d", drain_seconds, process.pid)
            os.kill(process.pid, signal.SIGKILL)
            return await process.wait()
