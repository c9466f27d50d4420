"""The node's parameters: one table, the checks ``on_set_parameters_callback`` runs, and the
merge the launch file does. No ROS imports here, so all of it is unit-tested without rclpy
or ``launch`` (which is not installable from PyPI).

Every tunable of ``vla_prune_node`` is a :class:`ParamSpec` in :data:`PARAMETERS`: its ROS
type, default, description, inclusive numeric range (for arrays: per element), allowed
choices, and whether it is read-only. Pruning-method options are flattened as
``<prefix>.<option>`` (``specprune.topk_coarse``, ``lightvla.noise``...) and controller
thresholds as ``controller.<field>``. ROS parameters have no "None", so an optional integer
option uses 0 for "off" (``specprune.forced_static_visual``, ``lightvla.forced_visual_keep``),
and ``execute_steps: 0`` means "the whole chunk".

Checks run in three layers, each giving a reason string naming the parameter:
:func:`check_value` (type, range, choices), :func:`validate` (the whole set: method options
through the method class's ``validate_options``, controller consistency through
``ControllerConfig``, ``action_low < action_high``, and, given a :class:`ModelInfo`, sizes
against the loaded model), and :func:`validate_update` (read-only and unknown names, then
the merged set).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

import yaml

NODE_NAME = 'vla_prune_node'
METHOD_NAMES = ('none', 'specprune', 'lightvla', 'lightvla_star')
# Which parameter prefix holds each method's options (LightVLA* shares LightVLA's, plus query_mode).
METHOD_PREFIX = {'none': None, 'specprune': 'specprune', 'lightvla': 'lightvla', 'lightvla_star': 'lightvla'}
# The published defaults of each method, in config/ (LightVLA* uses LightVLA's file).
METHOD_CONFIG_FILE = {'none': 'none.yaml', 'specprune': 'specprune.yaml', 'lightvla': 'lightvla.yaml',
                      'lightvla_star': 'lightvla.yaml'}
CONFIG_DIR = Path(__file__).resolve().parents[2] / 'config'   # the source tree's config/
PACKAGE_URL = 'package://vla_prune_ros/'

TYPES = ('bool', 'integer', 'double', 'string', 'bool_array', 'integer_array', 'double_array', 'string_array')
DEVICE_PATTERN = re.compile(r'^(auto|cpu|cuda(:\d+)?|mps)$')
INF = math.inf


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


def _p(name, type_, default, description, low=None, high=None, choices=None, read_only=False, none_value=None):
    assert type_ in TYPES, type_
    return ParamSpec(name, type_, default, description, low, high, tuple(choices) if choices else None,
                     read_only, none_value)


# --- the table ------------------------------------------------------------------------------

_CORE = [
    _p('checkpoint', 'string', '', 'Checkpoint directory (config.json, model.safetensors, tokenizer).',
       read_only=True),
    _p('device', 'string', 'auto', "Torch device: 'auto', 'cpu', 'cuda' or 'cuda:N'.", read_only=True),
    _p('dtype', 'string', 'float32', 'Model weights dtype.', choices=('float32', 'bfloat16', 'float16'),
       read_only=True),
    _p('torch_threads', 'integer', 0,
       'CPU threads torch uses for inference; 0 = torch default. Fewer than the cores keeps sensor callbacks '
       'and other processes from stalling a forward pass on a small CPU.', 0, 256, read_only=True),
    _p('method', 'string', 'none', 'Visual-token pruning method; switchable live (applies at the next inference).',
       choices=METHOD_NAMES),
    _p('camera_topics', 'string_array', ['camera/primary/image_raw', 'camera/wrist/image_raw'],
       'sensor_msgs/Image topics, one per model camera, in the model camera order.', read_only=True),
    _p('joint_states_topic', 'string', 'joint_states', 'sensor_msgs/JointState topic.', read_only=True),
    _p('success_topic', 'string', 'task_done',
       'std_msgs/Bool topic; a True message ends the running goal as SUCCEEDED.', read_only=True),
    _p('robot_description', 'string', '', 'URDF XML of the robot (wins over urdf_path when set).', read_only=True),
    _p('urdf_path', 'string', '',
       f"URDF file path, or {PACKAGE_URL}<path> for a file of this package. Empty and no robot_description: "
       'the end-effector velocity is unknown (controller falls to fine).', read_only=True),
    _p('ee_frame', 'string', 'tool0', 'URDF frame of the end effector (tool centre point).', read_only=True),
    _p('joint_names', 'string_array', [],
       'Joints the kinematics uses, in model order; empty: every movable joint of the URDF.', read_only=True),
    _p('velocity_smoothing', 'double', 0.0,
       'Exponential smoothing of the measured end-effector twist: 0 = none, towards 1 = heavier.', 0.0, 0.99),
    _p('proprio_source', 'string', 'ee_pose',
       "How the model's proprio vector is built from joint states: 'ee_pose' = end-effector xyz + rotation "
       "vector in the URDF root frame, then the positions of proprio_joint_names; 'joint_positions' = the "
       "positions of proprio_joint_names; 'zeros' = a zero vector.",
       choices=('ee_pose', 'joint_positions', 'zeros'), read_only=True),
    _p('proprio_joint_names', 'string_array', [], 'Joint positions appended to (or forming) the proprio vector.',
       read_only=True),
    _p('proprio_reference_rotvec', 'double_array', [0.0, 0.0, 0.0],
       'ee_pose: the end-effector rotation vector takes the quaternion sign nearest this orientation, so it '
       'stays continuous around the working pose (as in training data).', -2 * math.pi, 2 * math.pi,
       read_only=True),
    _p('control_dt', 'double', 0.1, 'Seconds between consecutive steps of a chunk.', 0.001, 10.0),
    _p('execute_steps', 'integer', 0,
       'Steps of a chunk executed before re-inference; 0 = the whole chunk.', 0, 1024),
    _p('max_input_age', 'double', 0.5, 'Camera frames and joint states older than this (s) are stale.',
       0.001, 3600.0),
    _p('stale_input_policy', 'string', 'abort',
       "On stale or missing input: 'abort' the goal (FAILED), or 'wait' up to wait_timeout for fresh input.",
       choices=('abort', 'wait')),
    _p('wait_timeout', 'double', 2.0, "How long (s) the 'wait' policy waits for fresh input.", 0.0, 600.0),
    _p('action_low', 'double_array', [], 'Lower bound per action dimension (clip); empty: no clipping.',
       -1e9, 1e9),
    _p('action_high', 'double_array', [], 'Upper bound per action dimension (clip); empty: no clipping.',
       -1e9, 1e9),
    _p('action_frame_id', 'string', '', 'header.frame_id of published chunks.'),
    _p('publish_joint_trajectory', 'bool', False,
       'Also publish each chunk as trajectory_msgs/JointTrajectory (for joint-space policies).'),
    _p('joint_trajectory_topic', 'string', 'joint_trajectory', 'JointTrajectory topic.', read_only=True),
]

_SPECPRUNE = [
    _p('specprune.similarity_threshold', 'double', 0.986,
       'Cosine similarity above which a patch counts as unchanged (static).', 0.0, 1.0),
    _p('specprune.static_cap_coarse', 'integer', 200, 'Max static patches per view (per 256), coarse mode.', 0, 256),
    _p('specprune.static_cap_fine', 'integer', 220, 'Max static patches per view (per 256), fine mode.', 0, 256),
    _p('specprune.topk_coarse', 'integer_array', [16, 12],
       'Attention top-k per view (primary, wrist, ...; per 256 patches), coarse mode.', 0, 256),
    _p('specprune.topk_fine', 'integer_array', [25, 19],
       'Attention top-k per view (per 256 patches), fine mode.', 0, 256),
    _p('specprune.layer0_topk_multiplier', 'integer', 3, 'After layer 0 keep multiplier * k per view.', 1, 64),
    _p('specprune.delta_slope', 'double', -16.0 / 18.0, 'Frame gap formula: slope on the speed.', -1e3, 1e3),
    _p('specprune.delta_intercept', 'double', 22.0 / 3.0, 'Frame gap formula: intercept.', -1e3, 1e3),
    _p('specprune.delta_offset', 'integer', 3, 'Frame gap formula: offset (control steps).', -1000, 1000),
    _p('specprune.delta_max', 'integer', 6, 'Largest frame gap (control steps).', 1, 1000),
    _p('specprune.delta_min', 'integer', 1, 'Smallest frame gap (control steps).', 1, 1000),
    _p('specprune.delta_speed_scale', 'double', 1.0, 'Measured speed (m/s) to the formula speed unit.', 0.0, 1e6),
    _p('specprune.steps_per_inference', 'integer', 8, 'Control steps between inferences (Δ to inferences).',
       1, 1024),
    _p('specprune.use_global_history', 'bool', True, "Always keep the previous inference's important patches."),
    _p('specprune.dynamic', 'bool', True, 'Layer-level (dynamic) pruning inside the LLM.'),
    _p('specprune.dynamic_layers', 'integer_array', [5, 10, 15, 20, 25],
       'Layers (of a 32-layer LLM, scaled to the model) where dynamic pruning cuts.', 0, 1024),
    _p('specprune.dynamic_keep_ratio', 'double', 0.8, 'Fraction of visual tokens kept at each dynamic cut.',
       0.0, 1.0),
    _p('specprune.ema_alpha', 'double', 0.2, 'EMA factor of the attention-rank importance.', 0.0, 1.0),
    _p('specprune.min_visual_tokens', 'integer', 16, 'Never keep fewer visual tokens.', 1, 1_000_000),
    _p('specprune.forced_static_visual', 'integer', 0,
       'Force the static stage to keep exactly this many visual tokens; 0 = off.', 0, 1_000_000, none_value=0),
]

_LIGHTVLA = [
    _p('lightvla.noise', 'string', 'uniform', 'Selection noise kind (training only).', choices=('uniform', 'gumbel')),
    _p('lightvla.noise_scale', 'double', 0.0, 'Selection noise scale (0 at inference).', 0.0, 1e3),
    _p('lightvla.forced_visual_keep', 'integer', 0, 'Keep exactly this many patches; 0 = off (variable count).',
       0, 1_000_000, none_value=0),
    _p('lightvla.min_visual_tokens', 'integer', 1, 'Never keep fewer visual tokens.', 1, 1_000_000),
    _p('lightvla.query_mode', 'string', 'add', "LightVLA* only: learned queries 'add' to or 'replace' the free ones.",
       choices=('add', 'replace')),
]

_CONTROLLER_DESCRIPTIONS = {
    'fine_enter_speed': 'Enter fine below this end-effector speed (m/s).',
    'fine_enter_xy_speed': 'Enter fine when the horizontal speed (m/s) is below this (with z and angular).',
    'fine_enter_z_speed': 'Enter fine when the vertical speed (m/s, signed) is below this (with xy and angular).',
    'fine_enter_angular_speed': 'Enter fine when the angular speed (rad/s) is below this (with xy and z).',
    'fine_exit_speed': 'Leave fine above this speed (m/s); inf gives the published rule.',
    'fine_exit_z_speed': 'Leave fine above this upward speed (m/s).',
    'fine_exit_angular_speed': 'Leave fine above this angular speed (rad/s) when no actions are queued.',
    'min_dwell_time': 'A mode switch must hold this long (s) before it takes effect.',
    'unknown_velocity_mode': "Unknown velocity: 'fine' at once, or 'hold' the current mode.",
}


def _controller_specs() -> list[ParamSpec]:
    from ..control.controller import UNKNOWN_VELOCITY_MODES, ControllerConfig
    specs = []
    for field in fields(ControllerConfig):
        name = f'controller.{field.name}'
        if field.name == 'unknown_velocity_mode':
            specs.append(_p(name, 'string', field.default, _CONTROLLER_DESCRIPTIONS[field.name],
                            choices=UNKNOWN_VELOCITY_MODES))
        elif field.name == 'min_dwell_time':
            specs.append(_p(name, 'double', float(field.default), _CONTROLLER_DESCRIPTIONS[field.name], 0.0, 60.0))
        else:
            specs.append(_p(name, 'double', float(field.default), _CONTROLLER_DESCRIPTIONS[field.name], 0.0, INF))
    return specs


PARAMETERS: dict[str, ParamSpec] = {s.name: s for s in _CORE + _SPECPRUNE + _LIGHTVLA + _controller_specs()}


def defaults() -> dict[str, Any]:
    """Every parameter at its default (arrays as lists)."""
    return {name: (list(s.default) if s.is_array else s.default) for name, s in PARAMETERS.items()}


# --- single values ----------------------------------------------------------------------------

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


# --- the whole set ------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelInfo:
    """What the loaded model fixes; sizes of some parameters must agree with it."""
    action_dim: int
    chunk_len: int
    num_cameras: int
    proprio_dim: int
    camera_names: tuple = ()
    action_names: tuple = ()


def method_options(values: Mapping[str, Any], method: Optional[str] = None) -> dict[str, Any]:
    """The options dict ``create_method(method, **options)`` takes, from flattened parameters."""
    from ..pruning import METHODS, available_methods
    method = values['method'] if method is None else method
    available_methods()
    if method not in METHODS:
        raise ParameterError(f"method: unknown pruning method {method!r}; choose one of {sorted(METHODS)}")
    prefix = METHOD_PREFIX.get(method, method)
    options = {}
    for option in METHODS[method].option_defaults():
        name = f'{prefix}.{option}'
        if name not in values:
            continue
        spec, value = PARAMETERS[name], values[name]
        if spec.none_value is not None and value == spec.none_value:
            value = None
        elif spec.is_array:
            value = tuple(value)
        options[option] = value
    return options


def controller_config(values: Mapping[str, Any]):
    """A ``ControllerConfig`` from the ``controller.*`` parameters; raises ParameterError."""
    from ..control.controller import ControllerConfig
    kwargs = {f.name: values[f'controller.{f.name}'] for f in fields(ControllerConfig)
              if f'controller.{f.name}' in values}
    try:
        return ControllerConfig(**kwargs)
    except ValueError as error:
        raise ParameterError(f'controller.{error}') from None


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
    from ..pruning import METHODS
    for method in METHOD_NAMES:
        options = method_options(full, method)      # also registers every method
        method_class = METHODS[method]
        try:
            method_class.validate_options({**method_class.option_defaults(), **options})
        except (ValueError, TypeError, KeyError) as error:
            raise ParameterError(str(error)) from None

    controller_config(full)

    low, high = list(full['action_low']), list(full['action_high'])
    if low or high:
        if len(low) != len(high):
            raise ParameterError(f'action_low/action_high: need the same length, got {len(low)} and {len(high)}')
        for index, (lo, hi) in enumerate(zip(low, high)):
            if not lo < hi:
                raise ParameterError(f'action_low[{index}]={lo} must be < action_high[{index}]={hi}')

    if full['proprio_source'] == 'joint_positions' and not full['proprio_joint_names']:
        raise ParameterError("proprio_joint_names: must name joints when proprio_source is 'joint_positions'")

    if model is not None:
        if low and len(low) != model.action_dim:
            raise ParameterError(f'action_low/action_high: {len(low)} values, the model has {model.action_dim} '
                                 f'action dimensions {list(model.action_names)}')
        if full['execute_steps'] > model.chunk_len:
            raise ParameterError(f"execute_steps: {full['execute_steps']} > the model's chunk length "
                                 f'{model.chunk_len}')
        if len(full['camera_topics']) != model.num_cameras:
            raise ParameterError(f"camera_topics: {len(full['camera_topics'])} topics, the model needs "
                                 f'{model.num_cameras} ({list(model.camera_names)})')
        expected = proprio_length(full)
        if model.proprio_dim and expected is not None and expected != model.proprio_dim:
            raise ParameterError(f"proprio_source: '{full['proprio_source']}' with proprio_joint_names "
                                 f"{list(full['proprio_joint_names'])} gives {expected} values, the model "
                                 f'needs {model.proprio_dim}')


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
    if path.startswith(PACKAGE_URL):
        path = str(Path(__file__).resolve().parents[1] / path[len(PACKAGE_URL):])
    elif path.startswith('package://'):
        raise ParameterError(f'urdf_path: {path}: only {PACKAGE_URL} URLs are resolved; give a file path')
    try:
        return Path(path).read_text()
    except OSError as error:
        raise ParameterError(f'urdf_path: cannot read {path} ({error.strerror})') from None


# --- params files and the launch merge ----------------------------------------------------------

def _flatten(tree: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        name = f'{prefix}{key}'
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name + '.'))
        else:
            flat[name] = value
    return flat


def load_params_file(path: str | Path, node_name: str = NODE_NAME) -> dict[str, Any]:
    """The flattened ``ros__parameters`` for ``node_name`` of a ROS 2 params file.

    Sections apply in this order, later winning: ``/**``, ``/**/<node_name>`` (the form the shipped
    files use, so they also apply to a node in a namespace), ``<node_name>``, ``/<node_name>``.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as error:
        raise ParameterError(f'{path}: cannot read ({error.strerror})') from None
    except yaml.YAMLError as error:
        raise ParameterError(f'{path}: not valid YAML ({error})') from None
    if not isinstance(data, Mapping):
        raise ParameterError(f'{path}: expected a mapping of node names')
    merged = {}
    for key in ('/**', '**', '/**/' + node_name, node_name, '/' + node_name):
        section = data.get(key)
        if section is None:
            continue
        if not isinstance(section, Mapping) or not isinstance(section.get('ros__parameters'), Mapping):
            raise ParameterError(f'{path}: {key}: expected a ros__parameters mapping')
        merged.update(_flatten(section['ros__parameters']))
    return merged


