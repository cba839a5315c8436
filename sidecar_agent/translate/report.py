"""Coverage report: every input field the translation does not carry over, never silently dropped.

An entry is (kind, resource, field, count): `kind` is listener/route_config/cluster/endpoints, `field`
a dotted protobuf path without list indices (`virtual_hosts.routes.route.retry_policy.retry_back_off`),
optionally with the unsupported value in brackets (`...retry_on[5xx]`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Iterable


@dataclass(frozen=True, order=True)
class Unsupported:
    kind: str
    resource: str
    field: str
    count: int


class Coverage:
    """Collects the unsupported fields of one resource while it is translated."""

    def __init__(self, kind: str, resource: str) -> None:
        self.kind = kind
        self.resource = resource
        self._counts: Counter[str] = Counter()

    def add(self, field: str, count: int = 1) -> None:
        self._counts[field] += count

    def unhandled(self, message, handled: frozenset[str] | set[str], path: str) -> None:
        """Record every field set on `message` whose name is not in `handled`."""
        for descriptor, _ in message.ListFields():
            if descriptor.name not in handled:
                self._counts[f"{path}.{descriptor.name}" if path else descriptor.name] += 1

    def entries(self) -> tuple[Unsupported, ...]:
        return tuple(Unsupported(self.kind, self.resource, f, n) for f, n in sorted(self._counts.items()))


@dataclass(frozen=True)
class Report:
    entries: tuple[Unsupported, ...] = ()

    @classmethod
    def of(cls, groups: Iterable[Iterable[Unsupported]]) -> "Report":
        return cls(tuple(sorted(e for group in groups for e in group)))

    def by_field(self) -> dict[tuple[str, str], int]:
        """(kind, field) -> total count over all resources: what the agent exports as a metric."""
        totals: Counter[tuple[str, str]] = Counter()
        for e in self.entries:
            totals[(e.kind, e.field)] += e.count
        return dict(sorted(totals.items()))

    def to_dict(self) -> dict:
        return {"unsupported": [
            {"kind": e.kind, "resource": e.resource, "field": e.field, "count": e.count} for e in self.entries]}

    def to_text(self) -> str:
        if not self.entries:
            return "everything in the input was translated\n"
        lines = [f"{'count':>5}  {'kind':<12} {'resource':<48} field"]
        lines += [f"{e.count:>5}  {e.kind:<12} {e.resource:<48} {e.field}" for e in self.entries]
        return "\n".join(lines) + "\n"
