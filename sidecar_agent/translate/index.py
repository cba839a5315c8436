"""`SmallSets`: key -> a handful of items, each group held as a tuple; `among`: objects picked by identity.

The translator indexes every cluster (the clusters reading a ClusterLoadAssignment, the upstream refs
of a cluster): 30,000 keys at 10,000 services with one to three items each. A `set` of one item costs
216 bytes, a 1-tuple 48 — 12 MB at that size — and membership in three items needs no hashing.
"""

from __future__ import annotations

from collections.abc import Collection, Container, Iterable, Iterator
from itertools import compress
from typing import Hashable, TypeVar

T = TypeVar("T")


class SmallSets(dict):
    """A dict of key -> tuple of distinct items; `add` / `discard` keep each tuple's items unique and
    drop a key whose last item goes. Meant for groups of a few items (add is linear in the group)."""

    __slots__ = ()

    def add(self, key: Hashable, item: T) -> None:
        items = self.get(key, ())
        if item not in items:
            self[key] = items + (item,)

    def discard(self, key: Hashable, item: T) -> None:
        items = self.get(key)
        if items and item in items:
            rest = tuple(i for i in items if i != item)
            if rest:
                self[key] = rest
            else:
                del self[key]


def among(objects: Collection[T], idents: Container[int], ids: Iterable[int] | None = None) -> Iterator[T]:
    """The objects whose id() is in `idents`, in order: the pass runs in C (map, compress), so picking the
    few changed objects out of thousands by identity costs no Python loop over the others. `ids`: the
    objects' id()s in order, when the caller has them already."""
    return compress(objects, map(idents.__contains__, map(id, objects) if ids is None else ids))
