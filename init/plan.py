"""Pure rule planning: CaptureConfig + HostFacts → the rules istio-iptables 1.13 would program.

Rules are appended in exactly Istio's order (its `run()`), one small function per concern. Dual-stack is
written once: `_Builder.both` fans a rule out to IPv4 and, when the pod has IPv6, to IPv6, with the
family-specific addresses substituted from placeholders.
"""

from __future__ import annotations

from init.config import CaptureConfig, IPNetwork, Mode
from init.records import record

DNS_PORT = "53"
AGENT_DNS_PORT = "15053"
# TPROXY: packets from the proxy's outbound side to the app over lo carry this mark, so they are
# not captured again by the inbound rules (Istio's outboundMark).
OUTBOUND_MARK = "1338"

BUILTIN_CHAINS = frozenset({"INPUT", "OUTPUT", "FORWARD", "PREROUTING", "POSTROUTING"})
TARGETS = frozenset({"ACCEPT", "RETURN", "DROP", "REJECT", "REDIRECT", "TPROXY", "MARK", "CONNMARK", "CT", "NFLOG"})
CHAIN_PREFIX = "ISTIO_"


class Family:
    """Address families as plain ints (an IntEnum costs start-up time)."""

    V4 = 4
    V6 = 6
    ALL = (4, 6)


class Placeholder:
    """Family-specific addresses in rule arguments (plain markers: an Enum costs start-up time)."""

    LOOPBACK = "<loopback>"  # 127.0.0.1/32 | ::1/128
    PASSTHROUGH_SOURCE = "<passthrough-source>"  # 127.0.0.6/32 | ::6/128 (inbound passthrough bind)


_ADDRESSES = {
    (Placeholder.LOOPBACK, Family.V4): "127.0.0.1/32",
    (Placeholder.LOOPBACK, Family.V6): "::1/128",
    (Placeholder.PASSTHROUGH_SOURCE, Family.V4): "127.0.0.6/32",
    (Placeholder.PASSTHROUGH_SOURCE, Family.V6): "::6/128",
}


# Immutable records are namedtuples on this path: a dataclass costs ~6x more to define, and the
# init program's start-up time is part of every pod's start (benchmarks/init_apply.py).
@record
class Rule:
    table: str
    chain: str
    args: tuple[str, ...]
    position: int | None = None  # None appends (-A); a number inserts there (-I chain N)

    @property
    def target(self) -> str | None:
        return jump_target(self.args)

    def spec(self) -> str:
        """The rule as iptables-restore takes it, e.g. `-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN`."""
        head = f"-A {self.chain}" if self.position is None else f"-I {self.chain} {self.position}"
        return " ".join((head, *self.args))


def jump_target(words) -> str | None:
    """The chain or target a rule jumps (-j) or goes (-g) to, from its words."""
    for i, word in enumerate(words[:-1]):
        if word in ("-j", "-g"):
            return words[i + 1]
    return None


@record
class PolicyRoute:
    """TPROXY: `ip rule add fwmark MARK lookup TABLE` + `ip route add local default dev lo table TABLE`."""

    family: Family
    mark: int
    table: int


@record
class Plan:
    ipv6: bool
    v4: tuple[Rule, ...]
    v6: tuple[Rule, ...]
    routes: tuple[PolicyRoute, ...]

    def rules(self, family: Family) -> tuple[Rule, ...]:
        return self.v4 if family == Family.V4 else self.v6

    @property
    def families(self) -> tuple[Family, ...]:
        return (Family.V4, Family.V6) if self.ipv6 else (Family.V4,)


class _Builder:
    def __init__(self, ipv6: bool):
        self.ipv6 = ipv6
        self.rules: dict[Family, list[Rule]] = {Family.V4: [], Family.V6: []}

    def add(self, family: Family, table: str, chain: str, *args: object, position: int | None = None) -> None:
        if family == Family.V6 and not self.ipv6:
            return
        resolved = tuple(_ADDRESSES.get((a, family)) or str(a) for a in args)
        self.rules[family].append(Rule(table, chain, resolved, position))

    def both(self, table: str, chain: str, *args: object, position: int | None = None) -> None:
        for family in Family.ALL:
            self.add(family, table, chain, *args, position=position)

    def per_network(self, networks: tuple[IPNetwork, ...], table: str, chain: str, *args: object) -> None:
        """One rule per CIDR, in the CIDR's own family; `{cidr}` in args is replaced by it."""
        for net in networks:
            family = Family.V4 if net.version == 4 else Family.V6
            self.add(family, table, chain, *(str(net) if a == "{cidr}" else a for a in args))


