"""Pure: turn iptables' failure output into a message that names what is missing and how to fix it.

Istio's users meet these as `iptables-restore: unable to initialize table 'nat'` and similar (kernel
modules not loaded, nft vs legacy mismatch); the message should say which module or binary.
"""

from __future__ import annotations

import re

# Table → kernel modules providing it, per family and backend.
_TABLE_MODULES = {
    ("legacy", 4): "iptable_{table}",
    ("legacy", 6): "ip6table_{table}",
}
_NFT_TABLE_MODULES = {"nat": "nft_chain_nat, nf_nat", "mangle": "nft_chain_route", "raw": "nf_tables", "filter": "nf_tables"}
_EXTENSION_MODULES = {
    "REDIRECT": "xt_REDIRECT (nf_nat)",
    "TPROXY": "xt_TPROXY (nf_tproxy_ipv4/nf_tproxy_ipv6)",
    "CT": "xt_CT",
    "MARK": "xt_mark",
    "CONNMARK": "xt_connmark",
    "NFLOG": "xt_NFLOG (nfnetlink_log)",
    "owner": "xt_owner",
    "conntrack": "xt_conntrack (nf_conntrack)",
    "mark": "xt_mark",
    "connmark": "xt_connmark",
    "tcp": "x_tables (xt_tcpudp)",
    "udp": "x_tables (xt_tcpudp)",
}

_TABLE_FAIL = re.compile(
    r"(?:can't initialize ip6?tables table `(?P<a>\w+)'|unable to initialize table '(?P<b>\w+)'"
    r"|TABLE_ADD failed .*?table (?P<c>\w+))"
)
_EXT_FAIL = re.compile(r"Couldn't load (?:target|match) `(?P<name>[\w-]+)'")
_NFT_FAIL = re.compile(r"Could not fetch rule set generation id|Failed to initialize nft|nf_tables.*not supported", re.I)
_NFT_RULE_FAIL = re.compile(r"RULE_(?:APPEND|INSERT|REPLACE) failed \((?P<why>[^)]*)\)")
_PERMISSION = re.compile(r"Permission denied|must be root|Operation not permitted", re.I)


def explain_restore_failure(stderr: str, backend: str, family: int) -> str:
    """A one-paragraph explanation of why iptables-restore failed, naming modules where it can."""
    text = stderr.strip()
    hints: list[str] = []
    table = _TABLE_FAIL.search(text)
    if table:
        name = table.group("a") or table.group("b") or table.group("c")
        if backend == "nft":
            modules = f"nf_tables, {_NFT_TABLE_MODULES.get(name, 'nf_tables')}"
        else:
            modules = _TABLE_MODULES[("legacy", family)].format(table=name)
        hints.append(
            f"the kernel cannot provide the IPv{family} '{name}' table to the {backend} backend: load kernel "
            f"module(s) {modules}, or try the other backend (--iptables-backend)"
        )
    for match in _EXT_FAIL.finditer(text):
        name = match.group("name")
        module = _EXTENSION_MODULES.get(name)
        if module is None:
            hints.append(f"iptables does not know '{name}' (a chain that was not declared, or a missing extension)")
        else:
            hints.append(f"the iptables extension '{name}' is missing: load kernel module {module}")
    if _NFT_FAIL.search(text):
        hints.append("the kernel has no usable nf_tables: load module nf_tables (and nft_compat), or use "
                     "--iptables-backend legacy")
    rule_fail = _NFT_RULE_FAIL.search(text)
    if rule_fail and not hints:
        hints.append(f"the kernel refused a rule ({rule_fail.group('why')}): an xtables extension module is "
                     "missing for nf_tables (load nft_compat and the xt_* module of the match or target named "
                     "in the rule)")
    if _PERMISSION.search(text):
        hints.append("no permission to change iptables: run as root with the NET_ADMIN and NET_RAW capabilities")
    summary = "; ".join(hints) if hints else "see iptables' message"
    return f"{summary}.\niptables said: {text}" if text else summary + "."
