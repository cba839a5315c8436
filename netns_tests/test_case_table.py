"""The shared case table (tests/capture/cases.py), real kernel: each case on each backend in a fresh pod.

Oracle: a scratch namespace built the same way gets the same foreign rules, then the case's golden restore
text (iptables-restore --noflush) and its `ip` commands by hand; the kernel's own -save output of that is
what the program's namespace must show. Then a re-run must change nothing and `clean` must return the
namespace to the state saved before apply (foreign rules kept).
"""

from __future__ import annotations

import shlex
import subprocess

import pytest

from netns_tests import pods, processes, ruleset

cases = pytest.importorskip("tests.capture.cases", reason="the lead's case table is not there yet")

pytestmark = pytest.mark.usefixtures("program")


def state(ns: str, backend: pods.Backend) -> dict:
    return {"v4": ruleset.save(ns, backend, 4), "v6": ruleset.save(ns, backend, 6),
            "addresses": pods.non_link_local(ns), **pods.policy_routing(ns)}


def prepare(name: str, case, backend: pods.Backend) -> str:
    ns = pods.single_namespace(name, case.ipv6, (*case.dns_v4, *case.dns_v6))
    for family in (4, 6):
        ruleset.restore(ns, backend, family, ruleset.foreign_rules_text(family))
    return ns


def run_case(ns: str, case, backend: pods.Backend, *, clean: bool = False) -> None:
    argv = list(case.argv)
    if clean:
        argv = ["clean", *(argv[1:] if argv[:1] == ["istio-iptables"] else argv)]
    result = processes.amesh(ns, [*argv, "--iptables-backend", backend.value], env=case.env)
    assert result.returncode == 0, f"{argv} → {result.returncode}\n{result.stderr[-3000:]}"


@pytest.fixture
def namespaces():
    made: list[str] = []
    yield made
    for name in made:
        pods.remove_namespace(name)


@pytest.mark.parametrize("name", sorted(cases.CASES))
def test_case_on_real_kernel(name, backend, namespaces):
    case = cases.CASES[name]
    golden = ruleset.golden_sections((cases.EXPECTED_DIR / f"{name}.restore").read_text())
    prefix = pods.unique_prefix()

    scratch = prepare(f"{prefix}-want", case, backend)
    namespaces.append(scratch)
    for family in (4, 6):
        if f"v{family}" in golden:
            ruleset.restore(scratch, backend, family, golden[f"v{family}"])
    for command in golden.get("ip", "").splitlines():
        subprocess.run(["ip", "netns", "exec", scratch, *shlex.split(command)], check=True, timeout=10)
    want = state(scratch, backend)

    pod = prepare(f"{prefix}-pod", case, backend)
    namespaces.append(pod)
    before = state(pod, backend)
    run_case(pod, case, backend)
    assert state(pod, backend) == want, "the programmed state differs from the golden's"
    run_case(pod, case, backend)
    assert state(pod, backend) == want, "a re-run changed the state"
    run_case(pod, case, backend, clean=True)
    assert state(pod, backend) == before, "clean did not restore the state from before apply"
