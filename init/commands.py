"""What `amesh-iptables` and `amesh-iptables clean` do with their parsed flags (no click here: the fast
path of init/cli.py runs these without importing it). Exit codes: 0 ok, 1 bad input or apply failure
(nothing left applied), 126 validation failure."""

from __future__ import annotations

import os
import sys

from init.config import ConfigError, build_config

PROG = "amesh-iptables"


def out(text: str) -> None:
    sys.stdout.write(text)


def err(text: str) -> None:
    sys.stderr.write(text + "\n")


def fail(message: str, code: int = 1) -> None:
    err(f"{PROG}: error: {message}")
    raise SystemExit(code)


def config_of(flags: dict):
    """The validated config, user and group names resolved on this host (the dry run checks them too)."""
    from init import host

    try:
        return build_config(flags, host.default_proxy_uid, host.owner_known)
    except ConfigError as error:
        for problem in error.problems:
            err(f"{PROG}: error: {problem}")
        raise SystemExit(1) from None


def _netns_path(name: str) -> str:
    return name if name.startswith("/") else os.path.join("/var/run/netns", name)


def _enter_namespace(path: str) -> None:
    """--network-namespace: switch this process (and so every child) into the pod's netns."""
    if not os.path.exists(path):
        fail(f"--network-namespace: no network namespace at {path}")
    from init.apply.netlink import setns

    try:
        setns(path)
    except OSError as error:
        fail(f"--network-namespace: cannot enter {path}: {error.strerror}")


def _prepare(flags: dict):
    """Shared by apply and clean: validated config, the pod's namespace entered, host facts read."""
    from init import host

    config = config_of(flags)
    if config.network_namespace:
        path = _netns_path(config.network_namespace)
        _enter_namespace(path)
        if config.cni_mode:
            # istio-cni runs on the node: take iptables' lock on the pod's netns file, as Istio does, not
            # on the node's /run/xtables.lock that kube-proxy holds (iptables >= 1.8.6 reads this).
            os.environ["XTABLES_LOCKFILE"] = path
    return config, host.gather(config.redirect_dns, config.capture_all_dns)


def _executor(config):
    from init import run
    from init.apply.real import RealExecutor

    return RealExecutor(config.backend, log=run.warn, per_rule=not config.restore_format)


def apply(flags: dict) -> None:
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
        out(run.dry_run_text(plan))
        return
    if config.output_paths:
        try:
            run.write_outputs(plan, config.output_paths)
        except OSError as error:
            fail(f"--output-paths: cannot write {error.filename}: {error.strerror}")
    if not config.skip_rule_apply:
        try:
            run.apply(plan, _executor(config), log=lambda text: out(text + "\n"))
        except ApplyError as error:
            if error.undo_failures:
                fail(f"{error}\nUndoing it failed too, so part of it may be left; run `{PROG} clean` with "
                     "the same flags:\n" + "\n".join(error.undo_failures))
            fail(f"{error}\nNothing was left applied.")
    if config.run_validation:
        from init.validation import VALIDATION_EXIT_CODE, validate

        failures = validate(config.proxy_port, config.inbound_capture_port, config.probe_port,
                            config.probe_timeout, facts.ipv6, config.proxy_uids[0], config.proxy_gids[0])
        if failures:
            fail("validation failed: " + "; ".join(failures), VALIDATION_EXIT_CODE)
        out("Validation passed: a probe connection was redirected to the capture ports.\n")


def clean(flags: dict) -> None:
    """Remove the capture rules amesh-iptables added (istio-clean-iptables); other rules stay."""
    from init import run
    from init.apply import ApplyError
    from init.apply.backend import find
    from init.plan import Family

    config, facts = _prepare(flags)
    # IPv6 rules may remain from a run when the pod had IPv6: clean them whenever ip6tables exists.
    ipv6 = facts.ipv6 or any(find(Family.V6, b) for b in ("nft", "legacy"))
    plan = run.plan(config, ipv6, facts.dns_servers_v4, facts.dns_servers_v6)
    executor = _executor(config)
    try:
        if config.dry_run:
            out(run.cleanup_preview(plan, executor))
        else:
            run.clean(plan, executor, log=lambda text: out(text + "\n"))
    except ApplyError as error:
        fail(str(error))
