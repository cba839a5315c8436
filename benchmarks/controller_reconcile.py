"""How long the controller's pure core takes: full recompute and one pod event, at cluster-like sizes.

    .venv/bin/python benchmarks/controller_reconcile.py [namespaces] [pods_per_ns] [configs_per_ns]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from controller import crd  # noqa: E402
from controller.reconcile import Reconciler  # noqa: E402
from controller.selection import Pod  # noqa: E402


def main(namespaces: int = 50, pods_per_ns: int = 200, configs_per_ns: int = 10) -> None:
    configs = [crd.parse({"metadata": {"namespace": f"ns{n}", "name": f"c{c}",
                                       "creationTimestamp": f"2026-01-{1 + c % 28:02d}T00:00:00Z"},
                          "spec": {"selector": {"matchLabels": {"app": f"a{c % 5}"}},
                                   "plugins": [{"name": "response-rewrite", "config": {"body": str(c)}},
                                               {"name": f"ext{c % 3}", "type": "pre-req", "config": {}}]}})
               for n in range(namespaces) for c in range(configs_per_ns)]
    pods = [Pod(f"ns{n}", f"p{p}", (("app", f"a{p % 7}"),)) for n in range(namespaces) for p in range(pods_per_ns)]
    r = Reconciler()
    t0 = time.perf_counter()
    actions = r.resync(configs=configs, pods=pods)
    full = time.perf_counter() - t0
    t0 = time.perf_counter()
    rounds = 200
    for i in range(rounds):
        r.pod(("ns0", "p0"), Pod("ns0", "p0", (("app", f"a{i % 5}"),)))
    event = (time.perf_counter() - t0) / rounds
    print(f"pods={len(pods)} configs={len(configs)} pods_with_plugins={len(actions.pushes)}")
    print(f"full resync: {full * 1000:.1f} ms")
    print(f"one pod event (recomputes its namespace of {pods_per_ns} pods, {configs_per_ns} configs): "
          f"{event * 1000:.2f} ms")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
