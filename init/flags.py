"""istio-iptables' flags as data, and the fast parser for the injector's call — no click on that path.

Importing click costs more than the whole rule apply (benchmarks/init_apply.py), so the common invocation
(known flags, values present, environment booleans readable) is parsed here; anything else — `--help`,
an unknown or incomplete flag, a stray argument — returns None and click parses it, so help and error
messages stay click's. tests/capture/test_flags.py checks that both parsers agree.
"""

from __future__ import annotations

import os

# (short, long, help). Each long flag's env var is derived from its name.
STRING_FLAGS = [
    ("-p", "--envoy-port", "Outbound capture port (Envoy/APISIX listener). Default 15001."),
    ("-z", "--inbound-capture-port", "Inbound capture port. Default 15006."),
    ("-e", "--inbound-tunnel-port", "Inbound tunnel (HBONE) port, never captured. Default 15008."),
    ("-u", "--proxy-uid", "Comma list of UIDs (numbers or user names) whose traffic is not captured. "
                          "Default: uid of $ENVOY_USER, else 1337."),
    ("-g", "--proxy-gid", "Comma list of GIDs (numbers or group names) whose traffic is not captured. "
                          "Default: same as --proxy-uid."),
    ("-m", "--istio-inbound-interception-mode", "Inbound interception mode: REDIRECT (default) or TPROXY."),
    ("-t", "--istio-inbound-tproxy-mark", "TPROXY packet mark. Default 1337."),
    ("-r", "--istio-inbound-tproxy-route-table", "TPROXY routing table. Default 133."),
    ("-b", "--istio-inbound-ports", "Inbound ports to capture: comma list, or '*' for all. Empty: none."),
    ("-d", "--istio-local-exclude-ports", "Inbound ports excluded from capture (with -b '*')."),
    ("-c", "--istio-exclude-interfaces", "Interfaces whose traffic is never captured."),
    ("-i", "--istio-service-cidr", "Outbound CIDRs to capture: comma list, or '*' for all. Empty: none."),
    ("-x", "--istio-service-exclude-cidr", "Outbound CIDRs excluded from capture ('*' is an error)."),
    ("-q", "--istio-outbound-ports", "Outbound ports always captured, whatever the destination."),
    ("-o", "--istio-local-outbound-ports-exclude", "Outbound ports never captured."),
    ("-k", "--kube-virt-interfaces", "KubeVirt interfaces whose inbound traffic is treated as outbound."),
    (None, "--iptables-probe-port", "Validation probe destination port. Default 15002."),
    (None, "--probe-timeout", "Validation timeout (Go duration, e.g. 5s). Default 5s."),
    (None, "--output-paths", "Also write the restore text (IPv4, then IPv6) to these comma-separated files."),
    (None, "--network-namespace", "Network namespace to program: a name under /var/run/netns or a path."),
    (None, "--iptables-backend", "amesh: iptables backend, auto (default), legacy or nft."),
]

# (short, long, default-from-env, help). `default-from-env` is Istio's env-only knob behind the default.
BOOL_FLAGS = [
    ("-n", "--dry-run", None, "Print the rules (iptables-restore text) and the ip commands; change nothing."),
    (None, "--restore-format", None, "Apply each family with one iptables-restore (default); false: one "
                                     "iptables command per rule, as istio-iptables did (not atomic)."),
    (None, "--iptables-trace-logging", None, "Accepted for compatibility; NFLOG trace rules are not added."),
    (None, "--skip-rule-apply", None, "Do not program rules (with --run-validation)."),
    (None, "--run-validation", None, "Check that a redirected probe connection reaches the capture ports."),
    (None, "--redirect-dns", "ISTIO_META_DNS_CAPTURE", "Capture DNS to the agent on port 15053."),
    (None, "--capture-all-dns", None, "Capture all port-53 traffic, not only to resolv.conf's servers."),
    (None, "--drop-invalid", "INVALID_DROP", "Drop packets conntrack marks INVALID."),
    (None, "--cni-mode", None, "Run on the node for istio-cni: needs --network-namespace; iptables' lock "
                               "is then the pod's own, not the node's /run/xtables.lock."),
]

