"""Run a program with input and collect its output: what subprocess.run does, without importing subprocess.

subprocess brings locale, re, threading, selectors, signal and contextlib along, ~4 ms of a pod start in
which the iptables programs themselves take ~5 ms (benchmarks/init_apply.py). posix_spawn and poll are
all this needs: the program is an absolute path (backend.py found it), the environment is ours.
"""

from __future__ import annotations

import os
import select
import time

from init.records import record


@record
class Result:
    returncode: int
    stdout: str
    stderr: str


def run(argv: list[str], input_text: str = "", timeout: float | None = None) -> Result:
    """Spawn argv[0] (a path) with `input_text` on stdin; wait for it to end (killed after `timeout`)."""
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        pid = os.posix_spawn(argv[0], argv, os.environ, file_actions=[
            (os.POSIX_SPAWN_DUP2, in_r, 0), (os.POSIX_SPAWN_DUP2, out_w, 1), (os.POSIX_SPAWN_DUP2, err_w, 2)])
    finally:
        for fd in (in_r, out_w, err_w):
            os.close(fd)
    pending = input_text.encode()
    chunks: dict[int, list[bytes]] = {out_r: [], err_r: []}
    poller = select.poll()
    poller.register(out_r, select.POLLIN)
    poller.register(err_r, select.POLLIN)
    if pending:
        poller.register(in_w, select.POLLOUT)
    else:
        os.close(in_w)
    open_fds = {out_r, err_r} | ({in_w} if pending else set())
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        # poll, not write-then-read: a program may fill one pipe before it has read all its input
        while open_fds:
            wait_ms = None if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
            events = poller.poll(wait_ms)
            if not events:
                os.kill(pid, 9)
                break
            for fd, _ in events:
                if fd == in_w:
                    try:
                        pending = pending[os.write(in_w, pending[:65536]):]
                    except BrokenPipeError:
                        pending = b""
                    if not pending:
                        poller.unregister(in_w)
                        os.close(in_w)
                        open_fds.discard(in_w)
                    continue
                data = os.read(fd, 65536)
                if data:
                    chunks[fd].append(data)
                else:
                    poller.unregister(fd)
                    os.close(fd)
                    open_fds.discard(fd)
    finally:
        for fd in open_fds:
            os.close(fd)
    status = os.waitpid(pid, 0)[1]
    code = os.waitstatus_to_exitcode(status)
    return Result(code, b"".join(chunks[out_r]).decode(errors="replace"),
                  b"".join(chunks[err_r]).decode(errors="replace"))
