"""A real APISIX (the install at /usr/local/apisix, see ../shared/peers/apisix) for tests.

`Apisix` runs one instance in a private prefix (apisix/ and deps/ symlinked, conf/ copied) inside a
network namespace, with the `conf/config.yaml` the agent renders (`config.render_yaml`), in file
mode (`conf/apisix.json`, `load()`) or API-driven standalone mode (the Admin API on 127.0.0.1:9180
of the namespace). It runs as the capture-exempt UID/GID 1337 through `setpriv` (so in a captured
pod its upstream connections are not captured again; nginx ignores the `user` directive then), is
stopped by PID (SIGQUIT, then SIGKILL) and its prefix removed.

The test process reaches loopback listeners inside the namespace through `forward(port)`: a
listener on the host's 127.0.0.1 whose connections are opened from a thread that entered the
namespace (setns is per thread), so nothing is added to the host's network.

Only a missing /usr/local/apisix (or no root / `ip netns`) skips, saying so; CI installs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import yaml

from netns_tests import pods
from sidecar_agent.apisix import config as apisix_config
from sidecar_agent.apisix import datapath
from sidecar_agent.sink.file import FileSink

HOME = Path(os.environ.get("AMESH_APISIX_HOME", "/usr/local/apisix"))
PROXY_UID = 1337  # the UID/GID the capture rules exempt
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


@functools.cache
def unavailable() -> str | None:
    """Why a real APISIX cannot run here, or None."""
    if not (HOME / "apisix" / "cli" / "apisix.lua").exists():
        return f"APISIX is not installed at {HOME} (../shared/peers/apisix/install.sh; CI installs it)"
    if shutil.which("openresty") is None or shutil.which("apisix") is None:
        return "openresty/apisix not on PATH (install.sh creates /usr/bin/openresty and /usr/bin/apisix)"
    if os.geteuid() != 0:
        return "the real-APISIX tests need root (network namespaces, setpriv)"
    if shutil.which("ip") is None or subprocess.run(["ip", "netns", "list"], capture_output=True).returncode:
        return "`ip netns` unavailable"
    return None


def skip_unless_available() -> None:
    import pytest

    reason = unavailable()
    if reason:
        pytest.skip(reason)


def settings(mode: apisix_config.Mode, *, key: str = "amesh-test-admin-key-0123", workers: int = 1,
             **data_path: Any) -> tuple[apisix_config.ApisixSettings, datapath.DataPathSettings]:
    """The agent's settings for a test instance: one worker, the open-file limit this host allows."""
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if nofile == resource.RLIM_INFINITY or nofile > 1 << 20:
        nofile = 1 << 20
    apisix = apisix_config.ApisixSettings(admin_key=key, mode=mode, worker_processes=workers, nofile_limit=nofile)
    dp = datapath.DataPathSettings(proxy_user=apisix.worker_user, proxy_group=apisix.worker_group, **data_path)
    return apisix, dp


def _enter(ns: str) -> None:
    """Move the calling thread into namespace `ns` (setns(2) is per thread)."""
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"setns {ns}: {os.strerror(error)}")
    finally:
        os.close(fd)


def _pump(src: socket.socket, dst: socket.socket, seen: list[bytes] | None = None) -> None:
    try:
        while data := src.recv(65536):
            if seen is not None:
                seen.append(data)
            dst.sendall(data)
    except OSError:
        pass  # a reset ends the stream as an end of file does: either way the other side must hear of it
    try:
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def http_from(ns: str, host: str, port: int, *, host_header: str, method: str = "GET", path: str = "/",
              headers: dict | None = None, uid: int | None = None) -> tuple[int, str]:
    """One HTTP request from a process in namespace `ns` (as `uid`, if given): (status, body), or (0, why)
    when the connection was closed or reset without an answer."""
    return http_exchanges_from(ns, host, port, host_header=host_header, method=method, path=path,
                               headers=headers, uid=uid)[0]


