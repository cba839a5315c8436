"""How long the capture init program takes, as the pod sees it (run as root).

Median wall time of the whole program (a regular install, as in the image) applying Istio's default
injection arguments in a fresh network namespace, next to its floor measured in the same run, interleaved:
an empty `python3 -c pass` of the same interpreter plus a bare `iptables-nft-restore --noflush` of the
identical rule text (per family). Targets (issue 12): at most 2x the floor, and at most 40 ms (IPv4) /
50 ms (IPv4 + IPv6). The TPROXY row (netlink policy routing on top) has no target. Then the import-time
breakdown of one run (`python -X importtime`), so an import that creeps onto the apply path shows.

    sudo .venv/bin/python benchmarks/init_apply.py [--runs 31] [--editable]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

import issue_rows

DEFAULT_ARGS = ["-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "", "-b", "*",
                "-d", "15090,15021,15020"]
TPROXY_ARGS = [("TPROXY" if a == "REDIRECT" else a) for a in DEFAULT_ARGS]

# (label, ipv6, arguments, target in ms or None)
ROWS = [
    ("IPv4", False, DEFAULT_ARGS, 40.0),
    ("IPv4 + IPv6", True, DEFAULT_ARGS, 50.0),
    ("TPROXY, IPv4 + IPv6", True, TPROXY_ARGS, None),
]


def editable_program() -> list[str]:
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
    subprocess.run([python, "-m", "compileall", "-q", target], check=True, env=_env())
    return [python, "-c", "import sys; from init.cli import main; sys.exit(main())"]


def _env() -> dict[str, str]:
    # .pyc files as in the image (PYTHONDONTWRITEBYTECODE would leave the editable install compiling each run)
    return {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


class Namespace:
    def __init__(self, ipv6: bool):
        self.name = f"amtbench-{uuid.uuid4().hex[:8]}"
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        self.exec(["ip", "link", "set", "lo", "up"])
        if ipv6:
            # A global IPv6 address is what turns on IPv6 capture; a veth pair inside the namespace holds it.
            self.exec(["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p"])
            self.exec(["ip", "link", "set", "eth0", "up"])
            self.exec(["ip", "-6", "addr", "add", "fd00:b::2/64", "dev", "eth0", "nodad"])

    def exec(self, cmd: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.name, *cmd], check=True, capture_output=True)

    def enter(self, cmd: list[str]) -> list[str]:
        return ["nsenter", f"--net=/var/run/netns/{self.name}", *cmd]

    def timed(self, cmd: list[str], stdin: str | None = None) -> float:
        start = time.perf_counter()
        subprocess.run(self.enter(cmd), input=stdin, text=True, check=True, stdout=subprocess.DEVNULL, env=_env())
        return time.perf_counter() - start

    def close(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], check=False)


def rule_texts(program: list[str], args: list[str], ipv6: bool) -> dict[str, str]:
    """The identical rule text the program applies (its dry run), per restore binary."""
    ns = Namespace(ipv6)
    try:
        out = subprocess.run(ns.enter([*program, *args, "--dry-run"]), capture_output=True, text=True,
                             check=True, env=_env()).stdout
    finally:
        ns.close()
    texts: dict[str, str] = {}
    current = None
    for line in out.splitlines(keepends=True):
        if line.startswith("# iptables-restore"):
            current = "iptables-nft-restore"
        elif line.startswith("# ip6tables-restore"):
            current = "ip6tables-nft-restore"
        elif line.startswith("# ip "):
            current = None
        elif current:
            texts[current] = texts.get(current, "") + line
    return texts


def bare_restore(texts: dict[str, str]):
    def run(ns: Namespace) -> float:
        start = time.perf_counter()
        for binary, text in texts.items():
            subprocess.run(ns.enter([binary, "--noflush"]), input=text, text=True, check=True)
        return time.perf_counter() - start
    return run


def measure(runs: int, ipv6: bool, variants: dict) -> dict[str, list[float]]:
    """Every variant once per round, each in a fresh namespace, so load on the machine hits all alike."""
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(runs):
        for name, what in variants.items():
            ns = Namespace(ipv6)
            try:
                samples[name].append(what(ns))
            finally:
                ns.close()
    return samples


def import_breakdown(program: list[str], args: list[str], ipv6: bool) -> list[tuple[int, str]]:
    """(self µs, module) of every import of one apply beyond those `python -c pass` makes."""
    def imports(cmd: list[str]) -> dict[str, int]:
        ns = Namespace(ipv6)
        try:
            err = subprocess.run(ns.enter([cmd[0], "-X", "importtime", *cmd[1:]]), capture_output=True,
                                 text=True, env=_env()).stderr
        finally:
            ns.close()
        found = {}
        for line in err.splitlines():
            if line.startswith("import time:") and "|" in line:
                own, _, name = line.split("|")
                own = own.removeprefix("import time:").strip()
                if own.isdigit():
                    found[name.strip()] = int(own)
        return found

    baseline = imports([program[0], "-c", "pass"])
    own = imports([*program, *args])
    return sorted(((us, name) for name, us in own.items() if name not in baseline), reverse=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=31)
    parser.add_argument("--editable", action="store_true", help="also time this development venv's install")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: it creates network namespaces")
    tmp = tempfile.mkdtemp(prefix="amesh-bench-")
    try:
        program = regular_install(tmp)
        python = program[0]
        load = os.getloadavg()[0]
        print(f"median wall time of {args.runs} runs, each in a fresh network namespace entered with nsenter "
              f"(load average {load:.2f} on {os.cpu_count()} CPUs at the start: absolute times grow with it)")
        print("floor = `python3 -c pass` + bare iptables-nft-restore of the identical rules, measured alongside")
        print(f"{'':22} {'amesh-iptables':>14} {'python -c pass':>15} {'bare restore':>13} {'floor':>8} "
              f"{'x floor':>8}  target")
        verdicts = []
        for label, ipv6, flags, target in ROWS:
            variants = {
                "amesh": lambda ns, flags=flags: ns.timed([*program, *flags]),
                "pass": lambda ns: ns.timed([python, "-c", "pass"]),
                "restore": bare_restore(rule_texts(program, flags, ipv6)),
            }
            if args.editable:
                variants["editable"] = lambda ns, flags=flags: ns.timed([*editable_program(), *flags])
            ms = {name: statistics.median(s) * 1000 for name, s in measure(args.runs, ipv6, variants).items()}
            floor = ms["pass"] + ms["restore"]
            ratio = ms["amesh"] / floor
            if target is None:
                goal = "(none)"
            else:
                met = ratio <= 2 and ms["amesh"] <= target
                verdicts.append(met)
                goal = f"<= 2x and <= {target:.0f} ms: {'met' if met else 'NOT met'}"
                issue_rows.record(f"`amesh-iptables` apply, injector defaults, {label} pod",
                                  f"{ms['amesh']:.1f} ms ({ratio:.2f}x the floor)",
                                  f"{floor:.1f} ms (`python3 -c pass` {ms['pass']:.1f} + bare restore "
                                  f"{ms['restore']:.1f})", f"<= 2x the floor, <= {target:.0f} ms", met)
            print(f"{label:22} {ms['amesh']:11.1f} ms {ms['pass']:12.1f} ms {ms['restore']:10.1f} ms "
                  f"{floor:5.1f} ms {ratio:7.2f}x  {goal}")
            if args.editable:
                print(f"{'':22} editable install: {ms['editable']:.1f} ms")
        for label, ipv6, flags, _ in ROWS:
            rows = import_breakdown(program, flags, ipv6)
            total = sum(us for us, _ in rows)
            print(f"\nimports beyond `python -c pass`, {label}: {len(rows)} modules, {total / 1000:.1f} ms "
                  "(python -X importtime, each module's own time; tracing inflates them)")
            for start in range(0, len(rows), 4):
                print("  " + "".join(f"{name:>24} {us / 1000:5.2f}" for us, name in rows[start:start + 4]))
        print("\nall targets met" if all(verdicts) else "\nsome target NOT met")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
