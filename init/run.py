"""Composition: config + host facts → plan → (dry run | apply through an executor) → optional validation."""

from __future__ import annotations

import sys

from init.apply import ApplyError, Executor

from init.plan import Family, Plan, PolicyRoute, plan
from init.render import (
    Residue,
    TableState,
    builtin_plain_rules,
    cleanup_text,
    deletion_spec,
    parse_save,
    residue,
    restore_text,
    transaction_text,
)

Log = "Callable[[str], None]"  # (typing is not imported on the apply path)

_RESTORE = {Family.V4: "iptables-restore", Family.V6: "ip6tables-restore"}


def route_commands(route: PolicyRoute) -> list[str]:
    inet, default = ("inet", "default") if route.family == Family.V4 else ("inet6", "::/0")
    return [
        f"ip -f {inet} rule add fwmark {route.mark} lookup {route.table}",
        f"ip -f {inet} route add local {default} dev lo table {route.table}",
    ]


def dry_run_text(p: Plan) -> str:
    parts = []
    for family in p.families:
        parts.append(f"# {_RESTORE[family]} --noflush (IPv{int(family)})\n{restore_text(p.rules(family))}")
    commands = (["ip -6 addr add ::6/128 dev lo"] if p.ipv6 else []) + [
        c for route in p.routes for c in route_commands(route)
    ]
    if commands:
        parts.append("# ip (netlink)\n" + "\n".join(commands) + "\n")
    return "".join(parts)


def _residues(executor: Executor, family: Family, p: Plan) -> dict[str, Residue]:
    """What a previous run left in each table of this family."""
    state = parse_save(executor.save(family))
    found: dict[str, list[str]] = {}
    for rule in builtin_plain_rules(p.rules(family)):
        # Only ask iptables (-C, one exec each) when the table holds rules at all: a fresh pod has none.
        table = state.get(rule.table)
        if table is not None and table.rules and executor.check(family, rule):
            found.setdefault(rule.table, []).append(deletion_spec(rule))
    tables = set(state) | set(found)
    return {t: residue(state.get(t) or TableState.empty(), tuple(found.get(t, ()))) for t in sorted(tables)}


def apply(p: Plan, executor: Executor, log: Log = print) -> None:
    """Program the plan; on any failure undo what this run did and raise ApplyError with the original
    error (and whatever could not be undone)."""
    texts = {family: transaction_text(p.rules(family), _residues(executor, family, p)) for family in p.families}
    touched: list[Family] = []  # families to clean on failure
    loopback_added = False
    routes_added: list[PolicyRoute] = []
    try:
        for family in p.families:
            log(f"Applying with {_RESTORE[family]} --noflush:\n{texts[family]}")
            if not executor.atomic:
                touched.append(family)  # one command at a time: a failure may leave part of it
            executor.restore(family, texts[family])
            if executor.atomic:
                touched.append(family)
        if p.ipv6:
            loopback_added = executor.add_loopback_v6()
        for route in p.routes:
            routes_added.append(route)  # before adding: a half-done add (rule without route) is undone too
            executor.add_route(route)
    except Exception as error:
        undo = [lambda r=route: executor.remove_route(r) for route in reversed(routes_added)]
        undo += [executor.remove_loopback_v6] if loopback_added else []
        undo += [lambda f=family: executor.restore(f, cleanup_text(_residues(executor, f, p)))
                 for family in reversed(touched)]
        failures = []
        for step in undo:  # every step is tried: one failing must not keep the others from undoing
            try:
                step()
            except Exception as undo_error:  # noqa: BLE001 - reported with the original error
                failures.append(str(undo_error) or type(undo_error).__name__)
        message = str(error) if isinstance(error, ApplyError) else f"{type(error).__name__}: {error}"
        raise ApplyError(message, tuple(failures)) from error


def cleanup_preview(p: Plan, executor: Executor) -> str:
    """What `clean` would remove, read from the namespace without changing it (clean --dry-run)."""
    parts = []
    for family in p.families:
        text = cleanup_text(_residues(executor, family, p))
        if text:
            parts.append(f"# {_RESTORE[family]} --noflush (IPv{int(family)})\n{text}")
    commands = [c.replace(" add ", " del ") for route in p.routes for c in route_commands(route)]
    commands += ["ip -6 addr del ::6/128 dev lo"] if p.ipv6 else []
    if commands:
        parts.append("# ip (netlink), where present\n" + "\n".join(commands) + "\n")
    return "".join(parts)


def clean(p: Plan, executor: Executor, log: Log = print) -> None:
    """Remove what apply added (our chains, the rules that reach them, the planned plain rules,
    TPROXY routing); foreign rules stay. Errors in one step don't stop the others."""
    problems = []
    for family in p.families:
        text = cleanup_text(_residues(executor, family, p))
        if not text:
            continue
        log(f"Removing with {_RESTORE[family]} --noflush:\n{text}")
        try:
            executor.restore(family, text)
        except ApplyError as err:
            problems.append(str(err))
    for route in p.routes:
        try:
            executor.remove_route(route)
        except ApplyError as err:
            problems.append(str(err))
    if p.ipv6:
        try:
            executor.remove_loopback_v6()
        except ApplyError as err:
            problems.append(str(err))
    if problems:
        raise ApplyError("\n".join(problems))


def write_outputs(p: Plan, paths: tuple[str, ...]) -> None:
    """--output-paths: the IPv4 restore text to the first path, IPv6 to the second (Istio 1.13 logged these)."""
    for family, path in zip(p.families, paths):
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(restore_text(p.rules(family)))


def warn(message: str) -> None:
    print(message, file=sys.stderr)
