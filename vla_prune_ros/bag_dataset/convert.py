"""Bags -> demonstrations: per step the measured delta pose of the TCP, the gripper, the proprio.

The action convention is the simulator's (``sim/env.py`` ``step``) and the node's: for consecutive
grid states with TCP poses (p_k, R_k) and (p_k+1, R_k+1), from pinocchio forward kinematics of the
URDF in its root frame,

    translation  p_k+1 - p_k                      (metres, world axes)
    rotation     log(R_k+1 R_k^T)                 (rotation vector: R_k+1 = exp(w) R_k, world axes)
    gripper      the finger joints at k+1 mapped linearly to [-1 open, +1 closed]

(the gripper value is read where the step ends: that is where its command took the fingers).
Proprio at k is the node's ``ProprioBuilder`` on the joint state at k, so training and the
running node see the same vector.

Episodes: one per bag, or one per instruction message (each ``std_msgs/String`` on the
instruction topic starts one); a step that is missing input (see ``alignment``) or moves more
than ``max_step_factor`` times the robot's action bounds (a reset, a teleport, a glitch) is
dropped and splits the episode; pieces shorter than ``min_steps`` are dropped too. Every drop is
counted in the report.
"""
from __future__ import annotations

import json
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pinocchio as pin

from ..control.kinematics import EndEffectorVelocity, ProprioBuilder
from ..data.demonstrations import Episode, dataset_statistics, write_episode, write_meta
from .alignment import align
from .robot import RecordingConfig
from .streams import (IMAGE_TYPES, JOINT_STATE_TYPE, STRING_TYPE, BagError, UnreadableBag, first_string,
                      read_streams, require_topics, topic_types)

# What the computation below produces, in order (OpenVLA-OFT's LIBERO layout, as the simulator's).
DELTA_POSE_ACTION_NAMES = ('dx', 'dy', 'dz', 'droll', 'dpitch', 'dyaw', 'gripper')
REPORT_FILE = 'conversion_report.json'
STATS_FILE = 'dataset_statistics.json'


class ConversionError(ValueError):
    """One or more bags could not be converted; the message lists every reason."""


class RobotModel:
    """Forward kinematics, proprio and gripper mapping of one URDF, with the joints they need."""

    def __init__(self, config: RecordingConfig, urdf: str, bag: Path, urdf_source: str):
        node = config.node
        try:
            self.kinematics = EndEffectorVelocity(urdf, node['ee_frame'], node['joint_names'] or None)
            self.proprio = ProprioBuilder(node['proprio_source'], config.proprio_dim, urdf, node['ee_frame'],
                                          node['proprio_joint_names'], node['proprio_reference_rotvec'])
        except ValueError as error:
            raise BagError(bag, urdf_source, f'does not fit the robot config {config.source}: {error}') from None
        unknown = [j for j in config.gripper_joints if j not in self.kinematics.urdf_joint_names]
        if unknown:
            raise BagError(bag, urdf_source, f'gripper_joints {unknown} are not movable joints of the URDF '
                                             f'({self.kinematics.urdf_joint_names})')
        self.config = config
        self.joints = list(dict.fromkeys([*self.kinematics.joint_names, *self.proprio.required_joints,
                                          *config.gripper_joints]))

    def gripper(self, positions: np.ndarray) -> np.ndarray:
        """(K, J) joint positions -> (K,) gripper value in [-1, 1]; 0 for a robot without gripper joints."""
        config = self.config
        if not config.gripper_joints:
            return np.zeros(len(positions))
        columns = [self.joints.index(j) for j in config.gripper_joints]
        opening = (config.gripper_open_position - positions[:, columns].mean(axis=1)) / \
            (config.gripper_open_position - config.gripper_closed_position)
        return np.clip(2.0 * opening - 1.0, -1.0, 1.0)

    def states(self, positions: np.ndarray) -> tuple[list[pin.SE3], np.ndarray]:
        """TCP poses and proprio vectors of (K, J) joint positions (rows of NaN give None / NaN)."""
        chain = [self.joints.index(j) for j in self.kinematics.joint_names]
        poses, proprio = [], np.full((len(positions), self.config.proprio_dim), np.nan)
        for k, row in enumerate(positions):
            if not np.all(np.isfinite(row)):
                poses.append(None)
                continue
            poses.append(self.kinematics.forward_kinematics(row[chain]))
            proprio[k] = self.proprio.build(dict(zip(self.joints, row)))
        return poses, proprio

    def actions(self, poses: list, positions: np.ndarray) -> np.ndarray:
        """(K-1, 7) actions between consecutive poses; NaN where either end is missing."""
        gripper = self.gripper(np.nan_to_num(positions))
        actions = np.full((max(len(poses) - 1, 0), len(DELTA_POSE_ACTION_NAMES)), np.nan)
        for k in range(len(poses) - 1):
            here, there = poses[k], poses[k + 1]
            if here is None or there is None:
                continue
            actions[k, :3] = there.translation - here.translation
            actions[k, 3:6] = pin.log3(there.rotation @ here.rotation.T)
            actions[k, 6] = gripper[k + 1]
        return actions


