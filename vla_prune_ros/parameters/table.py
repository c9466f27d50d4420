"""The table of every parameter of ``vla_prune_node``.

The node's own parameters are listed here; each pruning method's (``<prefix>.<option>``) and the
controller's (``controller.<field>``) and the execution options (``execution``, ``chunk_aggregation``, ...,
:class:`~vla_prune_ros.control.chunk_queue.ExecutionOptions`) are derived from their option declarations
(:mod:`vla_prune_ros.options`), so their defaults, ranges and help are written once, beside the code
they configure. ``execute_steps: 0`` means "the whole chunk".
"""
from __future__ import annotations

import math
from typing import Any

from ..control.chunk_queue import ExecutionOptions
from ..control.controller import ControllerConfig
from ..options import option_specs
from ..paths import PACKAGE_URL
from ..pruning import BUILTIN_METHODS
from .spec import ParamSpec, from_option, parameter

NODE_NAME = 'vla_prune_node'
METHOD_NAMES = tuple(method.name for method in BUILTIN_METHODS)
# Which parameter namespace holds each method's options (LightVLA* shares LightVLA's, plus query_mode).
METHOD_PREFIX = {method.name: method.options_class.prefix or None for method in BUILTIN_METHODS}

_CORE = [
    parameter('checkpoint', 'string', '', 'Checkpoint directory (config.json, model.safetensors, tokenizer).',
              read_only=True),
    parameter('device', 'string', 'auto', "Torch device: 'auto', 'cpu', 'cuda' or 'cuda:N'.", read_only=True),
    parameter('dtype', 'string', 'float32', 'Model weights dtype.', choices=('float32', 'bfloat16', 'float16'),
              read_only=True),
    parameter('torch_threads', 'integer', 0,
              'CPU threads torch uses for inference; 0 = torch default. Fewer than the cores keeps sensor callbacks '
              'and other processes from stalling a forward pass on a small CPU.', 0, 256, read_only=True),
    parameter('compile_layers', 'bool', False,
              'Run the LLM and SigLIP layers through torch.compile (dynamic shapes: a pruned token count or a method '
              'switch does not compile again). The start-up warm-up compiles them: tens of seconds on a CPU, which '
              'needs a C++ compiler (without one the node warns and runs eagerly).', read_only=True),
    parameter('method', 'string', 'none',
              'Visual-token pruning method; switchable live (applies at the next inference).', choices=METHOD_NAMES),
    parameter('camera_topics', 'string_array', ['camera/primary/image_raw', 'camera/wrist/image_raw'],
              'sensor_msgs/Image topics, one per model camera, in the model camera order.', read_only=True),
    parameter('camera_transports', 'string_array', [],
              "Per camera topic: 'raw' (sensor_msgs/Image) or 'compressed' (sensor_msgs/CompressedImage, JPEG or "
              "PNG, decoded with OpenCV); empty: all raw.", choices=('raw', 'compressed'), read_only=True),
    parameter('joint_states_topic', 'string', 'joint_states', 'sensor_msgs/JointState topic.', read_only=True),
    parameter('success_topic', 'string', 'task_done',
              'std_msgs/Bool topic; a True message ends the running goal as SUCCEEDED.', read_only=True),
    parameter('robot_description', 'string', '', 'URDF XML of the robot (wins over urdf_path when set).',
              read_only=True),
    parameter('urdf_path', 'string', '',
              f"URDF file path, or {PACKAGE_URL}<path> for a file of this package. Empty and no robot_description: "
              'the end-effector velocity is unknown (controller falls to fine).', read_only=True),
    parameter('ee_frame', 'string', 'tool0', 'URDF frame of the end effector (tool centre point).', read_only=True),
    parameter('joint_names', 'string_array', [],
              'Joints the kinematics uses, in model order; empty: every movable joint of the URDF.', read_only=True),
    parameter('velocity_smoothing', 'double', 0.0,
              'Exponential smoothing of the measured end-effector twist: 0 = none, towards 1 = heavier.', 0.0, 0.99),
    parameter('proprio_source', 'string', 'ee_pose',
              "How the model's proprio vector is built from joint states: 'ee_pose' = end-effector xyz + rotation "
              "vector in the URDF root frame, then the positions of proprio_joint_names; 'joint_positions' = the "
              "positions of proprio_joint_names; 'zeros' = a zero vector.",
              choices=('ee_pose', 'joint_positions', 'zeros'), read_only=True),
    parameter('proprio_joint_names', 'string_array', [], 'Joint positions appended to (or forming) the proprio vector.',
              read_only=True),
    parameter('proprio_reference_rotvec', 'double_array', [0.0, 0.0, 0.0],
              'ee_pose: the end-effector rotation vector takes the quaternion sign nearest this orientation, so it '
              'stays continuous around the working pose (as in training data).', -2 * math.pi, 2 * math.pi,
              read_only=True),
    parameter('control_dt', 'double', 0.1, 'Seconds between consecutive steps of a chunk.', 0.001, 10.0),
    parameter('execute_steps', 'integer', 0,
              'Steps of a chunk executed before re-inference; 0 = the whole chunk.', 0, 1024),
    parameter('max_input_age', 'double', 0.5,
              'Camera frames and joint states are stale when their header stamp is older than this (s) by the '
              "node's clock, or when they arrived longer ago than this.", 0.001, 3600.0),
    parameter('future_stamp_tolerance', 'double', 0.1,
              "A header stamp more than this (s) ahead of the node's clock is stale (and warned about).", 0.0, 3600.0),
    parameter('max_joint_velocity', 'double', 50.0,
              'Joint velocities beyond this (rad/s or m/s) are non-physical: the end-effector velocity is then '
              'unknown, as with NaN.', 0.001, 1e9),
    parameter('max_instruction_tokens', 'integer', 0,
              "Goals whose instruction has more tokens are rejected; 0 = what the model's position limit leaves.",
              0, 1000000),
    parameter('stale_input_policy', 'string', 'abort',
              "On stale or missing input: 'abort' the goal (FAILED), or 'wait' up to wait_timeout for fresh input.",
              choices=('abort', 'wait')),
    parameter('wait_timeout', 'double', 2.0, "How long (s) the 'wait' policy waits for fresh input.", 0.0, 600.0),
    parameter('action_low', 'double_array', [], 'Lower bound per action dimension (clip); empty: no clipping.',
              -1e9, 1e9),
    parameter('action_high', 'double_array', [], 'Upper bound per action dimension (clip); empty: no clipping.',
              -1e9, 1e9),
    parameter('action_frame_id', 'string', '', 'header.frame_id of published chunks.'),
    parameter('publish_joint_trajectory', 'bool', False,
              'Also publish each chunk as trajectory_msgs/JointTrajectory (for joint-space policies).'),
    parameter('joint_trajectory_topic', 'string', 'joint_trajectory', 'JointTrajectory topic.', read_only=True),
    parameter('dry_run', 'bool', False,
              'Run the model and publish inference_stats, feedback and diagnostics, but no action_chunk or '
              'joint_trajectory: watch a policy without the robot moving.'),
    parameter('added_latency', 'double', 0.0,
              'Benchmarks only: sleep this long (s) inside every policy call, emulating a larger model; 0 = off.',
              0.0, 10.0),
]


