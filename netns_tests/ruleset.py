"""Reading iptables-save text as data, so two saves compare regardless of counters, comments and chain order."""

from __future__ import annotations

import re
import subprocess
from typing import Mapping

from netns_tests.pods import Backend, ns_run

BUILTIN_CHAINS = frozenset({"INPUT", "OUTPUT", "FORWARD", "PREROUTING", "POSTROUTING"})
_COMMENT = re.compile(r'\s*-m comment --comment (?:"(?:[^"\\]|\\.)*"|\S+)')

# table -> chain -> (policy, rules in order); custom chains have policy "-"
Ruleset = Mapping[str, Mapping[str, tuple[str, tuple[str, ...]]]]


def parse_save(text: str) -> dict[str, dict[str, tuple[str, tuple[str, ...]]]]:
    tables: dict[str, dict[str, list]] = {}
    table = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or line == "COMMIT":
            continue
        if line.startswith("*"):
            table = tables.setdefault(line[1:], {})
        elif line.startswith(":"):
            name, policy = line[1:].split()[:2]
            table.setdefault(name, [policy, []])[0] = policy
        elif line.startswith("-A "):
            _, chain, rest = (line.split(None, 2) + [""])[:3]
            table.setdefault(chain, ["-", []])[1].append(_COMMENT.sub("", rest).strip())
        else:
            raise ValueError(f"unexpected iptables-save line: {raw!r}")
    result = {}
    for name, chains in tables.items():
        frozen = {c: (p, tuple(r)) for c, (p, r) in chains.items()}
        # an empty table with default policies behaves like no table (nft keeps it after a clean)
        if any(rules or c not in BUILTIN_CHAINS or p != "ACCEPT" for c, (p, rules) in frozen.items()):
            result[name] = frozen
    return result


def save(ns: str, backend: Backend, family: int) -> dict:
    return parse_save(ns_run(ns, [backend.tool(family, "-save")]).stdout)


def restore(ns: str, backend: Backend, family: int, text: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, backend.tool(family, "-restore"), "--noflush"], input=text,
                   text=True, check=True, capture_output=True, timeout=30)


def rule_count(ruleset: Ruleset) -> int:
    return sum(len(rules) for chains in ruleset.values() for _, rules in chains.values())


def custom_chains(ruleset: Ruleset, table: str) -> set[str]:
    return {c for c in ruleset.get(table, {}) if c not in BUILTIN_CHAINS}


def foreign_rules_text(family: int) -> str:
    """Rules a cluster operator might have, in every table capture touches; clean must leave them alone."""
    addr = "fd00:99::1/128" if family == 6 else "192.0.2.1/32"
    return "\n".join([
        "*filter", ":FOREIGN_FILTER - [0:0]", f"-A INPUT -s {addr} -j FOREIGN_FILTER",
        "-A FOREIGN_FILTER -j ACCEPT", "COMMIT",
        "*nat", ":FOREIGN_NAT - [0:0]", f"-A OUTPUT -d {addr} -p tcp --dport 9999 -j FOREIGN_NAT",
        "-A PREROUTING -p tcp --dport 9998 -j RETURN", "-A FOREIGN_NAT -j RETURN", "COMMIT",
        "*mangle", f"-A PREROUTING -s {addr} -j RETURN", f"-A OUTPUT -d {addr} -j RETURN", "COMMIT",
        "*raw", f"-A OUTPUT -d {addr} -p udp --dport 9997 -j RETURN", "COMMIT", "",
    ])


GOLDEN_SECTIONS = {"# iptables-restore --noflush (IPv4)": "v4", "# ip6tables-restore --noflush (IPv6)": "v6",
                   "# ip (netlink)": "ip"}


def golden_sections(text: str) -> dict[str, str]:
    """Split a tests/capture golden into its v4 / v6 restore texts and its `ip` commands."""
    sections: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("#"):
            if line.strip() not in GOLDEN_SECTIONS:
                raise ValueError(f"unknown golden section header {line!r}")
            current = sections.setdefault(GOLDEN_SECTIONS[line.strip()], [])
        elif line.strip():
            if current is None:
                raise ValueError(f"golden line before any section header: {line!r}")
            current.append(line)
    return {name: "\n".join(lines) + "\n" for name, lines in sections.items()}
