"""Coverage report: every input field the translation does not carry over, never silently dropped.

An entry is (kind, resource, field, count): `kind` is listener/route_config/cluster/endpoints, `field`
a dotted protobuf path without list indices (`virtual_hosts.routes.route.retry_policy.retry_back_off`),
optionally with the unsupported value in brackets (`...retry_on[5xx]`).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from operator import attrgetter
from typing import Iterable, Iterator

# Above this many fields to look at, one ListFields() call is cheaper than a presence check per field.
_MAX_CHECKS = 16
_ORDER = attrgetter("kind", "resource", "field", "count")  # Unsupported's order, compared in C


# What an unsupported field does to traffic: "ignored" (APISIX forwards without it) or "denied" (the
# request is refused instead). Most fields are ignored: what APISIX cannot express in a match drops that
# route, and the request falls to the next one, as if the route were absent. Security-relevant fields the
# translation cannot honour (RBAC matchers, mTLS-only inbound chains, unknown filters before the router
# on an inbound chain) fail closed: `Coverage.deny`, effect "denied" (docs/translation.md, "Fail closed").
EFFECTS = ("denied", "ignored")


@dataclass(frozen=True, order=True)
class Unsupported:
    kind: str
    resource: str
    field: str
    count: int
    effect: str = "ignored"


class Coverage:
    """Collects the unsupported fields of one resource while it is translated."""

    def __init__(self, kind: str, resource: str) -> None:
        self.kind = kind
        self.resource = resource
        self._counts: Counter[str] = Counter()
        self._denied: set[str] = set()

    def deny(self, field: str, count: int = 1) -> None:
        """Report `field` with effect "denied": the traffic it could have affected is refused."""
        self._counts[field] += count
        self._denied.add(field)

    def add(self, field: str, count: int = 1) -> None:
        self._counts[field] += count

    def unhandled(self, message, handled: frozenset[str] | set[str], path: str) -> None:
        """Record every field set on `message` whose name is not in `handled`.

        The same as walking `message.ListFields()`, which builds a wrapper for every set value; this
        runs for every endpoint and route, so most message types are checked field by field instead.
        """
        plan = self.plan(message.DESCRIPTOR, handled, path)
        counts = self._counts
        if plan.listed is not None:  # many candidate fields: one ListFields() call
            for descriptor, _ in message.ListFields():
                field = plan.listed.get(descriptor.name)
                if field is not None:
                    counts[field] += 1
            return
        for name, field in plan.presence:
            if message.HasField(name):
                counts[field] += 1
        for name, field in plan.nonempty:  # repeated fields, proto3 scalars other than floats
            if getattr(message, name):
                counts[field] += 1
        for name, field in plan.floats:
            value = getattr(message, name)
            if value or math.copysign(1.0, value) < 0:  # ListFields counts -0.0 as set
                counts[field] += 1

    @staticmethod
    def plan(descriptor, handled: frozenset[str] | set[str], path: str) -> "Plan":
        """How `unhandled` checks messages of type `descriptor` (cached; loops over thousands of
        endpoints use it directly)."""
        key = (descriptor, handled if isinstance(handled, frozenset) else frozenset(handled), path)
        plan = _plans.get(key)
        if plan is None:
            plan = _plans[key] = _plan(*key)
        return plan

    def counts(self) -> tuple[tuple[str, int], ...]:
        """(field, count) so far, to be added to another resource's coverage (`add_counts`)."""
        return tuple(self._counts.items())

    def add_counts(self, counts: Iterable[tuple[str, int]]) -> None:
        for field, n in counts:
            self._counts[field] += n

    def entries(self) -> tuple[Unsupported, ...]:
        kind, resource, denied = self.kind, self.resource, self._denied
        return tuple(Unsupported(kind, resource, f, n, "denied" if f in denied else "ignored")
                     for f, n in sorted(self._counts.items()))

    def compact(self) -> "Counts | tuple[()]":
        """`entries()` in the form a long-lived cache keeps: the (field, count) pairs, a tuple shared by
        every resource reporting the same ones (most clusters and endpoint sets of a mesh do)."""
        if not self._counts:
            return ()
        if self._denied:
            return self.entries()  # type: ignore[return-value]  # rare: keeps each entry's effect
        return Counts(self.kind, self.resource, _shared(tuple(sorted(self._counts.items()))))


