"""Which iptables binaries to run: legacy or nft, per address family.

Auto-detection follows what the netns already holds: a backend whose save output shows rules is the
one in use (mixing backends makes rules invisible to each other, the classic istio-init failure);
otherwise nft is preferred and legacy is the fallback. The kernel probe is the apply itself: a restore
is one atomic transaction, so a backend the kernel cannot serve fails without leaving anything, and the
next candidate is tried.
"""

from __future__ import annotations

import os

from init.apply import spawn
from init.config import Backend
from init.plan import BUILTIN_CHAINS, Family
from init.records import record
from init.render import parse_save


@record
class Binaries:
    backend: str  # "legacy" | "nft"
    family: Family
    restore: str
    save: str
    command: str


def _names(family: Family, backend: str) -> tuple[str, str, str]:
    base = "iptables" if family == Family.V4 else "ip6tables"
    return f"{base}-{backend}-restore", f"{base}-{backend}-save", f"{base}-{backend}"


def _which(name: str) -> str | None:
    # shutil.which would do, but importing shutil costs more than this whole lookup (startup matters here).
    for directory in os.environ.get("PATH", os.defpath).split(os.pathsep):
        path = os.path.join(directory, name)
        if os.access(path, os.X_OK) and not os.path.isdir(path):
            return path
    return None


def _plain_variant(family: Family) -> Binaries | None:
    """Distributions without the suffixed names: ask the plain binary which variant it is."""
    base = "iptables" if family == Family.V4 else "ip6tables"
    paths = [_which(n) for n in (f"{base}-restore", f"{base}-save", base)]
    if not all(paths):
        return None
    try:
        version = spawn.run([paths[2], "--version"], timeout=10).stdout
    except OSError:
        return None
    backend = "nft" if "nf_tables" in version else "legacy"
    return Binaries(backend, family, paths[0], paths[1], paths[2])  # type: ignore[arg-type]


def find(family: Family, backend: str) -> Binaries | None:
    paths = [_which(n) for n in _names(family, backend)]
    if all(paths):
        return Binaries(backend, family, paths[0], paths[1], paths[2])  # type: ignore[arg-type]
    plain = _plain_variant(family)
    return plain if plain is not None and plain.backend == backend else None


def holds_rules(save_output: str) -> bool:
    """A save with any rule or user chain means this backend is in use in this namespace."""
    return any(table.rules or any(c not in BUILTIN_CHAINS for c in table.chains)
               for table in parse_save(save_output).values())


def run_save(binaries: Binaries) -> str:
    result = spawn.run([binaries.save])
    return result.stdout if result.returncode == 0 else ""


_LEGACY_TABLES = {Family.V4: "/proc/net/ip_tables_names", Family.V6: "/proc/net/ip6_tables_names"}


def legacy_tables_loaded(family: Family) -> bool:
    """Legacy tables in use in this netns are listed here; an empty list spares running legacy-save."""
    try:
        with open(_LEGACY_TABLES[family], encoding="utf-8") as fh:
            return bool(fh.read().strip())
    except OSError:
        return True  # can't tell: ask the binary


def candidates(family: Family, wanted: Backend, saves: dict | None = None) -> list[Binaries]:
    """Backends to try, best first; empty when no iptables binary is installed. The save outputs read
    while deciding are left in `saves` (backend → text) so the caller need not run them again."""
    saves = {} if saves is None else saves
    if wanted != Backend.AUTO:
        found = find(family, wanted)
        return [found] if found else []
    nft, legacy = find(family, "nft"), find(family, "legacy")
    if legacy is not None and not legacy_tables_loaded(family):
        saves["legacy"] = ""
    for binaries in (legacy, nft):
        if binaries is not None and binaries.backend not in saves:
            saves[binaries.backend] = run_save(binaries)
    # Like Istio: legacy wins when it holds rules (nft's save only warns that legacy tables exist).
    in_use = [b for b in (legacy, nft) if b is not None and holds_rules(saves[b.backend])]
    return in_use + [b for b in (nft, legacy) if b is not None and b not in in_use]
