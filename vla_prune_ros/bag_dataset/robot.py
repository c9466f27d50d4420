"""What ``vla-prune dataset from-bag`` takes from a robot config: the node's section, plus a converter section.

The node's parameters (``vla_prune_node``: camera and joint-state topics, URDF, ``ee_frame``, joint
names, proprio layout, action bounds, ``control_dt``) are read exactly as the launch file resolves
them, so the training data and the running node see the same topics, frames and proprio vector.
What only the converter needs lives in a ``vla_prune_dataset`` section of the same file (the node
ignores it)::

    /**/vla_prune_dataset:
      ros__parameters:
        camera_names: [primary, wrist]     # dataset/model camera names, in camera_topics order
        instruction_topic: instruction     # std_msgs/String; each message starts an episode
        robot_description_topic: robot_description
        gripper_joints: [finger_left_joint, finger_right_joint]
        gripper_open_position: 0.04        # joint position (mean over gripper_joints) at gripper -1
        gripper_closed_position: 0.0       # ... at gripper +1
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..parameters import (PARAMETERS, ParameterError, defaults, load_params_file, proprio_length,
                          resolve_launch_parameters, resolve_urdf)

DATASET_SECTION = 'vla_prune_dataset'
DATASET_KEYS = ('camera_names', 'instruction_topic', 'robot_description_topic', 'gripper_joints',
                'gripper_open_position', 'gripper_closed_position')


def absolute_topic(topic: str) -> str:
    """Bags store absolute names; the robot config gives them relative to the node's namespace (here: root)."""
    return '/' + topic.lstrip('/')


def camera_name_from_topic(topic: str) -> str:
    """``camera/wrist/image_raw`` -> ``wrist``: the last path part that is not an image-stream word."""
    parts = [p for p in topic.strip('/').split('/') if p not in ('image_raw', 'image', 'image_rect', 'image_color',
                                                                  'compressed', 'camera', 'color', 'rgb')]
    return parts[-1] if parts else topic.strip('/').replace('/', '_')


@dataclass(frozen=True)
class RecordingConfig:
    source: str                       # the robot config file, for messages
    node: dict                        # the node's resolved parameters
    camera_topics: tuple[str, ...]    # absolute, model camera order
    camera_names: tuple[str, ...]
    joint_states_topic: str
    instruction_topic: str
    robot_description_topic: str
    gripper_joints: tuple[str, ...]
    gripper_open_position: float
    gripper_closed_position: float

    @classmethod
    def load(cls, path: str | Path) -> 'RecordingConfig':
        path = Path(path)
        try:
            node = {**defaults(), **resolve_launch_parameters('none', config_files=[path])}
            section = load_params_file(path, DATASET_SECTION)
        except ParameterError as error:
            raise ValueError(f'robot config {error}') from None
        unknown = [key for key in section if key not in DATASET_KEYS and key not in PARAMETERS]
        if unknown:
            raise ValueError(f'{path}: {DATASET_SECTION}: unknown keys {unknown}; known: {list(DATASET_KEYS)}')
        cameras = tuple(absolute_topic(t) for t in node['camera_topics'])
        names = tuple(section.get('camera_names') or [camera_name_from_topic(t) for t in cameras])
        if len(names) != len(cameras) or len(set(names)) != len(names):
            raise ValueError(f'{path}: {DATASET_SECTION}.camera_names: need {len(cameras)} distinct names '
                             f'(one per camera_topics entry), got {list(names)}')
        gripper = tuple(section.get('gripper_joints') or ())
        open_position = float(section.get('gripper_open_position', 0.0))
        closed_position = float(section.get('gripper_closed_position', 0.0))
        if gripper and open_position == closed_position:
            raise ValueError(f'{path}: {DATASET_SECTION}: gripper_open_position and gripper_closed_position '
                             f'must differ (both {open_position})')
        return cls(str(path), node, cameras, names, absolute_topic(node['joint_states_topic']),
                   absolute_topic(section.get('instruction_topic', 'instruction')),
                   absolute_topic(section.get('robot_description_topic', 'robot_description')),
                   gripper, open_position, closed_position)

    @property
    def topics(self) -> list[str]:
        """What a recording for training needs: cameras, joint states, the URDF, the instruction."""
        return [*self.camera_topics, self.joint_states_topic, self.robot_description_topic, self.instruction_topic]

    @property
    def proprio_dim(self) -> int:
        return proprio_length(self.node) or 0

    @property
    def action_bounds(self) -> tuple[list[float], list[float]]:
        return list(self.node['action_low']), list(self.node['action_high'])

    def configured_urdf(self) -> str:
        """The URDF the node would use (robot_description or urdf_path), '' when neither is set."""
        try:
            return resolve_urdf(self.node)
        except ParameterError as error:
            raise ValueError(f'{self.source}: {error}') from None
