"""The node's parameters in ROS: each entry of the ROS-free table becomes a declared parameter with a
``ParameterDescriptor``; ``set_parameters`` requests are validated (refused with a reason, nothing
changes); accepted changes are applied by the execute thread before its next inference.
"""
from __future__ import annotations

import threading
from typing import Any, Callable, Optional

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.exceptions import ParameterException, ParameterUninitializedException
from rclpy.parameter import Parameter

from ..parameters import NODE_NAME, PARAMETERS, ModelInfo, ParamSpec, controller_config, method_options, \
    validate_update

_ROS_TYPES = {'bool': Parameter.Type.BOOL, 'integer': Parameter.Type.INTEGER, 'double': Parameter.Type.DOUBLE,
              'string': Parameter.Type.STRING, 'bool_array': Parameter.Type.BOOL_ARRAY,
              'integer_array': Parameter.Type.INTEGER_ARRAY, 'double_array': Parameter.Type.DOUBLE_ARRAY,
              'string_array': Parameter.Type.STRING_ARRAY}
_PLACEHOLDERS = {'bool': False, 'integer': 0, 'double': 0.0, 'string': ''}
_TYPE_NAMES = {ros_type: name for name, ros_type in _ROS_TYPES.items()}
# Declared and handled by rclpy itself (its TimeSource follows use_sim_time live), not by the table.
_RCLPY_PARAMETERS = {'use_sim_time', 'start_type_description_service'}


class StartupError(RuntimeError):
    """The node cannot start; the message is the one line it logs before exiting non-zero."""


def descriptor(spec: ParamSpec) -> ParameterDescriptor:
    # dynamic_typing: rclpy's own type check would refuse with "expected '3' got '4'" before our callback
    # could say which parameter and which types; type_problem() below does the check instead.
    result = ParameterDescriptor(name=spec.name, type=_ROS_TYPES[spec.type].value, description=spec.description,
                                 additional_constraints=spec.constraints(), read_only=spec.read_only,
                                 dynamic_typing=True)
    if spec.low is not None and spec.type == 'integer':
        result.integer_range = [IntegerRange(from_value=int(spec.low), to_value=int(spec.high), step=0)]
    elif spec.low is not None and spec.type == 'double':
        result.floating_point_range = [FloatingPointRange(from_value=float(spec.low), to_value=float(spec.high),
                                                          step=0.0)]
    return result


def type_problem(spec: ParamSpec, parameter: Parameter) -> str:
    """'' when the parameter has the spec's ROS type (an empty list fits any array), else the reason."""
    given = parameter.type_
    if given == _ROS_TYPES[spec.type] or (spec.is_array and given.name.endswith('_ARRAY') and not parameter.value):
        return ''
    if given == Parameter.Type.NOT_SET:
        return f'{spec.name}: cannot be unset (expected {spec.type})'
    given_name = _TYPE_NAMES.get(given, given.name.lower())
    return f'{spec.name}: wrong type: expected {spec.type}, got {given_name} {parameter.value!r}'


def _plain(spec: ParamSpec, value):
    if spec.is_array:
        return [] if value is None else list(value)
    return value


