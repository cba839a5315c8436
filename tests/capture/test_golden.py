"""Golden tests: every case of the shared table, planned purely and rendered as the dry run prints it."""

from __future__ import annotations

import os

import pytest

from init.cli import parse_flags
from init.config import build_config
from init.plan import plan
from init.run import dry_run_text
from tests.capture.cases import CASES, EXPECTED_DIR, Case

ENV_NAMES = {"ISTIO_META_DNS_CAPTURE", "INVALID_DROP", "ENVOY_USER"}


def render_case(case: Case, monkeypatch: pytest.MonkeyPatch) -> str:
    for name in list(os.environ):
        if name.startswith(("ISTIO_", "PROXY_", "ENVOY_", "INBOUND_")) or name in ENV_NAMES:
            monkeypatch.delenv(name)
    for name, value in case.env.items():
        monkeypatch.setenv(name, value)
    config = build_config(parse_flags(case.argv), default_proxy_uid="1337")
    return dry_run_text(plan(config, case.ipv6, case.dns_v4, case.dns_v6))


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    text = render_case(CASES[name], monkeypatch)
    golden = EXPECTED_DIR / f"{name}.restore"
    if os.environ.get("REFRESH_GOLDEN"):
        golden.write_text(text)
    assert golden.exists(), f"missing golden {golden}; run with REFRESH_GOLDEN=1 and review it"
    assert text == golden.read_text()


def test_case_table_is_large_enough() -> None:
    assert len(CASES) >= 20