def resolve_launch_parameters(method: str, overrides: Optional[Mapping[str, Any]] = None,
                              config_files: Iterable[str | Path] = (), config_dir: str | Path | None = None
                              ) -> dict[str, Any]:
    """The node-parameter dict the launch file passes to ``Node(parameters=[...])``.

    Later wins: ``<config_dir>/<method>.yaml`` (the method's published defaults), then each
    of ``config_files`` (robot config, user config), then ``overrides`` (launch arguments;
    strings are parsed to the parameter's type, empty strings are skipped), then
    ``method`` itself. The result is validated and typed (doubles are floats). Raises
    ParameterError naming the file or parameter.
    """
    if method not in METHOD_NAMES:
        raise ParameterError(f'method: {method!r} not one of {list(METHOD_NAMES)}')
    config_dir = Path(config_dir) if config_dir is not None else CONFIG_DIR
    layers = [(config_dir / METHOD_CONFIG_FILE[method], load_params_file(config_dir / METHOD_CONFIG_FILE[method]))]
    for path in config_files:
        if path:
            layers.append((Path(path), load_params_file(path)))
    overrides = {k: v for k, v in (overrides or {}).items() if not (isinstance(v, str) and v == '')}
    layers.append(('launch arguments', overrides))
    layers.append(('method argument', {'method': method}))

    resolved: dict[str, Any] = {}
    for source, layer in layers:
        for name, value in layer.items():
            spec = PARAMETERS.get(name)
            if spec is None:
                raise ParameterError(f'{source}: {name}: unknown parameter of {NODE_NAME}')
            try:
                resolved[name] = coerce(spec, value)
            except ParameterError as error:
                raise ParameterError(f'{source}: {error}') from None
    validate(resolved)
    return resolved