def http_exchanges_from(ns: str, host: str, port: int, *, host_header: str, method: str = "GET", path: str = "/",
                        headers: dict | None = None, uid: int | None = None, count: int = 1) -> list[tuple[int, str]]:
    """`count` requests on one kept-alive connection from a process in namespace `ns` (as `uid`, if given):
    (status, body) each; the first closed or reset exchange gives (0, why) and ends the list."""
    drop = f"os.setgroups([]); os.setgid({uid}); os.setuid({uid})\n" if uid is not None else ""
    script = ("import http.client, json, os, sys, encodings.idna\n"  # idna: imported before the uid may lose access
              + drop +
              "out = []\n"
              "try:\n"
              f"    c = http.client.HTTPConnection({host!r}, {port}, timeout=5)\n"
              f"    for _ in range({count}):\n"
              f"        c.request({method!r}, {path!r}, headers=dict({{'Host': {host_header!r}}}, **{headers or {}!r}))\n"
              "        r = c.getresponse(); out.append((r.status, r.read().decode()))\n"
              "except (OSError, http.client.HTTPException) as e:\n"
              "    out.append((0, type(e).__name__))\n"
              "sys.stdout.write(json.dumps(out))\n")
    out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", script],
                         capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    return [tuple(exchange) for exchange in json.loads(out.stdout)]


def tcp_from(ns: str, port: int, payload: bytes, *, source: str = "127.0.0.1", host: str = "127.0.0.1") -> bytes:
    """One TCP exchange from a process in namespace `ns`, from address `source`: send `payload`, read until
    the server closes (no half-close: nginx's stream proxy would end both directions). b"" when the
    connection was closed or reset without an answer."""
    script = ("import socket, sys\n"
              "data = b''\n"
              "try:\n"
              f"    c = socket.create_connection(({host!r}, {port}), timeout=5, source_address=({source!r}, 0))\n"
              f"    c.sendall({payload!r})\n"
              "    while chunk := c.recv(65536):\n"
              "        data += chunk\n"
              "except OSError:\n"
              "    pass\n"
              "sys.stdout.buffer.write(data)\n")
    out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", script], capture_output=True, timeout=20)
    assert out.returncode == 0, out.stderr
    return out.stdout


def serve_in_namespace(ns: str, port: int, handle, host: str = "127.0.0.1") -> socket.socket:
    """A TCP listener on host:port inside namespace `ns` (from a thread that entered it), each accepted connection
    given to `handle(conn)` in a thread of its own; close the returned socket to stop."""
    ready, box = threading.Event(), []

    def accept() -> None:
        _enter(ns)
        box.append(socket.create_server((host, port)))
        ready.set()
        while True:
            try:
                conn, _ = box[0].accept()
            except OSError:
                return
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    if not ready.wait(5):
        raise TimeoutError(f"no listener on {host}:{port} in {ns}")
    return box[0]


class Forwarder:
    """host 127.0.0.1:<port> -> (host, port) inside namespace `ns`."""

    def __init__(self, ns: str, host: str, port: int, record=None) -> None:
        """`record(seq, request bytes, response bytes)` is called when a connection ends; `seq` numbers the
        connections in the order they were accepted (they may end in another)."""
        self.target = (ns, host, port)
        self.record = record
        self.active = 0  # connections being served (their record not made yet)
        self.accepted = 0
        self.lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.active += 1
                self.accepted += 1
                seq = self.accepted
            threading.Thread(target=self._serve, args=(client, seq), daemon=True).start()

    def _serve(self, client: socket.socket, seq: int) -> None:
        try:
            self._forward(client, seq)
        finally:
            with self.lock:
                self.active -= 1

    def idle(self, timeout: float = 5.0) -> None:
        """Wait until every connection accepted so far has ended (and been recorded)."""
        deadline = time.monotonic() + timeout
        while self.active and time.monotonic() < deadline:
            time.sleep(0.01)

    def _forward(self, client: socket.socket, seq: int) -> None:
        ns, host, port = self.target
        try:
            _enter(ns)  # this thread only; it ends with the connection
            upstream = socket.create_connection((host, port), timeout=10)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        for sock in (client, upstream):  # no Nagle: small request/answer exchanges would wait for ACKs
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sent, got = ([], []) if self.record else (None, None)
        back = threading.Thread(target=_pump, args=(upstream, client, got), daemon=True)
        back.start()
        _pump(client, upstream, sent)
        back.join(30)
        client.close()
        upstream.close()
        if self.record:
            self.record(seq, b"".join(sent), b"".join(got))

    def close(self) -> None:
        self.closed = True
        self.listener.close()


def _connectable(ns: str, host: str, port: int) -> bool:
    result: list[bool] = []

    def probe() -> None:
        try:
            _enter(ns)
            socket.create_connection((host, port), timeout=1).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe)
    thread.start()
    thread.join()
    return result[0]