def plan(config: CaptureConfig, ipv6: bool, dns_v4: tuple[str, ...] = (), dns_v6: tuple[str, ...] = ()) -> Plan:
    b = _Builder(ipv6)
    _exclude_interfaces(b, config)
    _kubevirt_short_circuit(b, config)
    if config.drop_invalid:
        b.both("mangle", "PREROUTING", "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP")
    _base_chains(b, config)
    _inbound(b, config)
    _outbound(b, config, dns_v4, dns_v6)
    if config.redirect_dns:
        _dns_udp(b, config, dns_v4, dns_v6)
    if config.mode is Mode.TPROXY:
        _tproxy_tail(b, config)
    routes: tuple[PolicyRoute, ...] = ()
    if config.mode is Mode.TPROXY and config.captures_inbound:
        families = (Family.V4, Family.V6) if ipv6 else (Family.V4,)
        routes = tuple(PolicyRoute(f, config.tproxy_mark, config.tproxy_route_table) for f in families)
    return Plan(ipv6, tuple(b.rules[Family.V4]), tuple(b.rules[Family.V6]), routes)


def _exclude_interfaces(b: _Builder, c: CaptureConfig) -> None:
    for name in c.exclude_interfaces:
        b.both("nat", "PREROUTING", "-i", name, "-j", "RETURN")
        b.both("nat", "OUTPUT", "-o", name, "-j", "RETURN")
    if c.mode is Mode.TPROXY:
        for name in c.exclude_interfaces:
            b.both("mangle", "PREROUTING", "-i", name, "-j", "RETURN")
            b.both("mangle", "OUTPUT", "-o", name, "-j", "RETURN")


def _kubevirt_short_circuit(b: _Builder, c: CaptureConfig) -> None:
    for name in c.kubevirt_interfaces:
        b.both("nat", "PREROUTING", "-i", name, "-j", "RETURN", position=1)


def _base_chains(b: _Builder, c: CaptureConfig) -> None:
    b.both("nat", "ISTIO_INBOUND", "-p", "tcp", "--dport", c.inbound_tunnel_port, "-j", "RETURN")
    b.both("nat", "ISTIO_REDIRECT", "-p", "tcp", "-j", "REDIRECT", "--to-ports", c.proxy_port)
    b.both("nat", "ISTIO_IN_REDIRECT", "-p", "tcp", "-j", "REDIRECT", "--to-ports", c.inbound_capture_port)


def _inbound(b: _Builder, c: CaptureConfig) -> None:
    if not c.captures_inbound:
        return
    tproxy = c.mode is Mode.TPROXY
    if tproxy:
        mark = str(c.tproxy_mark)
        b.both("mangle", "ISTIO_DIVERT", "-j", "MARK", "--set-mark", mark)
        b.both("mangle", "ISTIO_DIVERT", "-j", "ACCEPT")
        b.both(
            "mangle", "ISTIO_TPROXY", "!", "-d", Placeholder.LOOPBACK, "-p", "tcp", "-j", "TPROXY",
            "--tproxy-mark", f"{mark}/0xffffffff", "--on-port", c.inbound_capture_port,
        )
    table = "mangle" if tproxy else "nat"
    b.both(table, "PREROUTING", "-p", "tcp", "-j", "ISTIO_INBOUND")
    if c.inbound_all:
        for port in c.inbound_exclude_ports:
            b.both(table, "ISTIO_INBOUND", "-p", "tcp", "--dport", port, "-j", "RETURN")
        if tproxy:
            b.both("mangle", "ISTIO_INBOUND", "-p", "tcp", "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED",
                   "-j", "ISTIO_DIVERT")
            b.both("mangle", "ISTIO_INBOUND", "-p", "tcp", "-j", "ISTIO_TPROXY")
        else:
            b.both("nat", "ISTIO_INBOUND", "-p", "tcp", "-j", "ISTIO_IN_REDIRECT")
        return
    for port in c.inbound_ports:
        if tproxy:
            b.both("mangle", "ISTIO_INBOUND", "-p", "tcp", "--dport", port, "-m", "conntrack", "--ctstate",
                   "RELATED,ESTABLISHED", "-j", "ISTIO_DIVERT")
            b.both("mangle", "ISTIO_INBOUND", "-p", "tcp", "--dport", port, "-j", "ISTIO_TPROXY")
        else:
            b.both("nat", "ISTIO_INBOUND", "-p", "tcp", "--dport", port, "-j", "ISTIO_IN_REDIRECT")


