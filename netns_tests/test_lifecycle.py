"""Re-run, clean, validation and bad input against the real kernel, on both backends."""

from __future__ import annotations

import subprocess

import pytest

from netns_tests import capture, pods, processes, ruleset

pytestmark = pytest.mark.usefixtures("program")

TPROXY_FLAGS = capture.with_flags(m="TPROXY")
DNS_FLAGS = [*capture.INJECTED, "--redirect-dns", "--drop-invalid", "-o", "8443", "-x", "10.20.8.0/24"]


def snapshot(ns: str, backend: pods.Backend) -> dict:
    """Everything apply may touch: both families' tables, policy rules and routes, addresses."""
    return {"v4": ruleset.save(ns, backend, 4), "v6": ruleset.save(ns, backend, 6),
            "addresses": pods.non_link_local(ns), **pods.policy_routing(ns)}


def add_foreign_rules(ns: str, backend: pods.Backend) -> None:
    for family in (4, 6):
        ruleset.restore(ns, backend, family, ruleset.foreign_rules_text(family))


@pytest.mark.parametrize("flags", [capture.INJECTED, DNS_FLAGS, TPROXY_FLAGS], ids=["redirect", "dns", "tproxy"])
@pytest.mark.parametrize("ipv6", [False, True], ids=["v4", "dual"])
def test_rerun_is_identical_and_clean_restores_the_foreign_state(make_network, backend, flags, ipv6):
    network = make_network(ipv6=ipv6)
    add_foreign_rules(network.pod, backend)
    before = snapshot(network.pod, backend)
    assert ruleset.rule_count(before["v4"]) == 8

    capture.apply(network.pod, backend, *flags)
    first = snapshot(network.pod, backend)
    assert "ISTIO_OUTPUT" in first["v4"]["nat"]
    assert ("ISTIO_OUTPUT" in first["v6"].get("nat", {})) == ipv6
    assert ("::6" in first["addresses"]) == ipv6

    capture.apply(network.pod, backend, *flags)
    assert snapshot(network.pod, backend) == first, "a second apply changed the state"

    capture.clean(network.pod, backend, *flags)
    assert snapshot(network.pod, backend) == before, "clean left residue or removed foreign rules"
    capture.clean(network.pod, backend, *flags)  # cleaning a clean pod is a no-op, not an error
    assert snapshot(network.pod, backend) == before


def test_backend_from_environment(make_network, backend):
    network = make_network()
    other = pods.Backend.LEGACY if backend is pods.Backend.NFT else pods.Backend.NFT
    result = processes.amesh(network.pod, capture.INJECTED, env={"IPTABLES_BACKEND": backend.value})
    assert result.returncode == 0, result.stderr
    assert "ISTIO_OUTPUT" in ruleset.save(network.pod, backend, 4)["nat"]
    assert "nat" not in ruleset.save(network.pod, other, 4)


def host_save(backend: pods.Backend) -> dict:
    """The host's own tables, read only (this test must never write there)."""
    return ruleset.parse_save(subprocess.run([backend.tool(4, "-save")], capture_output=True, text=True,
                                             check=True).stdout)


@pytest.mark.parametrize("as_path", [False, True], ids=["name", "path"])
def test_network_namespace_flag_programs_the_named_namespace(make_network, backend, as_path):
    network = make_network()
    host_before = host_save(backend)
    target = f"/var/run/netns/{network.pod}" if as_path else network.pod
    result = processes.amesh(None, [*capture.INJECTED, "--network-namespace", target,
                                    "--iptables-backend", backend.value])
    assert result.returncode == 0, result.stderr
    assert "ISTIO_OUTPUT" in ruleset.save(network.pod, backend, 4)["nat"]
    assert host_save(backend) == host_before, "rules landed in the host namespace"


def test_run_validation_succeeds_after_apply(make_network, backend):
    network = make_network()
    capture.apply(network.pod, backend, *capture.INJECTED, "--run-validation", "--probe-timeout", "5s")


def test_validation_without_rules_fails_with_126(make_network, backend):
    network = make_network()
    capture.apply(network.pod, backend, *capture.INJECTED, "--run-validation", "--skip-rule-apply",
                  "--probe-timeout", "2s", expect=126)
    assert ruleset.save(network.pod, backend, 4).get("nat") is None, "--skip-rule-apply programmed rules"


@pytest.mark.parametrize("bad", [["-x", "*"], ["-p", "notaport"], ["-m", "BOGUS"], ["-b", "80,99999"],
                                 ["-u", "no-such-user-amesh"]],
                         ids=["exclude-star", "bad-port", "bad-mode", "port-range", "unknown-user"])
def test_bad_input_exits_1_and_changes_nothing(make_network, backend, bad):
    network = make_network()
    add_foreign_rules(network.pod, backend)
    before = snapshot(network.pod, backend)
    result = processes.amesh(network.pod, [*capture.with_flags(**{bad[0][1:]: bad[1]}),
                                           "--iptables-backend", backend.value])
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith("amesh-iptables: error: "), \
        "bad input must be explained in one line on stderr"
    assert snapshot(network.pod, backend) == before
