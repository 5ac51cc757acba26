"""A cheap ``dataclasses.replace`` for plain frozen dataclasses: the run layer copies its
machine state several times for every step, and the standard one inspects the class's
fields on every call."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

__all__ = ["make", "replace"]

T = TypeVar("T")

_fields: dict[type, frozenset[str]] = {}


def _plain_fields(cls: type) -> frozenset[str]:
    names = _fields.get(cls)
    if names is None:
        params = getattr(cls, "__dataclass_params__", None)
        if params is None or not params.frozen or hasattr(cls, "__slots__"):
            raise TypeError(f"{cls.__name__} is not a frozen dataclass without slots")
        if hasattr(cls, "__post_init__"):
            raise TypeError(f"{cls.__name__} has __post_init__: use dataclasses.replace")
        found = dataclasses.fields(cls)
        if any(not f.init for f in found):
            raise TypeError(f"{cls.__name__} has init=False fields: use dataclasses.replace")
        names = _fields[cls] = frozenset(f.name for f in found)
    return names


def replace(obj: T, /, **changes: Any) -> T:
    """A copy of ``obj`` (a frozen dataclass without slots, ``__post_init__`` or
    ``init=False`` fields) with ``changes``; TypeError for a name that is not a field."""
    cls = type(obj)
    names = _plain_fields(cls)
    if not changes.keys() <= names:
        raise TypeError(f"{cls.__name__} has no field {sorted(changes.keys() - names)}")
    new = object.__new__(cls)
    new.__dict__.update(obj.__dict__)
    new.__dict__.update(changes)
    return new


def make(cls: type[T], /, **values: Any) -> T:
    """``cls(**values)`` for such a dataclass, every field given, without its generated
    ``__init__`` (which sets each field through ``object.__setattr__``); TypeError unless
    ``values`` names exactly its fields."""
    if values.keys() != _plain_fields(cls):
        raise TypeError(f"{cls.__name__} takes the fields {sorted(_plain_fields(cls))}")
    new = object.__new__(cls)
    new.__dict__.update(values)
    return new