def _outbound(b: _Builder, c: CaptureConfig, dns_v4: tuple[str, ...], dns_v6: tuple[str, ...]) -> None:
    b.both("nat", "OUTPUT", "-p", "tcp", "-j", "ISTIO_OUTPUT")
    for port in c.outbound_exclude_ports:
        b.both("nat", "ISTIO_OUTPUT", "-p", "tcp", "--dport", port, "-j", "RETURN")
    b.both("nat", "ISTIO_OUTPUT", "-o", "lo", "-s", Placeholder.PASSTHROUGH_SOURCE, "-j", "RETURN")
    _proxy_owner_rules(b, c)
    if c.redirect_dns:
        if c.capture_all_dns:
            b.both("nat", "ISTIO_OUTPUT", "-p", "tcp", "--dport", DNS_PORT, "-j", "REDIRECT", "--to-ports",
                   AGENT_DNS_PORT)
        else:
            _per_server(b, dns_v4, dns_v6, "nat", "ISTIO_OUTPUT", "-p", "tcp", "--dport", DNS_PORT,
                        "-d", "{server}", "-j", "REDIRECT", "--to-ports", AGENT_DNS_PORT)
    b.both("nat", "ISTIO_OUTPUT", "-d", Placeholder.LOOPBACK, "-j", "RETURN")
    b.per_network(c.outbound_exclude_cidrs, "nat", "ISTIO_OUTPUT", "-d", "{cidr}", "-j", "RETURN")
    for port in c.outbound_ports:
        b.both("nat", "ISTIO_OUTPUT", "-p", "tcp", "--dport", port, "-j", "ISTIO_REDIRECT")
    _outbound_include(b, c)


def _proxy_owner_rules(b: _Builder, c: CaptureConfig) -> None:
    # Loopback CIDRs in -i mean "capture app→app over lo too", so the lo RETURN is left out.
    keep_lo_return = not any(net.is_loopback for net in c.outbound_cidrs)
    dns_twist = ("-p", "tcp", "!", "--dport", DNS_PORT) if c.redirect_dns else ()
    for kind, owners in (("--uid-owner", c.proxy_uids), ("--gid-owner", c.proxy_gids)):
        # Istio adds the DNS exception to the first rule for UIDs only (an upstream asymmetry kept as is).
        first_twist = dns_twist if kind == "--uid-owner" else ()
        for owner in owners:
            b.both("nat", "ISTIO_OUTPUT", "-o", "lo", "!", "-d", Placeholder.LOOPBACK, *first_twist,
                   "-m", "owner", kind, owner, "-j", "ISTIO_IN_REDIRECT")
            if keep_lo_return:
                b.both("nat", "ISTIO_OUTPUT", "-o", "lo", *dns_twist, "-m", "owner", "!", kind, owner,
                       "-j", "RETURN")
            b.both("nat", "ISTIO_OUTPUT", "-m", "owner", kind, owner, "-j", "RETURN")


def _outbound_include(b: _Builder, c: CaptureConfig) -> None:
    if c.outbound_all:
        b.both("nat", "ISTIO_OUTPUT", "-j", "ISTIO_REDIRECT")
        for name in c.kubevirt_interfaces:
            b.both("nat", "PREROUTING", "-i", name, "-j", "ISTIO_REDIRECT", position=1)
        return
    if not c.outbound_cidrs:
        return
    for net in c.outbound_cidrs:
        family = Family.V4 if net.version == 4 else Family.V6
        for name in c.kubevirt_interfaces:
            b.add(family, "nat", "PREROUTING", "-i", name, "-d", str(net), "-j", "ISTIO_REDIRECT", position=1)
        b.add(family, "nat", "ISTIO_OUTPUT", "-d", str(net), "-j", "ISTIO_REDIRECT")
    b.both("nat", "ISTIO_OUTPUT", "-j", "RETURN")


