"""`@record`: an immutable record class from annotated fields, like typing.NamedTuple — without importing
typing, collections or functools.

The init program's start-up is part of every pod's start (benchmarks/init_apply.py): typing costs ~3 ms,
collections + functools (what namedtuple needs) ~2 ms more, and a dataclass compiles its methods on
definition. A record is a tuple subclass: equality, hashing and unpacking are the tuple's.
"""

from __future__ import annotations


def record(cls):
    """class Point: x: int; y: int = 0  →  Point(1), Point(x=1, y=2), p.x, p._replace(y=3); the class's
    methods and properties are kept. As with NamedTuple, fields with defaults come after those without."""
    fields = tuple(cls.__dict__.get("__annotations__", {}))
    defaults = {name: cls.__dict__[name] for name in fields if name in cls.__dict__}
    name = cls.__name__

    def __new__(klass, *args, **kwargs):
        if len(args) > len(fields):
            raise TypeError(f"{name}() takes {len(fields)} arguments, {len(args)} given")
        values = list(args)
        for field in fields[len(args):]:
            if field in kwargs:
                values.append(kwargs.pop(field))
            elif field in defaults:
                values.append(defaults[field])
            else:
                raise TypeError(f"{name}() missing argument {field!r}")
        if kwargs:
            raise TypeError(f"{name}() got unexpected or repeated arguments {sorted(kwargs)}")
        return tuple.__new__(klass, values)

    def _replace(self, **changes):
        values = [changes.pop(f, v) for f, v in zip(fields, self)]
        if changes:
            raise TypeError(f"{name}._replace() got unexpected arguments {sorted(changes)}")
        return type(self)(*values)

    def __repr__(self) -> str:
        return f"{name}({', '.join(f'{f}={v!r}' for f, v in zip(fields, self))})"

    body = {k: v for k, v in cls.__dict__.items() if k not in fields and k not in ("__dict__", "__weakref__")}
    body.update(__slots__=(), __new__=__new__, _fields=fields, _replace=_replace, __repr__=__repr__,
                __getnewargs__=lambda self: tuple(self))
    for index, field in enumerate(fields):
        body[field] = property(lambda self, i=index: self[i], doc=f"field {index}: {field}")
    return type(name, (tuple,), body)
