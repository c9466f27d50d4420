"""One node parameter: :class:`ParamSpec` (ROS type, default, description, range, choices, read-only),
how a value is checked against it and brought to its type. ROS parameters have no "None", so an
optional integer option uses ``none_value`` (0) for "off".
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Optional

import yaml

from ..options import OptionSpec

TYPES = ('bool', 'integer', 'double', 'string', 'bool_array', 'integer_array', 'double_array', 'string_array')
DEVICE_PATTERN = re.compile(r'^(auto|cpu|cuda(:\d+)?|mps)$')


class ParameterError(ValueError):
    """A parameter value or combination is invalid; the message names the parameter."""


@dataclass(frozen=True)
class ParamSpec:
    name: str
    type: str                      # one of TYPES (the ROS parameter type)
    default: Any
    description: str
    low: Optional[float] = None    # inclusive; for arrays, per element
    high: Optional[float] = None
    choices: Optional[tuple] = None
    read_only: bool = False
    none_value: Any = None         # the ROS value standing for the method option None (e.g. 0)

    @property
    def is_array(self) -> bool:
        return self.type.endswith('_array')

    @property
    def element_type(self) -> str:
        return self.type[:-len('_array')] if self.is_array else self.type

    def constraints(self) -> str:
        """Human-readable constraints, for ParameterDescriptor.additional_constraints."""
        parts = []
        if self.choices:
            parts.append('one of: ' + ', '.join(map(str, self.choices)))
        if self.low is not None and self.is_array:
            parts.append(f'each element in [{self.low}, {self.high}]')
        if self.none_value is not None:
            parts.append(f'{self.none_value} means off')
        return '; '.join(parts)


    def range_text(self) -> str:
        """Range and constraints as the README's parameter table shows them."""
        parts = [f'[{self.low}, {self.high}]'] if self.low is not None and not self.is_array else []
        return '; '.join(parts + [self.constraints()] if self.constraints() else parts)


def parameter(name, type_, default, description, low=None, high=None, choices=None, read_only=False,
              none_value=None) -> ParamSpec:
    assert type_ in TYPES, type_
    return ParamSpec(name, type_, default, description, low, high, tuple(choices) if choices else None,
                     read_only, none_value)


def from_option(prefix: str, option: OptionSpec) -> ParamSpec:
    """The node parameter ``<prefix>.<option>`` (no prefix: ``<option>``) of a declared option: same default,
    range and help."""
    low, high = option.low, option.high
    if option.off is not None and low is not None:
        low = min(low, option.off)             # the ROS range also admits "off"
    if option.kind == 'double' and low is not None:
        low, high = float(low), float(high)
    default = option.off if option.default is None else option.default
    return parameter(f'{prefix}.{option.name}' if prefix else option.name, option.kind + ('_array' if option.is_tuple else ''),
                     list(default) if option.is_tuple else default, option.help, low, high, option.choices,
                     none_value=option.off)


def _element_ok(element_type: str, value) -> bool:
    if element_type == 'bool':
        return isinstance(value, bool)
    if element_type == 'integer':
        return isinstance(value, int) and not isinstance(value, bool)
    if element_type == 'double':
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, str)


def check_value(spec: ParamSpec, value) -> str:
    """'' when ``value`` fits the spec's type, range and choices, else the reason."""
    if spec.is_array:
        if isinstance(value, (str, bytes)) or not hasattr(value, '__iter__'):
            return f'{spec.name}: expected a {spec.element_type} array, got {value!r}'
        items = list(value)
    else:
        items = [value]
    for item in items:
        if not _element_ok(spec.element_type, item):
            kind = f'a {spec.element_type} array' if spec.is_array else f'a {spec.element_type}'
            return f'{spec.name}: expected {kind}, got {value!r}'
        if spec.element_type == 'double' and math.isnan(item):
            return f'{spec.name}: NaN is not allowed'
        if spec.low is not None and not spec.low <= item <= spec.high:
            return f'{spec.name}: {item!r} outside [{spec.low}, {spec.high}]'
        if spec.choices and item not in spec.choices:
            return f'{spec.name}: {item!r} not one of {list(spec.choices)}'
    if spec.name == 'device' and not DEVICE_PATTERN.match(value):
        return f"device: {value!r} is not 'auto', 'cpu', 'cuda' or 'cuda:N'"
    return ''


def coerce(spec: ParamSpec, value):
    """Bring a value from YAML or a launch argument (string) to the spec's type; raises ParameterError."""
    if isinstance(value, str) and spec.type != 'string':
        try:
            value = yaml.safe_load(value) if value.strip() else ([] if spec.is_array else value)
        except yaml.YAMLError as error:
            raise ParameterError(f'{spec.name}: cannot parse {value!r} ({error})') from None
    if spec.is_array and isinstance(value, (list, tuple)):
        if spec.element_type == 'double':
            value = [float(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value]
        value = list(value)
    elif spec.type == 'double' and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    elif spec.type == 'string' and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    reason = check_value(spec, value)
    if reason:
        raise ParameterError(reason)
    return value