class Apisix:
    """One APISIX in a private prefix inside namespace `ns` (None: a fresh namespace of its own, with
    only loopback, removed by `stop()`)."""

    def __init__(self, config_yaml: str, *, ns: str | None = None, document: dict | None = None,
                 timeout: float = 30.0) -> None:
        self.conf = yaml.safe_load(config_yaml)
        self.file_mode = self.conf["deployment"]["role"] == "data_plane"
        self.own_ns = ns is None
        self.ns = ns or pods.unique_prefix() + "-apisix"
        self.prefix = Path(tempfile.mkdtemp(prefix="amesh-apisix-"))
        self.proc: subprocess.Popen | None = None
        self.forwarders: dict[tuple[str, int], Forwarder] = {}
        self.extra_forwarders: list[Forwarder] = []
        self.sink: FileSink | None = None
        self.timeout = timeout
        try:
            if self.own_ns:
                pods.create_namespace(self.ns)
            self._prepare(config_yaml, document)
            self.start()
        except BaseException:
            self.stop()
            raise

    # -- lifecycle -----------------------------------------------------------------------------------
    def _prepare(self, config_yaml: str, document: dict | None) -> None:
        for name in ("apisix", "deps"):
            (self.prefix / name).symlink_to(HOME / name)
        conf = self.prefix / "conf"
        conf.mkdir()
        shutil.copytree(HOME / "conf" / "cert", conf / "cert")
        for name in ("mime.types", "debug.yaml"):
            shutil.copy(HOME / "conf" / name, conf / name)
        (conf / "config.yaml").write_text(config_yaml)
        if self.file_mode:
            self.write_document(document or {})
        (self.prefix / "logs").mkdir()
        init = pods.ns_run(self.ns, ["sh", "-c", f"cd {self.prefix} && apisix init"], check=False, timeout=60)
        if init.returncode:
            raise RuntimeError(f"apisix init failed ({init.returncode}):\n{init.stdout}\n{init.stderr}")
        self.init_output = init.stdout + init.stderr
        for path in [self.prefix, *self.prefix.rglob("*")]:
            if not path.is_symlink():
                os.chown(path, PROXY_UID, PROXY_UID)

    def start(self) -> None:
        """Start openresty (also after `stop_process()`: a restart that keeps the prefix) and wait until
        every listener of config.yaml accepts."""
        argv = ["ip", "netns", "exec", self.ns, "setpriv", "--reuid", str(PROXY_UID), "--regid", str(PROXY_UID),
                "--clear-groups", "openresty", "-p", f"{self.prefix}/", "-g", "daemon off;"]
        path = self.prefix / "logs" / "stderr.log"  # error_log is /dev/stderr: reopened by UID 1337
        stderr = open(path, "ab")
        os.chown(path, PROXY_UID, PROXY_UID)
        # `ip netns exec` and setpriv exec, so this PID is the nginx master's
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=stderr, cwd=self.prefix)
        stderr.close()
        self._wait_ready()

    def listeners(self) -> list[tuple[str, int]]:
        out = [("127.0.0.1", int(item["port"])) for item in self.conf["apisix"]["node_listen"]]
        ssl = self.conf["apisix"].get("ssl") or {}
        if ssl.get("enable"):
            out += [("127.0.0.1", int(item["port"])) for item in ssl.get("listen", [])]
        for item in self.conf["apisix"].get("stream_proxy", {}).get("tcp", []):
            host, _, port = str(item["addr"]).rpartition(":")
            if not host.startswith("["):
                out.append(("127.0.0.1", int(port)))
        if not self.file_mode:
            out.append(("127.0.0.1", self.admin_port))
        return out

    @property
    def admin_port(self) -> int:
        return int(self.conf["deployment"]["admin"]["admin_listen"]["port"])

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.timeout
        pending = self.listeners()
        while pending:
            if self.proc.poll() is not None:
                raise RuntimeError(f"APISIX exited {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"APISIX not listening on {pending} after {self.timeout}s:\n{self.log()}")
            pending = [(h, p) for h, p in pending if not _connectable(self.ns, h, p)]
            if pending:
                time.sleep(0.05)
        if not self.file_mode:  # the Admin API answers once the workers run
            while self.admin("GET")[0] not in (200, 404):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"Admin API not answering:\n{self.log()}")
                time.sleep(0.05)

    def stop_process(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGQUIT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)

    def restart(self) -> None:
        """Stop and start the same instance: API mode forgets everything pushed (as in a pod)."""
        self.stop_process()
        self.start()

    def stop(self) -> None:
        self.stop_process()
        for forwarder in self.extra_forwarders:
            forwarder.close()
        for forwarder in self.forwarders.values():
            forwarder.close()
        self.forwarders.clear()
        if self.own_ns:
            pods.remove_namespace(self.ns)
        shutil.rmtree(self.prefix, ignore_errors=True)

    def log(self) -> str:
        parts = []
        for name in ("stderr.log", "error.log"):
            path = self.prefix / "logs" / name
            if path.exists():
                parts.append(path.read_text(errors="replace")[-4000:])
        return "\n".join(parts)

    def processes(self, title: bytes = b"nginx: ") -> set[int]:
        """PIDs of the master's live children whose title starts with `title` (workers: b"nginx: worker
        process"; the privileged agent too with the default), not those of a reload shutting down. Found
        by their parent in /proc/*/stat: the master's task `children` file can miss children while others
        exit, as the old workers do during a reload (proc(5))."""
        out, master = set(), self.proc.pid
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
                cmdline = (stat.parent / "cmdline").read_bytes() if ppid == master else b""
            except (OSError, IndexError, ValueError):
                continue
            if cmdline.startswith(title) and b"shutting down" not in cmdline:
                out.add(int(stat.parent.name))
        return out

    def errors(self) -> list[str]:
        """error-level lines of the log, without the ones every start of this build logs
        (../shared/peers/apisix/README.md "What fails")."""
        known = ("rediscluster.lua", "setrlimit", "resty.ksuid", "resty.luasocket.http",
                 # API mode: a stream connection before the first PUT (the readiness probe)
                 "config_util.lua:34",
                 # the start-up probe of the Prometheus port, in the second before the exporter has data
                 "Failed to retrieve cached metrics")
        return [line for line in self.log().splitlines()
                if ("[error]" in line or "[emerg]" in line or "[crit]" in line) and not any(k in line for k in known)]

    # -- configuration -------------------------------------------------------------------------------
    def write_document(self, document: dict) -> None:
        """File mode: write conf/apisix.json as the agent does (sink/file.py: atomically, and never
        twice within one second, since APISIX notices a new file by its mtime in seconds)."""
        if self.sink is None:
            self.sink = FileSink(self.prefix / "conf" / "apisix.json")
        asyncio.run(self.sink.push(document))

    def load(self, document: dict, probe=None, timeout: float = 10.0) -> None:
        """File mode: write `document` and wait until `probe()` (the test's own check that the new
        document is live) is true; without a probe wait out APISIX's 1 s poll twice."""
        self.write_document(document)
        if probe is None:
            time.sleep(2.2)
            return
        self.wait_for(probe, timeout)

    def wait_for(self, probe, timeout: float = 10.0) -> None:
        """Until `probe()` is true (a new document is live: ~1 s in file mode, at once in API mode for
        HTTP, ~1 s for stream routes)."""
        deadline = time.monotonic() + timeout
        while not probe():
            if time.monotonic() > deadline:
                raise TimeoutError(f"document not live after {timeout}s:\n{self.log()}")
            time.sleep(0.1)

    # -- reaching it ---------------------------------------------------------------------------------
    def forward(self, port: int, host: str = "127.0.0.1") -> int:
        """A host-side 127.0.0.1 port that reaches (host, port) in the namespace."""
        if (host, port) not in self.forwarders:
            self.forwarders[(host, port)] = Forwarder(self.ns, host, port)
        return self.forwarders[(host, port)].port

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.forward(self.admin_port)}"

    @property
    def admin_key(self) -> str:
        return self.conf["deployment"]["admin"]["admin_key"][0]["key"]

    def admin(self, method: str, body: bytes | None = None, headers: dict | None = None,
              ) -> tuple[int, dict, dict]:
        """One Admin API call on /apisix/admin/configs: (status, JSON body or {}, headers)."""
        request = urllib.request.Request(self.admin_url + "/apisix/admin/configs", data=body, method=method,
                                         headers={"X-API-KEY": self.admin_key, **(headers or {})})
        try:
            with urllib.request.urlopen(request, timeout=5) as answer:
                status, text, got = answer.status, answer.read(), dict(answer.headers)
        except urllib.error.HTTPError as exc:
            status, text, got = exc.code, exc.read(), dict(exc.headers)
        except OSError:
            return 0, {}, {}
        try:
            parsed = json.loads(text) if text.strip() else {}
        except ValueError:
            parsed = {"raw": text.decode(errors="replace")}
        return status, parsed, got


