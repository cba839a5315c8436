"""Failures injected at each step of an apply, in real namespaces: the namespace must end exactly as it
started and the first error must be the one reported. Also backend auto-detection (no --iptables-backend),
the nft→legacy fallback, --output-paths, --restore-format=false and --cni-mode.

Failures come in through the program's edges: a PATH directory of fake iptables binaries (shims) that fail,
or fail after letting the first calls through to the real one; and kernel state the netlink calls trip on.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from netns_tests import capture, pods, processes, ruleset

pytestmark = pytest.mark.usefixtures("program")

TPROXY = capture.with_flags(m="TPROXY")
NFT_REFUSED = "iptables-nft-restore: Could not fetch rule set generation id: Invalid argument"
NO_NAT6 = "ip6tables-restore v1.8.9 (legacy): unable to initialize table 'nat'"


class Shims:
    """A PATH directory of fake binaries placed before the real ones."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.dir.mkdir(exist_ok=True)

    def fail(self, name: str, message: str, after: int = 0, times: int = 1000) -> Path:
        """`name` runs the real binary for its first `after` calls, then prints `message` and exits 1
        (`times` times; the real binary again after that). Returns the file counting its calls."""
        real = shutil.which(name)
        assert real, f"{name} is not installed"
        count = self.dir / f"{name}.calls"
        script = self.dir / name
        script.write_text(
            "#!/bin/sh\n"
            f'n=$(cat "{count}" 2>/dev/null || echo 0); n=$((n+1)); echo $n > "{count}"\n'
            f'if [ "$n" -le {after} ] || [ "$n" -gt {after + times} ]; then exec "{real}" "$@"; fi\n'
            f"echo \"{message}\" >&2\nexit 1\n")
        script.chmod(0o755)
        return count

    def record_env(self, name: str, variable: str) -> Path:
        """`name` writes $variable to a file, then runs the real binary."""
        real = shutil.which(name)
        record = self.dir / f"{name}.{variable}"
        script = self.dir / name
        script.write_text(f'#!/bin/sh\necho "${variable}" >> "{record}"\nexec "{real}" "$@"\n')
        script.chmod(0o755)
        return record

    def env(self) -> dict[str, str]:
        return {"PATH": f"{self.dir}{os.pathsep}{os.environ['PATH']}"}


@pytest.fixture
def shims(tmp_path) -> Shims:
    return Shims(tmp_path / "shims")


def snapshot(ns: str) -> dict:
    """Everything apply may touch, on both backends: tables, policy rules and routes, addresses."""
    state = {"addresses": pods.non_link_local(ns), **pods.policy_routing(ns)}
    for backend in pods.Backend:
        for family in (4, 6):
            state[f"{backend.value}{family}"] = ruleset.save(ns, backend, family)
    return state


def with_foreign_rules(ns: str, backend: pods.Backend) -> dict:
    for family in (4, 6):
        ruleset.restore(ns, backend, family, ruleset.foreign_rules_text(family))
    return snapshot(ns)


