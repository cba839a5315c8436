"""Edges that change the kernel: iptables binaries and netlink, behind the `Executor` protocol."""

from __future__ import annotations

from typing import Protocol

from init.plan import Family, PolicyRoute, Rule


class ApplyError(RuntimeError):
    """Applying failed; the message says what and, where known, why (missing module or binary)."""


class Executor(Protocol):
    def save(self, family: Family) -> str: ...

    def check(self, family: Family, rule: Rule) -> bool: ...

    def restore(self, family: Family, text: str) -> None: ...

    def add_loopback_v6(self) -> None: ...

    def remove_loopback_v6(self) -> None: ...

    def add_route(self, route: PolicyRoute) -> None: ...

    def remove_route(self, route: PolicyRoute) -> None: ...
