"""pytest plugin (loaded by the root conftest.py): skips must not hide the suite in CI: with AMESH_STRICT_SKIPS=1 (.ci/run sets it) the run fails when a test
skips that tests/allowed_skips.txt does not list. Each line there is a node id pattern (fnmatch) and the
reason it may skip; a listed pattern that matched nothing is reported, so the list does not rot."""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path

import pytest

ALLOWED_SKIPS = Path(os.environ.get("AMESH_ALLOWED_SKIPS") or Path(__file__).resolve().parent / "allowed_skips.txt")
_skips: list[tuple[str, str]] = []  # (node id, reason)
_ran: set[str] = set()  # node ids that ran without skipping


def strict() -> bool:
    return os.environ.get("AMESH_STRICT_SKIPS") == "1"


def allowed() -> dict[str, str]:
    """pattern -> reason, from ALLOWED_SKIPS (a pattern without a reason is an error)."""
    out = {}
    for number, line in enumerate(ALLOWED_SKIPS.read_text().splitlines(), 1):
        if line.strip() and not line.startswith("#"):
            pattern, _, reason = line.strip().partition(" ")
            if not reason.strip():
                raise pytest.UsageError(f"{ALLOWED_SKIPS}:{number}: {pattern} needs a reason after it")
            out[pattern] = reason.strip()
    return out


def _record(report) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        _skips.append((report.nodeid, reason))
    elif report.when == "call":
        _ran.add(report.nodeid)


pytest_runtest_logreport = _record
pytest_collectreport = _record  # a whole module skipped at import (pytest.skip(allow_module_level=True))


def unexpected() -> list[tuple[str, str]]:
    patterns = allowed()
    return [(node, reason) for node, reason in _skips if not any(fnmatch.fnmatchcase(node, p) for p in patterns)]


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if not strict():
        return
    bad = unexpected()
    if bad:
        terminalreporter.section("skips not allowed in CI (AMESH_STRICT_SKIPS=1)", red=True)
        for node, reason in bad:
            terminalreporter.line(f"{node}: {reason}")
        terminalreporter.line(f"fix what makes them skip, or list them with a reason in {ALLOWED_SKIPS.name}")
    unused = [p for p in allowed() if any(fnmatch.fnmatchcase(node, p) for node in _ran)
              and not any(fnmatch.fnmatchcase(node, p) for node, _ in _skips)]
    if unused:
        terminalreporter.line(f"note: allowed to skip but ran: {', '.join(unused)} ({ALLOWED_SKIPS.name})")


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if strict() and exitstatus == pytest.ExitCode.OK and unexpected():
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
