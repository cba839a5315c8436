"""Edges that change the kernel: iptables binaries and netlink, behind the `Executor` protocol."""

from __future__ import annotations

from init.plan import Family, PolicyRoute, Rule


class ApplyError(RuntimeError):
    """Applying failed; the message says what and, where known, why (missing module or binary).
    `undo_failures`: what could not be undone afterwards (empty: nothing of this run is left)."""

    def __init__(self, message: str, undo_failures: tuple[str, ...] = ()):
        super().__init__(message)
        self.undo_failures = undo_failures


class Executor:
    """What run.py needs from the kernel side (RealExecutor; a test may pass its own). A plain class, not a
    typing.Protocol: importing typing costs every pod's start ~3 ms."""

    def save(self, family: Family) -> str: ...

    def check(self, family: Family, rule: Rule) -> bool: ...

    def restore(self, family: Family, text: str) -> None: ...

    atomic: bool  # a failed restore leaves its family as it was

    def add_loopback_v6(self) -> bool: ...  # False: it was there already

    def remove_loopback_v6(self) -> None: ...

    def add_route(self, route: PolicyRoute) -> None: ...

    def remove_route(self, route: PolicyRoute) -> None: ...
