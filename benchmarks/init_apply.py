"""How long the capture init program takes, as the pod sees it (run as root).

Median wall time of the whole program applying the injector's default arguments in a fresh network
namespace, IPv4 and IPv4+IPv6, next to a bare iptables-restore of the identical rule text and an empty
`python3 -c pass`, each entered the same way (nsenter into the namespace). Goal: ≤ 50 ms for the default
REDIRECT case.

    sudo .venv/bin/python benchmarks/init_apply.py [--runs 25]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
import uuid

DEFAULT_ARGS = ["-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "", "-b", "*",
                "-d", "15090,15021,15020"]


def program() -> list[str]:
    installed = shutil.which("amesh-iptables", path=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    return [installed] if installed else [sys.executable, "-m", "init.cli"]


def regular_install(tmp: str) -> list[str]:
    """The program installed the way the image installs it (a regular, non-editable install): a fresh venv
    whose site-packages reaches a `pip install --target` copy of the project and this venv's dependencies.
    A development (editable) install adds an import hook that costs every start several milliseconds."""
    import sysconfig

    venv = os.path.join(tmp, "venv")
    target = os.path.join(tmp, "site")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile", "--target", target,
                    os.path.dirname(os.path.dirname(os.path.abspath(__file__)))], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    python = os.path.join(venv, "bin", "python")
    venv_site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               capture_output=True, text=True, check=True).stdout.strip()
    deps = sysconfig.get_path("purelib")  # this venv's site-packages: click, pyroute2 (its .pth files stay unread)
    with open(os.path.join(venv_site, "amesh-bench.pth"), "w") as fh:
        fh.write(f"{target}\n{deps}\n")
    subprocess.run([python, "-m", "compileall", "-q", target], check=True)
    return [python, "-c", "import sys; from init.cli import main; sys.exit(main())"]


class Namespace:
    def __init__(self, ipv6: bool):
        self.name = f"bench-{uuid.uuid4().hex[:8]}"
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        self.exec(["ip", "link", "set", "lo", "up"])
        if ipv6:
            # A global IPv6 address is what turns on IPv6 capture; a veth pair inside the namespace holds it.
            self.exec(["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p"])
            self.exec(["ip", "link", "set", "eth0", "up"])
            self.exec(["ip", "-6", "addr", "add", "fd00:b::2/64", "dev", "eth0", "nodad"])

    def exec(self, cmd: list[str], **kw) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.name, *cmd], check=True, capture_output=True, **kw)

    def timed(self, cmd: list[str], stdin: str | None = None) -> float:
        full = ["nsenter", f"--net=/var/run/netns/{self.name}", *cmd]
        start = time.perf_counter()
        subprocess.run(full, input=stdin, text=True, check=True, stdout=subprocess.DEVNULL)
        return time.perf_counter() - start

    def close(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], check=False)


def rule_texts(ipv6: bool) -> dict[str, str]:
    """The identical rule text the program applies (its dry run), per restore binary."""
    out = subprocess.run([*program(), *DEFAULT_ARGS, "--dry-run"], capture_output=True, text=True, check=True).stdout
    texts: dict[str, str] = {}
    current = None
    for line in out.splitlines(keepends=True):
        if line.startswith("# iptables-restore"):
            current = "iptables-nft-restore"
        elif line.startswith("# ip6tables-restore"):
            current = "ip6tables-nft-restore" if ipv6 else None
        elif line.startswith("# ip "):
            current = None
        elif current:
            texts[current] = texts.get(current, "") + line
    return texts


def measure(runs: int, ipv6: bool, what) -> list[float]:
    samples = []
    for _ in range(runs):
        ns = Namespace(ipv6)
        try:
            samples.append(what(ns))
        finally:
            ns.close()
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=25)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: it creates network namespaces")
    import tempfile

    tmp = tempfile.mkdtemp(prefix="amesh-bench-")
    regular = regular_install(tmp)
    results = {}
    for label, ipv6 in (("v4", False), ("v4+v6", True)):
        texts = rule_texts(ipv6)

        def bare(ns: Namespace) -> float:
            start = time.perf_counter()
            for binary, text in texts.items():
                ns_cmd = ["nsenter", f"--net=/var/run/netns/{ns.name}", binary, "--noflush"]
                subprocess.run(ns_cmd, input=text, text=True, check=True)
            return time.perf_counter() - start

        results[label] = {
            "amesh-iptables": measure(args.runs, ipv6, lambda ns: ns.timed([*regular, *DEFAULT_ARGS])),
            "amesh-iptables (editable)": measure(args.runs, ipv6, lambda ns: ns.timed([*program(), *DEFAULT_ARGS])),
            "bare iptables-restore": measure(args.runs, ipv6, bare),
            "python3 -c pass": measure(args.runs, ipv6, lambda ns: ns.timed([regular[0], "-c", "pass"])),
        }
    print(f"median wall time over {args.runs} runs, each in a fresh network namespace (entered with nsenter)")
    for label, rows in results.items():
        base_restore = statistics.median(rows["bare iptables-restore"])
        base_python = statistics.median(rows["python3 -c pass"])
        for name, samples in rows.items():
            median = statistics.median(samples)
            print(f"  {label:6} {name:26} {median * 1000:7.1f} ms   "
                  f"x{median / base_restore:5.1f} of bare restore   x{median / base_python:4.1f} of python -c pass")
    shutil.rmtree(tmp, ignore_errors=True)
    goal = statistics.median(results["v4"]["amesh-iptables"]) * 1000
    print("amesh-iptables = a regular install, as in the image; (editable) = this development venv")
    print(f"goal: default REDIRECT (v4) <= 50 ms: {goal:.1f} ms -> {'met' if goal <= 50 else 'NOT met'}")


if __name__ == "__main__":
    main()
