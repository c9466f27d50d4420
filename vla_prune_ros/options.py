"""Options declared once: dataclass fields that carry their default, range, choices and help.

An options class derives from :class:`Options` and declares each field with :func:`option`::

    @dataclass(frozen=True)
    class SpecPruneOptions(Options):
        prefix: ClassVar[str] = 'specprune'
        similarity_threshold: float = option(0.986, 'Cosine similarity above which ...', low=0.0, high=1.0)

The annotation gives the type (``bool``, ``int``, ``float``, ``str``, ``tuple[int, ...]``,
``Optional[int]`` for an option that can be off). ``__post_init__`` checks every field against
its declaration and raises ValueError naming the field; :meth:`Options.check` holds rules between
fields. The node's ROS parameters (descriptors, ranges, defaults), ``config/*.yaml`` and the
README's parameter table all derive from these declarations (see :mod:`vla_prune_ros.parameters`).
No torch, no ROS.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

_KINDS = {bool: 'bool', int: 'integer', float: 'double', str: 'string'}


def option(default: Any, help: str, *, low: Optional[float] = None, high: Optional[float] = None,
           low_exclusive: bool = False, choices: Optional[tuple] = None, off: Any = None,
           min_length: int = 0) -> Any:
    """A dataclass field declaring one option. ``low``/``high`` are inclusive (``low_exclusive``: the
    lower bound is not) and apply per element of a tuple. ``off`` is the value a ROS parameter uses
    for ``None`` (ROS parameters have no None)."""
    return dataclasses.field(default=default, metadata=dict(
        help=help, low=low, high=high, low_exclusive=low_exclusive, choices=tuple(choices) if choices else None,
        off=off, min_length=min_length))


def _text(number) -> str:
    return f'{number:g}' if isinstance(number, float) else str(number)


@dataclass(frozen=True)
class OptionSpec:
    """What one field declares."""
    name: str
    kind: str                     # 'bool' | 'integer' | 'double' | 'string' (per element for tuples)
    is_tuple: bool
    default: Any
    help: str
    low: Optional[float] = None
    high: Optional[float] = None
    low_exclusive: bool = False
    choices: Optional[tuple] = None
    off: Any = None
    min_length: int = 0

    def _element(self, value):
        if self.kind == 'bool':
            ok = isinstance(value, bool)
        elif self.kind == 'string':
            ok = isinstance(value, str)
        elif self.kind == 'integer':
            ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
        else:
            ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
        if not ok:
            raise ValueError(f'{self.name}: expected a {self.kind}, got {value!r}')
        if self.kind == 'integer':
            value = int(value)
        elif self.kind == 'double':
            value = float(value)
            if math.isnan(value):
                raise ValueError(f'{self.name}: NaN is not allowed')
        if self.low is not None:
            above = value > self.low if self.low_exclusive else value >= self.low
            if not (above and value <= self.high):
                bracket = '(' if self.low_exclusive else '['
                raise ValueError(f'{self.name}: {value!r} outside {bracket}{_text(self.low)}, {_text(self.high)}]')
        if self.choices and value not in self.choices:
            raise ValueError(f'{self.name}: {value!r} not one of {list(self.choices)}')
        return value

    def check(self, value):
        """The value in its declared type (tuples as tuples, ints as floats for doubles); raises ValueError."""
        if value is None and self.off is not None:
            return None
        if not self.is_tuple:
            return self._element(value)
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ValueError(f'{self.name}: expected a sequence of {self.kind}, got {value!r}')
        if len(value) < self.min_length:
            raise ValueError(f'{self.name}: needs at least {self.min_length} value(s), got {len(value)}')
        return tuple(self._element(item) for item in value)


def _spec(field: dataclasses.Field, annotation) -> OptionSpec:
    is_tuple = typing.get_origin(annotation) is tuple
    if is_tuple:
        annotation = typing.get_args(annotation)[0]
    elif typing.get_origin(annotation) is typing.Union:        # Optional[X]
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if annotation not in _KINDS or 'help' not in field.metadata:
        raise TypeError(f'{field.name}: declare options as bool/int/float/str (or tuples, Optional) with option()')
    return OptionSpec(field.name, _KINDS[annotation], is_tuple, field.default, **field.metadata)


@functools.cache
def option_specs(cls: type) -> tuple[OptionSpec, ...]:
    """The declarations of an options class, in field order."""
    hints = typing.get_type_hints(cls)
    return tuple(_spec(f, hints[f.name]) for f in dataclasses.fields(cls))


@dataclass(frozen=True)
class Options:
    """Base of every options dataclass: checks in ``__post_init__``, ``from_dict``/``to_dict``."""
    prefix: ClassVar[str] = ''    # the namespace of these options as node parameters ('' = none)

    def __post_init__(self):
        for spec in option_specs(type(self)):
            object.__setattr__(self, spec.name, spec.check(getattr(self, spec.name)))
        self.check()

    def check(self) -> None:
        """Rules between fields; raise ValueError naming the field."""

    @classmethod
    def from_dict(cls, values: dict[str, Any]):
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f'unknown option(s) {sorted(unknown)}')
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def replace(self, **changes):
        """A copy with ``changes``, checked like a new instance."""
        return self.from_dict({**self.to_dict(), **changes})
