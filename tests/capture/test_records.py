"""init/records.py: a record behaves as the NamedTuple it replaces."""

from __future__ import annotations

import pytest

from init.records import record


@record
class Point:
    x: int
    y: int = 0
    tags: tuple[str, ...] = ()

    @property
    def norm(self) -> int:
        return abs(self.x) + abs(self.y)

    @classmethod
    def origin(cls) -> "Point":
        return cls(0)


def test_construction_access_and_methods() -> None:
    p = Point(3, y=-4)
    assert (p.x, p.y, p.tags) == (3, -4, ()) and p.norm == 7
    assert p == (3, -4, ()) and p == Point(x=3, y=-4) and hash(p) == hash((3, -4, ()))
    assert Point.origin() == Point(0, 0)
    assert p._replace(tags=("a",)) == Point(3, -4, ("a",))
    assert repr(p) == "Point(x=3, y=-4, tags=())"
    assert Point._fields == ("x", "y", "tags")
    x, y, _ = p
    assert (x, y) == (3, -4)


@pytest.mark.parametrize("args, kwargs", [((), {}), ((1, 2, (), 4), {}), ((1,), {"x": 2}), ((1,), {"z": 2})])
def test_bad_arguments_are_refused(args: tuple, kwargs: dict) -> None:
    with pytest.raises(TypeError):
        Point(*args, **kwargs)


def test_immutable() -> None:
    with pytest.raises(AttributeError):
        Point(1).x = 2  # type: ignore[misc]
