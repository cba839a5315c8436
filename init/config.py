"""The capture configuration: raw flag strings in, one typed, validated value out.

Parsing happens once here (Istio re-splits comma strings in every handler); every problem is collected
so a bad invocation reports all of them and stops before any rule is touched.
"""

from __future__ import annotations

from init.records import record

# ipaddress.IPv4Network | ipaddress.IPv6Network; ipaddress itself is imported only when a CIDR is given.
IPNetwork = "ipaddress.IPv4Network | ipaddress.IPv6Network"


# Choices are plain strings, not Enums: importing enum (and defining the classes) costs start-up time.
class Mode:
    """Inbound interception mode (compare with `is`: a config holds these very objects)."""

    REDIRECT = "REDIRECT"
    TPROXY = "TPROXY"


class Backend:
    """iptables backend: auto-detected, or forced."""

    AUTO = "auto"
    LEGACY = "legacy"
    NFT = "nft"


_MODES = {Mode.REDIRECT: Mode.REDIRECT, Mode.TPROXY: Mode.TPROXY}
_BACKENDS = {Backend.AUTO: Backend.AUTO, Backend.LEGACY: Backend.LEGACY, Backend.NFT: Backend.NFT}


@record
class CaptureConfig:
    # A record (a namedtuple), not a dataclass: defining a 33-field frozen dataclass costs more start-up
    # time than planning all the rules (see benchmarks/init_apply.py).
    proxy_port: int = 15001
    inbound_capture_port: int = 15006
    inbound_tunnel_port: int = 15008
    # UIDs/GIDs are kept as strings: iptables' owner match takes numbers or names.
    proxy_uids: tuple[str, ...] = ("1337",)
    proxy_gids: tuple[str, ...] = ("1337",)
    mode: Mode = Mode.REDIRECT
    tproxy_mark: int = 1337
    tproxy_route_table: int = 133
    inbound_all: bool = False
    inbound_ports: tuple[int, ...] = ()
    inbound_exclude_ports: tuple[int, ...] = ()
    exclude_interfaces: tuple[str, ...] = ()
    outbound_all: bool = False
    outbound_cidrs: tuple[IPNetwork, ...] = ()
    outbound_exclude_cidrs: tuple[IPNetwork, ...] = ()
    outbound_ports: tuple[int, ...] = ()
    outbound_exclude_ports: tuple[int, ...] = ()
    kubevirt_interfaces: tuple[str, ...] = ()
    redirect_dns: bool = False
    capture_all_dns: bool = False
    drop_invalid: bool = False
    trace_logging: bool = False
    dry_run: bool = False
    restore_format: bool = True
    skip_rule_apply: bool = False
    run_validation: bool = False
    probe_port: int = 15002
    probe_timeout: float = 5.0
    output_paths: tuple[str, ...] = ()
    network_namespace: str = ""
    cni_mode: bool = False
    backend: Backend = Backend.AUTO

    @property
    def captures_inbound(self) -> bool:
        return self.inbound_all or bool(self.inbound_ports)


class ConfigError(ValueError):
    """Every problem found in the flags, one message each."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


# The raw inputs, keyed by the long flag name without dashes (underscored). Values are what the
# command line or environment gave, as strings; booleans are already bools.
# (the annotations below are not evaluated: typing is not imported on this path)
RawFlags = "Mapping[str, object]"
# (kind, name) → whether the user ("user") or group ("group") name resolves; host.owner_known is the real one.
OwnerLookup = "Callable[[str, str], bool]"

_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_NAME_START = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")
_NAME_REST = _NAME_START | set("0123456789.-")


# Hand-written checks instead of regular expressions: `re` is not otherwise imported when a pod starts.
def _is_interface(name: str) -> bool:
    return 1 <= len(name) <= 15 and not any(ch.isspace() or ch in "/:," for ch in name)


def _is_owner(text: str) -> bool:
    """A number, or a user/group name as useradd allows it (a trailing $ for machine accounts)."""
    if text.isascii() and text.isdigit():
        return True
    name = text[:-1] if text.endswith("$") else text
    return bool(name) and name[0] in _NAME_START and all(ch in _NAME_REST for ch in name[1:])


def _go_duration(text: str) -> float | None:
    """Seconds in a Go duration (5s, 1m30s, 1.5h, 300ms), or None."""
    total, rest = 0.0, text
    if not rest:
        return None
    while rest:
        digits = len(rest) - len(rest.lstrip("0123456789."))
        number, rest = rest[:digits], rest[digits:]
        unit = next((u for u in ("ns", "us", "µs", "ms", "s", "m", "h") if rest.startswith(u)), None)
        if unit is None or number.count(".") > 1 or not number.strip("."):
            return None
        total += float(number) * _UNIT_SECONDS[unit]
        rest = rest[len(unit):]
    return total


def split_list(value: str) -> list[str]:
    """Istio's comma lists: surrounding blanks ignored, empty items dropped."""
    return [item.strip() for item in value.split(",") if item.strip()]


