"""init/apply/spawn.py against real programs: input, both outputs, exit codes, large pipes, timeouts."""

from __future__ import annotations

import shutil

import pytest

from init.apply.spawn import run

SH = shutil.which("sh")


def test_input_output_error_and_exit_code() -> None:
    result = run([SH, "-c", "cat; echo oops >&2; exit 3"], "hello\n")
    assert (result.returncode, result.stdout, result.stderr) == (3, "hello\n", "oops\n")


def test_more_than_a_pipe_holds_in_every_direction() -> None:
    # the child writes 1 MB to stdout and stderr each before it reads its 1 MB of input
    big = "x" * 1_000_000
    script = "head -c 1000000 /dev/zero | tr '\\0' o; head -c 1000000 /dev/zero | tr '\\0' e >&2; wc -c"
    result = run([SH, "-c", script], big)
    assert result.returncode == 0
    assert result.stdout == "o" * 1_000_000 + "1000000\n"
    assert result.stderr == "e" * 1_000_000


def test_a_program_that_ignores_its_input() -> None:
    assert run([SH, "-c", "exit 0"], "x" * 1_000_000).returncode == 0


def test_timeout_kills() -> None:
    assert run([SH, "-c", "sleep 5"], timeout=0.2).returncode == -9


def test_a_missing_program_raises() -> None:
    with pytest.raises(OSError):
        run(["/nonexistent/iptables-restore"])