class NodeParameters:
    """Declares every parameter of ``node`` and holds their current values for the other threads."""

    def __init__(self, node):
        self._node = node
        self._lock = threading.Lock()
        self._dirty = False
        self._applied_method: Optional[tuple[str, dict]] = None
        self._listeners: list[Callable[[dict], None]] = []
        self.model: Optional[ModelInfo] = None
        self.values = self._declare()

    def _declare(self) -> dict[str, Any]:
        errors = []
        overrides = getattr(self._node, '_parameter_overrides', {})
        for spec in PARAMETERS.values():
            # An empty list has no ROS type of its own and rclpy refuses dynamic typing for a parameter
            # declared by type, so an empty default is declared with a one-element placeholder, then emptied.
            empty = spec.is_array and not spec.default
            default = [_PLACEHOLDERS[spec.element_type]] if empty else spec.default
            try:
                self._node.declare_parameter(spec.name, default, descriptor(spec))
                if empty and spec.name not in overrides:
                    # As declare_parameter itself sets a value: with the descriptor given, read_only does not bar it.
                    self._node._set_parameters_atomically_common(
                        [Parameter(spec.name, _ROS_TYPES[spec.type], [])], {spec.name: descriptor(spec)})
            except (ParameterException, TypeError, ValueError) as error:
                errors.append(str(error).removesuffix(f': {spec.name}'))
        if not errors:      # dynamic typing lets a params file give another type: refuse it by name
            for name, spec in PARAMETERS.items():
                try:
                    problem = type_problem(spec, self._node.get_parameter(name))
                except ParameterUninitializedException:     # an array declared by type, left empty
                    continue
                if problem:
                    errors.append(problem)
        if errors:
            raise StartupError('invalid parameter: ' + '; '.join(errors))
        # rclpy ignores overrides nobody declares; a typo in a params file deserves a word.
        unknown = sorted(set(getattr(self._node, '_parameter_overrides', {})) - set(PARAMETERS) - _RCLPY_PARAMETERS)
        if unknown:
            self._node.get_logger().warning(f'ignoring unknown parameter(s) {unknown}')
        return {name: self._read(name) for name in PARAMETERS}

    def _read(self, name: str):
        try:
            value = self._node.get_parameter(name).value
        except ParameterUninitializedException:    # an array declared by type, left empty
            value = None
        return _plain(PARAMETERS[name], value)

    def watch(self, model: ModelInfo, method: str, options: dict) -> None:
        """From now on, validate changes against ``model``; ``method`` with ``options`` is what runs."""
        self.model = model
        self._applied_method = (method, options)
        self._node.add_on_set_parameters_callback(self._on_set)
        self._node.add_post_set_parameters_callback(self._on_set_done)

    def on_change(self, listener: Callable[[dict], None]) -> None:
        """``listener(values)`` after every accepted change, for settings that apply at once."""
        self._listeners.append(listener)

    def value(self, name: str):
        with self._lock:
            return self.values[name]

    def _on_set(self, parameters: list[Parameter]) -> SetParametersResult:
        ours = [p for p in parameters if p.name not in _RCLPY_PARAMETERS]
        unknown = [p.name for p in ours if p.name not in PARAMETERS]
        reason = f'{unknown[0]}: unknown parameter of {NODE_NAME}' if unknown else ''
        for p in ours:
            reason = reason or type_problem(PARAMETERS[p.name], p)
        if not reason:
            changes = {p.name: _plain(PARAMETERS[p.name], p.value) for p in ours}
            with self._lock:
                reason = validate_update(self.values, changes, self.model)
        if reason:
            self._restore_types(ours)
            self._node.get_logger().warning(f'refused parameter change: {reason}')
        return SetParametersResult(successful=not reason, reason=reason)

    def _restore_types(self, parameters: list[Parameter]) -> None:
        """rclpy's dynamic typing retypes the stored descriptor before our check; a refused change undoes that."""
        for p in parameters:
            if p.name in PARAMETERS and self._node.has_parameter(p.name):
                self._node.describe_parameter(p.name).type = _ROS_TYPES[PARAMETERS[p.name].type].value

    def _on_set_done(self, parameters: list[Parameter]) -> None:
        ours = [p for p in parameters if p.name in PARAMETERS]
        with self._lock:
            for p in ours:
                self.values[p.name] = _plain(PARAMETERS[p.name], p.value)
            self._dirty = True
            values = dict(self.values)
        for listener in self._listeners:
            listener(values)
        self._node.get_logger().info('parameters set: ' + ', '.join(f'{p.name}={p.value}' for p in parameters))

    def apply(self, policy, controller, velocity) -> bool:
        """Called by the execute thread before an inference: the method and the controller follow.
        Returns whether the method (or its options) changed."""
        with self._lock:
            if not self._dirty:
                return False
            values = dict(self.values)
            self._dirty = False
        method, options = values['method'], method_options(values)
        switched = (method, options) != self._applied_method
        if switched:
            policy.set_method(method, **options)
            self._applied_method = (method, options)
            self._node.get_logger().info(f'method {method} with {options}')
        controller.update_config(controller_config(values))
        if velocity is not None:
            velocity.smoothing = values['velocity_smoothing']
        return switched