def _derived(options_classes) -> list[ParamSpec]:
    specs: dict[str, ParamSpec] = {}
    for options_class in options_classes:
        for option in option_specs(options_class):
            spec = from_option(options_class.prefix, option)
            specs.setdefault(spec.name, spec)
    return list(specs.values())


PARAMETERS: dict[str, ParamSpec] = {s.name: s for s in _CORE + _derived([ExecutionOptions]) + _derived(
    [m.options_class for m in BUILTIN_METHODS if m.options_class.prefix] + [ControllerConfig])}


def method_config_file(method: str) -> str:
    """The file in ``config/`` with a method's published defaults (LightVLA* uses LightVLA's)."""
    return f'{METHOD_PREFIX[method] or method}.yaml'


def defaults() -> dict[str, Any]:
    """Every parameter at its default (arrays as lists)."""
    return {name: (list(s.default) if s.is_array else s.default) for name, s in PARAMETERS.items()}


def markdown_table() -> str:
    """The README's parameter table."""
    rows = ['| parameter | type | default | range / choices | description |', '|---|---|---|---|---|']
    for spec in PARAMETERS.values():
        description = spec.description + (' Read-only.' if spec.read_only else '')
        rows.append(f'| `{spec.name}` | {spec.type} | `{spec.default}` | {spec.range_text()} | {description} |')
    return '\n'.join(rows)


def rewrite_readme_table(path: str) -> None:
    """Replace the parameter table in a Markdown file (from its header row to the first blank line)."""
    from pathlib import Path
    text = Path(path).read_text()
    start = text.index('| parameter | type |')
    end = text.find('\n\n', start)
    Path(path).write_text(text[:start] + markdown_table() + (text[end:] if end >= 0 else '\n'))

