"""The real executor: iptables-restore/-save/-C for the chosen backend, netlink for addresses and routes."""

from __future__ import annotations

import errno

from init.apply import ApplyError
from init.apply.backend import Binaries, candidates, run_save
from init.apply.spawn import run
from init.config import Backend
from init.plan import Family, PolicyRoute, Rule

_FAMILY_NAME = {Family.V4: "iptables", Family.V6: "ip6tables"}


class RealExecutor:
    def __init__(self, backend: Backend, log=print, per_rule: bool = False):
        self._wanted = backend
        self._log = log
        self._per_rule = per_rule
        self.atomic = not per_rule  # whether a failed restore leaves its family as it was
        self._candidates: dict[Family, list[Binaries]] = {}
        self._settled: dict[Family, Binaries] = {}
        self._saves: dict[Family, dict[str, str]] = {}  # save outputs read and still current

    # -- iptables -----------------------------------------------------------------------------------------
    def _options(self, family: Family) -> list[Binaries]:
        if family not in self._candidates:
            found = candidates(family, self._wanted, self._saves.setdefault(family, {}))
            if not found:
                which = "" if self._wanted == Backend.AUTO else f"-{self._wanted}"
                name = _FAMILY_NAME[family]
                raise ApplyError(
                    f"{name}{which}-restore not found on PATH (looked for {name}-nft-restore, "
                    f"{name}-legacy-restore and {name}-restore): install the iptables package"
                )
            self._candidates[family] = found
        return self._candidates[family]

    def binaries(self, family: Family) -> Binaries:
        return self._settled.get(family) or self._options(family)[0]

    def save(self, family: Family) -> str:
        binaries = self.binaries(family)
        cached = self._saves.setdefault(family, {})
        if binaries.backend not in cached:
            cached[binaries.backend] = run_save(binaries)
        return cached[binaries.backend]

    def check(self, family: Family, rule: Rule) -> bool:
        cmd = [self.binaries(family).command, "-w", "-t", rule.table, "-C", rule.chain, *rule.args]
        return run(cmd).returncode == 0

    def restore(self, family: Family, text: str) -> None:
        """One atomic iptables-restore --noflush (or, per_rule, one iptables command per line); on the first
        apply in a family a backend the kernel cannot serve is skipped for the next candidate (nothing was
        committed by the failed one)."""
        options = [self._settled[family]] if family in self._settled else self._options(family)
        failures = []
        self._saves.pop(family, None)  # whatever happens, what was read may no longer be current
        for binaries in options:
            stderr, done = self._per_rule_apply(binaries, text) if self._per_rule else self._restore(binaries, text)
            if stderr is None:
                self._settled[family] = binaries
                return
            from init.diagnose import explain_restore_failure  # only failures pay for its regexes

            failures.append(explain_restore_failure(stderr, binaries.backend, int(family)))
            if family in self._settled or done:
                break
            if binaries is not options[-1]:
                self._log(f"{binaries.restore} failed, trying the next backend: {stderr.strip()}")
        how = "" if self._per_rule else "-restore"
        raise ApplyError(f"{_FAMILY_NAME[family]}{how} failed: " + "\n".join(failures))

    @staticmethod
    def _restore(binaries: Binaries, text: str) -> tuple[str | None, bool]:
        """(stderr or None on success, whether anything was changed)."""
        result = run([binaries.restore, "--noflush"], text)
        return (None if result.returncode == 0 else result.stderr), False

    @staticmethod
    def _per_rule_apply(binaries: Binaries, text: str) -> tuple[str | None, bool]:
        """--restore-format=false: the transaction's lines as `iptables -t TABLE …` commands, istio-iptables'
        old way; not atomic, so a failure after the first command leaves the rest to the caller's rollback."""
        done = False
        for args in per_rule_commands(text):
            result = run([binaries.command, "-w", *args])
            if result.returncode != 0 and args[2] == "-N":  # `:CHAIN - [0:0]` also flushes an existing chain
                result = run([binaries.command, "-w", *args[:2], "-F", args[3]])
            if result.returncode != 0:
                command = " ".join([binaries.command, *args])
                return f"{command}: {result.stderr.strip()}", done
            done = True
        return None, done

    # -- netlink (imported only here: an IPv4 REDIRECT pod needs none of it) ------------------------------
    def add_loopback_v6(self) -> bool:
        return self._loopback_v6(True, ignore=(errno.EEXIST,))

    def remove_loopback_v6(self) -> None:
        self._loopback_v6(False, ignore=(errno.EADDRNOTAVAIL, errno.ENOENT, errno.ESRCH))

    @staticmethod
    def _loopback_v6(add: bool, ignore: tuple[int, ...]) -> bool:
        """::6/128 on lo: the source the proxy binds for inbound passthrough over IPv6. False: it was
        already so (the address there, or gone)."""
        from init.apply.netlink import AF_INET6, Route, lo_index

        try:
            with Route() as rt:
                rt.address(add, AF_INET6, "::6", 128, lo_index())
        except OSError as err:
            if err.errno not in ignore:
                raise ApplyError(f"ip -6 addr {'add' if add else 'del'} ::6/128 dev lo failed: "
                                 f"{err.strerror}") from err
            return False
        return True

    def add_route(self, route: PolicyRoute) -> None:
        from init.apply.netlink import Route, lo_index

        family = _AF[route.family]
        try:
            with Route() as rt:
                if not rt.has_rule(family, route.mark, route.table):
                    rt.rule(True, family, route.mark, route.table)
                rt.local_default_route(True, family, route.table, lo_index())
        except OSError as err:
            raise ApplyError(
                f"TPROXY policy routing (fwmark {route.mark} lookup {route.table}, IPv{int(route.family)}) "
                f"failed: {err.strerror}"
            ) from err

    def remove_route(self, route: PolicyRoute) -> None:
        from init.apply.netlink import Route, lo_index

        family = _AF[route.family]
        try:
            with Route() as rt:
                while rt.has_rule(family, route.mark, route.table):
                    rt.rule(False, family, route.mark, route.table)
                try:
                    rt.local_default_route(False, family, route.table, lo_index())
                except OSError as err:
                    if err.errno not in (errno.ESRCH, errno.ENOENT):
                        raise
        except OSError as err:
            raise ApplyError(f"removing the TPROXY routing of table {route.table} (IPv{int(route.family)}) "
                             f"failed: {err.strerror}") from err


def per_rule_commands(text: str) -> list[list[str]]:
    """A restore text as iptables arguments, line by line: `:CHAIN - [0:0]` becomes `-N CHAIN`."""
    import shlex

    commands, table = [], "filter"
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
        elif line.startswith(":"):
            commands.append(["-t", table, "-N", line[1:].split()[0]])
        elif line.startswith("-"):
            commands.append(["-t", table, *shlex.split(line)])
    return commands


_AF = {Family.V4: 2, Family.V6: 10}  # AF_INET, AF_INET6
