"""amesh-iptables: istio-iptables' command line, flag for flag, with its environment variables.

    amesh-iptables [istio-iptables] FLAGS     program the capture rules (the injector's call)
    amesh-iptables clean FLAGS                remove them (istio-clean-iptables)

Every long flag can also be set by its environment variable (upper-cased, '-' → '_'); an explicit flag,
even "", wins over the environment, which wins over the default — Istio's viper binding. Exit codes:
0 ok, 1 bad input or apply failure (nothing left applied), 126 validation failure.
"""

from __future__ import annotations

import os
import sys

import click

from init.config import ConfigError, build_config

PROG = "amesh-iptables"

# (short, long, help). Each long flag's env var is derived from its name.
_STRING_FLAGS = [
    ("-p", "--envoy-port", "Outbound capture port (Envoy/APISIX listener). Default 15001."),
    ("-z", "--inbound-capture-port", "Inbound capture port. Default 15006."),
    ("-e", "--inbound-tunnel-port", "Inbound tunnel (HBONE) port, never captured. Default 15008."),
    ("-u", "--proxy-uid", "Comma list of UIDs whose traffic is not captured. Default: uid of $ENVOY_USER, else 1337."),
    ("-g", "--proxy-gid", "Comma list of GIDs whose traffic is not captured. Default: same as --proxy-uid."),
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
_BOOL_FLAGS = [
    ("-n", "--dry-run", None, "Print the rules (iptables-restore text) and the ip commands; change nothing."),
    (None, "--restore-format", None, "Accepted for compatibility; rules are always applied atomically."),
    (None, "--iptables-trace-logging", None, "Accepted for compatibility; NFLOG trace rules are not added."),
    (None, "--skip-rule-apply", None, "Do not program rules (with --run-validation)."),
    (None, "--run-validation", None, "Check that a redirected probe connection reaches the capture ports."),
    (None, "--redirect-dns", "ISTIO_META_DNS_CAPTURE", "Capture DNS to the agent on port 15053."),
    (None, "--capture-all-dns", None, "Capture all port-53 traffic, not only to resolv.conf's servers."),
    (None, "--drop-invalid", "INVALID_DROP", "Drop packets conntrack marks INVALID."),
    (None, "--cni-mode", None, "Accepted for compatibility (istio-cni)."),
]

_BOOL_TRUE_BY_DEFAULT = {"--restore-format"}
_BOOL_LONG = {long for _, long, _, _ in _BOOL_FLAGS}
_BOOL_SHORT = {short: long for short, long, _, _ in _BOOL_FLAGS if short}
_GO_TRUE = {"1", "t", "true", "y", "yes", "on"}
_GO_FALSE = {"0", "f", "false", "n", "no", "off", ""}


def _env_name(long: str) -> str:
    return long.lstrip("-").upper().replace("-", "_")


def _parse_bool(value: str, what: str) -> bool:
    lowered = value.strip().lower()
    if lowered in _GO_TRUE:
        return True
    if lowered in _GO_FALSE:
        return False
    raise click.UsageError(f"{what}: invalid boolean {value!r}")


def normalize_argv(args: list[str]) -> list[str]:
    """Accept Go/pflag spellings click lacks: `--flag=false` for booleans and `-p=15001` for shorts."""
    out = []
    for arg in args:
        name, eq, value = arg.partition("=")
        if eq and name in _BOOL_LONG:
            out.append(name if _parse_bool(value, name) else "--no-" + name[2:])
        elif eq and name in _BOOL_SHORT:
            out.append(_BOOL_SHORT[name] if _parse_bool(value, name) else "--no-" + _BOOL_SHORT[name][2:])
        elif eq and len(name) == 2 and name.startswith("-") and name != "--":
            out.extend([name, value])
        else:
            out.append(arg)
    return out


def _bool_default(long: str, knob: str | None):
    def default() -> bool:
        if knob and os.environ.get(knob):
            return _parse_bool(os.environ[knob], knob)
        return long in _BOOL_TRUE_BY_DEFAULT

    return default


def _options(command):
    for short, long, knob, help_text in reversed(_BOOL_FLAGS):
        names = [f"{long}/--no-{long[2:]}"] + ([short] if short else [])
        command = click.option(*names, envvar=_env_name(long), default=_bool_default(long, knob),
                               show_default=False, help=help_text)(command)
    for short, long, help_text in reversed(_STRING_FLAGS):
        names = [long] + ([short] if short else [])
        command = click.option(*names, envvar=_env_name(long), default="", help=help_text)(command)
    return command


def _config(flags: dict):
    from init.host import default_proxy_uid

    try:
        return build_config(flags, default_proxy_uid)
    except ConfigError as err:
        for problem in err.problems:
            click.echo(f"{PROG}: error: {problem}", err=True)
        raise SystemExit(1) from None


def _enter_namespace(name: str) -> None:
    """--network-namespace: switch this process (and so every child) into the pod's netns."""
    path = name if name.startswith("/") else os.path.join("/var/run/netns", name)
    if not os.path.exists(path):
        click.echo(f"{PROG}: error: --network-namespace: no network namespace at {path}", err=True)
        raise SystemExit(1)
    from pyroute2 import netns

    netns.setns(path, flags=0)


def _prepare(flags: dict):
    """Shared by apply and clean: validated config, the pod's namespace entered, host facts read."""
    from init import host

    config = _config(flags)
    if config.network_namespace:
        _enter_namespace(config.network_namespace)
    return config, host.gather(config.redirect_dns, config.capture_all_dns)


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"{PROG}: error: {message}", err=True)
    raise SystemExit(code)