def run(ns: str | None, flags: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    return processes.amesh(ns, flags, env=env)


def assert_failed_cleanly(result: subprocess.CompletedProcess, first_error: str) -> None:
    assert result.returncode == 1, (result.returncode, result.stderr)
    lines = result.stderr.splitlines()
    errors = [line for line in lines if line.startswith("amesh-iptables: error: ")]
    assert len(errors) == 1 and first_error in errors[0], result.stderr
    assert lines[-1] == "Nothing was left applied.", result.stderr


def test_v6_restore_failing_after_v4_committed_undoes_v4(make_network, backend, shims):
    network = make_network(ipv6=True)
    before = with_foreign_rules(network.pod, backend)
    shims.fail(backend.tool(6, "-restore"), NO_NAT6)
    result = run(network.pod, [*capture.INJECTED, "--iptables-backend", backend.value], shims.env())
    assert_failed_cleanly(result, "ip6tables-restore failed: the kernel cannot provide the IPv6 'nat' table")
    assert snapshot(network.pod) == before


def test_loopback_address_failing_undoes_both_families(make_network, backend):
    network = make_network(ipv6=True)
    pods.set_sysctls(network.pod, {"net.ipv6.conf.lo.disable_ipv6": "1"})  # `::6` on lo is refused
    before = with_foreign_rules(network.pod, backend)
    result = run(network.pod, [*capture.INJECTED, "--iptables-backend", backend.value])
    assert_failed_cleanly(result, "ip -6 addr add ::6/128 dev lo failed")
    assert snapshot(network.pod) == before


def test_tproxy_route_failing_undoes_routes_rules_address_and_both_families(make_network, backend):
    network = make_network(ipv6=True)
    pods.ns_run(network.pod, ["ip", "link", "set", "lo", "down"])  # IPv6 refuses a route via a down device
    before = with_foreign_rules(network.pod, backend)
    result = run(network.pod, [*TPROXY, "--iptables-backend", backend.value])
    # IPv4's rule and route went in, IPv6's rule too, then IPv6's route failed: all of it is undone
    assert_failed_cleanly(result, "TPROXY policy routing (fwmark 1337 lookup 133, IPv6) failed")
    assert snapshot(network.pod) == before


def test_an_undo_step_failing_keeps_the_first_error_and_the_other_steps(make_network, backend, shims):
    network = make_network(ipv6=True)
    pods.ns_run(network.pod, ["ip", "link", "set", "lo", "down"])
    before = with_foreign_rules(network.pod, backend)
    # the IPv6 apply goes through; undoing it (the second restore) fails
    shims.fail(backend.tool(6, "-restore"), "ip6tables-restore: injected undo failure", after=1)
    result = run(network.pod, [*TPROXY, "--iptables-backend", backend.value], shims.env())
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert "TPROXY policy routing (fwmark 1337 lookup 133, IPv6) failed" in lines[0], result.stderr
    assert "Undoing it failed too" in result.stderr and "injected undo failure" in result.stderr
    assert "Nothing was left applied." not in result.stderr
    after = snapshot(network.pod)
    left_v6 = after.pop(f"{backend.value}6")
    assert ruleset.custom_chains(left_v6, "nat") >= {"ISTIO_OUTPUT"}, "the failed undo step did run?"
    before.pop(f"{backend.value}6")
    assert after == before, "the undo steps after the failing one were skipped"


def test_auto_detection_follows_the_backend_that_holds_rules(make_network, backend):
    network = make_network()
    before = with_foreign_rules(network.pod, backend)
    result = run(network.pod, capture.INJECTED)  # no --iptables-backend
    assert result.returncode == 0, result.stderr
    other = pods.Backend.LEGACY if backend is pods.Backend.NFT else pods.Backend.NFT
    assert "ISTIO_OUTPUT" in ruleset.save(network.pod, backend, 4)["nat"]
    assert ruleset.save(network.pod, other, 4) == before[f"{other.value}4"] == {}
    result = run(network.pod, ["clean", *capture.INJECTED])
    assert result.returncode == 0, result.stderr
    assert snapshot(network.pod) == before


def test_auto_detection_prefers_nft_in_a_fresh_pod(make_network):
    network = make_network()
    result = run(network.pod, capture.INJECTED)
    assert result.returncode == 0, result.stderr
    assert "ISTIO_OUTPUT" in ruleset.save(network.pod, pods.Backend.NFT, 4)["nat"]
    assert ruleset.save(network.pod, pods.Backend.LEGACY, 4) == {}


def test_nft_refused_falls_back_to_legacy(make_network, shims):
    network = make_network(ipv6=True)
    before = snapshot(network.pod)
    for family in (4, 6):
        shims.fail(pods.Backend.NFT.tool(family, "-restore"), NFT_REFUSED)
    result = run(network.pod, capture.INJECTED, shims.env())
    assert result.returncode == 0, result.stderr
    assert "trying the next backend" in result.stderr
    for family in (4, 6):
        assert "ISTIO_OUTPUT" in ruleset.save(network.pod, pods.Backend.LEGACY, family)["nat"]
        assert ruleset.save(network.pod, pods.Backend.NFT, family) == {}
    result = run(network.pod, ["clean", *capture.INJECTED], shims.env())  # detection finds legacy in use
    assert result.returncode == 0, result.stderr
    assert snapshot(network.pod) == before


def test_both_backends_refused_reports_both_and_changes_nothing(make_network, shims):
    network = make_network()
    before = snapshot(network.pod)
    shims.fail(pods.Backend.NFT.tool(4, "-restore"), NFT_REFUSED)
    shims.fail(pods.Backend.LEGACY.tool(4, "-restore"), "iptables-restore v1.8.9 (legacy): unable to "
                                                        "initialize table 'nat'")
    result = run(network.pod, capture.INJECTED, shims.env())
    assert_failed_cleanly(result, "iptables-restore failed: the kernel has no usable nf_tables")
    assert "iptable_nat" in result.stderr
    assert snapshot(network.pod) == before


def test_output_paths_hold_each_familys_restore_text(make_network, backend, tmp_path):
    network = make_network(ipv6=True)
    v4, v6 = tmp_path / "rules.v4", tmp_path / "rules.v6"
    flags = [*capture.INJECTED, "--iptables-backend", backend.value]
    dry = ruleset.golden_sections(run(network.pod, [*flags, "--dry-run"]).stdout)
    result = run(network.pod, [*flags, "--output-paths", f"{v4},{v6}"])
    assert result.returncode == 0, result.stderr
    assert v4.read_text() == dry["v4"] and v6.read_text() == dry["v6"]
    assert "ISTIO_OUTPUT" in ruleset.save(network.pod, backend, 6)["nat"]


def test_an_unwritable_output_path_fails_before_anything_is_applied(make_network, backend, tmp_path):
    network = make_network()
    before = snapshot(network.pod)
    missing = tmp_path / "no-such-dir" / "rules.v4"
    result = run(network.pod, [*capture.INJECTED, "--iptables-backend", backend.value, "--output-paths", str(missing)])
    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"amesh-iptables: error: --output-paths: cannot write {missing}: "
                                          "No such file or directory"]
    assert snapshot(network.pod) == before


