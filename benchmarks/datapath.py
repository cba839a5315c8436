"""Data-path figures on the test nginx (Debian nginx + lua-nginx-module) in a captured pod namespace.

1. Original-destination lookup: req/s and p99 of REDIRECT-captured keep-alive requests answered by the
   same Lua handler without the lookup, with it cached per connection, and uncached (every request).
2. The outbound split (design (a)): a stream front that hands the connection to an internal HTTP
   listener on 127.0.0.1, vs HTTP served on the capture port directly: per request (keep-alive)
   and per connection (`Connection: close`).

Run as root: `.venv/bin/python benchmarks/datapath.py [--seconds 3] [--connections 16] [--repeat 3]`
(median of the repeats). wrk runs in
a second namespace against the pod; everything is removed afterwards.

The wrk namespace gets `net.ipv4.tcp_tw_reuse=1` (`--client-tw-reuse 2`, the kernel default, reproduces
issue #5): behind the stream hop wrk usually closes first, so its TIME_WAIT sockets pin its ephemeral
ports, and the default reuses TIME_WAIT only on loopback; wrk's connect() then scans an exhausted port
range (~2 ms of kernel CPU per connection, measured) and the hop's per-connection figure collapses to ~950
req/s. That is the client's port space, not the data path (docs/data-path.md).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from netns_tests import capture, pods  # noqa: E402
from tests.datapath import testnginx  # noqa: E402

HANDLER = """
    content_by_lua_block {{
        {lookup}
        ngx.say("ok")
    }}
"""
VARIANTS = {
    "no lookup": "",
    "lookup, cached per connection": 'local a, p = require("amesh.origdst").get()',
    "lookup, uncached": 'local o = require("amesh.origdst") o.set_cache_limit(0) local a, p = o.get()',
}
STREAM = """
stream {
    server { listen 15006; proxy_pass 127.0.0.1:15100; }
}
"""


def wrk(ns: str, url: str, seconds: int, connections: int, close: bool = False) -> tuple[float, str]:
    argv = ["ip", "netns", "exec", ns, "wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", url]
    if close:
        argv[6:6] = ["-H", "Connection: close"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
    out = done.stdout + done.stderr
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not found:
        raise RuntimeError(f"wrk gave no figures for {url}:\n{out}")
    rps = float(found.group(1))
    p99 = re.search(r"99%\s+(\S+)", out).group(1)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"wrk saw {errors.group(1)} bad responses:\n{out}")
    return rps, p99


def median_run(ns: str, url: str, args, close: bool = False) -> tuple[float, str]:
    """The median of --repeat runs by req/s (this machine is noisy; one run is not a figure)."""
    runs = sorted(wrk(ns, url, args.seconds, args.connections, close) for _ in range(args.repeat))
    return runs[len(runs) // 2]


def with_stream(conf: str) -> str:
    load = f"load_module {testnginx.MODULES / 'ngx_stream_module.so'};\n"
    return load + conf + STREAM


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--client-tw-reuse", choices=("0", "1", "2"), default="1",
                        help="net.ipv4.tcp_tw_reuse in wrk's namespace (2 = kernel default, loopback only)")
    args = parser.parse_args()
    reason = testnginx.unavailable() or (None if shutil.which("wrk") else "wrk not installed (apt-get install wrk)")
    if reason:
        print(f"skipped: {reason}")
        return 0
    network = pods.Network(prefix=pods.unique_prefix(), ipv6=False)
    try:
        network.build()
        # the client's port space is not what is measured here (see the module docstring)
        pods.set_sysctls(network.other, {"net.ipv4.tcp_tw_reuse": args.client_tw_reuse})
        capture.apply(network.pod, pods.Backend.NFT, *capture.INJECTED)
        url = f"http://{pods.POD_V4}:8080/"
        print(f"1. original-destination lookup (REDIRECT to 15006, keep-alive, {args.connections} connections, "
              f"{args.seconds}s, 1 worker)")
        base = None
        for name, code in VARIANTS.items():
            server = testnginx.Nginx(network.pod, ["15006"], answer=HANDLER.format(lookup=code))
            try:
                wrk(network.other, url, 1, args.connections)  # warm-up
                rps, p99 = median_run(network.other, url, args)
            finally:
                server.stop()
            base = base or rps
            print(f"   {name:<32} {rps:>10.0f} req/s  p99 {p99:>8}  ({rps / base:.3f}x)")

        print("2. outbound split: stream front -> internal HTTP listener vs HTTP on the capture port")
        plain = HANDLER.format(lookup="")
        rows = []
        for label, close in (("keep-alive requests", False), ("one request per connection", True)):
            direct = testnginx.Nginx(network.pod, ["15006"], answer=plain)
            try:
                wrk(network.other, url, 1, args.connections, close)
                d = median_run(network.other, url, args, close)
            finally:
                direct.stop()
            prefix = Path(tempfile.mkdtemp(prefix="amesh-bench-"))
            conf = with_stream(testnginx.config(["127.0.0.1:15100"], prefix, answer=plain))
            (prefix / "stream.conf").write_text(conf)
            front = subprocess.Popen(["ip", "netns", "exec", network.pod, "nginx", "-p", str(prefix), "-c",
                                      str(prefix / "stream.conf"), "-e", str(prefix / "error.log")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                subprocess.run(["ip", "netns", "exec", network.pod, "python3", "-c",
                                "import socket,time\nfor _ in range(100):\n try:\n  socket.create_connection(("
                                "'127.0.0.1',15006),1).close(); break\n except OSError: time.sleep(0.05)"], check=True)
                if front.poll() is not None:
                    raise RuntimeError(f"stream front exited: {(prefix / 'error.log').read_text()[-2000:]}")
                wrk(network.other, url, 1, args.connections, close)
                s = median_run(network.other, url, args, close)
            finally:
                front.send_signal(3)  # SIGQUIT: graceful stop of the master we started
                front.wait(10)
                shutil.rmtree(prefix, ignore_errors=True)
            rows.append((label, d, s))
        for label, d, s in rows:
            print(f"   {label:<28} direct {d[0]:>9.0f} req/s p99 {d[1]:>8} | via stream hop {s[0]:>9.0f} req/s "
                  f"p99 {s[1]:>8} ({s[0] / d[0]:.3f}x)")
        return 0
    finally:
        network.close()


if __name__ == "__main__":
    sys.exit(main())