def _per_server(b: _Builder, dns_v4: tuple[str, ...], dns_v6: tuple[str, ...], table: str, chain: str,
                *args: str) -> None:
    for family, servers, suffix in ((Family.V4, dns_v4, "/32"), (Family.V6, dns_v6, "/128")):
        for server in servers:
            b.add(family, table, chain, *(server + suffix if a == "{server}" else a for a in args))


def _dns_udp(b: _Builder, c: CaptureConfig, dns_v4: tuple[str, ...], dns_v6: tuple[str, ...]) -> None:
    owners = [("--uid-owner", u) for u in c.proxy_uids] + [("--gid-owner", g) for g in c.proxy_gids]
    # The proxy's own upstream DNS queries are never captured.
    for kind, owner in owners:
        b.both("nat", "OUTPUT", "-p", "udp", "--dport", DNS_PORT, "-m", "owner", kind, owner, "-j", "RETURN")
    if c.capture_all_dns:
        b.both("nat", "OUTPUT", "-p", "udp", "--dport", DNS_PORT, "-j", "REDIRECT", "--to-port", AGENT_DNS_PORT)
    else:
        _per_server(b, dns_v4, dns_v6, "nat", "OUTPUT", "-p", "udp", "--dport", DNS_PORT, "-d", "{server}",
                    "-j", "REDIRECT", "--to-port", AGENT_DNS_PORT)
    # Conntrack zones keep proxy↔upstream (zone 1) and app↔proxy (zone 2) UDP flows apart (Istio's
    # fix for conntrack races on port 53).
    for kind, owner in owners:
        b.both("raw", "OUTPUT", "-p", "udp", "--dport", DNS_PORT, "-m", "owner", kind, owner, "-j", "CT",
               "--zone", "1")
        b.both("raw", "OUTPUT", "-p", "udp", "--sport", AGENT_DNS_PORT, "-m", "owner", kind, owner, "-j", "CT",
               "--zone", "2")
    if c.capture_all_dns:
        b.both("raw", "OUTPUT", "-p", "udp", "--dport", DNS_PORT, "-j", "CT", "--zone", "2")
        b.both("raw", "PREROUTING", "-p", "udp", "--sport", DNS_PORT, "-j", "CT", "--zone", "1")
        return
    for family, servers, suffix in ((Family.V4, dns_v4, "/32"), (Family.V6, dns_v6, "/128")):
        for server in servers:
            b.add(family, "raw", "OUTPUT", "-p", "udp", "--dport", DNS_PORT, "-d", server + suffix, "-j", "CT",
                  "--zone", "2")
            b.add(family, "raw", "PREROUTING", "-p", "udp", "--sport", DNS_PORT, "-d", server + suffix, "-j", "CT",
                  "--zone", "1")


def _tproxy_tail(b: _Builder, c: CaptureConfig) -> None:
    mark = str(c.tproxy_mark)
    b.both("mangle", "PREROUTING", "-p", "tcp", "-m", "mark", "--mark", mark, "-j", "CONNMARK", "--save-mark")
    b.both("mangle", "OUTPUT", "-p", "tcp", "-o", "lo", "-m", "mark", "--mark", mark, "-j", "RETURN")
    for kind, owner in [("--uid-owner", u) for u in c.proxy_uids] + [("--gid-owner", g) for g in c.proxy_gids]:
        b.both("mangle", "OUTPUT", "!", "-d", Placeholder.LOOPBACK, "-p", "tcp", "-o", "lo", "-m", "owner", kind,
               owner, "-j", "MARK", "--set-mark", OUTBOUND_MARK)
    b.both("mangle", "OUTPUT", "-p", "tcp", "-m", "connmark", "--mark", mark, "-j", "CONNMARK", "--restore-mark")
    # Istio inserts these even when no inbound port is captured (the chain is then unreferenced).
    b.both("mangle", "ISTIO_INBOUND", "-p", "tcp", "-m", "mark", "--mark", mark, "-j", "RETURN", position=1)
    b.both("mangle", "ISTIO_INBOUND", "-p", "tcp", "-s", Placeholder.PASSTHROUGH_SOURCE, "-i", "lo", "-j",
           "RETURN", position=2)
    b.both("mangle", "ISTIO_INBOUND", "-p", "tcp", "-i", "lo", "-m", "mark", "!", "--mark", OUTBOUND_MARK,
           "-j", "RETURN", position=3)
