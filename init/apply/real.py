"""The real executor: iptables-restore/-save/-C for the chosen backend, netlink through pyroute2."""

from __future__ import annotations

import errno
import subprocess

from init.apply import ApplyError
from init.apply.backend import Binaries, candidates
from init.config import Backend
from init.plan import Family, PolicyRoute, Rule

_FAMILY_NAME = {Family.V4: "iptables", Family.V6: "ip6tables"}


class RealExecutor:
    def __init__(self, backend: Backend, log=print):
        self._wanted = backend
        self._log = log
        self._candidates: dict[Family, list[Binaries]] = {}
        self._settled: dict[Family, Binaries] = {}
        self._saves: dict[Family, dict[str, str]] = {}  # save outputs read and still current

    # -- iptables -----------------------------------------------------------------------------------------
    def _options(self, family: Family) -> list[Binaries]:
        if family not in self._candidates:
            found = candidates(family, self._wanted, self._saves.setdefault(family, {}))
            if not found:
                which = "" if self._wanted is Backend.AUTO else f"-{self._wanted.value}"
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
            result = subprocess.run([binaries.save], capture_output=True, text=True)
            cached[binaries.backend] = result.stdout if result.returncode == 0 else ""
        return cached[binaries.backend]

    def check(self, family: Family, rule: Rule) -> bool:
        cmd = [self.binaries(family).command, "-w", "-t", rule.table, "-C", rule.chain, *rule.args]
        return subprocess.run(cmd, capture_output=True).returncode == 0

    def restore(self, family: Family, text: str) -> None:
        """One atomic iptables-restore --noflush; on the first apply in a family a backend the kernel
        cannot serve is skipped for the next candidate (nothing was committed by the failed one)."""
        options = [self._settled[family]] if family in self._settled else self._options(family)
        failures = []
        self._saves.pop(family, None)  # whatever happens, what was read may no longer be current
        for binaries in options:
            result = subprocess.run([binaries.restore, "--noflush"], input=text, capture_output=True, text=True)
            if result.returncode == 0:
                self._settled[family] = binaries
                return
            from init.diagnose import explain_restore_failure  # only failures pay for its regexes

            failures.append(explain_restore_failure(result.stderr, binaries.backend, int(family)))
            if family in self._settled:
                break
            if binaries is not options[-1]:
                self._log(f"{binaries.restore} failed, trying the next backend: {result.stderr.strip()}")
        raise ApplyError(f"{_FAMILY_NAME[family]}-restore failed: " + "\n".join(failures))

    # -- netlink (pyroute2 is imported only on the paths that need it: it costs ~130 ms) ------------------
    def add_loopback_v6(self) -> None:
        self._loopback_v6("add", ignore=(errno.EEXIST,))

    def remove_loopback_v6(self) -> None:
        self._loopback_v6("del", ignore=(errno.EADDRNOTAVAIL, errno.ENOENT, errno.ESRCH))

    @staticmethod
    def _loopback_v6(op: str, ignore: tuple[int, ...]) -> None:
        """::6/128 on lo: the source the proxy binds for inbound passthrough over IPv6."""
        from pyroute2 import IPRoute
        from pyroute2.netlink.exceptions import NetlinkError

        with IPRoute() as ipr:
            lo = ipr.link_lookup(ifname="lo")[0]
            try:
                ipr.addr(op, index=lo, address="::6", prefixlen=128)
            except NetlinkError as err:
                if err.code not in ignore:
                    raise ApplyError(f"ip -6 addr {op} ::6/128 dev lo failed: {err}") from err

    def add_route(self, route: PolicyRoute) -> None:
        from pyroute2 import IPRoute
        from pyroute2.netlink.exceptions import NetlinkError

        family, default = _route_family(route)
        with IPRoute() as ipr:
            lo = ipr.link_lookup(ifname="lo")[0]
            try:
                if not _has_rule(ipr, route, family):
                    ipr.rule("add", family=family, fwmark=route.mark, table=route.table)
                ipr.route("replace", family=family, dst=default, type="local", oif=lo, table=route.table,
                          scope="host")
            except NetlinkError as err:
                raise ApplyError(
                    f"TPROXY policy routing (fwmark {route.mark} lookup {route.table}, IPv{int(route.family)}) "
                    f"failed: {err}"
                ) from err

    def remove_route(self, route: PolicyRoute) -> None:
        from pyroute2 import IPRoute
        from pyroute2.netlink.exceptions import NetlinkError

        family, default = _route_family(route)
        with IPRoute() as ipr:
            lo = ipr.link_lookup(ifname="lo")[0]
            while _has_rule(ipr, route, family):
                ipr.rule("del", family=family, fwmark=route.mark, table=route.table)
            try:
                ipr.route("del", family=family, dst=default, type="local", oif=lo, table=route.table,
                          scope="host")
            except NetlinkError as err:
                if err.code not in (errno.ESRCH, errno.ENOENT):
                    raise ApplyError(f"removing the TPROXY route of table {route.table} failed: {err}") from err


def _route_family(route: PolicyRoute):
    import socket

    return (socket.AF_INET, "0.0.0.0/0") if route.family is Family.V4 else (socket.AF_INET6, "::/0")


def _has_rule(ipr, route: PolicyRoute, family: int) -> bool:
    for rule in ipr.get_rules(family=family):
        if rule.get_attr("FRA_FWMARK") == route.mark and (
            rule.get_attr("FRA_TABLE") or rule["table"]
        ) == route.table:
            return True
    return False
