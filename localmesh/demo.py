"""`amesh-mesh demo`: Istio's Bookinfo traffic-management tasks through real APISIX sidecars, as a table."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

from localmesh import mesh as mesh_mod, tasks

COLUMNS = (("task", 24), ("sent", 30), ("answered", 44), ("Istio specifies", 30), ("", 4))


def _row(values) -> str:
    cells = [textwrap.shorten(str(v), width=w, placeholder="…").ljust(w) for v, (_, w) in zip(values, COLUMNS)]
    return " ".join(cells).rstrip()


def run(workdir: Path, *, keep: bool = False, apisix_mode: str = "file", out=print) -> bool:
    workdir = workdir.resolve()
    started_here = False
    if not mesh_mod.Paths(workdir).state.exists():
        out(f"bringing the mesh up in {workdir} (istiod, 7 Bookinfo pods with APISIX sidecars) …")
        t0 = time.monotonic()
        mesh_mod.up(workdir, apisix_mode=apisix_mode)
        out(f"mesh up in {time.monotonic() - t0:.0f} s")
        started_here = True
    try:
        out("")
        out(_row(name for name, _ in COLUMNS))
        outcomes = tasks.run_all(workdir, on_outcome=lambda o: out(_row(
            (o.task, o.sent, o.answered, o.istio, "ok" if o.ok else "FAIL"))))
        passed = sum(o.ok for o in outcomes)
        out("")
        out(f"{passed} of {len(outcomes)} as Istio specifies.")
        if keep or not started_here:
            out(f"Try it yourself: amesh-mesh request --workdir {workdir} productpage-v1 http://reviews:9080/ "
                "-H 'end-user: jason'")
        return passed == len(outcomes)
    finally:
        if started_here and not keep:
            mesh_mod.down(workdir)
            out("mesh taken down (amesh-mesh demo --keep leaves it up to try requests yourself)")