BOOL_TRUE_BY_DEFAULT = {"--restore-format"}
_BOOL_LONG = {long for _, long, _, _ in BOOL_FLAGS}
_BOOL_SHORT = {short: long for short, long, _, _ in BOOL_FLAGS if short}
_STRING_SHORT = {short: long for short, long, _ in STRING_FLAGS if short}
_STRING_LONG = {long for _, long, _ in STRING_FLAGS}
_GO_TRUE = {"1", "t", "true", "y", "yes", "on"}
_GO_FALSE = {"0", "f", "false", "n", "no", "off", ""}


class FlagError(ValueError):
    """A flag value no parser can take (click reports it as a usage error)."""


def env_name(long: str) -> str:
    return long.lstrip("-").upper().replace("-", "_")


def key(long: str) -> str:
    """The parameter name of a long flag, as click names it: --envoy-port → envoy_port."""
    return long[2:].replace("-", "_")


def parse_bool(value: str, what: str) -> bool:
    lowered = value.strip().lower()
    if lowered in _GO_TRUE:
        return True
    if lowered in _GO_FALSE:
        return False
    raise FlagError(f"{what}: invalid boolean {value!r}")


def normalize_argv(args: list[str]) -> list[str]:
    """Accept Go/pflag spellings click lacks: `--flag=false` for booleans and `-p=15001` for shorts."""
    out = []
    for arg in args:
        name, eq, value = arg.partition("=")
        if eq and name in _BOOL_LONG:
            out.append(name if parse_bool(value, name) else "--no-" + name[2:])
        elif eq and name in _BOOL_SHORT:
            out.append(_BOOL_SHORT[name] if parse_bool(value, name) else "--no-" + _BOOL_SHORT[name][2:])
        elif eq and len(name) == 2 and name.startswith("-") and name != "--":
            out.extend([name, value])
        else:
            out.append(arg)
    return out


def bool_default(long: str, knob: str | None, environ=os.environ) -> bool:
    """A boolean flag's value when neither the flag nor its env var is set: Istio's env-only knob, if any."""
    if knob and environ.get(knob):
        return parse_bool(environ[knob], knob)
    return long in BOOL_TRUE_BY_DEFAULT


def fast_parse(args: list[str], environ=os.environ) -> dict | None:
    """The flag values for a normalized argv, as click would give them — or None when click must decide
    (help, an unknown flag, a missing value, a positional argument, an unreadable boolean)."""
    given: dict[str, object] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg in _BOOL_LONG or arg in _BOOL_SHORT:
            given[key(_BOOL_SHORT.get(arg, arg))] = True
        elif arg.startswith("--no-") and "--" + arg[5:] in _BOOL_LONG:
            given[key("--" + arg[5:])] = False
        elif arg in _STRING_LONG or arg in _STRING_SHORT:
            if i == len(args):
                return None
            given[key(_STRING_SHORT.get(arg, arg))] = args[i]
            i += 1
        elif arg.startswith("--") and arg.partition("=")[0] in _STRING_LONG:
            name, _, value = arg.partition("=")
            given[key(name)] = value
        elif arg[:2] in _STRING_SHORT and len(arg) > 2:  # click's attached short value: -p15001
            given[key(_STRING_SHORT[arg[:2]])] = arg[2:]
        else:
            return None
    flags: dict[str, object] = {}
    for _, long, _ in STRING_FLAGS:
        name = key(long)
        # An empty env var counts as unset (click's rule), so the default "" stands.
        flags[name] = given[name] if name in given else environ.get(env_name(long)) or ""
    for _, long, knob, _ in BOOL_FLAGS:
        name = key(long)
        if name in given:
            flags[name] = given[name]
            continue
        try:
            from_env = environ.get(env_name(long))
            flags[name] = parse_bool(from_env, long) if from_env else bool_default(long, knob, environ)
        except FlagError:
            return None
    return flags