class _Collector:
    def __init__(self) -> None:
        self.problems: list[str] = []

    def port(self, flag: str, value: str) -> int:
        text = value.strip()
        if not text.isdigit() or not 1 <= int(text) <= 65535:
            self.problems.append(f"{flag}: invalid port {value!r} (want 1-65535)")
            return 0
        return int(text)

    def ports(self, flag: str, value: str) -> tuple[int, ...]:
        return tuple(self.port(flag, item) for item in split_list(value))

    def integer(self, flag: str, value: str, low: int, high: int) -> int:
        text = value.strip()
        base = 16 if text.lower().startswith("0x") else 10
        try:
            number = int(text, base)
        except ValueError:
            number = -1
        if not low <= number <= high:
            self.problems.append(f"{flag}: invalid value {value!r} (want an integer {low}-{high})")
            return 0
        return number

    def cidrs(self, flag: str, value: str) -> tuple[IPNetwork, ...]:
        networks = []
        items = split_list(value)
        if items:
            import ipaddress
        for item in items:
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                self.problems.append(f"{flag}: invalid CIDR {item!r}")
        return tuple(networks)

    def interfaces(self, flag: str, value: str) -> tuple[str, ...]:
        names = split_list(value)
        for name in names:
            if not _is_interface(name):
                self.problems.append(f"{flag}: invalid interface name {name!r}")
        return tuple(names)

    def owners(self, flag: str, value: str, kind: str, known: OwnerLookup | None) -> tuple[str, ...]:
        """UIDs or GIDs: numbers, or names that resolve on this host (iptables' owner match resolves them
        when the rule is added; an unknown one would fail the apply late, after the dry run passed)."""
        owners = split_list(value)
        for owner in owners:
            if not _is_owner(owner):
                self.problems.append(f"{flag}: invalid {kind} {owner!r} (want a number or a {kind} name)")
            elif not owner.isdigit() and known is not None and not known(kind, owner):
                self.problems.append(f"{flag}: unknown {kind} {owner!r} (not a number, and no such {kind} "
                                     "on this host)")
        return tuple(owners)

    def duration(self, flag: str, value: str) -> float:
        seconds = _go_duration(value.strip())
        if seconds is not None:
            return seconds
        self.problems.append(f"{flag}: invalid duration {value!r} (want e.g. 5s, 500ms)")
        return 0.0


