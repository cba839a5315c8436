"""Running the capture program against a test pod, and the flags the injector passes by default."""

from __future__ import annotations

import subprocess

from netns_tests import pods, processes

# The 1.13 injection template's arguments (istio-iptables-reference.md §6) for a REDIRECT pod.
INJECTED = ["-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "",
            "-b", "*", "-d", "15090,15021,15020"]


def apply(ns: str, backend: pods.Backend, *flags: str, expect: int = 0) -> subprocess.CompletedProcess:
    result = processes.amesh(ns, [*flags, "--iptables-backend", backend.value])
    assert result.returncode == expect, (
        f"amesh-iptables {' '.join(flags)} exited {result.returncode}, wanted {expect}\n"
        f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}")
    return result


def clean(ns: str, backend: pods.Backend, *flags: str, expect: int = 0) -> subprocess.CompletedProcess:
    result = processes.amesh(ns, ["clean", *flags, "--iptables-backend", backend.value])
    assert result.returncode == expect, (
        f"amesh-iptables clean exited {result.returncode}, wanted {expect}\n{result.stderr[-3000:]}")
    return result


def with_flags(**overrides: str) -> list[str]:
    """INJECTED with some short flags replaced or added, e.g. with_flags(o="8443")."""
    flags = list(INJECTED)
    for name, value in overrides.items():
        flag = f"-{name}" if len(name) == 1 else f"--{name.replace('_', '-')}"
        if flag in flags:
            flags[flags.index(flag) + 1] = value
        else:
            flags += [flag, value]
    return flags