@pytest.mark.parametrize("flags", [capture.INJECTED, TPROXY], ids=["redirect", "tproxy"])
def test_restore_format_false_gives_the_same_rules_one_command_at_a_time(make_network, backend, flags):
    network = make_network(ipv6=True)
    before = with_foreign_rules(network.pod, backend)
    forced = [*flags, "--iptables-backend", backend.value]
    capture.apply(network.pod, backend, *flags)
    wanted = snapshot(network.pod)
    capture.clean(network.pod, backend, *flags)
    assert snapshot(network.pod) == before

    for _ in range(2):  # a re-run converges, one command at a time too
        result = run(network.pod, [*forced, "--restore-format=false"])
        assert result.returncode == 0, result.stderr
        assert snapshot(network.pod) == wanted
    result = run(network.pod, ["clean", *forced, "--restore-format=false"])
    assert result.returncode == 0, result.stderr
    assert snapshot(network.pod) == before


def test_restore_format_false_failing_midway_undoes_the_commands_that_ran(make_network, backend, shims):
    network = make_network()
    before = with_foreign_rules(network.pod, backend)
    shims.fail(backend.tool(4), "iptables: injected failure", after=6, times=1)  # the 7th command fails
    result = run(network.pod, [*capture.INJECTED, "--iptables-backend", backend.value, "--restore-format=false"],
                 shims.env())
    assert_failed_cleanly(result, "iptables failed: ")
    assert "injected failure" in result.stderr
    assert snapshot(network.pod) == before


def test_cni_mode_programs_the_pod_with_its_own_xtables_lock(make_network, shims):
    network = make_network()
    path = f"/var/run/netns/{network.pod}"
    record = shims.record_env(pods.Backend.LEGACY.tool(4, "-restore"), "XTABLES_LOCKFILE")
    result = run(None, [*capture.INJECTED, "--cni-mode", "--network-namespace", network.pod,
                        "--iptables-backend", "legacy"], shims.env())
    assert result.returncode == 0, result.stderr
    assert record.read_text().split() == [path]
    assert "ISTIO_OUTPUT" in ruleset.save(network.pod, pods.Backend.LEGACY, 4)["nat"]