@dataclass
class Settings:
    control_dt: float
    tolerance: float
    image_size: int
    min_steps: int
    max_step_factor: float


def _segments(times: np.ndarray, instructions: list[tuple[float, str]], fixed: str | None):
    """Per grid time the index of its episode (-1 before the first instruction) and the texts."""
    if fixed is not None:
        return np.zeros(len(times), dtype=int), [fixed]
    starts = np.array([stamp for stamp, _ in instructions])
    return np.searchsorted(starts, times, side='right') - 1, [text for _, text in instructions]


def _pieces(actions: np.ndarray, segment: np.ndarray, limit: np.ndarray | None, drops: Counter) -> list[tuple[int, int]]:
    """[start, stop) ranges of steps that are all usable and in one episode; counts what is dropped."""
    usable = np.isfinite(actions).all(axis=1)
    drops['missing input'] += int((~usable).sum())
    if limit is not None:
        jump = usable & (np.abs(actions[:, :6]) > limit).any(axis=1)
        drops['motion beyond max_step_factor x action bounds'] += int(jump.sum())
        usable &= ~jump
    same = segment[:-1] == segment[1:]
    before = usable & (segment[:-1] < 0)
    drops['before the first instruction'] += int(before.sum())
    drops['across an instruction change'] += int((usable & ~same & ~before).sum())
    usable &= same & (segment[:-1] >= 0)
    pieces, start = [], None
    for k, ok in enumerate([*usable, False]):
        if ok and start is None:
            start = k
        elif not ok and start is not None:
            pieces.append((start, k))
            start = None
    return pieces


def convert_bag(bag: Path, config: RecordingConfig, settings: Settings, out: Path, first_index: int,
                instruction: str | None, urdf_file: str | None) -> dict:
    """Write the bag's episodes as ``episode_<first_index + i>``; returns the bag's report entry."""
    types = topic_types(bag)
    wanted = {topic: IMAGE_TYPES for topic in config.camera_topics}
    wanted[config.joint_states_topic] = (JOINT_STATE_TYPE,)
    if instruction is None:
        wanted[config.instruction_topic] = (STRING_TYPE,)
    if urdf_file:
        urdf, urdf_source = Path(urdf_file).read_text(), urdf_file
    elif config.robot_description_topic in types:
        urdf, urdf_source = first_string(bag, config.robot_description_topic), config.robot_description_topic
        if not urdf:
            raise BagError(bag, urdf_source, 'no URDF message in the bag; pass --urdf')
    else:
        urdf, urdf_source = config.configured_urdf(), f'the URDF of {config.source}'
        if not urdf:
            wanted[config.robot_description_topic] = (STRING_TYPE,)   # reported as missing below
    require_topics(bag, types, wanted, {config.instruction_topic: '; pass --instruction for this bag',
                                        config.robot_description_topic: '; pass --urdf or set urdf_path'})
    robot = RobotModel(config, urdf, bag, urdf_source)
    streams = read_streams(bag, list(config.camera_topics), config.joint_states_topic, robot.joints,
                           None if instruction is not None else config.instruction_topic, settings.image_size)
    if instruction is None and not streams.instructions:
        raise BagError(bag, config.instruction_topic, 'no instruction messages; pass --instruction for this bag')
    grid = align(streams, settings.control_dt, settings.tolerance)
    poses, proprio = robot.states(grid.positions)
    actions = robot.actions(poses, grid.positions)
    low, high = config.action_bounds
    limit = (settings.max_step_factor * np.maximum(np.abs(low), np.abs(high))[:6]) if low else None
    segment, texts = _segments(grid.times, streams.instructions, instruction)
    drops = Counter()
    pieces = _pieces(actions, segment, limit, drops)
    short = [(a, b) for a, b in pieces if b - a < settings.min_steps]
    drops['in pieces shorter than min_steps'] += sum(b - a for a, b in short)
    pieces = [p for p in pieces if p not in short]
    if not pieces:
        longest = max((b - a for a, b in short), default=0)
        raise BagError(bag, config.joint_states_topic,
                       f'too short: the longest usable run is {longest} steps at control_dt {settings.control_dt:g} s, '
                       f'one chunk needs {settings.min_steps} (grid times without input: {dict(grid.missing)}; '
                       f'dropped steps: {dict(+drops)})')
    episodes = []
    for offset, (a, b) in enumerate(pieces):
        frames = {name: np.stack([camera.frames[i] for i in grid.frames[camera.topic][a:b]])
                  for name, camera in zip(config.camera_names, streams.cameras)}
        text = texts[segment[a]]
        write_episode(out, first_index + offset, frames, proprio[a:b], actions[a:b], text, True,
                      task=bag.name, seed=offset)
        episodes.append({'bag': str(bag), 'instruction': text, 'start_stamp': float(grid.times[a]),
                         'steps': b - a, 'actions': actions[a:b].astype(np.float32), 'proprio': proprio[a:b]})
    return {'bag': str(bag), 'grid_times': len(grid.times), 'steps': sum(b - a for a, b in pieces),
            'dropped_steps': dict(+drops), 'grid_times_without_input': dict(grid.missing),
            'duplicate_stamps': streams.duplicate_stamps, 'episodes': episodes}


