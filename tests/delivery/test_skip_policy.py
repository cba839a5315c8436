"""With AMESH_STRICT_SKIPS=1 a skip that tests/allowed_skips.txt does not list fails the run (tests/skip_policy.py)."""

from __future__ import annotations

import os

import pytest

from tests.delivery.injection import REPO

TESTS = """
import pytest
def test_runs(): pass
def test_allowed(): pytest.skip("no chart here")
def test_hidden(): pytest.skip("quietly")
"""


def run(pytester: pytest.Pytester, allowed: str, strict: bool = True):
    (pytester.path / "allowed.txt").write_text(allowed)
    pytester.makepyfile(test_sample=TESTS)
    env = {"AMESH_STRICT_SKIPS": "1" if strict else "0", "AMESH_ALLOWED_SKIPS": str(pytester.path / "allowed.txt"),
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        return pytester.runpytest_subprocess("-p", "tests.skip_policy", "-p", "no:cacheprovider")


def test_unlisted_skip_fails_the_run_and_is_named(pytester):
    result = run(pytester, "test_sample.py::test_allowed the chart is not fetched\n")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*skips not allowed in CI*", "test_sample.py::test_hidden: quietly"])
    assert "test_sample.py::test_allowed:" not in result.stdout.str()


def test_listed_skips_pass_and_a_stale_entry_is_noted(pytester):
    result = run(pytester, "test_sample.py::test_hidden why\ntest_sample.py::test_allowed why\n"
                           "test_sample.py::test_runs it used to skip\n")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["note: allowed to skip but ran: test_sample.py::test_runs*"])


def test_not_strict_outside_ci(pytester):
    assert run(pytester, "", strict=False).ret == pytest.ExitCode.OK


def test_an_entry_needs_a_reason(pytester):
    result = run(pytester, "test_sample.py::test_hidden\n")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*allowed.txt:1: test_sample.py::test_hidden needs a reason after it"])
