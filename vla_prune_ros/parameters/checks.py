"""Checks of a whole parameter set, each giving a reason that names the parameter.

:func:`check_value` (in ``spec``) checks one value's type, range and choices; :func:`validate` the
whole set: every method's options through its options class, the controller's through
``ControllerConfig``, ``action_low < action_high`` and, given a :class:`ModelInfo`, sizes against the
loaded model; :func:`validate_update` read-only and unknown names, then the merged set.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

from ..control.chunk_queue import ExecutionOptions
from ..control.controller import ControllerConfig
from ..options import Options, option_specs
from ..paths import PACKAGE_URL, resolve_package_url
from ..pruning import METHODS, available_methods
from .spec import ParameterError, check_value
from .table import METHOD_NAMES, NODE_NAME, PARAMETERS, defaults


# Options that hold one value per model camera (in camera order); their length must be the camera count.
PER_CAMERA_PARAMETERS = ('specprune.topk_coarse', 'specprune.topk_fine')
JOINT_NAME_PARAMETERS = ('joint_names', 'proprio_joint_names')


@dataclass(frozen=True)
class ModelInfo:
    """What the loaded model fixes; sizes of some parameters must agree with it."""
    action_dim: int
    chunk_len: int
    num_cameras: int
    proprio_dim: int
    camera_names: tuple = ()
    action_names: tuple = ()
    refused_methods: tuple = ()      # (method, reason) pairs this checkpoint cannot run as asked



def _options(options_class: type[Options], options: Mapping[str, Any]) -> Options:
    """Options from parameter values; raises ParameterError naming the parameter."""
    try:
        return options_class.from_dict(dict(options))
    except ValueError as error:
        raise ParameterError(f'{options_class.prefix}.{error}') from None


def method_options(values: Mapping[str, Any], method: Optional[str] = None) -> dict[str, Any]:
    """The options dict ``create_method(method, **options)`` takes, from flattened parameters."""
    method = values['method'] if method is None else method
    available_methods()
    if method not in METHODS:
        raise ParameterError(f"method: unknown pruning method {method!r}; choose one of {sorted(METHODS)}")
    options_class = METHODS[method].options_class
    options = {}
    for option in option_specs(options_class):
        name = f'{options_class.prefix}.{option.name}'
        if name not in values:
            continue
        value = values[name]
        if option.off is not None and value == option.off:
            value = None
        elif option.is_tuple:
            value = tuple(value)
        options[option.name] = value
    return options


def controller_config(values: Mapping[str, Any]) -> ControllerConfig:
    """A ``ControllerConfig`` from the ``controller.*`` parameters; raises ParameterError."""
    prefix = ControllerConfig.prefix + '.'
    return _options(ControllerConfig, {name[len(prefix):]: value for name, value in values.items()
                                       if name.startswith(prefix)})


def execution_options(values: Mapping[str, Any]) -> ExecutionOptions:
    """The ``ExecutionOptions`` from the parameters (unprefixed); raises ParameterError."""
    try:
        return ExecutionOptions.from_dict({spec.name: values[spec.name] for spec in option_specs(ExecutionOptions)
                                           if spec.name in values})
    except ValueError as error:
        raise ParameterError(str(error)) from None


def validate(values: Mapping[str, Any], model: Optional[ModelInfo] = None) -> None:
    """Check a complete parameter set; raises ParameterError naming the first problem."""
    for name, value in values.items():
        spec = PARAMETERS.get(name)
        if spec is None:
            raise ParameterError(f'{name}: unknown parameter of {NODE_NAME}')
        reason = check_value(spec, value)
        if reason:
            raise ParameterError(reason)
    full = {**defaults(), **values}

    # Every method's options, not only the active one's, so a later switch cannot fail.
    for method in METHOD_NAMES:
        _options(METHODS[method].options_class, method_options(full, method))

    controller_config(full)
    execution_options(full)

    low, high = list(full['action_low']), list(full['action_high'])
    if low or high:
        if len(low) != len(high):
            raise ParameterError(f'action_low/action_high: need the same length, got {len(low)} and {len(high)}')
        for index, (lo, hi) in enumerate(zip(low, high)):
            if not lo < hi:
                raise ParameterError(f'action_low[{index}]={lo} must be < action_high[{index}]={hi}')

    transports = list(full['camera_transports'])
    if transports and len(transports) != len(full['camera_topics']):
        raise ParameterError(f'camera_transports: {len(transports)} entries for {len(full["camera_topics"])} '
                             f'camera_topics; give one per camera (or none: all raw)')

    if full['proprio_source'] == 'joint_positions' and not full['proprio_joint_names']:
        raise ParameterError("proprio_joint_names: must name joints when proprio_source is 'joint_positions'")

    if model is not None:
        refusals = dict(model.refused_methods)
        if full['method'] in refusals:
            raise ParameterError(f"method: {refusals[full['method']]}")
        if low and len(low) != model.action_dim:
            raise ParameterError(f'action_low/action_high: {len(low)} values, the model has {model.action_dim} '
                                 f'action dimensions {list(model.action_names)}')
        if full['execute_steps'] > model.chunk_len:
            raise ParameterError(f"execute_steps: {full['execute_steps']} > the model's chunk length "
                                 f'{model.chunk_len}')
        if len(full['camera_topics']) != model.num_cameras:
            raise ParameterError(f"camera_topics: {len(full['camera_topics'])} topics, the model needs "
                                 f'{model.num_cameras} ({list(model.camera_names)})')
        for name in PER_CAMERA_PARAMETERS:
            if name in full and len(full[name]) != model.num_cameras:
                raise ParameterError(f'{name}: {len(full[name])} values, the model has {model.num_cameras} cameras '
                                     f'{list(model.camera_names)}; give one value per camera')
        expected = proprio_length(full)
        if model.proprio_dim and expected is not None and expected != model.proprio_dim:
            raise ParameterError(f"proprio_source: '{full['proprio_source']}' with proprio_joint_names "
                                 f"{list(full['proprio_joint_names'])} gives {expected} values, the model "
                                 f'needs {model.proprio_dim}')


def duplicate_names(values: Mapping[str, Any]) -> dict[str, list[str]]:
    """{parameter: names listed more than once} for the joint-name lists (the node warns about them)."""
    found = {}
    for name in JOINT_NAME_PARAMETERS:
        names = list(values.get(name) or [])
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            found[name] = duplicates
    return found


def proprio_length(values: Mapping[str, Any]) -> Optional[int]:
    """Length of the proprio vector the node builds; None for 'zeros' (any length fits)."""
    source = values['proprio_source']
    if source == 'zeros':
        return None
    extra = len(values['proprio_joint_names'])
    return 6 + extra if source == 'ee_pose' else extra


def validate_update(current: Mapping[str, Any], changes: Mapping[str, Any], model: Optional[ModelInfo] = None,
                    initializing: bool = False) -> str:
    """'' when ``changes`` may be applied on top of ``current``, else the reason (nothing changes)."""
    for name, value in changes.items():
        spec = PARAMETERS.get(name)
        if spec is None:
            return f'{name}: unknown parameter of {NODE_NAME}'
        if spec.read_only and not initializing and current.get(name) != value:
            return f'{name}: read-only (set it at startup)'
        reason = check_value(spec, value)
        if reason:
            return reason
    try:
        validate({**current, **changes}, model)
    except ParameterError as error:
        return str(error)
    return ''



def resolve_urdf(values: Mapping[str, Any]) -> str:
    """The URDF XML from robot_description or urdf_path ('' when neither is set); raises ParameterError."""
    if values.get('robot_description'):
        return values['robot_description']
    path = values.get('urdf_path', '')
    if not path:
        return ''
    if path.startswith('package://') and not path.startswith(PACKAGE_URL):
        raise ParameterError(f'urdf_path: {path}: only {PACKAGE_URL} URLs are resolved; give a file path')
    path = resolve_package_url(path)
    try:
        return Path(path).read_text()
    except OSError as error:
        raise ParameterError(f'urdf_path: cannot read {path} ({error.strerror})') from None
