"""Pods as network namespaces, built with pyroute2.

    pod (eth0 10.20.1.2) ──veth── remote (10.20.1.1 | 10.20.2.1, forwarding) ──veth── other (eth0 10.20.2.2)

`remote` plays the node and every remote service: its loopback carries the service addresses below, so
a connection that escapes the pod lands on a listener there. `other` is a second pod dialling inbound.
Every namespace name is unique per test and removed (with its /etc/netns dir) by `Network.close()`.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import secrets
import shutil
import subprocess
from pathlib import Path

from pyroute2 import IPRoute, NetNS, netns

IFA_F_NODAD = 0x02  # IPv6 addresses in tests must skip DAD, or they stay tentative for seconds

POD_V4, POD_GW_V4 = "10.20.1.2", "10.20.1.1"
OTHER_V4, OTHER_GW_V4 = "10.20.2.2", "10.20.2.1"
POD_V6, POD_GW_V6 = "fd00:20:1::2", "fd00:20:1::1"
OTHER_V6, OTHER_GW_V6 = "fd00:20:2::2", "fd00:20:2::1"
SERVICE_V4 = "10.20.9.1"  # a remote service the app dials
EXCLUDED_V4 = "10.20.8.1"  # inside EXCLUDED_CIDR_V4, which tests pass to -x
EXCLUDED_CIDR_V4 = "10.20.8.0/24"
DNS_V4 = "10.20.9.53"  # the pod's resolv.conf server
OTHER_DNS_V4 = "10.20.7.53"  # a DNS server not in resolv.conf (for --capture-all-dns)
SERVICE_V6 = "fd00:20:9::1"
DNS_V6 = "fd00:20:9::53"
REMOTE_LOOPBACK = (SERVICE_V4, EXCLUDED_V4, DNS_V4, OTHER_DNS_V4, SERVICE_V6, DNS_V6)

NETNS_ETC = Path("/etc/netns")


class Backend(enum.Enum):
    NFT = "nft"
    LEGACY = "legacy"

    def tool(self, family: int, suffix: str = "") -> str:
        """e.g. tool(6, "-save") == "ip6tables-nft-save"."""
        return f"ip{'6' if family == 6 else ''}tables-{self.value}{suffix}"


def unique_prefix() -> str:
    return "amt" + secrets.token_hex(3)


def ns_run(ns: str, argv: list[str], *, check: bool = True, timeout: float = 30, env: dict | None = None,
           ) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True,
                          timeout=timeout, check=check, env=env)


def create_namespace(name: str) -> None:
    netns.create(name)
    with NetNS(name) as ns:
        ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")


def remove_namespace(name: str) -> None:
    if name in netns.listnetns():
        netns.remove(name)
    shutil.rmtree(NETNS_ETC / name, ignore_errors=True)


def _add_address(ns: NetNS, index: int, address: str, prefixlen: int) -> None:
    if ":" in address:
        ns.addr("add", index=index, address=address, prefixlen=prefixlen, flags=IFA_F_NODAD)
    else:
        ns.addr("add", index=index, address=address, prefixlen=prefixlen)


def veth(prefix: str, left: tuple[str, str], right: tuple[str, str]) -> None:
    """A veth pair with end `left=(namespace, ifname)` and `right=(namespace, ifname)`."""
    tmp_left, tmp_right = f"{prefix}{left[1][-2:]}a", f"{prefix}{right[1][-2:]}b"
    with IPRoute() as host:
        host.link("add", ifname=tmp_left, kind="veth", peer=tmp_right)
        for tmp, (ns, ifname) in ((tmp_left, left), (tmp_right, right)):
            host.link("set", index=host.link_lookup(ifname=tmp)[0], net_ns_fd=ns, ifname=ifname)


def set_sysctls(ns: str, values: dict[str, str]) -> None:
    ns_run(ns, ["sysctl", "-qw", *(f"{k}={v}" for k, v in values.items())])


def configure(ns_name: str, ifname: str, addresses: list[tuple[str, int]], gateways: list[str] = ()) -> None:
    with NetNS(ns_name) as ns:
        index = ns.link_lookup(ifname=ifname)[0]
        for address, prefixlen in addresses:
            _add_address(ns, index, address, prefixlen)
        ns.link("set", index=index, state="up")
        for gateway in gateways:
            ns.route("add", dst="::/0" if ":" in gateway else "0.0.0.0/0", gateway=gateway)


def addresses(ns_name: str, family: int) -> set[str]:
    with NetNS(ns_name) as ns:
        return {a.get("IFA_ADDRESS") for a in ns.get_addr(family=10 if family == 6 else 2)}


def ip_rules(ns_name: str, family: int) -> list[str]:
    """Policy rules in priority order, without the priority number (`ip rule add` by hand picks 32765,
    a program may pin another; only the order relative to the standard rules matters)."""
    lines = ns_run(ns_name, ["ip", f"-{family}", "rule", "show"]).stdout.splitlines()
    return [re.sub(r"^\d+:\s*", "", line).strip() for line in lines]


def ip_routes(ns_name: str, family: int, table: str) -> list[str]:
    """Routes of one table, without `proto` (netlink callers set static, `ip route add` leaves boot)."""
    out = ns_run(ns_name, ["ip", f"-{family}", "route", "show", "table", table], check=False)
    lines = out.stdout.splitlines() if out.returncode == 0 else []
    return [" ".join(re.sub(r"\bproto \S+", "", line).split()) for line in lines]


@dataclasses.dataclass
class Network:
    """The three namespaces of one test; `close()` removes them all, even half-built."""

    prefix: str
    ipv6: bool
    namespaces: list[str] = dataclasses.field(default_factory=list)

    @property
    def pod(self) -> str:
        return f"{self.prefix}-pod"

    @property
    def remote(self) -> str:
        return f"{self.prefix}-remote"

    @property
    def other(self) -> str:
        return f"{self.prefix}-other"

    def build(self) -> "Network":
        for name in (self.pod, self.remote, self.other):
            create_namespace(name)
            self.namespaces.append(name)
        veth(self.prefix, (self.pod, "eth0"), (self.remote, "to-pod"))
        veth(self.prefix, (self.other, "eth0"), (self.remote, "to-other"))
        no_dad = {"net.ipv6.conf.all.accept_dad": "0", "net.ipv6.conf.default.accept_dad": "0"}
        set_sysctls(self.pod, {**no_dad, "net.ipv6.conf.eth0.accept_dad": "0"})
        set_sysctls(self.other, {**no_dad, "net.ipv6.conf.eth0.accept_dad": "0"})
        set_sysctls(self.remote, {**no_dad, "net.ipv4.ip_forward": "1", "net.ipv6.conf.all.forwarding": "1",
                                  "net.ipv6.conf.to-pod.accept_dad": "0",
                                  "net.ipv6.conf.to-other.accept_dad": "0"})
        v6 = self.ipv6
        configure(self.pod, "eth0", [(POD_V4, 24)] + ([(POD_V6, 64)] if v6 else []),
                  [POD_GW_V4] + ([POD_GW_V6] if v6 else []))
        configure(self.other, "eth0", [(OTHER_V4, 24)] + ([(OTHER_V6, 64)] if v6 else []),
                  [OTHER_GW_V4] + ([OTHER_GW_V6] if v6 else []))
        configure(self.remote, "to-pod", [(POD_GW_V4, 24)] + ([(POD_GW_V6, 64)] if v6 else []))
        configure(self.remote, "to-other", [(OTHER_GW_V4, 24)] + ([(OTHER_GW_V6, 64)] if v6 else []))
        configure(self.remote, "lo", [(a, 128 if ":" in a else 32) for a in REMOTE_LOOPBACK])
        servers = [DNS_V4] + ([DNS_V6] if v6 else [])
        (NETNS_ETC / self.pod).mkdir(parents=True, exist_ok=True)
        (NETNS_ETC / self.pod / "resolv.conf").write_text("".join(f"nameserver {s}\n" for s in servers))
        return self

    def close(self) -> None:
        for name in reversed(self.namespaces):
            remove_namespace(name)
        self.namespaces.clear()


def single_namespace(name: str, ipv6: bool, nameservers: tuple[str, ...] = ()) -> str:
    """One namespace whose eth0 (a veth to a parked peer in the same namespace) carries the pod address,
    and whose resolv.conf lists exactly `nameservers` (none: an empty file hides the host's)."""
    create_namespace(name)
    try:
        veth(unique_prefix(), (name, "eth0"), (name, "peer0"))
        set_sysctls(name, {"net.ipv6.conf.all.accept_dad": "0", "net.ipv6.conf.eth0.accept_dad": "0"})
        configure(name, "peer0", [])
        configure(name, "eth0", [(POD_V4, 24)] + ([(POD_V6, 64)] if ipv6 else []))
        (NETNS_ETC / name).mkdir(parents=True, exist_ok=True)
        (NETNS_ETC / name / "resolv.conf").write_text("".join(f"nameserver {s}\n" for s in nameservers))
    except Exception:
        remove_namespace(name)
        raise
    return name


def policy_routing(ns_name: str) -> dict[str, list[str]]:
    """Policy rules of both families and every route outside the kernel-managed `local` table
    (so a route left in a private table after its rule is gone still shows)."""
    state: dict[str, list[str]] = {}
    for family in (4, 6):
        state[f"rules{family}"] = ip_rules(ns_name, family)
        state[f"routes{family}"] = [r for r in ip_routes(ns_name, family, "all") if "table local" not in r]
    return state


def non_link_local(ns_name: str) -> set[str]:
    return {a for a in addresses(ns_name, 4) | addresses(ns_name, 6) if not a.startswith("fe80:")}
