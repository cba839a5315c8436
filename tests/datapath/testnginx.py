"""A real nginx with lua-nginx-module in a test namespace, answering with the Lua module's lookup.

Debian's nginx + libnginx-mod-http-lua + lua-resty-core run `sidecar_agent/lua/amesh/origdst.lua`
unchanged (APISIX itself is not installable here). Every location answers one JSON line:
the original destination the module reports for the request's connection, the connection serial
and how many lookups the worker did so far (what the per-connection cache saves).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LUA_DIR = REPO / "sidecar_agent" / "lua"
MODULES = Path("/usr/share/nginx/modules")
NEEDED = ("ngx_http_lua_module.so", "ndk_http_module.so")

ANSWER = r"""
    content_by_lua_block {
        local origdst = require("amesh.origdst")
        local addr, port = origdst.get()
        ngx.header["Content-Type"] = "application/json"
        ngx.say(string.format('{"addr":%s,"port":%s,"connection":%s,"server_port":%s,"lookups":%d,"http2":%s}',
            addr and ('"' .. addr .. '"') or "null", port and addr and tostring(port) or "null",
            ngx.var.connection, ngx.var.server_port, origdst.lookups,
            ngx.var.http2 ~= "" and "true" or "false"))
    }
"""
PLAIN = """
    return 200 "plain\\n";
"""


def unavailable() -> str | None:
    """Why the real-nginx tests cannot run here, or None."""
    if shutil.which("nginx") is None:
        return "nginx not installed (Debian: apt-get install nginx libnginx-mod-http-lua lua-resty-core)"
    for module in NEEDED:
        if not (MODULES / module).exists():
            return f"{MODULES / module} missing (Debian: apt-get install libnginx-mod-http-lua)"
    if not Path("/usr/share/lua/5.1/resty/core.lua").exists():
        return "lua-resty-core missing (Debian: apt-get install lua-resty-core)"
    return None


def config(listeners: list[str], prefix: Path, *, lookup: bool = True, workers: int = 1,
           lua_path: tuple[str, ...] = (), init: str = 'require("amesh.origdst")', answer: str = ANSWER,
           http_extra: str = "", server_extra: str = "") -> str:
    """nginx.conf: each `listeners` entry is a `listen` argument (e.g. "15006", "[::]:15001 http2");
    `http_extra` / `server_extra`: more directives for the http / server block."""
    load = "".join(f"load_module {MODULES / m};\n" for m in reversed(NEEDED))
    listens = "".join(f"        listen {item};\n" for item in listeners)
    return f"""{load}
daemon off;
master_process on;
worker_processes {workers};
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    lua_package_path "{''.join(f"{p}/?.lua;" for p in lua_path)}{LUA_DIR}/?.lua;/usr/share/lua/5.1/?.lua;;";
    keepalive_requests 100000;
    init_by_lua_block {{ {init} }}
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
{http_extra}
    server {{
{listens}        location / {{ {answer if lookup else PLAIN} }}
{server_extra}
    }}
}}
"""


class Nginx:
    """nginx running (not daemonised) inside namespace `ns`; `stop()` ends it by PID."""

    def __init__(self, ns: str | None, listeners: list[str], *, lookup: bool = True, workers: int = 1,
                 ready_port: int | None = None, ready_host: str = "127.0.0.1", timeout: float = 10.0,
                 uid: int | None = None, **config_args):
        """`uid`: run nginx (master and workers) as this UID/GID, e.g. the capture-exempt 1337."""
        self.prefix = Path(tempfile.mkdtemp(prefix="amesh-nginx-"))
        (self.prefix / "nginx.conf").write_text(config(listeners, self.prefix, lookup=lookup, workers=workers,
                                                       **config_args))
        argv = ["nginx", "-p", str(self.prefix), "-c", str(self.prefix / "nginx.conf"), "-e",
                str(self.prefix / "error.log")]
        if uid is not None:
            os.chown(self.prefix, uid, uid)
            argv = ["setpriv", "--reuid", str(uid), "--regid", str(uid), "--clear-groups", *argv]
        if ns:
            argv = ["ip", "netns", "exec", ns, *argv]
        # `ip netns exec` execs nginx, so this PID is nginx's master
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.ns = ns
        try:
            self._wait_ready(ready_port or int(listeners[0].split()[0].rsplit(":", 1)[-1]), ready_host, timeout)
        except Exception:
            self.stop()
            raise

    def _wait_ready(self, port: int, host: str, timeout: float) -> None:
        probe = ["python3", "-c", f"import socket; socket.create_connection(('{host}', {port}), 1).close()"]
        if self.ns:
            probe = ["ip", "netns", "exec", self.ns, *probe]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited {self.proc.returncode}: {self.log()}")
            if subprocess.run(probe, capture_output=True).returncode == 0:
                return
            time.sleep(0.05)
        raise TimeoutError(f"nginx not listening on {host}:{port} after {timeout}s: {self.log()}")

    def log(self) -> str:
        path = self.prefix / "error.log"
        return path.read_text()[-3000:] if path.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGQUIT)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        shutil.rmtree(self.prefix, ignore_errors=True)
