"""Helper processes inside namespaces: started with `ip netns exec`, read as JSON lines, stopped by PID."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
AGENT = HERE / "agent.py"
SNIFF = HERE / "sniff.py"
IPTC_DUMP = HERE / "iptc_dump.py"
REPO = HERE.parent
AMESH = REPO / ".venv" / "bin" / "amesh-iptables"


class Helper:
    """A long-running child printing JSON lines; `wait_for` blocks on a predicate with a deadline."""

    def __init__(self, ns: str, argv: list[str], ready_timeout: float = 15.0):
        self.argv = ["ip", "netns", "exec", ns, sys.executable, "-u", *argv]
        # `ip netns exec` execs the command, so this PID is the helper itself
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.records: list[dict] = []
        self.stderr: list[str] = []
        self._cond = threading.Condition()
        threading.Thread(target=self._read, args=(self.proc.stdout, self.records), daemon=True).start()
        threading.Thread(target=self._read, args=(self.proc.stderr, self.stderr), daemon=True).start()
        try:
            self.wait_for(lambda r: "ready" in r, ready_timeout)
        except Exception:
            self.stop()
            raise

    def _read(self, stream, sink: list) -> None:
        for line in stream:
            item = line.rstrip("\n")
            if sink is self.records:
                try:
                    item = json.loads(item)
                except json.JSONDecodeError:
                    item = {"unparsed": item}
            with self._cond:
                sink.append(item)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def events(self) -> list[dict]:
        with self._cond:
            return [r for r in self.records if "ready" not in r]

    def wait_for(self, predicate: Callable[[dict], bool], timeout: float = 5.0) -> dict:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for record in self.records:
                    if predicate(record):
                        return record
                if self.proc.poll() is not None and self.proc.stdout.closed:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(min(remaining, 0.2))
        raise TimeoutError(f"{self.argv}: no matching record in {timeout}s; "
                           f"records={self.records} stderr={self.stderr[-5:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


def listener(ns: str, name: str, tcp: list[str] = (), udp: list[str] = (), tproxy_tcp: list[str] = ()) -> Helper:
    argv = [str(AGENT), "listen", "--name", name]
    for flag, endpoints in (("--tcp", tcp), ("--udp", udp), ("--tproxy-tcp", tproxy_tcp)):
        for endpoint in endpoints:
            argv += [flag, endpoint]
    return Helper(ns, argv)


def dial(ns: str, host: str, port: int, *, proto: str = "tcp", uid: int | None = None,
         gid: int | None = None, timeout: float = 3.0) -> dict:
    """One connection (or datagram) from inside `ns`; returns the agent's result line."""
    argv = ["ip", "netns", "exec", ns, sys.executable, str(AGENT), "dial", f"--{proto}", host, str(port),
            "--timeout", str(timeout)]
    if uid is not None:
        argv += ["--uid", str(uid)]
    if gid is not None:
        argv += ["--gid", str(gid)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 10)
    if out.returncode != 0 or not out.stdout.strip():
        raise RuntimeError(f"dial helper failed rc={out.returncode}: {out.stderr}")
    return json.loads(out.stdout.splitlines()[-1])


def amesh(ns: str | None, args: list[str], *, timeout: float = 60, env: dict | None = None,
          ) -> subprocess.CompletedProcess:
    """Run the capture program (inside `ns` via `ip netns exec`, or on the host when ns is None)."""
    prefix = ["ip", "netns", "exec", ns] if ns else []
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([*prefix, str(AMESH), *args], capture_output=True, text=True, timeout=timeout,
                          env=full_env)
