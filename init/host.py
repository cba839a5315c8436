"""The only lookups of the host the planner depends on, gathered into one value.

Tests build a HostFacts literal instead of reading the machine.
"""

from __future__ import annotations

import os
import pwd

from init.records import record

DEFAULT_PROXY_UID = "1337"


@record
class HostFacts:
    ipv6: bool = False
    dns_servers_v4: tuple[str, ...] = ()
    dns_servers_v6: tuple[str, ...] = ()


def default_proxy_uid(env: dict[str, str] | os._Environ = os.environ) -> str:
    """Istio: an empty --proxy-uid means the uid of $ENVOY_USER (istio-proxy), else 1337."""
    user = env.get("ENVOY_USER") or "istio-proxy"
    try:
        return str(pwd.getpwnam(user).pw_uid)
    except KeyError:
        return DEFAULT_PROXY_UID


def owner_known(kind: str, name: str) -> bool:
    """Whether a user ("user") or group ("group") name resolves here, as iptables' owner match will."""
    import grp

    try:
        (pwd.getpwnam if kind == "user" else grp.getgrnam)(name)
    except KeyError:
        return False
    return True


def has_global_ipv6(if_inet6: str = "/proc/net/if_inet6") -> bool:
    """True when a non-loopback interface holds an IPv6 address that is not link-local.

    Istio looks only at the first such address of any family; a dual-stack pod whose IPv4 address
    sorts first then gets no IPv6 capture at all. Any global IPv6 address enables it here.
    """
    try:
        with open(if_inet6, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return False
    for line in lines:
        fields = line.split()
        if len(fields) < 6 or fields[5] == "lo":
            continue
        scope = int(fields[3], 16)
        if scope not in (0x10, 0x20):  # host (loopback) and link scope don't count
            return True
    return False


def resolv_conf_servers(path: str = "/etc/resolv.conf") -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Nameservers of resolv.conf split by family (IPv4, IPv6); unreadable file → none."""
    import ipaddress  # only DNS capture reads resolv.conf: the common pod start does without it

    v4: list[str] = []
    v6: list[str] = []
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return (), ()
    for line in lines:
        fields = line.split()
        if len(fields) < 2 or fields[0] != "nameserver":
            continue
        try:
            address = ipaddress.ip_address(fields[1].split("%", 1)[0])
        except ValueError:
            continue
        (v4 if address.version == 4 else v6).append(str(address))
    return tuple(v4), tuple(v6)


def gather(redirect_dns: bool, capture_all_dns: bool) -> HostFacts:
    v4, v6 = resolv_conf_servers() if redirect_dns and not capture_all_dns else ((), ())
    return HostFacts(ipv6=has_global_ipv6(), dns_servers_v4=v4, dns_servers_v6=v6)
