"""What a config dump's bootstrap says about the pod the translation is for (pure).

pilot-agent writes the pod's addresses into the bootstrap node metadata (`INSTANCE_IPS`, comma
separated, from the injector's env); `amesh-agent translate` uses them for the inbound side when no
`--pod-ip` is given. Camel or snake case, JSON or YAML already parsed: only the bootstrap is read.
"""

from __future__ import annotations

import ipaddress
from typing import Any

_BOOTSTRAP = "envoy.admin.v3.BootstrapConfigDump"


def instance_ips(dump: Any) -> tuple[str, ...]:
    """The pod IPs in `dump`'s bootstrap node metadata, in their order; () when there is none.

    Raises ValueError naming an entry that is not an IP address."""
    configs = dump.get("configs", []) if isinstance(dump, dict) else []
    for config in configs if isinstance(configs, list) else []:
        if not isinstance(config, dict) or not str(config.get("@type", "")).endswith(_BOOTSTRAP):
            continue
        node = (config.get("bootstrap") or {}).get("node") or {}
        text = (node.get("metadata") or {}).get("INSTANCE_IPS", "")
        ips = tuple(ip.strip() for ip in str(text).split(",") if ip.strip())
        for ip in ips:
            try:
                ipaddress.ip_address(ip)
            except ValueError:
                raise ValueError(f"bootstrap node metadata INSTANCE_IPS: {ip!r} is not an IP address") from None
        return ips
    return ()
