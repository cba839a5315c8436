"""Pure rendering: a family's rules → iptables-restore text, and iptables-save text → a parsed state.

Two renderings of one rule list, so apply and undo cannot drift apart:
- `restore_text`: Istio's own format (`-N` per custom chain, then the rules) — the dry run and goldens.
- `transaction_text`: what is really applied with `iptables-restore --noflush`: `:CHAIN - [0:0]` creates a
  chain or flushes the one a previous run left, the previous run's rules in built-in chains are deleted,
  chains of ours the plan no longer has are removed — all inside one COMMIT per table, so a re-run is
  atomic and idempotent and a failure leaves the previous state untouched.
- `cleanup_text`: the same deletion without the re-add (`amesh-iptables clean`).
"""

from __future__ import annotations

from init.plan import BUILTIN_CHAINS, CHAIN_PREFIX, TARGETS, Rule, jump_target
from init.records import record

TABLE_ORDER = ("filter", "mangle", "nat", "raw", "security")


def _is_custom_chain(name: str | None) -> bool:
    return bool(name) and name not in BUILTIN_CHAINS and name not in TARGETS


def custom_chains(rules: tuple[Rule, ...] | list[Rule], table: str) -> list[str]:
    """Non-built-in chains of a table, in order of first use (as a rule's chain or its jump target)."""
    seen: dict[str, None] = {}
    for rule in rules:
        if rule.table != table:
            continue
        for name in (rule.chain, rule.target):
            if _is_custom_chain(name):
                seen.setdefault(name, None)
    return list(seen)


def tables_of(rules: tuple[Rule, ...] | list[Rule]) -> list[str]:
    present = {rule.table for rule in rules}
    return [t for t in TABLE_ORDER if t in present] + sorted(present - set(TABLE_ORDER))


def restore_text(rules: tuple[Rule, ...]) -> str:
    lines: list[str] = []
    for table in tables_of(rules):
        lines.append(f"* {table}")
        lines.extend(f"-N {chain}" for chain in custom_chains(rules, table))
        lines.extend(rule.spec() for rule in rules if rule.table == table)
        lines.append("COMMIT")
    return "\n".join(lines) + "\n" if lines else ""


@record
class TableState:
    chains: list[str]  # every chain, built-in first as saved
    rules: list[tuple[str, str]]  # (chain, "-A chain ..." as saved)

    @classmethod
    def empty(cls) -> "TableState":
        return cls([], [])


def parse_save(text: str) -> dict[str, TableState]:
    """Parse iptables-save output into tables → chains and rules (counters and comments dropped)."""
    tables: dict[str, TableState] = {}
    current: TableState | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            current = tables.setdefault(line[1:].strip(), TableState.empty())
        elif current is None or line == "COMMIT":
            continue
        elif line.startswith(":"):
            current.chains.append(line[1:].split()[0])
        elif line.startswith("-A "):
            current.rules.append((line.split()[1], line))
    return tables


def is_ours(chain: str) -> bool:
    return chain.startswith(CHAIN_PREFIX)


@record
class Residue:
    """What a previous run left in one table: built-in-chain rules to delete (as `-D` specs) and our chains."""

    deletions: tuple[str, ...]
    chains: tuple[str, ...]


def residue(state: TableState, extra_deletions: tuple[str, ...] = ()) -> Residue:
    """Our leftovers in a table: rules in built-in chains that jump to our chains, plus the given rules
    (plan rules the executor found present with `iptables -C`), and every chain named ISTIO_*."""
    deletions = [
        "-D " + line[3:]
        for chain, line in state.rules
        if chain in BUILTIN_CHAINS and is_ours(jump_target(line.split()) or "")
    ]
    deletions.extend(d for d in extra_deletions if d not in deletions)
    chains = tuple(name for name in state.chains if is_ours(name))
    return Residue(tuple(deletions), chains)


def transaction_text(rules: tuple[Rule, ...], residues: dict[str, Residue]) -> str:
    """The idempotent apply: per table, declare (create or flush) our planned chains, delete the previous
    run's built-in-chain rules, drop chains of ours no longer planned, then add the planned rules."""
    lines: list[str] = []
    tables = tables_of(rules)
    tables += [t for t in residues if t not in tables and (residues[t].deletions or residues[t].chains)]
    for table in tables:
        planned = custom_chains(rules, table)
        left = residues.get(table, Residue((), ()))
        stale = [c for c in left.chains if c not in planned]
        lines.append(f"*{table}")
        lines.extend(f":{chain} - [0:0]" for chain in planned)
        lines.extend(left.deletions)
        lines.extend(f"-F {chain}" for chain in stale)
        lines.extend(f"-X {chain}" for chain in stale)
        lines.extend(rule.spec() for rule in rules if rule.table == table)
        lines.append("COMMIT")
    return "\n".join(lines) + "\n" if lines else ""


def cleanup_text(residues: dict[str, Residue]) -> str:
    lines: list[str] = []
    for table, left in residues.items():
        if not (left.deletions or left.chains):
            continue
        lines.append(f"*{table}")
        lines.extend(left.deletions)
        lines.extend(f"-F {chain}" for chain in left.chains)
        lines.extend(f"-X {chain}" for chain in left.chains)
        lines.append("COMMIT")
    return "\n".join(lines) + "\n" if lines else ""


def builtin_plain_rules(rules: tuple[Rule, ...]) -> list[Rule]:
    """Plan rules in built-in chains that do not jump to a chain of ours (DNS, CT zones, interface
    exclusions, TPROXY marks): a previous run's copies can only be found by asking iptables (`-C`)."""
    return [r for r in rules if r.chain in BUILTIN_CHAINS and not is_ours(r.target or "")]


def deletion_spec(rule: Rule) -> str:
    return " ".join(("-D", rule.chain, *rule.args))
