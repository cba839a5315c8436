"""Independent reader of the legacy nat table through python-iptables (libiptc reads legacy tables only).

    iptc_dump.py [4|6]  -> one JSON line {"chains": {chain: [{"target", "protocol", "dst", "matches"}...]}}
"""

from __future__ import annotations

import json
import sys

import iptc


def describe(rule) -> dict:
    return {
        "target": rule.target.name,
        "protocol": rule.protocol,
        "src": rule.src,
        "dst": rule.dst,
        "out_interface": rule.out_interface,
        "matches": {m.name: m.get_all_parameters() for m in rule.matches},
        "target_params": rule.target.get_all_parameters(),
    }


def main() -> int:
    ipv6 = sys.argv[1:] == ["6"]
    table = iptc.Table6(iptc.Table6.NAT) if ipv6 else iptc.Table(iptc.Table.NAT)
    table.refresh()
    chains = {chain.name: [describe(r) for r in chain.rules] for chain in table.chains}
    print(json.dumps({"ready": "iptc", "chains": chains}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
