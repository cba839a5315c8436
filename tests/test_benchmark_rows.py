"""benchmarks/issue_rows.py and benchmarks/speed.py's table: the rows each benchmark records reach the one table."""

from __future__ import annotations

import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import issue_rows  # noqa: E402
import speed  # noqa: E402


def test_rows_are_recorded_only_when_asked_and_read_back_in_order(tmp_path, monkeypatch):
    path = tmp_path / "rows.jsonl"
    monkeypatch.delenv(issue_rows.ENV, raising=False)
    issue_rows.record("nowhere", "1 s", None, "<= 2 s", True)
    assert issue_rows.read(str(path)) == []
    monkeypatch.setenv(issue_rows.ENV, str(path))
    issue_rows.record("first", "1.5 s", "0.5 s", "<= 2 s", True)
    issue_rows.record("second", "3 s", None, "<= 2 s", False)
    assert [(r["what"], r["floor"], r["met"]) for r in issue_rows.read(str(path))] == [
        ("first", "0.5 s", True), ("second", None, False)]


def test_table_lines_up_every_row_with_its_verdict():
    rows = [{"what": "a row", "now": "1.5 s", "floor": "0.5 s", "target": "<= 2 s", "met": True},
            {"what": "a longer row", "now": "3 s", "floor": None, "target": "<= 2 s", "met": False},
            {"what": "measured", "now": "9 ms", "floor": None, "target": "-", "met": None}]
    lines = speed.table(rows).splitlines()
    assert lines[0].split() == ["what", "now", "floor", "(same", "run)", "target"]
    assert [line.split()[-1] for line in lines[2:]] == ["met", "MISSED", "-"]
    column = lines[0].index("now")
    assert {line[column:].split()[0] for line in lines[2:]} == {"1.5", "3", "9"}  # one column per field

