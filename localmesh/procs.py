"""Processes of the local mesh: started inside a namespace (optionally as another user), detached from
the `amesh-mesh` process, tracked by PID (with the kernel's start time, so a reused PID is never killed)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path


def start_time(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks); None when the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[19])


def alive(pid: int, started: int | None) -> bool:
    now = start_time(pid)
    return now is not None and (started is None or now == started) and not _zombie(pid)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return True


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def spawn(namespace: str, argv: Sequence[str], *, log: Path, env: Mapping[str, str] | None = None,
          uid: int | None = None, gid: int | None = None, cwd: Path | None = None) -> dict:
    """Start `argv` in `namespace` (as uid/gid when given) in its own session, output to `log`.
    `ip netns exec` and `setpriv` exec the command, so the PID returned is the command's own."""
    prefix = ["ip", "netns", "exec", namespace]
    if uid is not None:
        prefix += ["setpriv", f"--reuid={uid}", f"--regid={gid if gid is not None else uid}", "--clear-groups"]
    log.parent.mkdir(parents=True, exist_ok=True)
    log.touch()
    if uid is not None:  # nginx reopens /dev/stderr by path: the file must be the process user's own
        os.chown(log, uid, gid if gid is not None else uid)
    with open(log, "ab") as out:
        process = subprocess.Popen([*prefix, *argv], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                   env=dict(env) if env is not None else None, cwd=cwd, start_new_session=True)
    # start_time must be read after exec; the command line tells when `ip netns exec` has exec'ed
    return {"pid": process.pid, "start": start_time(process.pid), "argv": list(argv), "namespace": namespace,
            "log": str(log)}


def run(namespace: str, argv: Sequence[str], *, timeout: float = 60, env: Mapping[str, str] | None = None,
        check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", namespace, *argv], capture_output=True, text=True,
                          timeout=timeout, env=dict(env) if env is not None else None, check=check)


def terminate(pids: Sequence[int], grace: float = 5.0) -> None:
    """SIGTERM each process group leader and process, then SIGKILL what is left after `grace` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
        live = [p for p in pids if start_time(p) is not None and not _zombie(p)]
        if not live:
            return
        for pid in live:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and any(start_time(p) is not None and not _zombie(p) for p in live):
            time.sleep(0.05)