@click.command(name="istio-iptables", context_settings={"help_option_names": ["-h", "--help"]})
@_options
def apply_command(**flags) -> None:
    """Program a pod's network namespace so its TCP traffic goes through the sidecar (istio-iptables)."""
    from init import run
    from init.apply import ApplyError

    config, facts = _prepare(flags)
    if config.redirect_dns and not config.capture_all_dns and not (facts.dns_servers_v4 or facts.dns_servers_v6):
        run.warn(f"{PROG}: warning: --redirect-dns: no nameserver in /etc/resolv.conf; only the proxy's own "
                 "DNS rules are added")
    if config.trace_logging:
        run.warn(f"{PROG}: warning: --iptables-trace-logging is accepted but adds no NFLOG rules")
    plan = run.plan(config, facts.ipv6, facts.dns_servers_v4, facts.dns_servers_v6)
    if config.dry_run:
        click.echo(run.dry_run_text(plan), nl=False)
        return
    if config.output_paths:
        run.write_outputs(plan, config.output_paths)
    if not config.skip_rule_apply:
        from init.apply.real import RealExecutor

        try:
            run.apply(plan, RealExecutor(config.backend, log=run.warn), log=click.echo)
        except ApplyError as err:
            _fail(f"{err}\nNothing was left applied.")
    if config.run_validation:
        from init.validation import VALIDATION_EXIT_CODE, validate

        failures = validate(config.proxy_port, config.inbound_capture_port, config.probe_port,
                            config.probe_timeout, facts.ipv6, config.proxy_uids[0], config.proxy_gids[0])
        if failures:
            _fail("validation failed: " + "; ".join(failures), VALIDATION_EXIT_CODE)
        click.echo("Validation passed: a probe connection was redirected to the capture ports.")


@click.command(name="clean", context_settings={"help_option_names": ["-h", "--help"]})
@_options
def clean_command(**flags) -> None:
    """Remove the capture rules amesh-iptables added (istio-clean-iptables); other rules stay."""
    from init import run
    from init.apply import ApplyError
    from init.apply.backend import find
    from init.plan import Family

    config, facts = _prepare(flags)
    # IPv6 rules may remain from a run when the pod had IPv6: clean them whenever ip6tables exists.
    ipv6 = facts.ipv6 or any(find(Family.V6, b) for b in ("nft", "legacy"))
    plan = run.plan(config, ipv6, facts.dns_servers_v4, facts.dns_servers_v6)
    from init.apply.real import RealExecutor

    executor = RealExecutor(config.backend, log=run.warn)
    try:
        if config.dry_run:
            click.echo(run.cleanup_preview(plan, executor), nl=False)
        else:
            run.clean(plan, executor, log=click.echo)
    except ApplyError as err:
        _fail(str(err))


def parse_flags(args: list[str]) -> dict:
    """The flag values the apply command would see for this argv (and the current environment)."""
    if args[:1] == ["istio-iptables"]:
        args = args[1:]
    with apply_command.make_context(PROG, normalize_argv(list(args))) as ctx:
        return dict(ctx.params)


def main(argv: list[str] | None = None) -> None:
    """The console script. Run as a program (no argv given), it ends with os._exit once its output is
    flushed: tearing the interpreter down costs milliseconds of every pod's start and frees nothing the
    kernel would not."""
    if argv is not None:
        return _main(list(argv))
    code: int = 0
    try:
        _main(sys.argv[1:])
    except SystemExit as done:
        if isinstance(done.code, str):
            print(done.code, file=sys.stderr)
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _main(args: list[str]) -> None:
    if args[:1] == ["istio-iptables"]:
        args = args[1:]
    command = apply_command
    if args[:1] in (["clean"], ["istio-clean-iptables"]):
        command, args = clean_command, args[1:]
    try:
        args = normalize_argv(args)
        command.main(args=args, prog_name=f"{PROG} {command.name}" if command is clean_command else PROG,
                     standalone_mode=False)
    except click.exceptions.Exit as done:
        raise SystemExit(done.exit_code) from None
    except click.ClickException as err:
        # Istio (cobra) exits 1 on a bad flag; click's default would be 2.
        click.echo(f"{PROG}: error: {err.format_message()}", err=True)
        raise SystemExit(1) from None
    except click.exceptions.Abort:
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
