"""The command line as the injector calls it: exit codes, flag/env precedence, Go flag spellings."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from init.cli import normalize_argv, parse_flags

PROGRAM = [sys.executable, "-c", "from init.cli import main; main()"]


def run(args: list[str], **env: str) -> subprocess.CompletedProcess:
    clean_env = {k: v for k, v in os.environ.items() if not k.startswith(("ISTIO_", "PROXY_", "INBOUND_"))}
    return subprocess.run([*PROGRAM, *args], capture_output=True, text=True, env={**clean_env, **env})


def test_dry_run_of_the_injector_defaults_changes_nothing_and_prints_the_plan() -> None:
    result = run(["istio-iptables", "-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*",
                  "-x", "", "-b", "*", "-d", "15090,15021,15020", "--dry-run"])
    assert result.returncode == 0, result.stderr
    assert "-A ISTIO_OUTPUT -j ISTIO_REDIRECT" in result.stdout
    assert result.stdout.startswith("# iptables-restore --noflush (IPv4)\n* nat\n-N ISTIO_INBOUND\n")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--bogus"], "No such option '--bogus'"),
        (["-p", "http", "--dry-run"], "--envoy-port: invalid port 'http'"),
        (["-x", "*", "--dry-run"], "'*' is not allowed"),
        (["-m", "NONE", "--dry-run"], "invalid mode 'NONE'"),
        (["-i", "10.0.0.0/99", "--dry-run"], "invalid CIDR '10.0.0.0/99'"),
        (["--redirect-dns=maybe"], "invalid boolean 'maybe'"),
    ],
)
def test_bad_input_exits_1_naming_the_value(args: list[str], message: str) -> None:
    result = run(args)
    assert result.returncode == 1
    assert message in result.stderr
    assert result.stdout == ""


def test_validation_failure_exits_126_without_rules(tmp_path) -> None:
    # No rules anywhere near 127.0.0.6:<probe>: the probe is refused until the timeout.
    result = run(["--run-validation", "--skip-rule-apply", "--probe-timeout", "300ms",
                  "-p", "25001", "-z", "25006", "--iptables-probe-port", "25002"])
    assert result.returncode == 126, result.stderr
    assert "validation timeout" in result.stderr


def test_flag_beats_env_even_when_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ISTIO_SERVICE_EXCLUDE_CIDR", "10.0.0.0/8")
    monkeypatch.setenv("ENVOY_PORT", "19080")
    flags = parse_flags(["-x", ""])
    assert flags["istio_service_exclude_cidr"] == ""
    assert flags["envoy_port"] == "19080"


def test_env_only_knobs_are_defaults_for_their_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ISTIO_META_DNS_CAPTURE", "true")
    monkeypatch.setenv("INVALID_DROP", "1")
    assert parse_flags([])["redirect_dns"] is True
    assert parse_flags([])["drop_invalid"] is True
    assert parse_flags(["--redirect-dns=false"])["redirect_dns"] is False
    monkeypatch.setenv("REDIRECT_DNS", "false")  # the flag's own env var outranks the knob
    assert parse_flags([])["redirect_dns"] is False


def test_go_flag_spellings() -> None:
    assert normalize_argv(["--dry-run=true", "--restore-format=false", "-p=15001", "-n=false"]) == [
        "--dry-run", "--no-restore-format", "-p", "15001", "--no-dry-run",
    ]
    assert parse_flags(["--restore-format=false"])["restore_format"] is False
    assert parse_flags(["-n"])["dry_run"] is True


@pytest.mark.parametrize("args", [["--help"], ["istio-iptables", "-h"], ["clean", "--help"]])
def test_help_lists_every_form(args: list[str]) -> None:
    result = run(args)
    assert result.returncode == 0, result.stderr
    for form in ("amesh-iptables [OPTIONS]", "amesh-iptables istio-iptables [OPTIONS]",
                 "amesh-iptables clean [OPTIONS]", "amesh-iptables istio-clean-iptables [OPTIONS]"):
        assert form in result.stdout, form
    assert "--restore-format / --no-restore-format" in result.stdout


def test_unknown_user_fails_the_dry_run_with_one_line() -> None:
    result = run(["-u", "no-such-user-amesh", "--dry-run"])
    assert result.returncode == 1
    assert result.stderr == ("amesh-iptables: error: --proxy-uid: unknown user 'no-such-user-amesh' "
                             "(not a number, and no such user on this host)\n")
    assert result.stdout == ""


def test_user_and_group_names_that_resolve_are_kept_as_names() -> None:
    result = run(["-u", "root", "-g", "root", "--dry-run"])
    assert result.returncode == 0, result.stderr
    assert "-m owner --uid-owner root -j RETURN" in result.stdout
    assert "-m owner --gid-owner root -j RETURN" in result.stdout


def test_cni_mode_without_a_namespace_is_refused() -> None:
    result = run(["--cni-mode", "--dry-run"])
    assert result.returncode == 1
    assert "--cni-mode: needs --network-namespace" in result.stderr