@contextlib.contextmanager
def files_for_apisix(prefix: str) -> Iterator[Path]:
    """A fresh directory APISIX (UID 1337) can read below /tmp (pytest's own are private to root), for
    certificates and keys; removed afterwards."""
    base = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        base.chmod(0o755)
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def running(config_yaml: str, **kwargs: Any) -> Iterator[Apisix]:
    instance = Apisix(config_yaml, **kwargs)
    try:
        yield instance
    finally:
        instance.stop()


class AdminRecorder:
    """The real Admin API seen the way tests/agent/fake_apisix.FakeApisix is: `url` (through a
    forwarder that records every exchange), `answers` (status of every PUT), `accepted` (the
    documents of PUTs answered 202), and `config` / `versions` read back with GET; `restart()`
    restarts APISIX (API mode keeps nothing across a restart)."""

    def __init__(self, apisix: Apisix) -> None:
        self.apisix = apisix
        self.api_key = apisix.admin_key
        self._answers: list[tuple[int, int]] = []  # (connection seq, status): connections end in any order
        self._accepted: list[tuple[int, dict]] = []
        self.lock = threading.Lock()
        self.forwarder = Forwarder(apisix.ns, "127.0.0.1", apisix.admin_port, record=self._record)
        apisix.extra_forwarders.append(self.forwarder)
        self.url = f"http://127.0.0.1:{self.forwarder.port}"

    @property
    def metrics_url(self) -> str:
        port = self.apisix.conf["plugin_attr"]["prometheus"]["export_addr"]["port"]
        return f"http://127.0.0.1:{self.apisix.forward(port)}/apisix/prometheus/metrics"

    @property
    def answers(self) -> list[int]:
        """Statuses of the PUTs, in the order their connections were opened."""
        self.forwarder.idle()
        with self.lock:
            return [status for _, status in sorted(self._answers)]

    @property
    def accepted(self) -> list[dict]:
        self.forwarder.idle()
        with self.lock:
            return [body for _, body in sorted(self._accepted, key=lambda pair: pair[0])]

    def _record(self, seq: int, request: bytes, response: bytes) -> None:
        if not request.startswith(b"PUT ") or not response.startswith(b"HTTP/"):
            return
        status = int(response.split(b" ", 2)[1])
        with self.lock:
            self._answers.append((seq, status))
            if status == 202:
                body = json.loads(request.partition(b"\r\n\r\n")[2])
                self._accepted.append((seq, {k: v for k, v in body.items() if not k.endswith("_conf_version") and v}))

    def _get(self) -> dict:
        status, body, _ = self.apisix.admin("GET")
        assert status == 200, (status, body)
        return body

    @property
    def config(self) -> dict:
        return {k: v for k, v in self._get().items() if not k.endswith("_conf_version") and not k.startswith("X-")}

    @property
    def versions(self) -> dict[str, int]:
        return {k[: -len("_conf_version")]: v for k, v in self._get().items() if k.endswith("_conf_version")}

    def restart(self) -> None:
        self.apisix.restart()

    def reset(self) -> None:
        """A clean slate for the next test: restarted, nothing recorded."""
        self.apisix.restart()
        self.forwarder.idle()
        with self.lock:
            self._answers.clear()
            self._accepted.clear()


ECHO = Path(__file__).resolve().parent / "echo_server.py"


class EchoServers:
    """tests/echo_server.py in namespace `ns`: listeners (name, host, port) answering with their name
    (host an IPv6 literal in brackets for v6). A context manager; stopped by PID."""

    def __init__(self, ns: str, listeners: list[tuple[str, str, int]]) -> None:
        self.argv = ["ip", "netns", "exec", ns, sys.executable, str(ECHO),
                     *(f"{name}@{host}:{port}" for name, host, port in listeners)]
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "EchoServers":
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        if self.proc.stdout.readline().strip() != "ready":
            self.stop()
            raise RuntimeError(f"echo servers did not start: {self.proc.stderr.read()}")
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
