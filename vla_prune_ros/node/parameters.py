"""The node's parameters in ROS: each entry of the ROS-free table becomes a declared parameter with a
``ParameterDescriptor``; ``set_parameters`` requests are validated (refused with a reason, nothing
changes); accepted changes are applied by the execute thread before its next inference.
"""
from __future__ import annotations

import threading
from typing import Any, Optional

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.exceptions import ParameterException, ParameterUninitializedException
from rclpy.parameter import Parameter

from ..parameters import NODE_NAME, PARAMETERS, ModelInfo, ParamSpec, controller_config, method_options, \
    validate_update

_ROS_TYPES = {'bool': Parameter.Type.BOOL, 'integer': Parameter.Type.INTEGER, 'double': Parameter.Type.DOUBLE,
              'string': Parameter.Type.STRING, 'bool_array': Parameter.Type.BOOL_ARRAY,
              'integer_array': Parameter.Type.INTEGER_ARRAY, 'double_array': Parameter.Type.DOUBLE_ARRAY,
              'string_array': Parameter.Type.STRING_ARRAY}
# Declared by rclpy itself, not by the table.
_RCLPY_PARAMETERS = {'use_sim_time', 'start_type_description_service'}


class StartupError(RuntimeError):
    """The node cannot start; the message is the one line it logs before exiting non-zero."""


def descriptor(spec: ParamSpec) -> ParameterDescriptor:
    result = ParameterDescriptor(name=spec.name, type=_ROS_TYPES[spec.type].value, description=spec.description,
                                 additional_constraints=spec.constraints(), read_only=spec.read_only)
    if spec.low is not None and spec.type == 'integer':
        result.integer_range = [IntegerRange(from_value=int(spec.low), to_value=int(spec.high), step=0)]
    elif spec.low is not None and spec.type == 'double':
        result.floating_point_range = [FloatingPointRange(from_value=float(spec.low), to_value=float(spec.high),
                                                          step=0.0)]
    return result


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
        self.model: Optional[ModelInfo] = None
        self.values = self._declare()

    def _declare(self) -> dict[str, Any]:
        errors = []
        for spec in PARAMETERS.values():
            # An empty list has no ROS type of its own, so empty arrays are declared by type.
            default = _ROS_TYPES[spec.type] if spec.is_array and not spec.default else spec.default
            try:
                self._node.declare_parameter(spec.name, default, descriptor(spec))
            except (ParameterException, TypeError, ValueError) as error:
                errors.append(str(error).removesuffix(f': {spec.name}'))
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

    def value(self, name: str):
        with self._lock:
            return self.values[name]

    def _on_set(self, parameters: list[Parameter]) -> SetParametersResult:
        unknown = [p.name for p in parameters if p.name not in PARAMETERS]
        if unknown:
            return SetParametersResult(successful=False, reason=f'{unknown[0]}: unknown parameter of {NODE_NAME}')
        changes = {p.name: _plain(PARAMETERS[p.name], p.value) for p in parameters}
        with self._lock:
            reason = validate_update(self.values, changes, self.model)
        if reason:
            self._node.get_logger().warning(f'refused parameter change: {reason}')
        return SetParametersResult(successful=not reason, reason=reason)

    def _on_set_done(self, parameters: list[Parameter]) -> None:
        with self._lock:
            for p in parameters:
                self.values[p.name] = _plain(PARAMETERS[p.name], p.value)
            self._dirty = True
        self._node.get_logger().info('parameters set: ' + ', '.join(f'{p.name}={p.value}' for p in parameters))

    def apply(self, policy, controller, velocity) -> None:
        """Called by the execute thread before an inference: the method and the controller follow."""
        with self._lock:
            if not self._dirty:
                return
            values = dict(self.values)
            self._dirty = False
        method, options = values['method'], method_options(values)
        if (method, options) != self._applied_method:
            policy.set_method(method, **options)
            self._applied_method = (method, options)
            self._node.get_logger().info(f'method {method} with {options}')
        controller.update_config(controller_config(values))
        if velocity is not None:
            velocity.smoothing = values['velocity_smoothing']
