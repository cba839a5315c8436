"""Istio's Bookinfo traffic-management tasks, run against the local mesh: what is sent, which version
answered, and what Istio specifies. The demo prints them; the end-to-end tests assert them.

Each task applies the task's own files from e2e/bookinfo/networking/ (the files Istio's docs use), sends
requests from productpage-v1 (Bookinfo's caller of reviews and ratings) and judges the answers. Where
Bookinfo's own apps would call onward (reviews v2 → ratings), the echo app is told to take as long
(`x-echo-delay`) instead, so the timeout is observable without a call chain.
"""

from __future__ import annotations

import math
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from localmesh import mesh as mesh_mod, requests as req

NETWORKING = Path(__file__).resolve().parents[1] / "e2e" / "bookinfo" / "networking"
SOURCE = "productpage-v1"


@dataclass(frozen=True)
class Outcome:
    task: str
    sent: str
    answered: str
    istio: str  # what Istio specifies
    ok: bool


def files(*names: str) -> list[Path]:
    return [NETWORKING / n for n in names]


def answered(workdir: Path, url: str, count: int, headers: dict | None = None) -> Counter:
    return Counter(req.answered_by(req.send(workdir, SOURCE, url, headers=headers)) for _ in range(count))


def describe(counts: Counter) -> str:
    return ", ".join(f"{who} {n}" for who, n in counts.most_common())


def share_bound(n: int, p: float = 0.5, z: float = 3.9) -> float:
    """Half-width of a binomial share's interval at z sigmas (3.9: a false alarm once in ~10,000 runs)."""
    return z * math.sqrt(p * (1 - p) / n)


def reset(workdir: Path) -> None:
    """Every Bookinfo service to v1, as Istio's tasks begin (virtual-service-all-v1.yaml)."""
    mesh_mod.apply(workdir, files("destination-rule-all.yaml", "virtual-service-all-v1.yaml"))


def _jason_and_others(workdir: Path, task: str, vs_file: str, service: str, n: int,
                      for_jason: str, for_others: str) -> list[Outcome]:
    """Apply `vs_file`, send n requests as jason and n as nobody in particular; each group must be answered
    all alike (for_jason / for_others: 'reviews v2', 'HTTP 500', …)."""
    mesh_mod.apply(workdir, files("destination-rule-all.yaml", vs_file))
    url = f"http://{service}:9080/"
    jason = answered(workdir, url, n, {"end-user": "jason"})
    others = answered(workdir, url, n)
    return [Outcome(task, f"{n} × {service}, end-user: jason", describe(jason), f"all {for_jason}",
                    jason == Counter({for_jason: n})),
            Outcome(task, f"{n} × {service}, no user", describe(others), f"all {for_others}",
                    others == Counter({for_others: n}))]


def request_routing(workdir: Path) -> list[Outcome]:
    return _jason_and_others(workdir, "request routing", "virtual-service-reviews-jason-v2.yaml", "reviews", 10,
                             "reviews v2", "reviews v1")


def traffic_shifting(workdir: Path, n: int = 100) -> list[Outcome]:
    mesh_mod.apply(workdir, files("destination-rule-all.yaml", "virtual-service-reviews-50-v3.yaml"))
    counts = answered(workdir, "http://reviews:9080/", n)
    v3 = counts.get("reviews v3", 0) / n
    ok = set(counts) == {"reviews v1", "reviews v3"} and abs(v3 - 0.5) <= share_bound(n)
    return [Outcome("traffic shifting", f"{n} × reviews", describe(counts),
                    f"v1 50 %, v3 50 % (±{share_bound(n) * 100:.0f} %)", ok)]


def fault_delay(workdir: Path) -> list[Outcome]:
    mesh_mod.apply(workdir, files("destination-rule-all.yaml", "virtual-service-ratings-jason-delay.yaml"))
    jason = req.send(workdir, SOURCE, "http://ratings:9080/", headers={"end-user": "jason"}, timeout=20)
    other = req.send(workdir, SOURCE, "http://ratings:9080/")
    return [Outcome("fault injection (delay)", "ratings, end-user: jason",
                    f"{req.answered_by(jason)} after {jason.elapsed:.1f} s", "ratings v1 after 7 s",
                    jason.status == 200 and 7.0 <= jason.elapsed < 9.0),
            Outcome("fault injection (delay)", "ratings, no user", f"{req.answered_by(other)} after "
                    f"{other.elapsed * 1000:.0f} ms", "ratings v1, no delay",
                    other.status == 200 and other.elapsed < 1.0)]


def fault_abort(workdir: Path) -> list[Outcome]:
    return _jason_and_others(workdir, "fault injection (abort)", "virtual-service-ratings-jason-abort.yaml",
                             "ratings", 5, "HTTP 500", "ratings v1")


def request_timeout(workdir: Path) -> list[Outcome]:
    mesh_mod.apply(workdir, files("destination-rule-all.yaml", "virtual-service-reviews-timeout.yaml"))
    slow = req.send(workdir, SOURCE, "http://reviews:9080/", headers={"x-echo-delay": "2"})
    fast = req.send(workdir, SOURCE, "http://reviews:9080/")
    return [Outcome("request timeout", "reviews, app takes 2 s", f"{req.answered_by(slow)} after "
                    f"{slow.elapsed:.2f} s", "HTTP 504 after 0.5 s",
                    slow.status == 504 and 0.45 <= slow.elapsed < 1.0),
            Outcome("request timeout", "reviews, app answers at once", req.answered_by(fast), "reviews v2",
                    req.answered_by(fast) == "reviews v2")]


def mirroring(workdir: Path, n: int = 5) -> list[Outcome]:
    mesh_mod.apply(workdir, files("destination-rule-all.yaml", "virtual-service-reviews-mirror-v2.yaml"))
    tag = "mirror-" + uuid.uuid4().hex[:8]
    counts = answered(workdir, f"http://reviews:9080/{tag}", n)
    log = mesh_mod.Paths(workdir.resolve()).log("reviews-v2", "app.jsonl")
    deadline = time.monotonic() + 3  # the copy is fire-and-forget: give it a moment
    copies = 0
    while time.monotonic() < deadline:
        copies = log.read_text().count(f"/{tag}") if log.exists() else 0
        if copies >= n:
            break
        time.sleep(0.1)
    return [Outcome("mirroring", f"{n} × reviews", f"{describe(counts)}; {copies} copies at reviews v2",
                    "v1 answers, each copied to v2", counts == Counter({"reviews v1": n}) and copies == n)]


TASKS = (request_routing, traffic_shifting, fault_delay, fault_abort, request_timeout, mirroring)


def run_all(workdir: Path, on_outcome=lambda o: None) -> list[Outcome]:
    out = []
    for task in TASKS:
        reset(workdir)
        for outcome in task(workdir):
            on_outcome(outcome)
            out.append(outcome)
    reset(workdir)
    return out
