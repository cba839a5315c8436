"""One case table for the capture program, run by two harnesses (Istio's `TestIptables` shape):

- tests/capture/test_golden.py: the pure planner against `golden/<name>.restore` (REFRESH_GOLDEN=1 rewrites);
- netns_tests/: the real program in a fresh namespace, on both iptables backends.

A case is the injector-style argv (without the program name), extra environment, and the host facts the
planner sees: whether the pod has a global IPv6 address and which resolv.conf nameservers it has. A netns
harness reproduces the facts (an IPv6 address with nodad, /etc/netns/<ns>/resolv.conf) before running it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

EXPECTED_DIR = Path(__file__).parent / "golden"

DEFAULT = ["-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "", "-b", "*",
           "-d", "15090,15021,15020"]
TPROXY = ["-p", "15001", "-z", "15006", "-u", "1337", "-m", "TPROXY", "-i", "*", "-x", "", "-b", "*",
          "-d", "15090,15021,15020"]
DNS_V4 = ("10.96.0.10",)
DNS_V6 = ("fd00:10:96::a",)


@dataclass(frozen=True)
class Case:
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    ipv6: bool = False
    dns_v4: tuple[str, ...] = ()
    dns_v6: tuple[str, ...] = ()


def _with(base: list[str], **flags: str) -> list[str]:
    """base argv with some short flags replaced (or added): _with(DEFAULT, i="10.0.0.0/8")."""
    argv = list(base)
    for short, value in flags.items():
        name = "-" + short
        if name in argv:
            argv[argv.index(name) + 1] = value
        else:
            argv += [name, value]
    return argv


CASES: dict[str, Case] = {
    "default-injection": Case(DEFAULT),
    "default-injection-ipv6": Case(DEFAULT, ipv6=True),
    "injector-first-arg": Case(["istio-iptables", *DEFAULT]),
    "tproxy": Case(TPROXY),
    "tproxy-ipv6": Case(TPROXY, ipv6=True),
    "tproxy-mark-and-table": Case(_with(TPROXY, t="1234", r="200")),
    "tproxy-inbound-ports": Case(_with(TPROXY, b="9080,8080", d="")),
    "tproxy-no-inbound": Case(_with(TPROXY, b="", d="")),
    "inbound-ports": Case(_with(DEFAULT, b="9080,8080,", d="")),
    "no-inbound-no-outbound": Case(_with(DEFAULT, b="", i="", d="")),
    "outbound-cidrs": Case(_with(DEFAULT, i="10.0.0.0/8,172.16.0.0/12")),
    "outbound-cidrs-dual-stack": Case(_with(DEFAULT, i="10.0.0.0/8,fd00::/8"), ipv6=True),
    "exclude-cidrs": Case(_with(DEFAULT, x="10.96.0.0/12,192.168.0.1")),
    "exclude-cidrs-dual-stack": Case(_with(DEFAULT, x="10.96.0.0/12,fd00:1::/64"), ipv6=True),
    "loopback-in-include": Case(_with(DEFAULT, i="127.0.0.1/32,10.0.0.0/8")),
    "outbound-ports-include": Case(_with(DEFAULT, i="", q="3306,6379")),
    "outbound-ports-exclude": Case(_with(DEFAULT, o="22,3306")),
    "kubevirt-wildcard": Case(_with(DEFAULT, k="eth1,eth2")),
    "kubevirt-cidrs": Case(_with(DEFAULT, k="eth1", i="10.0.0.0/8,192.168.0.0/16")),
    "exclude-interfaces": Case(_with(DEFAULT, c="eth1,net1")),
    "exclude-interfaces-tproxy": Case(_with(TPROXY, c="eth1")),
    "multiple-uids-gids": Case(_with(DEFAULT, u="1337,1338", g="1337,1339")),
    "custom-ports": Case(_with(DEFAULT, p="19080", z="19081", e="15009")),
    "dns-capture": Case([*DEFAULT, "--redirect-dns"], dns_v4=DNS_V4),
    "dns-capture-dual-stack": Case([*DEFAULT, "--redirect-dns"], ipv6=True, dns_v4=DNS_V4, dns_v6=DNS_V6),
    "dns-capture-all": Case([*DEFAULT, "--redirect-dns", "--capture-all-dns"], dns_v4=DNS_V4),
    "dns-capture-from-env": Case(DEFAULT, env={"ISTIO_META_DNS_CAPTURE": "true"}, dns_v4=DNS_V4),
    "dns-capture-flag-false-over-env": Case([*DEFAULT, "--redirect-dns=false"],
                                            env={"ISTIO_META_DNS_CAPTURE": "true"}, dns_v4=DNS_V4),
    "dns-capture-no-servers": Case([*DEFAULT, "--redirect-dns"]),
    "dns-capture-tproxy": Case([*TPROXY, "--redirect-dns"], dns_v4=DNS_V4),
    "drop-invalid": Case([*DEFAULT, "--drop-invalid"]),
    "drop-invalid-from-env": Case(DEFAULT, env={"INVALID_DROP": "true"}),
    "env-only": Case([], env={"ISTIO_INBOUND_PORTS": "*", "ISTIO_SERVICE_CIDR": "*",
                              "ISTIO_LOCAL_EXCLUDE_PORTS": "15090,15021,15020", "PROXY_UID": "1337"}),
    "explicit-empty-flag-over-env": Case(_with(DEFAULT, x=""), env={"ISTIO_SERVICE_EXCLUDE_CIDR": "10.0.0.0/8"}),
    "long-flags": Case(["--envoy-port=15001", "--inbound-capture-port", "15006", "--proxy-uid", "1337",
                        "--istio-inbound-interception-mode", "REDIRECT", "--istio-service-cidr", "*",
                        "--istio-inbound-ports", "*", "--istio-local-exclude-ports=15090,15021,15020"]),
}