class Counts:
    """The unsupported fields of one resource, compactly; iterating gives its `Unsupported` entries
    (built on demand: at 10,000 services ~150,000 entry objects would otherwise stay in memory)."""

    __slots__ = ("kind", "resource", "counts")

    def __init__(self, kind: str, resource: str, counts: tuple[tuple[str, int], ...]) -> None:
        self.kind, self.resource, self.counts = kind, resource, counts

    def __iter__(self) -> Iterator[Unsupported]:
        kind, resource = self.kind, self.resource
        return (Unsupported(kind, resource, f, n) for f, n in self.counts)

    def __len__(self) -> int:
        return len(self.counts)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Counts):
            return (self.kind, self.resource, self.counts) == (other.kind, other.resource, other.counts)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Counts({self.kind!r}, {self.resource!r}, {self.counts!r})"


@lru_cache(maxsize=4096)
def _shared(counts: tuple[tuple[str, int], ...]) -> tuple[tuple[str, int], ...]:
    """The one tuple of this value (equal report lines of thousands of resources held once)."""
    return counts


@dataclass(frozen=True)
class Plan:
    """The unhandled fields of one message type as (field name, reported path) pairs, by check."""

    presence: tuple[tuple[str, str], ...]  # HasField
    nonempty: tuple[tuple[str, str], ...]  # truthy value: repeated fields, proto3 scalars
    floats: tuple[tuple[str, str], ...]  # proto3 float/double: non-zero or -0.0
    listed: dict[str, str] | None  # name -> reported path, when one ListFields() walk is cheaper


_plans: dict[tuple, Plan] = {}


def _plan(descriptor, handled: frozenset[str], path: str) -> Plan:
    fields = [(f, f"{path}.{f.name}" if path else f.name) for f in descriptor.fields if f.name not in handled]
    if len(fields) > _MAX_CHECKS or descriptor.extension_ranges:
        return Plan((), (), (), {f.name: reported for f, reported in fields})
    presence, nonempty, floats = [], [], []
    for f, reported in fields:
        if f.is_repeated:
            nonempty.append((f.name, reported))
        elif f.has_presence:
            presence.append((f.name, reported))
        elif f.cpp_type in (f.CPPTYPE_FLOAT, f.CPPTYPE_DOUBLE):
            floats.append((f.name, reported))
        else:
            nonempty.append((f.name, reported))
    return Plan(tuple(presence), tuple(nonempty), tuple(floats), None)


@dataclass(frozen=True)
class Report:
    entries: tuple[Unsupported, ...] = ()

    @classmethod
    def of(cls, groups: Iterable[Iterable[Unsupported]]) -> "Report":
        return cls(tuple(sorted((e for group in groups for e in group), key=_ORDER)))

    def by_field(self) -> dict[tuple[str, str], int]:
        """(kind, field) -> total count over all resources: what the agent exports as a metric."""
        totals: Counter[tuple[str, str]] = Counter()
        for e in self.entries:
            totals[(e.kind, e.field)] += e.count
        return dict(sorted(totals.items()))

    def by_effect(self) -> dict[tuple[str, str, str], int]:
        """(kind, field, effect) -> total count over all resources: the agent's labelled metric."""
        totals: Counter[tuple[str, str, str]] = Counter()
        for e in self.entries:
            totals[(e.kind, e.field, e.effect)] += e.count
        return dict(sorted(totals.items()))

    def denied(self) -> tuple[Unsupported, ...]:
        """The entries that fail closed (effect "denied"): shown on the admin /status."""
        return tuple(e for e in self.entries if e.effect == "denied")

    def to_dict(self) -> dict:
        return {"unsupported": [
            {"kind": e.kind, "resource": e.resource, "field": e.field, "count": e.count,
             **({"effect": e.effect} if e.effect != "ignored" else {})} for e in self.entries]}

    def to_text(self) -> str:
        if not self.entries:
            return "everything in the input was translated\n"
        resources = len({(e.kind, e.resource) for e in self.entries})
        denied = len(self.denied())
        lines = [f"Not translated to APISIX: {len(self.entries)} fields of {resources} resources "
                 f"(effect: ignored{f'; {denied} DENIED, fail closed' if denied else ''}; "
                 "docs/translation.md, \"Coverage report\")",
                 f"{'count':>5}  {'kind':<12} {'resource':<48} field"]
        lines += [f"{e.count:>5}  {e.kind:<12} {e.resource:<48} {e.field}"
                  + (" [DENIED]" if e.effect == "denied" else "") for e in self.entries]
        return "\n".join(lines) + "\n"
