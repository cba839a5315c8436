"""Issue 12's rows as data: each benchmark that measures one records it here, beside printing it.

A row is what was measured, its figure now, its floor (measured in the same run, or None) and its target,
with the verdict. ``record`` appends it as a JSON line to the file named by $AMESH_BENCH_ROWS, when set:
benchmarks/speed.py sets it, runs every benchmark and prints all rows in one table.
"""

from __future__ import annotations

import json
import os

ENV = "AMESH_BENCH_ROWS"


def record(what: str, now: str, floor: str | None, target: str, met: bool | None) -> None:
    """One row; `met` None: measured, no verdict (e.g. the run failed)."""
    path = os.environ.get(ENV)
    if not path:
        return
    with open(path, "a", encoding="utf-8") as out:
        out.write(json.dumps({"what": what, "now": now, "floor": floor, "target": target, "met": met}) + "\n")


def read(path: str) -> list[dict]:
    try:
        with open(path, encoding="utf-8") as rows:
            return [json.loads(line) for line in rows if line.strip()]
    except FileNotFoundError:
        return []
