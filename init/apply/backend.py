"""Which iptables binaries to run: legacy or nft, per address family.

Auto-detection follows what the netns already holds: a backend whose save output shows rules is the
one in use (mixing backends makes rules invisible to each other, the classic istio-init failure);
otherwise nft is preferred and legacy is the fallback. The kernel probe is the apply itself: a restore
is one atomic transaction, so a backend the kernel cannot serve fails without leaving anything, and the
next candidate is tried.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

from init.config import Backend
from init.plan import Family


@dataclass(frozen=True)
class Binaries:
    backend: str  # "legacy" | "nft"
    family: Family
    restore: str
    save: str
    command: str


def _names(family: Family, backend: str) -> tuple[str, str, str]:
    base = "iptables" if family is Family.V4 else "ip6tables"
    return f"{base}-{backend}-restore", f"{base}-{backend}-save", f"{base}-{backend}"


def _plain_variant(family: Family) -> Binaries | None:
    """Distributions without the suffixed names: ask the plain binary which variant it is."""
    base = "iptables" if family is Family.V4 else "ip6tables"
    paths = [shutil.which(n) for n in (f"{base}-restore", f"{base}-save", base)]
    if not all(paths):
        return None
    try:
        version = subprocess.run([paths[2], "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    backend = "nft" if "nf_tables" in version else "legacy"
    return Binaries(backend, family, paths[0], paths[1], paths[2])  # type: ignore[arg-type]


def find(family: Family, backend: str) -> Binaries | None:
    paths = [shutil.which(n) for n in _names(family, backend)]
    if all(paths):
        return Binaries(backend, family, paths[0], paths[1], paths[2])  # type: ignore[arg-type]
    plain = _plain_variant(family)
    return plain if plain is not None and plain.backend == backend else None


def holds_rules(save_output: str) -> bool:
    """A save with any rule or user chain means this backend is in use in this namespace."""
    for line in save_output.splitlines():
        if line.startswith("-A "):
            return True
        if line.startswith(":") and line[1:].split(" ", 1)[0] not in _BUILTIN:
            return True
    return False


_BUILTIN = {"INPUT", "OUTPUT", "FORWARD", "PREROUTING", "POSTROUTING"}


def run_save(binaries: Binaries) -> str:
    result = subprocess.run([binaries.save], capture_output=True, text=True)
    return result.stdout if result.returncode == 0 else ""


def candidates(family: Family, wanted: Backend) -> list[Binaries]:
    """Backends to try, best first; empty when no iptables binary is installed."""
    if wanted is not Backend.AUTO:
        found = find(family, wanted.value)
        return [found] if found else []
    nft, legacy = find(family, "nft"), find(family, "legacy")
    # Like Istio: legacy wins when it holds rules (nft's save only warns that legacy tables exist).
    in_use = [b for b in (legacy, nft) if b is not None and holds_rules(run_save(b))]
    return in_use + [b for b in (nft, legacy) if b is not None and b not in in_use]
