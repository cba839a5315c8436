"""The fast flag parser (init/flags.py) against click's: same values where it decides, None where it must not."""

from __future__ import annotations

import subprocess
import sys

import pytest

from init import click_cli
from init.flags import BOOL_FLAGS, STRING_FLAGS, env_name, fast_parse, normalize_argv
from tests.capture.cases import CASES, DEFAULT

OUR_ENV = {env_name(long) for _, long, _ in STRING_FLAGS} | {env_name(long) for _, long, _, _ in BOOL_FLAGS}
OUR_ENV |= {"ISTIO_META_DNS_CAPTURE", "INVALID_DROP"}

DECIDED = {
    **{f"case-{name}": (case.argv[1:] if case.argv[:1] == ["istio-iptables"] else case.argv, case.env)
       for name, case in CASES.items()},
    "attached-short-value": (["-p15001", "-z=15006"], {}),
    "long-with-equals": (["--envoy-port=19000", "--istio-service-exclude-cidr="], {}),
    "value-that-looks-like-a-flag": (["-x", "-b", "--dry-run"], {}),
    "last-one-wins": (["-p", "1", "-p", "2", "--dry-run", "--no-dry-run"], {}),
    "negated-and-go-booleans": (["--restore-format=false", "-n=true", "--redirect-dns=0"], {}),
    "empty-env-is-unset": (DEFAULT, {"ENVOY_PORT": "", "REDIRECT_DNS": ""}),
    "env-booleans": ([], {"REDIRECT_DNS": " Yes ", "DRY_RUN": "off", "CNI_MODE": "1", "RESTORE_FORMAT": "F"}),
    "knobs": ([], {"ISTIO_META_DNS_CAPTURE": "true", "INVALID_DROP": "on"}),
    "flag-env-over-knob": ([], {"ISTIO_META_DNS_CAPTURE": "true", "REDIRECT_DNS": "false"}),
    "env-strings": ([], {"ISTIO_SERVICE_CIDR": "*", "PROXY_GID": "7", "NETWORK_NAMESPACE": "/x"}),
}

UNDECIDED = {
    "help": ["--help"],
    "short-help": ["-h"],
    "unknown": ["--bogus"],
    "missing-value": ["-p"],
    "positional": ["extra"],
    "double-dash": ["--", "-p", "1"],
    "combined-shorts": ["-nq", "80"],
    "negated-string": ["--no-envoy-port"],
}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch):
    for name in OUR_ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize("name", sorted(DECIDED))
def test_fast_parser_agrees_with_click(name: str, clean_env: pytest.MonkeyPatch) -> None:
    argv, env = DECIDED[name]
    for key, value in env.items():
        clean_env.setenv(key, value)
    args = normalize_argv(list(argv))
    fast = fast_parse(args)
    assert fast is not None, "the fast parser should decide this one"
    assert fast == click_cli.parse(args)


@pytest.mark.parametrize("name", sorted(UNDECIDED))
def test_fast_parser_leaves_the_rest_to_click(name: str, clean_env: pytest.MonkeyPatch) -> None:
    assert fast_parse(UNDECIDED[name]) is None


def test_an_unreadable_env_boolean_goes_to_click(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("DRY_RUN", "maybe")
    assert fast_parse([]) is None
    clean_env.setenv("DRY_RUN", "")
    clean_env.setenv("INVALID_DROP", "perhaps")
    assert fast_parse([]) is None


def test_injector_call_does_not_import_click_or_pyroute2() -> None:
    code = ("import sys; from init.cli import main; main(['istio-iptables', *sys.argv[1:], '--dry-run']); "
            "print(sorted(m for m in ('click', 'pyroute2', 'typing') if m in sys.modules), file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", code, *DEFAULT], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "click" not in result.stderr and "pyroute2" not in result.stderr, result.stderr