def _instruction_per_bag(bags: Sequence, instructions: Sequence[str]) -> list[str | None]:
    if not instructions:
        return [None] * len(bags)
    if len(instructions) == 1:
        return list(instructions) * len(bags)
    if len(instructions) != len(bags):
        raise ConversionError(f'{len(instructions)} --instruction values for {len(bags)} bags: give one for all '
                              'bags or one per bag')
    return list(instructions)


def action_ranges(actions: np.ndarray) -> dict:
    return {name: [float(actions[:, i].min()), float(actions[:, i].max())]
            for i, name in enumerate(DELTA_POSE_ACTION_NAMES)}


def convert_bags(bags: Sequence[str | Path], out: str | Path, config: RecordingConfig, control_dt: float | None = None,
                 tolerance: float | None = None, instructions: Sequence[str] = (), urdf_file: str | None = None,
                 image_size: int = 128, min_steps: int = 8, max_step_factor: float = 2.0,
                 warn: Callable[[str], None] = print) -> dict:
    """Convert ``bags`` into a demonstration directory ``out``; returns the report (also written there).

    Unreadable bags are skipped with a warning; any other problem raises ConversionError listing
    every bag's reason, and nothing is written.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConversionError(f'{out} exists and is not empty; choose a new output directory')
    dt = float(control_dt if control_dt is not None else config.node['control_dt'])
    settings = Settings(dt, float(tolerance if tolerance is not None else 0.4 * dt), int(image_size),
                        int(min_steps), float(max_step_factor))
    per_bag = _instruction_per_bag(bags, instructions)
    staging = out.with_name(out.name + '.partial')
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    reports, skipped, errors, episodes = [], [], [], []
    try:
        for bag, instruction in zip(bags, per_bag):
            try:
                entry = convert_bag(Path(bag), config, settings, staging, len(episodes), instruction, urdf_file)
            except UnreadableBag as error:
                warn(f'warning: skipping {error}')
                skipped.append(str(error))
                continue
            except (BagError, ValueError, OSError) as error:
                errors.append(str(error))
                continue
            episodes += entry.pop('episodes')
            reports.append(entry)
        if errors:
            raise ConversionError('\n'.join(errors))
        if not episodes:
            raise ConversionError('no bag could be read: ' + '; '.join(skipped))
        stats = dataset_statistics([Episode({}, e['proprio'], e['actions'], e['instruction'], True) for e in episodes])
        write_meta(staging, {'camera_names': list(config.camera_names), 'action_names': list(DELTA_POSE_ACTION_NAMES),
                             'control_dt': dt, 'image_size': settings.image_size, 'proprio_dim': config.proprio_dim,
                             'action_dim': len(DELTA_POSE_ACTION_NAMES), 'robot_config': config.source,
                             'source': 'rosbag2 via vla-prune dataset from-bag', 'bags': [str(b) for b in bags]})
        (staging / STATS_FILE).write_text(json.dumps(stats, indent=2))
        all_actions = np.concatenate([e['actions'] for e in episodes])
        report = {'episodes': len(episodes), 'steps': int(len(all_actions)),
                  'dropped_steps': sum(sum(r['dropped_steps'].values()) for r in reports),
                  'action_ranges': action_ranges(all_actions), 'control_dt': dt, 'tolerance': settings.tolerance,
                  'bags': reports, 'skipped_bags': skipped,
                  'episode_index': [{k: v for k, v in e.items() if k not in ('actions', 'proprio')} for e in episodes]}
        (staging / REPORT_FILE).write_text(json.dumps(report, indent=2))
        if out.exists():
            out.rmdir()
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report


def report_text(report: dict, out: Path) -> str:
    """The short summary ``vla-prune dataset from-bag`` prints."""
    lines = [f"{out}: {report['episodes']} episodes, {report['steps']} steps at {report['control_dt']:g} s, "
             f"{report['dropped_steps']} steps dropped"]
    for entry in report['bags']:
        dropped = ', '.join(f'{n} {why}' for why, n in entry['dropped_steps'].items()) or 'none dropped'
        lines.append(f"  {entry['bag']}: {entry['steps']} steps ({dropped})")
        if entry['grid_times_without_input']:
            lines.append('    grid times with nothing within tolerance: ' +
                         ', '.join(f'{t} {n}' for t, n in entry['grid_times_without_input'].items()))
    for skipped in report['skipped_bags']:
        lines.append(f'  skipped: {skipped}')
    lines.append('  action ranges: ' + ', '.join(f'{n} [{lo:+.4f}, {hi:+.4f}]'
                                                 for n, (lo, hi) in report['action_ranges'].items()))
    return '\n'.join(lines)