def build_config(raw: RawFlags, default_proxy_uid: str | Callable[[], str],
                 owner_known: OwnerLookup | None = None) -> CaptureConfig:
    """Turn raw flag values into a CaptureConfig, or raise ConfigError listing every problem.

    `default_proxy_uid` is what an empty --proxy-uid means (Istio: the uid of $ENVOY_USER, else 1337);
    the caller may pass a lookup, called only when needed, so this stays pure. `owner_known` checks user
    and group names (None: names are not checked).
    """
    c = _Collector()
    text = lambda key: str(raw.get(key) or "")  # noqa: E731 - tiny accessor
    flag = lambda key: bool(raw.get(key))  # noqa: E731

    mode_text = text("istio_inbound_interception_mode").strip()
    mode = Mode.REDIRECT
    if mode_text:
        mode = _MODES.get(mode_text.upper())
        if mode is None:
            mode = Mode.REDIRECT
            c.problems.append(
                f"--istio-inbound-interception-mode: invalid mode {mode_text!r} (want REDIRECT or TPROXY)"
            )

    inbound = text("istio_inbound_ports").strip()
    inbound_all = inbound == "*"
    inbound_ports = () if inbound_all else c.ports("--istio-inbound-ports", inbound)

    include = text("istio_service_cidr").strip()
    outbound_all = include == "*"
    outbound_cidrs = () if outbound_all else c.cidrs("--istio-service-cidr", include)

    exclude = text("istio_service_exclude_cidr")
    if "*" in split_list(exclude):
        c.problems.append("--istio-service-exclude-cidr: '*' is not allowed (it would exclude everything)")
        exclude_cidrs: tuple[IPNetwork, ...] = ()
    else:
        exclude_cidrs = c.cidrs("--istio-service-exclude-cidr", exclude)

    uids = c.owners("--proxy-uid", text("proxy_uid"), "user", owner_known) or (
        default_proxy_uid() if callable(default_proxy_uid) else default_proxy_uid,
    )
    gids = c.owners("--proxy-gid", text("proxy_gid"), "group", owner_known)
    if not gids:
        # Istio: no --proxy-gid means the same ids as --proxy-uid; a user name must then be a group too.
        gids = uids
        for name in uids:
            if (not name.isdigit() and owner_known is not None and owner_known("user", name)
                    and not owner_known("group", name)):
                c.problems.append(f"--proxy-gid: unknown group {name!r} (taken from --proxy-uid; pass -g)")

    backend_text = (text("iptables_backend") or "auto").strip().lower()
    backend = _BACKENDS.get(backend_text)
    if backend is None:
        c.problems.append(f"--iptables-backend: invalid backend {backend_text!r} (want auto, legacy or nft)")
        backend = Backend.AUTO

    defaults = CaptureConfig()
    config = CaptureConfig(
        proxy_port=c.port("--envoy-port", text("envoy_port") or str(defaults.proxy_port)),
        inbound_capture_port=c.port(
            "--inbound-capture-port", text("inbound_capture_port") or str(defaults.inbound_capture_port)
        ),
        inbound_tunnel_port=c.port(
            "--inbound-tunnel-port", text("inbound_tunnel_port") or str(defaults.inbound_tunnel_port)
        ),
        proxy_uids=uids,
        proxy_gids=gids,
        mode=mode,
        tproxy_mark=c.integer(
            "--istio-inbound-tproxy-mark", text("istio_inbound_tproxy_mark") or "1337", 1, 0xFFFFFFFF
        ),
        tproxy_route_table=c.integer(
            "--istio-inbound-tproxy-route-table", text("istio_inbound_tproxy_route_table") or "133", 1, 0xFFFFFFFF
        ),
        inbound_all=inbound_all,
        inbound_ports=inbound_ports,
        inbound_exclude_ports=c.ports("--istio-local-exclude-ports", text("istio_local_exclude_ports")),
        exclude_interfaces=c.interfaces("--istio-exclude-interfaces", text("istio_exclude_interfaces")),
        outbound_all=outbound_all,
        outbound_cidrs=outbound_cidrs,
        outbound_exclude_cidrs=exclude_cidrs,
        outbound_ports=c.ports("--istio-outbound-ports", text("istio_outbound_ports")),
        outbound_exclude_ports=c.ports(
            "--istio-local-outbound-ports-exclude", text("istio_local_outbound_ports_exclude")
        ),
        kubevirt_interfaces=c.interfaces("--kube-virt-interfaces", text("kube_virt_interfaces")),
        redirect_dns=flag("redirect_dns"),
        capture_all_dns=flag("capture_all_dns"),
        drop_invalid=flag("drop_invalid"),
        trace_logging=flag("iptables_trace_logging"),
        dry_run=flag("dry_run"),
        restore_format=raw.get("restore_format", True) is not False,
        skip_rule_apply=flag("skip_rule_apply"),
        run_validation=flag("run_validation"),
        probe_port=c.port("--iptables-probe-port", text("iptables_probe_port") or "15002"),
        probe_timeout=c.duration("--probe-timeout", text("probe_timeout") or "5s"),
        output_paths=tuple(split_list(text("output_paths"))),
        network_namespace=text("network_namespace").strip(),
        cni_mode=flag("cni_mode"),
        backend=backend,
    )
    if config.cni_mode and not config.network_namespace:
        c.problems.append("--cni-mode: needs --network-namespace (the pod's network namespace to program)")
    if config.probe_timeout <= 0 and not c.problems:
        c.problems.append("--probe-timeout: must be greater than zero")
    if c.problems:
        raise ConfigError(c.problems)
    return config
