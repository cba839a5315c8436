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

from sidecar_agent.xds.backoff import Backoff

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Command:
    run: tuple[str, ...]  # the long-running process (stays in the foreground)
    prepare: tuple[tuple[str, ...], ...] = ()  # one-shot steps before each start (e.g. `apisix init`)
    cwd: str | None = None
    env: Mapping[str, str] | None = None


def apisix_command(prefix: str = "/usr/local/apisix") -> Command:
    return Command(
        prepare=(("apisix", "init"),),
        run=("openresty", "-p", prefix, "-g", "daemon off;"),
        cwd=prefix,
    )


@dataclass(eq=False)
class Supervisor:
    command: Command
    backoff: Backoff = field(default_factory=lambda: Backoff(initial=0.5, maximum=30.0))
    healthy_after: float = 10.0  # a run this long resets the backoff
    on_start: Callable[[int], None] = lambda pid: None  # e.g. re-push the config to a fresh APISIX
    rng: random.Random = field(default_factory=random.Random)
    pid: int | None = field(default=None, init=False)
    starts: int = field(default=0, init=False)
    reloads: int = field(default=0, init=False)
    _process: asyncio.subprocess.Process | None = field(default=None, init=False)
    _stopping: bool = field(default=False, init=False)

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

    async def _run_once(self) -> int | None:
        env = dict(self.command.env) if self.command.env is not None else None
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
        self.starts += 1
        log.info("APISIX started, pid %d", self.pid)
        self.on_start(self.pid)
        code = await self._process.wait()
        self.pid = None
        return code

    async def reload(self) -> bool:
        """Apply a regenerated config.yaml without dropping connections: re-run the prepare steps
        (`apisix init` writes nginx.conf from it), then SIGHUP the master, which starts new workers on the new
        listeners and lets the old ones finish. False when APISIX is not running or a step failed."""
        if self._process is None or self._process.returncode is not None:
            return False  # the next start runs the prepare steps anyway
        env = dict(self.command.env) if self.command.env is not None else None
        for step in self.command.prepare:
            prep = await asyncio.create_subprocess_exec(*step, cwd=self.command.cwd, env=env)
            if await prep.wait() != 0:
                log.error("reload: %s failed", " ".join(step))
                return False
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
