"""Issue 12's table in one run: every row with its floor and target, from the benchmarks that measure them.

    sudo .venv/bin/python benchmarks/speed.py [--quick] [--skip apisix_scale,...]

Runs, one after another, each in a child process (its own output shown as it goes):
  init_apply.py   `amesh-iptables` with Istio's default injection vs `python3 -c pass` + a bare restore (root)
  translate.py    the 10,000-service synthetic mesh, agent-style and whole, and the config dumps
  agent.py        one route change at 1,000 services; the agent's RSS after a 10,000-service sync
  apisix_scale.py the real APISIX 3.18 loading the 10,000-service document in API mode, and changes (root)
Each records its rows through issue_rows (a JSON line each, in a file named by $AMESH_BENCH_ROWS), and the
table is printed at the end. A benchmark that cannot run (not root, no APISIX) says so and the others go on.
``--quick`` takes fewer repetitions (a smoke run, noisier figures).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import issue_rows

HERE = Path(__file__).resolve().parent


def commands(quick: bool) -> list[tuple[str, list[str], bool]]:
    """(name, arguments, needs root)."""
    return [
        ("init_apply", ["--runs", "7" if quick else "21"], True),
        ("translate", ["--sizes", "10000", "--runs", "1" if quick else "3"], False),
        ("agent", ["--sizes", "1000,10000", "--repeat", "10" if quick else "20"], False),
        ("apisix_scale", ["--services", "10000", "--modes", "api", "--changes", "1" if quick else "3"], True),
    ]


def table(rows: list[dict]) -> str:
    verdict = {True: "met", False: "MISSED", None: "-"}
    header = ("what", "now", "floor (same run)", "target", "")
    lines = [[r["what"], r["now"], r["floor"] or "-", r["target"], verdict[r["met"]]] for r in rows]
    widths = [max(len(str(line[i])) for line in [list(header), *lines]) for i in range(len(header))]
    out = ["  ".join(str(cell).ljust(w) for cell, w in zip(header, widths)).rstrip()]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(str(cell).ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines]
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions: a smoke run")
    ap.add_argument("--skip", default="", help="benchmarks to leave out, comma-separated (e.g. apisix_scale)")
    args = ap.parse_args()
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    started = time.time()
    print(f"# {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}, {os.cpu_count()} CPUs", flush=True)
    notes = []
    with tempfile.TemporaryDirectory(prefix="amesh-speed-") as tmp:
        rows_path = str(Path(tmp) / "rows.jsonl")
        env = dict(os.environ, **{issue_rows.ENV: rows_path})
        for name, arguments, needs_root in commands(args.quick):
            if name in skip:
                notes.append(f"{name}: skipped (--skip)")
                continue
            if needs_root and os.geteuid() != 0:
                notes.append(f"{name}: not run (needs root: network namespaces)")
                continue
            print(f"\n## benchmarks/{name}.py {' '.join(arguments)}", flush=True)
            code = subprocess.run([sys.executable, str(HERE / f"{name}.py"), *arguments], env=env).returncode
            if code:
                notes.append(f"{name}: exited {code} (its rows, if any, are below)")
        rows = issue_rows.read(rows_path)
    print(f"\n# issue 12, every row in one run ({time.time() - started:.0f} s; load average now "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())})")
    print(table(rows))
    for note in notes:
        print(f"# {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
